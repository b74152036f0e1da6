"""Issue #31: one writer per run folder, a supervisor whose death leaves no orphan, a queue that
survives bad records, no silent overwrite of a run. Each test builds the file or situation."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hkd.cli import main
from hkd.models.checkpoint import load_checkpoint
from hkd.train.config import ConfigError, config_from_dict
from hkd.train.engine import TrainingError, train
from hkd.jobs import JobError, JobQueue
from hkd.train.jobs import process_alive  # identities as records before hkd.jobs hold them
from hkd.train.run_folder import RunFolder, RunFolderError
from tests.train.test_jobs import wait_for, write_config

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------
# 1. one writer per run folder
# ---------------------------------------------------------------------------
HOLD = "import sys, time; from hkd.train.run_folder import RunFolder\n" \
       "with RunFolder(sys.argv[1]).writer():\n    print('held', flush=True); time.sleep(120)\n"


def test_a_second_writer_is_refused_with_the_pid_of_the_first(tmp_path, tiny_dataset, tiny_config, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = tiny_config(tiny_dataset, steps=1)
        cfg["data"]["val"] = None
        with pytest.raises(ConfigError, match=f"being written by pid {holder.pid}"):
            train(config_from_dict(cfg), run, progress=False)
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            train(config_from_dict(cfg), run, resume=True, progress=False)
        config = write_config(tmp_path, tiny_dataset, tiny_config, steps=1)
        for command in (["train"], ["distill"]):
            assert main([*command, "--config", str(config), "--out", str(run), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err or "needs a `teacher:`" in err
        with pytest.raises(JobError, match=f"being written by pid {holder.pid}"):  # refused before a launch
            JobQueue(tmp_path / "jobs").submit_run("train", config, out=run, resume=True)
        assert not (run / "status.json").exists()  # the refused writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock with its holder: the folder trains now
    assert train(config_from_dict(cfg), run, progress=False)["state"] == "succeeded"


def test_a_folder_with_checkpoints_but_no_readable_status_is_not_overwritten(tmp_path, tiny_dataset, tiny_config):
    cfg = tiny_config(tiny_dataset, steps=1)
    cfg["data"]["val"] = None
    run = RunFolder(tmp_path / "r")
    train(config_from_dict(cfg), run.root, progress=False)
    before = run.checkpoint("final").read_bytes()
    for broken in (None, '{"state": "succ'):
        if broken is None:
            run.status_path.unlink()
        else:
            run.status_path.write_text(broken)
        with pytest.raises(ConfigError, match="--resume, or choose another --out"):
            train(config_from_dict(cfg), run.root, progress=False)
        assert run.checkpoint("final").read_bytes() == before
    with pytest.raises(RunFolderError, match="choose another --out"):
        run.check_new(resume=False)
    # --out that is a file: one sentence
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(config_from_dict(cfg), afile, progress=False)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train(config_from_dict(cfg), afile / "sub", progress=False)


def test_a_full_disk_fails_the_run_with_one_message_and_keeps_the_last_files(tmp_path, tiny_dataset, tiny_config,
                                                                            monkeypatch):
    import hkd.train.engine as engine

    cfg = tiny_config(tiny_dataset, steps=2, checkpoint_every=1)
    cfg["data"]["val"] = None

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "r" / "checkpoints" / "last.safetensors"))

    monkeypatch.setattr(engine, "save_checkpoint", full)
    with pytest.raises(TrainingError, match="No space left on device; free some space"):
        train(config_from_dict(cfg), tmp_path / "r", progress=False)
    status = RunFolder(tmp_path / "r").read_status()
    assert status["state"] == "failed" and "No space left" in status["message"]


# ---------------------------------------------------------------------------
# 2. a killed supervisor: the training dies with it; the queue manages it until then
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sigkilled_supervisor_leaves_no_unmanaged_training(tmp_path, tiny_dataset, tiny_config):
    queue = JobQueue(tmp_path / "jobs", max_running=1)
    out = tmp_path / "runA"
    job = queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config, steps=400), out=out, threads=1)
    queued = queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config, name="b.yaml", steps=1),
                              threads=1)
    wait_for(queue, job.id, ("running",), step=3)
    folder = Path(job.folder)
    training = json.loads((folder / "command.json").read_text())["pid"]
    # one writer: a second job on the same --out (refused by the folder's lock, checked before the
    # queue's own record of owners) and a direct --resume are refused
    with pytest.raises(JobError, match=f"being written by pid {training}"):
        queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config, name="c.yaml"), out=out,
                         resume=True)
    with pytest.raises(JobError, match=f"run folder of job {job.id} \\(running\\)"):
        queue.submit("train", ["--out", str(out)], run=out)  # the queue's check alone
    cfg = tiny_config(tiny_dataset, steps=400)
    cfg["data"]["val"] = None
    with pytest.raises(ConfigError, match=f"being written by pid {training}"):
        train(config_from_dict(cfg), out, resume=True, progress=False)

    supervisor = json.loads((folder / "job.json").read_text())["launch"]["pid"]
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while process_alive(training, None, None) and time.monotonic() < deadline:
        jobs = {j.id: j for j in queue.list()}  # list() also starts what may start
        if process_alive(training, None, None):
            assert jobs[job.id].state == "running", jobs[job.id].message  # never failed while it trains
            assert jobs[queued.id].state == "queued"  # HKD_MAX_JOBS=1 holds
        time.sleep(0.2)
    assert not process_alive(training, None, None), "the training outlived its supervisor"
    ended = wait_for(queue, job.id, ("failed", "succeeded", "cancelled"), timeout=10)
    status = RunFolder(out).read_status()
    assert ended.state == status["state"] == "failed"  # the run's own state, and its own reason
    assert "supervisor" in ended.message and "resume" in ended.message
    assert load_checkpoint(RunFolder(out).checkpoint("last")).meta.step >= 3
    queue.list()
    assert wait_for(queue, queued.id, ("succeeded", "failed")).state == "succeeded", queue.log_tail(queued.id)


# ---------------------------------------------------------------------------
# 3. a queue that survives bad records
# ---------------------------------------------------------------------------
def _fake_job(root: Path, job_id: str, *, record=None, text=None, status=None) -> Path:
    folder = root / job_id
    folder.mkdir(parents=True)
    if text is None:
        text = json.dumps(record)
    (folder / "job.json").write_text(text)
    if status is not None:
        (folder / "status.json").write_text(status)
    return folder


def _launched(root: Path, job_id: str) -> dict:
    folder = root / job_id
    return {"id": job_id, "kind": "predict", "name": job_id, "created": time.time(),
            "command": [sys.executable, "-m", "hkd", "predict"], "cwd": str(REPO), "run": str(folder),
            "status_path": str(folder / "status.json"), "threads": 1, "summary": {}, "outputs": {},
            # a pid no process has: the job has ended
            "launch": {"pid": 4_000_000, "pgid": 4_000_000, "start_ticks": 1, "boot_id": None, "started": 1.0},
            "cancel_requested": False, "final": None, "attempts": []}


def test_bad_records_are_listed_corrupt_and_the_queue_keeps_working(tmp_path, capsys):
    root = tmp_path / "jobs"
    _fake_job(root, "20200101-000000-0001", text="{}")
    _fake_job(root, "20200101-000000-0002", text="[]")
    _fake_job(root, "20200101-000000-0003", text='{"id": "20200101-000000-0003", "ki')
    _fake_job(root, "20200101-000000-0004", record=_launched(root, "20200101-000000-0004"),
              status='{"state": "running", "step": "abc"}')
    _fake_job(root, "20200101-000000-0005", record=_launched(root, "20200101-000000-0005"),
              status='{"state": "succ')
    _fake_job(root, "20200101-000000-0006", record={**_launched(root, "20200101-000000-0006"), "final": {"x": 1}})
    queue = JobQueue(root)
    jobs = {j.id: j for j in queue.list()}
    assert len(jobs) == 6 and all(j.state == "corrupt" for j in jobs.values()), jobs
    assert "has no 'id'" in jobs["20200101-000000-0001"].message
    assert "JSON list" in jobs["20200101-000000-0002"].message
    assert "not valid JSON" in jobs["20200101-000000-0003"].message
    assert "step is 'abc', not a number" in jobs["20200101-000000-0004"].message
    assert "status.json: not valid JSON" in jobs["20200101-000000-0005"].message
    assert "final is" in jobs["20200101-000000-0006"].message
    assert main(["jobs", "--jobs-dir", str(root), "list"]) == 0
    assert capsys.readouterr().out.count("corrupt") == 6
    assert main(["jobs", "--jobs-dir", str(root), "show", "20200101-000000-0004"]) == 0
    assert "step is 'abc'" in capsys.readouterr().out
    assert main(["jobs", "--jobs-dir", str(root), "cancel", "20200101-000000-0001"]) == 2
    assert "has no 'id'" in capsys.readouterr().err
    for job_id in list(jobs)[:3]:
        assert main(["jobs", "--jobs-dir", str(root), "delete", job_id, "--yes"]) == 0
    assert len(queue.list()) == 3
    # a new job is still started beside the corrupt ones
    job = queue.submit("synth", ["--out", str(tmp_path / "synth"), "--num", "1", "--width", "96", "--height", "96",
                                 "--no-progress", "--status", str(root / "s.json")], status_path=root / "s.json")
    assert job.state == "running"
    assert wait_for(queue, job.id, ("succeeded", "failed"), timeout=120).state == "succeeded", queue.log_tail(job.id)


def test_a_jobs_dir_that_is_a_file_is_one_sentence(tmp_path, tiny_dataset, tiny_config, capsys):
    jobs = tmp_path / "jobs"
    jobs.write_text("not a folder")
    config = write_config(tmp_path, tiny_dataset, tiny_config)
    assert main(["jobs", "--jobs-dir", str(jobs), "submit", "train", "--config", str(config)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["jobs", "--jobs-dir", str(jobs), "list"]) == 0


def test_a_truncated_train_state_on_resume_is_one_sentence_and_the_run_stays_as_it_was(tmp_path, tiny_dataset,
                                                                                       tiny_config, capsys):
    config = write_config(tmp_path, tiny_dataset, tiny_config, steps=1)
    run = RunFolder(tmp_path / "r")
    assert main(["train", "--config", str(config), "--out", str(run.root)]) == 0
    state = run.state_path.read_bytes()
    run.state_path.write_bytes(state[: len(state) // 3])
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(run.root), "--resume", "--set", "train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "train_state.pt: not a readable training state" in err and "Traceback" not in err
    assert run.read_status()["state"] == "succeeded"  # the finished run is not demoted by a refused resume


@pytest.mark.parametrize("workers", [0, 1])  # 1: the error comes wrapped by a DataLoader worker
def test_an_exif_rotated_image_annotated_at_its_stored_size_is_one_sentence(tmp_path, tiny_config, capsys, workers):
    from PIL import Image

    root = tmp_path / "exif"
    (root / "images").mkdir(parents=True)
    images = []
    for i in range(2):
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90°: upright it is 96 wide, 128 high
        Image.new("RGB", (128, 96), (120, 120, 120)).save(root / "images" / f"{i}.jpg", exif=exif)
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 128, "height": 96})  # the stored size
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 20, 60], "height": 60,
             "vis_ratio": 1.0, "ignore": 0, "iscrowd": 0} for i in range(2)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                       "categories": [{"id": 1, "name": "pedestrian"}]}))
    config = write_config(tmp_path, root, tiny_config, steps=1)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r"),
                 "--set", f"train.workers={workers}"]) == 2
    err = capsys.readouterr().err
    assert "EXIF orientation turns it by 90°" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "EXIF" in RunFolder(tmp_path / "r").read_status()["message"]


def test_a_job_whose_supervisor_is_gone_but_whose_command_lives_is_running_and_cancellable(tmp_path):
    """The queue's side of a dead supervisor, without a training: the recorded command is a `sleep`."""
    from hkd.train.jobs import _boot_id, _proc_start

    root = tmp_path / "jobs"
    command = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        ticks, _ = _proc_start(command.pid)
        record = _launched(root, "20200101-000000-0001")
        record["launch"]["pgid"] = command.pid  # the supervisor (pid 4,000,000) is gone; its group lives on
        folder = _fake_job(root, record["id"], record=record)
        (folder / "command.json").write_text(json.dumps({"pid": command.pid, "start_ticks": ticks,
                                                         "boot_id": _boot_id()}))
        waiting = {**_launched(root, "20200101-000000-0002"), "kind": "train", "launch": None,
                   "run": str(tmp_path / "runX"), "command": [sys.executable, "-c", "pass"]}
        _fake_job(root, waiting["id"], record=waiting)
        queue = JobQueue(root, max_running=1)
        jobs = {j.id: j for j in queue.list()}  # list() starts what may start: nothing, the slot is taken
        assert jobs[record["id"]].state == "running" and jobs[waiting["id"]].state == "queued"
        # the queued job owns its run folder: a second job on it is refused
        with pytest.raises(JobError, match="run folder of job 20200101-000000-0002 \\(queued\\)"):
            queue.submit("train", ["--out", str(tmp_path / "runX")], run=tmp_path / "runX")
        # SIGTERM to the process group (a sleep ends at once, so it may already read cancelled)
        assert queue.cancel(record["id"]).state in ("running", "cancelled")
        assert command.wait(timeout=10) == -signal.SIGTERM
        assert queue.get(record["id"]).state == "cancelled"
    finally:
        command.kill()
        command.wait()
