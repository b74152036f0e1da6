"""Background jobs: real subprocesses running `python -m hkd …` on tiny models, a few steps each."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hkd.cli import main
from hkd.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hkd.models.presets import build_detector
from hkd.jobs import JobError, JobQueue
from hkd.train.jobs import process_alive  # identities as records before hkd.jobs hold them
from hkd.train.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 240  # a tiny run's start (imports, model build) on a busy 2-core CPU


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("jobs_teacher") / "teacher.safetensors"
    teacher = build_detector("hkd_frcnn_lite2.teacher", min_size=96, max_size=128).eval()
    return save_checkpoint(path, teacher, CheckpointMeta(preset="hkd_frcnn_lite2.teacher", min_size=96, max_size=128))


def write_config(tmp_path, tiny_dataset, tiny_config, teacher=None, name="cfg.yaml", **train) -> Path:
    cfg = tiny_config(tiny_dataset, **{"checkpoint_every": 2, **train})
    cfg["data"]["val"] = None
    if teacher is not None:
        cfg["teacher"] = str(teacher)
        cfg["distill"] = {"levels": {"neck.p3": {"loss": "nmse", "weight": 0.1},
                                     "roi.logits": {"loss": "kd_kl", "weight": 1.0, "temperature": 2.0}}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for(queue: JobQueue, job_id: str, states, timeout: float = TIMEOUT, step: int | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.get(job_id)
        if job.state in states and (step is None or job.step >= step):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {queue.get(job_id).state} after {timeout} s:\n{queue.log_tail(job_id)}")


@pytest.mark.slow
def test_lifecycle_queue_limit_and_a_new_process_sees_the_same_jobs(tmp_path, tiny_dataset, tiny_config, teacher_ckpt):
    queue = JobQueue(tmp_path / "jobs", max_running=1)
    config = write_config(tmp_path, tiny_dataset, tiny_config, teacher_ckpt, steps=3)
    first = queue.submit_run("distill", config, threads=1, name="first")
    second = queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config, name="plain.yaml", steps=2),
                              threads=1)
    assert first.state == "running" and second.state == "queued"  # HKD_MAX_JOBS = 1
    assert all(Path(a).is_absolute() for a in first.command if "/" in a)
    assert "train.threads=1" in first.command
    done = wait_for(queue, first.id, ("succeeded", "failed"))
    assert done.state == "succeeded", queue.log_tail(first.id)
    assert Path(done.outputs["checkpoint"]).is_file()
    assert any(k.startswith("kd/neck.p3/") for m in queue.metrics(first.id) for k in m)
    # the finished supervisor started the queued job without anybody polling
    deadline = time.monotonic() + TIMEOUT
    while queue.get(second.id).state == "queued" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wait_for(queue, second.id, ("succeeded", "failed")).state == "succeeded"
    # another process (a restarted app, the CLI) lists the same jobs and states
    out = subprocess.run([sys.executable, "-m", "hkd", "jobs", "--jobs-dir", str(queue.root), "list", "--json"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    listed = {j["id"]: j for j in json.loads(out)}
    assert set(listed) == {first.id, second.id}
    assert listed[first.id]["state"] == "succeeded" and listed[first.id]["step"] == 3 == listed[first.id]["total"]
    assert set(listed[first.id]) >= {"id", "state", "step", "total", "run", "created", "updated", "message"}


@pytest.mark.slow
def test_cancel_running_keeps_a_loadable_checkpoint_and_resume_finishes(tmp_path, tiny_dataset, tiny_config):
    queue = JobQueue(tmp_path / "jobs")
    config = write_config(tmp_path, tiny_dataset, tiny_config, steps=400, checkpoint_every=2)
    job = queue.submit_run("train", config, threads=1)
    wait_for(queue, job.id, ("running",), step=3)
    assert queue.cancel(job.id).state == "running"  # the run saves its checkpoint, then exits
    cancelled = wait_for(queue, job.id, ("cancelled", "failed", "succeeded"))
    assert cancelled.state == "cancelled", cancelled.message
    last = load_checkpoint(RunFolder(job.run).checkpoint("last"))
    assert last.meta.step >= 3
    assert not process_alive(cancelled.pid, None, None)  # no orphan left behind
    with pytest.raises(JobError, match="already cancelled"):
        queue.cancel(job.id)
    # resume with fewer steps so that it ends quickly: the resumed run continues from the checkpoint
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["steps"] = last.meta.step + 2
    config.write_text(yaml.safe_dump(cfg))
    resumed = queue.resume(job.id)
    assert resumed.state in ("running", "queued") and "--resume" in resumed.command
    assert wait_for(queue, job.id, ("succeeded", "failed")).state == "succeeded", queue.log_tail(job.id)


@pytest.mark.slow
def test_kill_9_mid_run_is_failed_with_log_tail_and_last_checkpoint_loads(tmp_path, tiny_dataset, tiny_config):
    queue = JobQueue(tmp_path / "jobs")
    job = queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config, steps=400), threads=1)
    wait_for(queue, job.id, ("running",), step=3)
    launch = json.loads((Path(job.folder) / "job.json").read_text())["launch"]
    os.killpg(launch["pgid"], signal.SIGKILL)  # the supervisor too: nobody writes a final state
    failed = wait_for(queue, job.id, ("failed", "succeeded", "cancelled"), timeout=30)
    assert failed.state == "failed"
    assert "without writing a final state" in failed.message
    assert "run " in queue.log_tail(job.id)  # the run's log is part of the tail
    assert load_checkpoint(RunFolder(job.run).checkpoint("last")).meta.step >= 2
    # frozen: a later look says the same
    assert queue.get(job.id).state == "failed"
    assert json.loads((Path(job.folder) / "job.json").read_text())["final"]["state"] == "failed"
    queue.delete(job.id)
    assert not Path(job.folder).exists()


def test_a_reused_pid_is_not_the_job(tmp_path):
    me = os.getpid()
    from hkd.train.jobs import _boot_id, _proc_start

    ticks, _ = _proc_start(me)
    assert process_alive(me, ticks, _boot_id()) is True
    assert process_alive(me, ticks + 1, _boot_id()) is False  # same pid, other start time
    assert process_alive(me, ticks, "another-boot") is False


def test_bad_submissions_are_refused_before_launch(tmp_path, tiny_dataset, tiny_config, teacher_ckpt):
    queue = JobQueue(tmp_path / "jobs")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({**tiny_config(tiny_dataset), "trian": {}}))
    with pytest.raises(JobError, match="trian"):
        queue.submit_run("train", typo)
    with pytest.raises(JobError, match="steps"):
        queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config), overrides=["train.steps=0"])
    with pytest.raises(JobError, match="data.train"):
        queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config),
                         overrides=[f"data.train={tmp_path / 'missing'}"])
    # a teacher with other classes cannot teach this student
    odd = save_checkpoint(tmp_path / "odd.safetensors", build_detector("hkd_frcnn_lite2.teacher", min_size=96,
                                                                       max_size=128).eval(),
                          CheckpointMeta(preset="hkd_frcnn_lite2.teacher", classes=["background", "car"]))
    with pytest.raises(JobError, match="share its classes"):
        queue.submit_run("distill", write_config(tmp_path, tiny_dataset, tiny_config, odd))
    bad_level = write_config(tmp_path, tiny_dataset, tiny_config, teacher_ckpt, name="lv.yaml")
    raw = yaml.safe_load(bad_level.read_text())
    raw["distill"] = {"levels": {"neck.p9": "mse"}}
    bad_level.write_text(yaml.safe_dump(raw))
    with pytest.raises(JobError, match="neck.p9"):
        queue.submit_run("distill", bad_level)
    not_a_checkpoint = tmp_path / "notes.safetensors"
    not_a_checkpoint.write_bytes(b"not weights")
    with pytest.raises(JobError, match="model.init_backbone: .*notes.safetensors"):
        queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config),
                         overrides=[f"model.init_backbone={not_a_checkpoint}"])
    with pytest.raises(JobError, match="nothing to resume"):
        queue.submit_run("train", write_config(tmp_path, tiny_dataset, tiny_config), out=tmp_path / "new", resume=True)
    assert queue.ids() == []  # nothing was queued


def test_aux_heads_that_cannot_fit_the_teacher_are_refused_before_launch(tmp_path, tiny_dataset, tiny_config,
                                                                        teacher_ckpt):
    from hkd.distill.aux import AuxHeads, AuxMeta, save_aux_heads
    from hkd.models.presets import get_preset

    spec = get_preset("hkd_frcnn_lite2.teacher").hierarchy
    queue = JobQueue(tmp_path / "jobs")

    def config_with(aux: dict, name: str, online: bool = False) -> Path:
        path = write_config(tmp_path, tiny_dataset, tiny_config, teacher_ckpt, name=name)
        raw = yaml.safe_load(path.read_text())
        raw["distill"]["aux"] = aux
        if online:
            raw.pop("teacher")
            raw["online"] = {"teacher_preset": "hkd_frcnn_lite2.teacher", "pretrained_backbone": False, "kd_after": 1}
        path.write_text(yaml.safe_dump(raw))
        return path

    heads = AuxHeads(spec, ["neck.p3"], hidden=8, seed=0)
    other = {"file": "other.safetensors", "preset": "some_other.teacher"}
    wrong = save_aux_heads(tmp_path / "wrong.safetensors", heads,
                           AuxMeta(teacher=other, levels={"neck.p3": 999}, crop=32, head=heads.arch),
                           {"neck.p3": torch.zeros(2, 999)})
    with pytest.raises(JobError, match="made for another teacher.*999 channels"):
        queue.submit_run("distill", config_with({"checkpoint": str(wrong)}, "wrong.yaml"))
    right = save_aux_heads(tmp_path / "right.safetensors", heads,
                           AuxMeta(teacher=other, levels={"neck.p3": spec["neck.p3"].channels}, crop=32, head=heads.arch),
                           {"neck.p3": torch.zeros(2, spec["neck.p3"].channels)})
    with pytest.raises(JobError, match="'neck.p4' has no teacher head.*it has: neck.p3"):
        queue.submit_run("distill", config_with({"checkpoint": str(right), "levels": ["neck.p4"]}, "level.yaml"))
    with pytest.raises(JobError, match="distill.aux.checkpoint"):
        queue.submit_run("distill", config_with({"checkpoint": str(tmp_path / "missing.safetensors")}, "gone.yaml"))
    with pytest.raises(JobError, match="online teacher"):
        queue.submit_run("distill", config_with({"checkpoint": str(right)}, "online.yaml", online=True))
    assert queue.ids() == []


@pytest.mark.slow
def test_jobs_cli_submit_show_cancel(tmp_path, tiny_dataset, tiny_config, capsys, monkeypatch):
    monkeypatch.setenv("HKD_JOBS_DIR", str(tmp_path / "jobs"))
    config = write_config(tmp_path, tiny_dataset, tiny_config, steps=400)
    assert main(["jobs", "submit", "train", "--config", str(config), "--threads", "1"]) == 0
    job_id = capsys.readouterr().out.strip()
    queue = JobQueue(tmp_path / "jobs")
    wait_for(queue, job_id, ("running",), step=1)
    assert main(["jobs", "show", job_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "running" and shown["last_metrics"]["step"] >= 1 and "log_tail" in shown
    assert main(["jobs", "cancel", job_id]) == 0
    assert wait_for(queue, job_id, ("cancelled", "failed")).state == "cancelled"
    assert main(["jobs", "list"]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["jobs", "show", "nope"]) == 2
    assert "no job 'nope'" in capsys.readouterr().err
    assert main(["jobs", "submit", "train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_readme_set_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch, tiny_dataset, teacher_ckpt):
    """README: `hkd distill --config assets/configs/student_hkd.yaml --set teacher=runs/teacher/…` from the
    repository root means runs/teacher/… under the working directory, not under assets/configs/."""
    from hkd.train.config import load_config

    (tmp_path / "runs" / "teacher" / "checkpoints").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "assets/configs/student_hkd.yaml",
                      ["teacher=runs/teacher/checkpoints/final.safetensors", "data.train=data/synthped/train"])
    assert cfg.teacher == str(tmp_path / "runs/teacher/checkpoints/final.safetensors")
    assert cfg.data.train == str(tmp_path / "data/synthped/train")
    # what the file itself names stays relative to the file
    assert cfg.data.val == str((REPO / "data/synthped/val").resolve())
    assert cfg.distill == str(REPO / "assets/configs/distill_full.yaml")


@pytest.mark.slow
def test_a_job_outlives_the_process_that_submitted_it(tmp_path, tiny_dataset, tiny_config):
    """`hkd jobs submit` returns at once and exits; the job runs on, and this (another) process sees it end."""
    jobs = tmp_path / "jobs"
    config = write_config(tmp_path, tiny_dataset, tiny_config, steps=2)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "hkd", "jobs", "--jobs-dir", str(jobs), "submit", "train",
                          "--config", str(config), "--threads", "1", "--name", "detached"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    job_id = out.stdout.strip()
    queue = JobQueue(jobs)
    assert queue.get(job_id).state in ("running", "succeeded")
    done = wait_for(queue, job_id, ("succeeded", "failed"))
    assert done.state == "succeeded", queue.log_tail(job_id)
    assert done.name == "detached" and done.step == 2 == done.total
    assert Path(done.outputs["checkpoint"]).is_file()
    assert time.monotonic() - started < TIMEOUT
