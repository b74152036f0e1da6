"""The jobs wing on its own: process identity by psutil, records from before the move, the kinds registry,
and no upward import."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hkd.jobs import JobError, JobKind, Launch, register
from hkd.jobs import kinds
from hkd.jobs.process import boot_id, identify, is_alive, start_ticks

REPO = Path(__file__).resolve().parents[2]


def test_a_process_is_its_pid_and_start_time():
    me = identify(os.getpid())
    assert is_alive(me) is True
    # a reused pid: another start, counted from the boot as from the epoch
    assert is_alive({**me, "create_time": me["create_time"] + 30, "since_boot": me["since_boot"] + 30}) is False
    # a wall-clock step between two readers moves the epoch start time, not the start since boot: same process
    assert is_alive({**me, "create_time": me["create_time"] + 300}) is True
    assert is_alive({k: v for k, v in me.items() if k != "since_boot"}) is True  # a record of earlier today
    assert is_alive({**me, "boot_id": "another-boot"}) is (boot_id() is None)
    assert is_alive({"pid": 4_000_000, "create_time": 1.0}) is False
    assert is_alive(None) is False and is_alive({"pid": True}) is False
    assert is_alive({"pid": os.getpid()}) is None  # a pid without a start time: cannot tell


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="records before the move exist on Linux only")
def test_records_written_before_the_move_are_read():
    ticks = start_ticks(os.getpid())
    assert is_alive({"pid": os.getpid(), "start_ticks": ticks, "boot_id": boot_id()}) is True
    assert is_alive({"pid": os.getpid(), "start_ticks": ticks + 1, "boot_id": boot_id()}) is False


def test_an_exited_unreaped_process_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        identity = identify(child.pid)
        deadline = time.monotonic() + 30
        while is_alive(identity) and time.monotonic() < deadline:  # a zombie until it is reaped below
            time.sleep(0.05)
        assert is_alive(identity) is False
    finally:
        child.wait()


def test_every_kind_is_declared_beside_its_command():
    assert kinds.names() == ("train", "distill", "predict", "synth", "diagnose")
    for name in kinds.names():
        assert kinds.kind(name).name == name
    assert kinds.resumable_names() == ["train", "distill"]
    with pytest.raises(JobError, match="unknown job kind 'nope'"):
        kinds.kind("nope")


@pytest.mark.slow
def test_a_registered_kind_is_submitted_through_the_queue(tmp_path):
    from hkd.jobs import JobQueue

    def prepare(folder, *, text):
        if not text:
            raise JobError("text: empty")
        return Launch([], name=f"presets {text}", threads=1, summary={"text": text})

    register(JobKind("presets", prepare=prepare))
    try:
        queue = JobQueue(tmp_path / "jobs")
        with pytest.raises(JobError, match="text: empty"):
            queue.submit_job("presets", text="")
        assert queue.ids() == []
        job = queue.submit_job("presets", text="hi")
        assert job.name == "presets hi" and job.command[-1] == "presets" and job.summary == {"text": "hi"}
        deadline = time.monotonic() + 60
        while not queue.get(job.id).finished and time.monotonic() < deadline:
            time.sleep(0.2)
        done = queue.get(job.id)  # `hkd presets` writes no status file: an exit without a final state
        assert done.state == "failed" and "exited with code 0" in done.message, done.message
        assert "name" in queue.log_tail(job.id)  # the table it printed
    finally:
        kinds._REGISTRY.pop("presets", None)


def test_the_wing_imports_no_higher_one():
    code = ("import sys, hkd.jobs, hkd.jobs.supervisor; "
            "print(sorted({m for m in sys.modules if m.startswith(('hkd.train', 'hkd.cli', 'hkd.distill', "
            "'hkd.viz', 'hkd.data', 'streamlit', 'torch'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="records before the move were written from /proc")
def test_a_job_folder_written_before_the_move_still_reads_running_then_cancelled(tmp_path):
    """job.json as the code before hkd.jobs wrote it: the supervisor's start in clock ticks from /proc/PID/stat."""
    import json
    import signal

    from hkd.jobs import JobQueue

    supervisor = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        stat = Path(f"/proc/{supervisor.pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        folder = tmp_path / "jobs" / "20261207-090000-abcd"
        folder.mkdir(parents=True)
        record = {"id": folder.name, "kind": "predict", "name": "old", "created": time.time(),
                  "command": [sys.executable, "-m", "hkd", "predict"], "cwd": str(REPO), "run": str(folder),
                  "status_path": str(folder / "status.json"), "threads": 1, "summary": {}, "outputs": {},
                  "launch": {"pid": supervisor.pid, "pgid": supervisor.pid, "start_ticks": ticks,
                             "boot_id": boot_id(), "started": time.time()},
                  "cancel_requested": False, "final": None, "attempts": []}
        (folder / "job.json").write_text(json.dumps(record))
        queue = JobQueue(tmp_path / "jobs")
        assert queue.get(folder.name).state == "running"
        queue.cancel(folder.name)
        assert supervisor.wait(timeout=10) == -signal.SIGTERM
        assert queue.get(folder.name).state == "cancelled"
    finally:
        supervisor.kill()
        supervisor.wait()


def test_a_job_launched_moments_ago_is_never_frozen_failed_by_a_misread_start(tmp_path):
    """A supervisor that runs, checked before its first heartbeat with a start time read wrongly (another
    process's clock view): running, not a final "gone without a trace"."""
    from hkd.jobs.state import launched_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        wrong = {"pid": child.pid, "create_time": time.time() - 3600, "boot_id": boot_id(), "started": time.time()}
        assert is_alive(wrong) is False  # the identity alone says dead …
        assert launched_alive({"launch": wrong}, tmp_path) is True  # … but it runs and was launched just now
        old = {**wrong, "started": time.time() - 3600}
        assert launched_alive({"launch": old}, tmp_path) is False  # launched long ago, no heartbeat: dead
    finally:
        child.kill()
        child.wait()
