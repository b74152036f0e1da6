"""The queue: jobs recorded as files, started as slots free, cancelled, resumed and deleted.

There is no daemon: :meth:`JobQueue.advance` starts what may start, and is called by every queue
operation, by the app's pages and by each supervisor when its job ends. One process changes the
queue at a time (a file lock on ``.lock``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from hkd.jobs import kinds
from hkd.jobs.process import identify
from hkd.jobs.record import (COMMAND_NAME, EXIT_NAME, HEARTBEAT_DEAD_S, HEARTBEAT_NAME, LOG_NAME, RECORD_NAME,
                             CorruptJobError, Job, JobError, default_threads, heartbeat_age, jobs_dir, log_tail,
                             max_jobs, new_job_id, read_record)
from hkd.jobs.state import corrupt_job, final_of, job_of
from hkd.models.meta import atomic_write

SUPERVISOR = "hkd.jobs.supervisor"  # python -m hkd.jobs.supervisor JOB_DIR

# Popen objects of the supervisors this process launched, polled to reap them (no zombies)
_children: dict[int, subprocess.Popen] = {}


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


class JobQueue:
    """The jobs under ``root`` (default :func:`jobs_dir`), at most ``max_running`` running at once."""

    def __init__(self, root: str | os.PathLike | None = None, *, max_running: int | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root else jobs_dir()
        self.max_running = max_running or max_jobs()

    # -- files -------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise JobError(f"{job_id!r} is not a job id")
        return self.root / job_id

    def _read(self, job_id: str) -> dict:
        return read_record(self.folder(job_id), kinds.names())

    def _write(self, record: dict) -> None:
        text = json.dumps(record, indent=2)
        atomic_write(self.folder(record["id"]) / RECORD_NAME, lambda tmp: Path(tmp).write_text(text))

    def _check_root(self) -> None:
        for path in (self.root, *self.root.parents):
            if path.exists():
                if not path.is_dir():
                    raise JobError(f"jobs folder {self.root}: {path} is a file, not a folder; point HKD_JOBS_DIR "
                                   "(or --jobs-dir) at a folder")
                return

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._check_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(f"jobs folder {self.root}: cannot create it ({exc.strerror or exc})") from None
        with FileLock(self.root / ".lock"):
            yield

    def ids(self) -> list[str]:
        """Job ids, oldest first (ids start with their creation time)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / RECORD_NAME).is_file())

    # -- submitting --------------------------------------------------------
    def submit_job(self, kind: str, **request) -> Job:
        """Check ``request`` as the declared ``kind`` would run it (:mod:`hkd.jobs.kinds`) and queue it."""
        job_kind = kinds.kind(kind)
        job_id = new_job_id()
        launch = job_kind.prepare(self.folder(job_id), **request)
        return self.submit(kind, launch.args, run=launch.run, name=launch.name, threads=launch.threads,
                           summary=launch.summary, outputs=launch.outputs, status_path=launch.status_path,
                           job_id=job_id)

    def submit(self, kind: str, command_args: list[str], *, run: str | os.PathLike | None = None,
               name: str | None = None, threads: int | None = None, summary: dict | None = None,
               outputs: dict | None = None, status_path: str | os.PathLike | None = None,
               job_id: str | None = None) -> Job:
        """Queue ``python -m hkd <kind> <command_args…>`` (already checked by the caller) and start it
        if a slot is free. ``run`` is the run folder whose status.json reports progress (train/distill);
        other kinds report through ``status_path`` (passed to the command as ``--status``)."""
        if kind not in kinds.names():
            raise JobError(f"unknown job kind {kind!r}; one of {', '.join(kinds.names())}")
        job_id = job_id or new_job_id()
        folder = self.folder(job_id)
        now = time.time()
        record = {
            "id": job_id, "kind": kind, "name": name or job_id, "created": now,
            "command": [sys.executable, "-m", "hkd", kind, *[str(a) for a in command_args]],
            "cwd": str(Path.cwd()), "run": str(Path(run).resolve()) if run else str(folder),
            "status_path": str(Path(status_path).resolve()) if status_path else
            str(Path(run).resolve() / "status.json") if run else str(folder / "status.json"),
            "threads": int(threads or default_threads()), "summary": summary or {}, "outputs": outputs or {},
            "launch": None, "cancel_requested": False, "final": None, "attempts": [],
        }
        with self._locked():  # the check and the new record together: two submits cannot both pass it
            if run:
                self._check_run_folder_free(Path(record["run"]))
            try:
                folder.mkdir(parents=True, exist_ok=False)
                self._write(record)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    shutil.rmtree(folder)
                raise JobError(f"jobs folder {self.root}: cannot record the job ({exc.strerror or exc})") from None
        self.advance()
        return self.get(job_id)

    def _check_run_folder_free(self, run: Path) -> None:
        """Refuse a run folder that a queued or running job already writes (called under the lock)."""
        for other in self.ids():
            try:
                record = self._read(other)
            except JobError:
                continue
            if Path(record["run"]) == run and kinds.kind(record["kind"]).run_folder:
                job = job_of(record, self.folder(other))
                if job.active:
                    raise JobError(f"{run} is the run folder of job {other} ({job.state}); wait for it, cancel "
                                   "it, or choose another --out")

    # the kinds of today's commands, as the app and `hkd jobs submit` ask for them
    def submit_run(self, kind: str, config: str | os.PathLike, *, out: str | os.PathLike | None = None,
                   overrides: list[str] | None = None, resume: bool = False, name: str | None = None,
                   threads: int | None = None) -> Job:
        """Queue ``hkd train|distill --config CONFIG --out OUT``, checked first (``hkd.cli.train_job``).

        Without ``out`` the run folder is ``<job folder>/run``. ``threads`` (default: all cores but
        one) goes to the run as ``--set train.threads=N``.
        """
        if kind not in ("train", "distill"):
            raise JobError(f"a run job is `train` or `distill`, not {kind!r}")
        return self.submit_job(kind, config=config, out=out, overrides=overrides, resume=resume, name=name,
                               threads=threads)

    def submit_predict(self, *, checkpoint: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                       gt: str | os.PathLike | None = None, preset: str | None = None, limit: int | None = None,
                       threads: int | None = None, name: str | None = None) -> Job:
        """Queue ``hkd predict`` (COCO results JSON at ``out``), checked first (``hkd.cli.predict_job``)."""
        return self.submit_job("predict", checkpoint=checkpoint, images=images, out=out, gt=gt, preset=preset,
                               limit=limit, threads=threads, name=name)

    def submit_diagnose(self, *, checkpoint: str | os.PathLike, images: str | os.PathLike, gt: str | os.PathLike,
                        out: str | os.PathLike, name_in_report: str = "model", limit: int | None = None,
                        fppi: float = 0.1, setup: str = "Analysis", threads: int | None = None,
                        name: str | None = None) -> Job:
        """Queue ``hkd diagnose`` (``diagnosis.json`` and ``cases.csv`` in the folder ``out``), checked
        first (``hkd.cli.diagnose_job``)."""
        return self.submit_job("diagnose", checkpoint=checkpoint, images=images, gt=gt, out=out,
                               name_in_report=name_in_report, limit=limit, fppi=fppi, setup=setup, threads=threads,
                               name=name)

    def submit_synth(self, *, out: str | os.PathLike, num: int, seed: int, threads: int | None = None,
                     name: str | None = None) -> Job:
        """Queue ``hkd synth --out OUT --num N --seed S`` (a SynthPed split generated in the background)."""
        return self.submit_job("synth", out=out, num=num, seed=seed, threads=threads, name=name)

    def resume(self, job_id: str) -> Job:
        """Queue a cancelled or failed job of a resumable kind again, continuing its run folder (``--resume``)."""
        with self._locked():
            record = self._read(job_id)
            job = job_of(record, self.folder(job_id))
            job_kind = kinds.kind(job.kind)
            if not job_kind.resumable:
                raise JobError(f"job {job_id} is a {job.kind} job; only {'/'.join(kinds.resumable_names())} jobs "
                               "can be resumed")
            if job.state not in ("cancelled", "failed"):
                raise JobError(f"job {job_id} is {job.state}; only a cancelled or failed job can be resumed")
            problem = job_kind.resume_problem(Path(record["run"]))
            if problem:
                raise JobError(f"job {job_id} {problem}; submit it again instead")
            record["attempts"].append({"launch": record["launch"], "final": record["final"]})
            if "--resume" not in record["command"]:
                record["command"].append("--resume")
            record.update(launch=None, final=None, cancel_requested=False)
            self._write(record)
        self.advance()
        return self.get(job_id)

    # -- reading -----------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """The job now; one whose record cannot be read is ``corrupt``, with the reason as message."""
        _reap()
        try:
            record = self._read(job_id)
        except CorruptJobError as exc:
            return corrupt_job(self.folder(job_id), exc.reason)
        if record.get("launch") and not record.get("final"):
            job = job_of(record, self.folder(job_id))
            if job.finished:  # freeze it (under the lock, once)
                with self._locked():
                    record = self._read(job_id)
                    if not record.get("final"):
                        job = job_of(record, self.folder(job_id))
                        if job.finished:
                            record["final"] = final_of(job)
                            self._write(record)
        return job_of(record, self.folder(job_id))

    def list(self, *, advance: bool = True) -> list[Job]:
        if advance:
            self.advance()
        jobs = []
        for job_id in self.ids():
            try:
                jobs.append(self.get(job_id))
            except JobError:
                continue  # a folder being deleted right now
        return jobs

    def metrics(self, job_id: str) -> list[dict]:
        """The metrics a job's run folder holds (train/distill), else []."""
        try:
            record = self._read(job_id)
        except CorruptJobError:
            return []
        read_metrics = kinds.kind(record["kind"]).read_metrics
        return read_metrics(Path(record["run"])) if read_metrics else []

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        """The last ``lines`` lines of the job's output (and of the run's log.txt for train/distill)."""
        try:
            record = self._read(job_id)
        except CorruptJobError:
            record = None
        return log_tail(self.folder(job_id), record, lines)

    # -- changing ----------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """A queued job never starts; a running one gets SIGTERM (its run saves a last checkpoint)."""
        with self._locked():
            record = self._read(job_id)
            job = job_of(record, self.folder(job_id))
            if job.finished:
                raise JobError(f"job {job_id} has already {job.state}; nothing to cancel")
            record["cancel_requested"] = True
            record["cancel_time"] = time.time()
            self._write(record)
            launch = record.get("launch")
            if launch and job.state == "running":
                try:
                    os.killpg(launch["pgid"], signal.SIGTERM)
                except ProcessLookupError:
                    pass
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a job that is not running: its folder, with the run folder when it lies inside."""
        with self._locked():
            try:
                job = job_of(self._read(job_id), self.folder(job_id))
            except CorruptJobError:
                # no record to tell its process by: a supervisor that still beats is still there
                if heartbeat_age(self.folder(job_id)) < HEARTBEAT_DEAD_S:
                    raise JobError(f"job {job_id} has a damaged record but its supervisor is still alive; "
                                   "wait a minute for it to end") from None
            else:
                if job.state == "running":
                    raise JobError(f"job {job_id} is running; cancel it first")
            shutil.rmtree(self.folder(job_id))

    def advance(self) -> list[str]:
        """Start queued jobs, oldest first, while fewer than ``max_running`` run; returns the started ids."""
        _reap()
        if not self.root.is_dir():
            return []
        started = []
        with self._locked():
            records = []
            for job_id in self.ids():
                try:
                    records.append(self._read(job_id))
                except JobError:
                    continue
            running = sum(1 for r in records if job_of(r, self.folder(r["id"])).state == "running")
            for record in records:
                if running >= self.max_running:
                    break
                if record.get("launch") is None and not record.get("cancel_requested"):
                    self._launch(record)
                    running += 1
                    started.append(record["id"])
        return started

    def _launch(self, record: dict) -> None:
        folder = self.folder(record["id"])
        for stale in (EXIT_NAME, HEARTBEAT_NAME, COMMAND_NAME):
            (folder / stale).unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(record["threads"])}
        with open(folder / LOG_NAME, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", SUPERVISOR, str(folder)], cwd=record["cwd"],
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        _children[proc.pid] = proc
        record["launch"] = {**identify(proc.pid), "pgid": proc.pid, "started": time.time()}
        self._write(record)
