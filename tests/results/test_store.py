"""The result store (hkd.results): entry paths, states from the marker and the job queue, one
start per entry under its lock, caches in the layout the Evaluate page wrote before the store."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hkd.jobs import JobError
from hkd.jobs.process import identify
from hkd.results import ResultStore, digest

REPO = Path(__file__).resolve().parents[2]
KEY = {"sha256": "ab" * 32, "dataset": "path:/data/city val", "n": 50, "images": "0123456789ab"}


@dataclass
class FakeJob:
    id: str
    state: str
    kind: str = "predict"
    step: int = 0
    total: int = 0
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


class FakeQueue:
    def __init__(self, jobs=()):
        self.jobs = {job.id: job for job in jobs}

    def get(self, job_id):
        if job_id not in self.jobs:
            raise JobError(f"no job {job_id}")
        return self.jobs[job_id]


def _store(tmp_path, *jobs):
    queue = FakeQueue(jobs)
    return ResultStore(tmp_path / "cache", queue=lambda: queue), queue


def _old_slug(text: str) -> str:  # the Evaluate page's file-name part of a dataset key, before the store
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:48] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def test_a_digest_is_short_stable_and_tells_inputs_apart():
    assert digest("a", 1, {"x": [1, 2]}) == digest("a", 1, {"x": [1, 2]})
    assert len(digest("a")) == 12 and len(digest("a", length=24)) == 24
    assert len({digest("a", 1), digest("a", 2), digest("b", 1), digest({"n": None})}) == 4


def test_entries_of_other_kinds_are_named_by_the_digest_of_their_key(tmp_path):
    store, _ = _store(tmp_path)
    one, same = store.entry("compare", {"gt": "x", "files": [1]}), store.entry("compare", {"files": [1], "gt": "x"})
    assert one == same and one.path.parent == store.root / "compare" and one.path.suffix == ".json"
    assert store.entry("compare", {"gt": "y", "files": [1]}) != one
    assert one.marker == one.path.with_suffix(".job") and one.lock_path == one.path.with_suffix(".lock")
    with pytest.raises(ValueError, match="lower-case name"):
        store.entry("../x", {})


def test_a_cache_written_in_the_layout_before_the_store_is_read_as_it_is(tmp_path):
    """Predictions and diagnoses the Evaluate page wrote before the store existed: same paths, read ready."""
    store, _ = _store(tmp_path, FakeJob("20261201-101010-abcd", "succeeded", message="2 images skipped"))
    root = tmp_path / "cache"
    old = root / "predictions" / KEY["sha256"] / f"{_old_slug(KEY['dataset'])}-50-{KEY['images']}.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 2], "score": 0.9}]))
    old.with_suffix(".job").write_text("20261201-101010-abcd")
    entry = store.entry("predictions", KEY)
    assert entry.path == old
    state = entry.state()
    assert state.ready and state.job_id == "20261201-101010-abcd" and state.message == "2 images skipped"

    folder = root / "diagnosis" / KEY["sha256"] / f"{_old_slug(KEY['dataset'])}-all-{KEY['images']}-fppi0.1"
    folder.mkdir(parents=True)
    (folder / "diagnosis.json").write_text("{}")
    diagnosis = store.entry("diagnosis", {**KEY, "n": None, "fppi": 0.1})
    assert diagnosis.path == folder / "diagnosis.json"
    assert diagnosis.marker == folder.parent / f"{_old_slug(KEY['dataset'])}-all-{KEY['images']}-fppi0.job"
    assert diagnosis.state().ready


def test_states_follow_the_job_the_marker_names(tmp_path):
    store, queue = _store(tmp_path, FakeJob("j1", "queued"))
    entry = store.entry("predictions", KEY)
    assert entry.state().state == "missing" and entry.job_id is None
    entry.record("j1")
    assert entry.state().state == "queued" and entry.state().pending and entry.job_id == "j1"
    queue.jobs["j1"] = FakeJob("j1", "running", step=3, total=50)
    state = entry.state()
    assert (state.state, state.step, state.total, state.job_id, state.owner) == ("running", 3, 50, "j1", "job j1")
    entry.path.write_text("[]")  # a running job's file may be half-written: not ready yet
    assert entry.state().state == "running"
    queue.jobs["j1"] = FakeJob("j1", "succeeded")
    assert entry.state().ready


def test_a_failed_job_or_one_that_left_no_file_is_failed_and_a_cleared_queue_is_missing(tmp_path):
    store, queue = _store(tmp_path, FakeJob("j1", "failed", message="img_01.png: not an image"))
    entry = store.entry("predictions", KEY)
    entry.record("j1")
    state = entry.state()
    assert state.state == "failed" and "img_01.png" in state.message and not state.pending
    queue.jobs["j1"] = FakeJob("j1", "succeeded")
    state = entry.state()
    assert state.state == "failed" and "succeeded but" in state.message and str(entry.path) in state.message
    queue.jobs.clear()  # `hkd jobs delete`: the marker names nothing any more
    assert entry.state().state == "missing" and not entry.marker.exists()


def test_a_process_marker_is_running_while_it_lives_then_ready_or_failed(tmp_path):
    store, _ = _store(tmp_path)
    entry = store.entry("predictions", KEY)
    entry.record(identify(os.getpid()))
    assert entry.job_id is None and entry.state().state == "running"
    assert entry.state().owner == f"process {os.getpid()}"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    identity = identify(child.pid)
    child.wait()
    entry.record(identity)
    entry.log_path.write_text("loading…\nImageError: img_02.png is not an image\n")
    state = entry.state()
    assert state.state == "failed" and "img_02.png is not an image" in state.message
    entry.path.write_text("[]")
    assert entry.state().ready


def test_claim_starts_one_job_when_two_ask_at_once(tmp_path):
    store, queue = _store(tmp_path)
    entry = store.entry("predictions", KEY)
    started = []

    def start():
        time.sleep(0.3)  # the other caller arrives meanwhile, and waits for the lock
        job = FakeJob(f"j{len(started) + 1}", "queued")
        queue.jobs[job.id] = job
        started.append(job.id)
        return job.id

    states = []
    threads = [threading.Thread(target=lambda: states.append(store.entry("predictions", KEY).claim(start)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert started == ["j1"]
    assert [(s.state, s.job_id) for s in states] == [("queued", "j1")] * 2
    assert entry.claim(lambda: pytest.fail("started again")).job_id == "j1"  # pending: left alone


def test_claim_starts_a_failed_entry_again(tmp_path):
    store, queue = _store(tmp_path, FakeJob("j1", "failed"))
    entry = store.entry("predictions", KEY)
    entry.record("j1")
    queue.jobs["j2"] = FakeJob("j2", "running")
    assert entry.claim(lambda: "j2").job_id == "j2"
    entry.path.write_text("[]")
    queue.jobs["j2"] = FakeJob("j2", "succeeded")
    assert entry.claim(lambda: pytest.fail("ready: nothing to start")).ready


def test_the_store_imports_no_model_dataset_or_streamlit():
    code = ("import sys, hkd.results; print(sorted({m for m in sys.modules if m.startswith(('hkd.train', 'hkd.cli', "
            "'hkd.distill', 'hkd.viz', 'hkd.data', 'hkd.models', 'hkd.eval', 'streamlit', 'torch'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_a_computed_result_is_computed_once_then_read(tmp_path):
    store = ResultStore(tmp_path)
    entry = store.entry("compare", ["gt", [["teacher", "/p.json", 1]], 0.1, "Reasonable"])
    calls = []
    data, problem = entry.computed(lambda: calls.append(1) or {"report": 1})
    assert data == {"report": 1} and problem is None and calls == [1]
    assert entry.computed(lambda: pytest.fail("computed twice")) == ({"report": 1}, None)
    # a file that is not what the caller expects is computed again and replaced
    entry.path.write_text('{"half": ')
    assert entry.computed(lambda: {"report": 2}, valid=lambda d: "report" in d) == ({"report": 2}, None)
    assert json.loads(entry.path.read_text()) == {"report": 2}


def test_a_result_that_cannot_be_kept_still_comes_back_with_the_reason(tmp_path, monkeypatch):
    import errno

    from hkd.results import store as result_store

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(result_store, "write_atomic", full)
    entry = ResultStore(tmp_path).entry("compare", ["x"])
    data, problem = entry.computed(lambda: {"report": 3})
    assert data == {"report": 3} and "No space left on device" in problem and str(entry.path) in problem
    assert not entry.path.exists()


def test_comparisons_and_exports_keep_the_names_the_app_gave_them(tmp_path):
    store = ResultStore(tmp_path)
    key = ["gt-hash", [["a", "/a.json", 5]], 0.1, "Reasonable", ["a"], {"resamples": 1000, "seed": 0}]
    legacy = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    assert store.entry("compare", key).path == tmp_path / "compare" / f"{legacy}.json"
    onnx = store.entry("onnx", {"stem": "student_hkd", "sha256": "ab" * 32, "size": None})
    assert onnx.path == tmp_path / "onnx" / f"student_hkd.{'ab' * 8}.any.onnx"
    assert store.entry("onnx", {"stem": "t", "sha256": "cd" * 32, "size": [640, 480]}).path.name == \
        f"t.{'cd' * 8}.640x480.onnx"
    assert onnx.lock_path == tmp_path / "onnx" / f"student_hkd.{'ab' * 8}.any.lock"
