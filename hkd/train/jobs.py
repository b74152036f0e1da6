"""Background jobs: a queue of subprocesses, each running the CLI a user would run.

A job is ``python -m hkd distill|train|predict|synth …`` with absolute paths,
started in its own session (process group) under a small supervisor process
(``python -m hkd.train.jobs JOB_DIR``) that records how it exited. The queue is
plain files, so the app, ``hkd jobs`` and an app restarted later all see the
same jobs::

    HKD_JOBS_DIR/                 (default runs/jobs)
        .lock                     flock: one process changes the queue at a time
        <id>/job.json             what was asked, and when/how it was launched (atomic)
        <id>/output.txt           the job's stdout and stderr
        <id>/exit.json            written by the supervisor when the command exits
        <id>/heartbeat            touched by the supervisor every few seconds
        <id>/command.json         pid of the command the supervisor started (its training, …)
        <id>/run/                 the run folder of a train/distill job submitted without --out
        <id>/status.json          progress of predict/synth jobs (train/distill: RUN/status.json)

A job's state (``queued``, ``running``, ``succeeded``, ``failed``,
``cancelled``) is derived, never trusted from a file alone: a launched job is
``running`` only while its supervisor or the command it started is alive (same
pid *and* start time, on the same boot), so a job killed with SIGKILL, by the
OOM killer or by a reboot shows ``failed`` with its log tail instead of
``running`` forever. The command dies with its supervisor (Linux's parent-death
signal: SIGTERM, so a run saves its last checkpoint and says why it stopped);
until it has, the job stays ``running`` and cancellable and holds its slot.
Once a job has ended its final state, the run's own, is frozen into ``job.json``.
A job whose ``job.json`` or ended status cannot be read is ``corrupt`` (the
message says why): it never starts, blocks nothing, and ``delete`` removes it.

At most ``HKD_MAX_JOBS`` (default 1) run at once; the rest wait in order and
start as slots free. There is no daemon: :meth:`JobQueue.advance` starts what
may start, and is called by every queue operation, by the app's pages and by
each supervisor when its job ends.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from hkd.configfile import quote
from hkd.models.meta import atomic_write
from hkd.train.run_folder import STATES, RunFolder, RunFolderError, read_status_checked

KINDS = ("train", "distill", "predict", "synth", "diagnose")
FINAL_STATES = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 5.0
# a supervisor whose heartbeat is older than this is dead even if its pid cannot be checked
HEARTBEAT_DEAD_S = 60.0
LOG_NAME = "output.txt"
COMMAND_NAME = "command.json"  # {pid, start_ticks, boot_id} of the job's command, written by its supervisor


class JobError(ValueError):
    """A job cannot be submitted, found or changed; the message says why."""


class CorruptJobError(JobError):
    """A job whose record (job.json) cannot be read; listed as ``corrupt`` with the reason."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id}: {reason}")
        self.job_id, self.reason = job_id, reason


def jobs_dir() -> Path:
    """``HKD_JOBS_DIR``, else ``runs/jobs`` under the working directory."""
    return Path(os.environ.get("HKD_JOBS_DIR") or "runs/jobs").expanduser().resolve()


def max_jobs() -> int:
    raw = os.environ.get("HKD_MAX_JOBS") or "1"
    try:
        value = int(raw)
    except ValueError:
        raise JobError(f"HKD_MAX_JOBS={raw!r}: expected a whole number of jobs ≥ 1") from None
    if value < 1:
        raise JobError(f"HKD_MAX_JOBS={raw!r}: expected a whole number of jobs ≥ 1")
    return value


def default_threads() -> int:
    """All cores but one (at least one), so the app stays responsive while a job runs."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass
class Job:
    """One job as the queue sees it now."""

    id: str
    kind: str
    name: str
    state: str
    command: list[str]
    run: str  # the run folder (train/distill) or the job folder
    created: float
    updated: float
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""
    threads: int = 1
    summary: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)  # e.g. {"checkpoint": …} or {"dets": …}
    metrics: dict | None = None  # final evaluation of a train/distill run
    pid: int | None = None
    returncode: int | None = None
    started: float | None = None
    ended: float | None = None
    folder: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total) if self.total else (1.0 if self.state == "succeeded" else 0.0)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_iso"] = _iso(self.created)
        out["updated_iso"] = _iso(self.updated)
        return out


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts))


# ---------------------------------------------------------------------------
# process identity: pid + start time + boot
# ---------------------------------------------------------------------------
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_start(pid: int) -> tuple[int | None, str | None]:
    """(start time in clock ticks since boot, process state letter) from /proc, or (None, None)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[19]), fields[0]


def process_alive(pid: int | None, start_ticks: int | None, boot_id: str | None) -> bool | None:
    """True/False when it can be told whether the recorded process still runs; None when it cannot."""
    if not pid:
        return False
    if boot_id is not None and _boot_id() is not None and boot_id != _boot_id():
        return False  # the machine restarted since
    if Path("/proc").is_dir() and start_ticks is not None:
        ticks, state = _proc_start(pid)
        return ticks == start_ticks and state not in ("Z", "X")  # a zombie has exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return None  # a process with that pid exists, but it may be another one


# Popen objects of the supervisors this process launched, polled to reap them (no zombies)
_children: dict[int, subprocess.Popen] = {}


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


# ---------------------------------------------------------------------------
# the queue
# ---------------------------------------------------------------------------
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

    def _record_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "job.json"

    def _read(self, job_id: str) -> dict:
        path = self._record_path(job_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise JobError(f"no job {job_id!r} in {self.root} (`hkd jobs list` shows the jobs)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptJobError(job_id, f"job.json unreadable ({exc})") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptJobError(job_id, f"job.json is not valid JSON ({exc.msg} at character {exc.pos}; "
                                          "truncated?)") from None
        problem = _record_problem(record, job_id)
        if problem:
            raise CorruptJobError(job_id, f"job.json {problem}")
        return record

    def _write(self, record: dict) -> None:
        text = json.dumps(record, indent=2)
        atomic_write(self._record_path(record["id"]), lambda tmp: Path(tmp).write_text(text))

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
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def ids(self) -> list[str]:
        """Job ids, oldest first (ids start with their creation time)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "job.json").is_file())

    # -- submitting --------------------------------------------------------
    def submit(self, kind: str, command_args: list[str], *, run: str | os.PathLike | None = None,
               name: str | None = None, threads: int | None = None, summary: dict | None = None,
               outputs: dict | None = None, status_path: str | os.PathLike | None = None,
               job_id: str | None = None) -> Job:
        """Queue ``python -m hkd <kind> <command_args…>`` (already validated by the caller) and start it
        if a slot is free. ``run`` is the run folder whose status.json reports progress (train/distill);
        other kinds report through ``status_path`` (passed to the command as ``--status``)."""
        if kind not in KINDS:
            raise JobError(f"unknown job kind {kind!r}; one of {', '.join(KINDS)}")
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
            if record["kind"] in ("train", "distill") and Path(record["run"]) == run:
                job = self._job(record)
                if job.active:
                    raise JobError(f"{run} is the run folder of job {other} ({job.state}); wait for it, cancel "
                                   "it, or choose another --out")

    def submit_run(self, kind: str, config: str | os.PathLike, *, out: str | os.PathLike | None = None,
                   overrides: list[str] | None = None, resume: bool = False, name: str | None = None,
                   threads: int | None = None) -> Job:
        """Queue ``hkd train|distill --config CONFIG --out OUT``, checked first (:func:`check_run`).

        Without ``out`` the run folder is ``<job folder>/run``. ``threads`` (default: all cores but
        one) goes to the run as ``--set train.threads=N``.
        """
        if kind not in ("train", "distill"):
            raise JobError(f"a run job is `train` or `distill`, not {kind!r}")
        job_id = new_job_id()
        out_path = Path(out).expanduser().resolve() if out else self.folder(job_id) / "run"
        threads = int(threads or default_threads())
        if threads < 1:
            raise JobError(f"threads must be ≥ 1, got {threads}")
        sets = [*(overrides or []), f"train.threads={threads}"]
        cfg = check_run(kind, config, sets, out_path, resume=resume)
        args = ["--config", str(Path(config).expanduser().resolve()), "--out", str(out_path), "--no-progress"]
        for item in sets:
            args += ["--set", item]
        if resume:
            args.append("--resume")
        return self.submit(kind, args, run=out_path, name=name, threads=threads, summary=run_summary(cfg),
                           job_id=job_id)

    def submit_predict(self, *, checkpoint: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                       gt: str | os.PathLike | None = None, preset: str | None = None, limit: int | None = None,
                       threads: int | None = None, name: str | None = None) -> Job:
        """Queue ``hkd predict`` (COCO results JSON at ``out``), checked first: the checkpoint's header,
        the images folder, the GT file."""
        from hkd.models.meta import CheckpointError, foreign_meta, read_meta

        checkpoint, images, out = (Path(p).expanduser().resolve() for p in (checkpoint, images, out))
        try:
            meta = foreign_meta(checkpoint, preset) if preset else read_meta(checkpoint)
        except CheckpointError as exc:
            raise JobError(str(exc)) from None
        if not meta.pedestrian_class:
            # hkd predict keeps label 1, the pedestrian of every HKD preset
            raise JobError(f"{checkpoint}: its class 1 is {meta.classes[1] if len(meta.classes) > 1 else 'missing'} "
                           f"(classes: {', '.join(meta.classes)}), not a pedestrian")
        if not images.is_dir():
            raise JobError(f"images {images}: not a folder")
        inputs = {checkpoint: "checkpoint", images: "images folder"}
        if gt is not None:
            inputs[Path(gt).expanduser().resolve()] = "GT file"
        if out in inputs:
            raise JobError(f"out {out} is the {inputs[out]} of this job; writing it would destroy that input")
        if gt is not None and not Path(gt).is_file():
            raise JobError(f"GT {gt}: no such file")
        if limit is not None and limit <= 0:
            raise JobError(f"limit must be a positive number of images, got {limit}")
        threads = int(threads or default_threads())
        job_id = new_job_id()
        status = self.folder(job_id) / "status.json"
        args = ["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--threads", str(threads),
                "--no-progress", "--status", str(status)]
        if gt is not None:
            args += ["--gt", str(Path(gt).expanduser().resolve())]
        if preset:
            args += ["--preset", preset]
        if limit:
            args += ["--limit", str(limit)]
        summary = {"checkpoint": checkpoint.name, "images": str(images), "limit": limit}
        return self.submit("predict", args, name=name or f"predict {checkpoint.stem}", threads=threads,
                           summary=summary, outputs={"dets": str(out)}, status_path=status, job_id=job_id)

    def submit_diagnose(self, *, checkpoint: str | os.PathLike, images: str | os.PathLike, gt: str | os.PathLike,
                        out: str | os.PathLike, name_in_report: str = "model", limit: int | None = None,
                        fppi: float = 0.1, setup: str = "Analysis", threads: int | None = None,
                        name: str | None = None) -> Job:
        """Queue ``hkd diagnose`` (``diagnosis.json`` and ``cases.csv`` in the folder ``out``), checked first:
        the checkpoint's header, the images folder, the GT file."""
        from hkd.models.meta import CheckpointError, read_meta

        checkpoint, images, gt, out = (Path(p).expanduser().resolve() for p in (checkpoint, images, gt, out))
        try:
            meta = read_meta(checkpoint)
        except CheckpointError as exc:
            raise JobError(str(exc)) from None
        if not meta.pedestrian_class:
            raise JobError(f"{checkpoint}: its classes are {', '.join(meta.classes)}; class 1 is not a pedestrian")
        if not images.is_dir():
            raise JobError(f"images {images}: not a folder")
        if not gt.is_file():
            raise JobError(f"GT {gt}: no such file")
        if out in (checkpoint, images, gt):
            raise JobError(f"out {out} is an input of this job; writing it would destroy that input")
        if limit is not None and limit <= 0:
            raise JobError(f"limit must be a positive number of images, got {limit}")
        threads = int(threads or default_threads())
        job_id = new_job_id()
        status = self.folder(job_id) / "status.json"
        args = ["--checkpoint", f"{name_in_report}={checkpoint}", "--images", str(images), "--gt", str(gt),
                "--out", str(out), "--fppi", str(fppi), "--setup", setup, "--threads", str(threads),
                "--no-progress", "--status", str(status)]
        if limit:
            args += ["--limit", str(limit)]
        summary = {"checkpoint": checkpoint.name, "images": str(images), "limit": limit, "fppi": fppi}
        return self.submit("diagnose", args, name=name or f"diagnose {checkpoint.stem}", threads=threads,
                           summary=summary, outputs={"diagnosis": str(out / "diagnosis.json")}, status_path=status,
                           job_id=job_id)

    def submit_synth(self, *, out: str | os.PathLike, num: int, seed: int, threads: int | None = None,
                     name: str | None = None) -> Job:
        """Queue ``hkd synth --out OUT --num N --seed S`` (a SynthPed split generated in the background)."""
        from hkd.data.synth.dataset import MAX_IMAGES

        out = Path(out).expanduser().resolve()
        if not 0 < num <= MAX_IMAGES:
            raise JobError(f"num must be a number of images from 1 to {MAX_IMAGES:,}, got {str(num)[:40]}")
        if out.exists() and any(out.iterdir()):
            raise JobError(f"{out} is not empty; SynthPed is generated only into a new folder")
        workers = int(threads or default_threads())
        job_id = new_job_id()
        status = self.folder(job_id) / "status.json"
        args = ["--out", str(out), "--num", str(num), "--seed", str(seed), "--workers", str(workers),
                "--no-progress", "--status", str(status)]
        return self.submit("synth", args, name=name or f"SynthPed {out.name}", threads=workers,
                           summary={"out": str(out), "num": num, "seed": seed}, outputs={"dataset": str(out)},
                           status_path=status, job_id=job_id)

    def resume(self, job_id: str) -> Job:
        """Queue a cancelled or failed train/distill job again, continuing its run folder (``--resume``)."""
        with self._locked():
            record = self._read(job_id)
            job = self._job(record)
            if job.kind not in ("train", "distill"):
                raise JobError(f"job {job_id} is a {job.kind} job; only train/distill jobs can be resumed")
            if job.state not in ("cancelled", "failed"):
                raise JobError(f"job {job_id} is {job.state}; only a cancelled or failed job can be resumed")
            run = RunFolder(record["run"])
            if not run.checkpoint("last").is_file() or not run.state_path.is_file():
                raise JobError(f"job {job_id} stopped before its first checkpoint ({run.root} holds none); "
                               "submit it again instead")
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
            return self._corrupt(job_id, exc.reason)
        if record.get("launch") and not record.get("final"):
            job = self._job(record)
            if job.finished:  # freeze it (under the lock, once)
                with self._locked():
                    record = self._read(job_id)
                    if not record.get("final"):
                        job = self._job(record)
                        if job.finished:
                            record["final"] = _final_of(job)
                            self._write(record)
        return self._job(record)

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

    def _corrupt(self, job_id: str, reason: str, record: dict | None = None) -> Job:
        """A job shown as ``corrupt``: what its record still says (if it could be read), and why."""
        folder = self.folder(job_id)
        try:
            when = (folder / "job.json").stat().st_mtime
        except OSError:
            when = 0.0
        record = record or {}
        return Job(id=job_id, kind=record.get("kind", "?"), name=record.get("name") or job_id, state="corrupt",
                   command=record.get("command", []), run=record.get("run", str(folder)),
                   created=record.get("created", when), updated=when, summary=record.get("summary") or {},
                   message=f"{reason}; `hkd jobs delete {job_id} --yes` removes it", folder=str(folder))

    def metrics(self, job_id: str) -> list[dict]:
        try:
            record = self._read(job_id)
        except CorruptJobError:
            return []
        if record["kind"] not in ("train", "distill"):
            return []
        return RunFolder(record["run"]).read_metrics()

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        """The last ``lines`` lines of the job's output (and of the run's log.txt for train/distill)."""
        try:
            logs = [self.folder(job_id) / LOG_NAME, Path(self._read(job_id)["run"]) / "log.txt"]
        except CorruptJobError:
            logs = [self.folder(job_id) / LOG_NAME]
        parts = []
        for path in logs:
            if path.is_file() and path.resolve() not in [p for p, _ in parts]:
                parts.append((path.resolve(), _tail(path, lines)))
        return "\n".join(text for _, text in parts if text).rstrip()

    # -- changing ----------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """A queued job never starts; a running one gets SIGTERM (its run saves a last checkpoint)."""
        with self._locked():
            record = self._read(job_id)
            job = self._job(record)
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
                job = self._job(self._read(job_id))
            except CorruptJobError:
                # no record to tell its process by: a supervisor that still beats is still there
                if _heartbeat_age(self.folder(job_id)) < HEARTBEAT_DEAD_S:
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
            running = sum(1 for r in records if self._job(r).state == "running")
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
        for stale in ("exit.json", "heartbeat", COMMAND_NAME):
            (folder / stale).unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(record["threads"])}
        with open(folder / LOG_NAME, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "hkd.train.jobs", str(folder)], cwd=record["cwd"],
                                    env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        _children[proc.pid] = proc
        ticks, _ = _proc_start(proc.pid)
        record["launch"] = {"pid": proc.pid, "pgid": proc.pid, "start_ticks": ticks, "boot_id": _boot_id(),
                            "started": time.time()}
        self._write(record)

    # -- state -------------------------------------------------------------
    def _job(self, record: dict) -> Job:
        folder = self.folder(record["id"])
        base = dict(id=record["id"], kind=record["kind"], name=record.get("name") or record["id"],
                    command=record["command"], run=record["run"], created=record["created"],
                    threads=record.get("threads", 1), summary=record.get("summary") or {},
                    outputs=dict(record.get("outputs") or {}), folder=str(folder))
        final = record.get("final")
        if final:
            return Job(**{**base, **final})
        launch = record.get("launch")
        if launch is None:
            state = "cancelled" if record.get("cancel_requested") else "queued"
            message = "cancelled before it started" if state == "cancelled" else "waiting for a free slot"
            return Job(**base, updated=record.get("cancel_time", record["created"]), state=state, message=message)
        status, problem = read_status_checked(record.get("status_path") or Path(record["run"]) / "status.json")
        exit_info = _read_json(folder / "exit.json")
        alive = process_alive(launch.get("pid"), launch.get("start_ticks"), launch.get("boot_id"))
        if alive is None:  # cannot tell from the pid: trust a fresh heartbeat
            alive = _heartbeat_age(folder) < HEARTBEAT_DEAD_S
        alive = alive and exit_info is None  # after exit.json the supervisor is only finishing up
        if not alive and exit_info is None:
            # the supervisor died without a word; its command runs on until the parent-death signal
            # has stopped it (a run saves its checkpoint first): it is still this job's, and running
            command = _read_json(folder / COMMAND_NAME) or {}
            alive = process_alive(command.get("pid"), command.get("start_ticks"), command.get("boot_id")) is True
        if problem and not alive:
            return self._corrupt(record["id"], problem, record)
        if problem:
            status = {"message": f"progress unreadable: {problem}"}
        fields = dict(step=int(status.get("step") or 0), total=int(status.get("total") or 0),
                      eta_s=status.get("eta_s"), metrics=status.get("metrics"), pid=launch.get("pid"),
                      started=launch.get("started"),
                      updated=max(status.get("updated") or 0, launch.get("started") or 0))
        outputs = base.pop("outputs")
        outputs.update(status.get("outputs") or {})
        if status.get("checkpoint"):
            outputs["checkpoint"] = status["checkpoint"]
        if alive:
            message = status.get("message") or ("cancelling…" if record.get("cancel_requested") else "")
            return Job(**base, **fields, outputs=outputs, state="running", message=message)
        returncode = exit_info.get("returncode") if exit_info else None
        ended = (exit_info or {}).get("ended") or fields["updated"]
        fields["updated"] = ended
        state = status.get("state")
        if state in FINAL_STATES:
            message = status.get("message") or ""
            if state == "failed" and not message:
                message = _last_line(self.log_tail(record["id"], 5))
        elif record.get("cancel_requested"):
            state, message = "cancelled", "cancelled by the user"
        else:
            state = "failed"
            if exit_info is None:
                why = ("its process is gone without a trace: killed (SIGKILL), out of memory, "
                       "or the machine restarted")
            elif exit_info.get("signal"):
                why = f"its process was killed by signal {exit_info['signal']} ({exit_info.get('signal_name')})"
            else:
                why = f"its process exited with code {returncode}"
            last = _last_line(self.log_tail(record["id"], 5))
            message = f"ended without writing a final state: {why}" + (f" — last output: {last}" if last else "")
        return Job(**base, **fields, outputs=outputs, state=state, message=message, returncode=returncode, ended=ended)


def _final_of(job: Job) -> dict:
    keep = ("state", "step", "total", "message", "metrics", "outputs", "pid", "returncode", "started", "ended",
            "updated")
    out = {k: getattr(job, k) for k in keep}
    out["eta_s"] = 0 if job.state == "succeeded" else None
    return out


def new_job_id() -> str:
    """Sortable by creation time: ``20261203-174501-3f9a``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


_RECORD_TYPES = {"id": str, "kind": str, "command": list, "run": str, "created": (int, float)}
_OPTIONAL_TYPES = {"name": str, "cwd": str, "status_path": str, "threads": int, "summary": dict, "outputs": dict,
                   "launch": dict, "final": dict, "attempts": list, "cancel_requested": bool}
_FINAL_KEYS = {"state", "step", "total", "message", "metrics", "outputs", "pid", "returncode", "started", "ended",
               "updated", "eta_s"}


def _record_problem(record: Any, job_id: str) -> str | None:
    """Why a parsed job.json cannot be a job record, or None."""
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not an object"
    for key, kind in _RECORD_TYPES.items():
        if key not in record:
            return f"has no {key!r}"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"{key} is {quote(record[key])}"
    for key, kind in _OPTIONAL_TYPES.items():
        if record.get(key) is not None and not isinstance(record[key], kind):
            return f"{key} is {quote(record[key])}"
    if record["id"] != job_id:
        return f"names job {quote(record['id'])}, not {job_id}"
    if record["kind"] not in KINDS:
        return f"kind is {quote(record['kind'])}, not one of {', '.join(KINDS)}"
    if not record["command"] or not all(isinstance(a, str) for a in record["command"]):
        return "command is not a list of strings"
    launch = record.get("launch")
    if launch is not None and not isinstance(launch.get("pid"), int):
        return f"launch.pid is {quote(launch.get('pid'))}"
    final = record.get("final")
    if final is not None:
        if final.get("state") not in FINAL_STATES or set(final) - _FINAL_KEYS:
            return f"final is {quote(final)}"
        for key in ("step", "total"):
            if not isinstance(final.get(key, 0), int):
                return f"final.{key} is {quote(final[key])}"
    return None


def _heartbeat_age(folder: Path) -> float:
    try:
        return time.time() - (folder / "heartbeat").stat().st_mtime
    except OSError:
        return float("inf")


def _tail(path: Path, lines: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    # tqdm/progress output uses carriage returns: keep each line's last state
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
    return "\n".join(rows[-lines:])


def _last_line(text: str) -> str:
    rows = [row.strip() for row in text.splitlines() if row.strip()]
    return rows[-1][:300] if rows else ""


assert set(FINAL_STATES) | {"queued", "running"} == set(STATES)


# ---------------------------------------------------------------------------
# checks before a launch: refuse what would die at step 0
# ---------------------------------------------------------------------------
def check_run(kind: str, config: str | os.PathLike, overrides: list[str], out: str | os.PathLike, *,
              resume: bool = False):
    """The validated run config of a train/distill job, or :class:`JobError` naming the problem:
    an invalid config, a teacher/student pair that cannot be distilled, a missing dataset, an
    ``out`` folder that already holds a run (without ``resume``) or has nothing to resume."""
    from hkd.models.meta import CheckpointError, read_meta
    from hkd.models.presets import get_preset
    from hkd.train.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        raise JobError(f"config {config}: {exc}") from None
    if kind == "distill" and not cfg.distills:
        raise JobError(f"config {config}: a distill job needs a `teacher:` checkpoint (or an `online:` teacher)")
    if kind == "train" and cfg.distills:
        raise JobError(f"config {config}: names a teacher; submit it as a distill job")
    student = get_preset(cfg.model.preset)
    if cfg.model.init:
        try:
            init = read_meta(cfg.model.init)
        except CheckpointError as exc:
            raise JobError(f"model.init: {exc}") from None
        if init.preset != cfg.model.preset:
            raise JobError(f"model.init {cfg.model.init} holds {init.preset}, not {cfg.model.preset}")
    if cfg.model.init_backbone:
        try:
            read_meta(cfg.model.init_backbone)
        except CheckpointError as exc:
            raise JobError(f"model.init_backbone: {exc}") from None
    if cfg.distills:
        if cfg.teacher:
            try:
                teacher = read_meta(cfg.teacher)
            except CheckpointError as exc:
                raise JobError(f"teacher: {exc}") from None
            name, teacher_preset, classes = Path(cfg.teacher).name, teacher.preset, list(teacher.classes)
        else:
            name = teacher_preset = cfg.online.teacher_preset
            classes = list(get_preset(teacher_preset).classes)
        if classes != list(student.classes):
            raise JobError(f"teacher {name} predicts {classes}, the student "
                           f"({cfg.model.preset}) {list(student.classes)}: a pair must share its classes")
        from hkd.distill.config import ConfigError as DistillConfigError
        from hkd.distill.config import load_config as load_distill

        teacher_spec = get_preset(teacher_preset).hierarchy
        try:
            distill = load_distill(cfg.distill or {}, teacher_spec, student.hierarchy)
        except (DistillConfigError, OSError) as exc:
            raise JobError(f"distill: {exc}") from None
        if distill.aux is not None:
            _check_aux(distill.aux, teacher_spec, online=cfg.online is not None)
    for what, path in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if path:
            _check_dataset(what, path)
    try:
        RunFolder(out).check_not_written()
        RunFolder(out).check_new(resume=resume)
    except RunFolderError as exc:
        raise JobError(str(exc)) from None
    return cfg


def _check_aux(aux, teacher_spec, *, online: bool) -> None:
    """What can be told of ``distill.aux`` from the heads' header, before a process starts: the
    file, its levels and their channels (the probe-feature check needs the teacher's weights and
    runs when the distiller is built)."""
    from hkd.distill.aux import read_aux_meta
    from hkd.models.meta import CheckpointError

    if online:
        raise JobError("distill.aux: the teacher's aux heads are fitted on a frozen teacher checkpoint "
                       "(`hkd train-aux`); an online teacher changes at every step — drop distill.aux or use `teacher:`")
    try:
        meta = read_aux_meta(aux.checkpoint)
    except CheckpointError as exc:
        raise JobError(f"distill.aux.checkpoint: {exc}") from None
    levels = list(aux.levels) if aux.levels is not None else list(meta.levels)
    for name in levels:
        if name not in meta.levels:
            raise JobError(f"distill.aux.levels: {name!r} has no teacher head in {aux.checkpoint}; "
                           f"it has: {', '.join(meta.levels)}")
        channels = teacher_spec[name].channels if name in teacher_spec else None
        if channels != meta.levels[name]:
            raise JobError(f"distill.aux.checkpoint {aux.checkpoint}: made for another teacher "
                           f"({meta.teacher.get('preset')}, {meta.teacher.get('file')}): its {name} head takes "
                           f"{meta.levels[name]} channels, this teacher's has {channels}; fit heads for this "
                           "teacher with `hkd train-aux`")


def _check_dataset(what: str, path: str) -> None:
    from hkd.data.datasets import DatasetError, open_dataset

    try:
        dataset = open_dataset(path)
    except (DatasetError, FileNotFoundError, ValueError, OSError) as exc:
        raise JobError(f"{what}: {exc}") from None
    if len(dataset) == 0:
        raise JobError(f"{what}: {path} holds no images")


def run_summary(cfg) -> dict:
    """A few words about a run config for the jobs table."""
    levels = {}
    distill = cfg.distill
    if isinstance(distill, str):
        from hkd.configfile import ConfigFileError, read_config_file

        with contextlib.suppress(ConfigFileError, AttributeError):
            distill = (read_config_file(distill) or {}).get("distill")
    if isinstance(distill, dict):
        distill = distill.get("distill", distill)
        for level, terms in (distill.get("levels") or {}).items():
            terms = terms if isinstance(terms, list) else [terms]
            levels[level] = ", ".join(t if isinstance(t, str) else f"{t.get('loss')}×{t.get('weight', 1.0):g}"
                                      for t in terms)
    teacher = Path(cfg.teacher).name if cfg.teacher else None
    if cfg.online is not None:
        teacher = f"online: {cfg.online.teacher_preset} (KD from step {cfg.online.kd_after})"
    return {"preset": cfg.model.preset, "teacher": teacher,
            "init": Path(cfg.model.init).name if cfg.model.init else None, "steps": cfg.train.steps,
            "lr": cfg.train.lr, "train": cfg.data.train, "levels": levels}


# ---------------------------------------------------------------------------
# the supervisor: python -m hkd.train.jobs JOB_DIR
# ---------------------------------------------------------------------------
def _die_with_parent(parent: int):
    """A ``preexec_fn`` for the job's command: on Linux, the kernel sends it SIGTERM when the
    supervisor dies (``PR_SET_PDEATHSIG``), so a SIGKILLed supervisor leaves no unmanaged
    training; a run saves its last checkpoint and records why it stopped. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the supervisor died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def supervise(folder: Path) -> int:
    """Run the job's command, forward SIGTERM to it, record its exit, then start the next queued job."""
    record = json.loads((folder / "job.json").read_text())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            (folder / "heartbeat").touch()

    (folder / "heartbeat").touch()
    print(f"[hkd jobs] {record['id']}: {shlex.join(record['command'])}", flush=True)
    # started before any thread: a preexec_fn is only safe in a single-threaded parent
    child = subprocess.Popen(record["command"], cwd=record["cwd"], stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent(os.getpid()))
    # the queue keeps the job running (and cancellable) while this process lives, even without its supervisor
    ticks, _ = _proc_start(child.pid)
    command_record = json.dumps({"pid": child.pid, "start_ticks": ticks, "boot_id": _boot_id()})
    atomic_write(folder / COMMAND_NAME, lambda tmp: Path(tmp).write_text(command_record))
    threading.Thread(target=beat, daemon=True).start()

    def forward(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    stop.set()
    info: dict[str, Any] = {"returncode": code, "ended": time.time()}
    if code < 0:
        info["signal"] = -code
        info["signal_name"] = signal.Signals(-code).name
    atomic_write(folder / "exit.json", lambda tmp: Path(tmp).write_text(json.dumps(info)))
    print(f"[hkd jobs] {record['id']}: exited with code {code}", flush=True)
    with contextlib.suppress(Exception):  # the next queued job, if any; never fail the finished one for it
        JobQueue(folder.parent).advance()
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]).resolve()))
