"""A job as the queue shows it (:class:`Job`), the record it is derived from (``job.json``), and
the settings and file helpers the queue, the state machine and the supervisor share."""
from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hkd.configfile import quote
from hkd.jobs.status import STATES

FINAL_STATES = ("succeeded", "failed", "cancelled")
HEARTBEAT_S = 5.0
# a supervisor whose heartbeat is older than this is dead even if its pid cannot be checked
HEARTBEAT_DEAD_S = 60.0
RECORD_NAME = "job.json"
LOG_NAME = "output.txt"
EXIT_NAME = "exit.json"
HEARTBEAT_NAME = "heartbeat"
COMMAND_NAME = "command.json"  # identity of the job's command ({pid, create_time, boot_id}), written by its supervisor

assert set(FINAL_STATES) | {"queued", "running"} == set(STATES)


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


def new_job_id() -> str:
    """Sortable by creation time: ``20261203-174501-3f9a``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


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
# job.json
# ---------------------------------------------------------------------------
_RECORD_TYPES = {"id": str, "kind": str, "command": list, "run": str, "created": (int, float)}
_OPTIONAL_TYPES = {"name": str, "cwd": str, "status_path": str, "threads": int, "summary": dict, "outputs": dict,
                   "launch": dict, "final": dict, "attempts": list, "cancel_requested": bool}
FINAL_KEYS = ("state", "step", "total", "message", "metrics", "outputs", "pid", "returncode", "started", "ended",
              "updated")


def record_problem(record: Any, job_id: str, kinds: tuple[str, ...]) -> str | None:
    """Why a parsed job.json cannot be the record of job ``job_id`` of one of ``kinds``, or None."""
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
    if record["kind"] not in kinds:
        return f"kind is {quote(record['kind'])}, not one of {', '.join(kinds)}"
    if not record["command"] or not all(isinstance(a, str) for a in record["command"]):
        return "command is not a list of strings"
    launch = record.get("launch")
    if launch is not None and not isinstance(launch.get("pid"), int):
        return f"launch.pid is {quote(launch.get('pid'))}"
    final = record.get("final")
    if final is not None:
        if final.get("state") not in FINAL_STATES or set(final) - {*FINAL_KEYS, "eta_s"}:
            return f"final is {quote(final)}"
        for key in ("step", "total"):
            if not isinstance(final.get(key, 0), int):
                return f"final.{key} is {quote(final[key])}"
    return None


def read_record(folder: Path, kinds: tuple[str, ...]) -> dict:
    """The checked ``job.json`` of the job in ``folder`` (:class:`JobError` if there is none,
    :class:`CorruptJobError` if it cannot be a job's record)."""
    job_id = folder.name
    try:
        text = (folder / RECORD_NAME).read_text()
    except FileNotFoundError:
        raise JobError(f"no job {job_id!r} in {folder.parent} (`hkd jobs list` shows the jobs)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptJobError(job_id, f"job.json unreadable ({exc})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptJobError(job_id, f"job.json is not valid JSON ({exc.msg} at character {exc.pos}; "
                                      "truncated?)") from None
    problem = record_problem(record, job_id, kinds)
    if problem:
        raise CorruptJobError(job_id, f"job.json {problem}")
    return record


# ---------------------------------------------------------------------------
# the other files of a job folder
# ---------------------------------------------------------------------------
def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def heartbeat_age(folder: Path) -> float:
    """Seconds since the supervisor of the job in ``folder`` last touched its heartbeat (inf: never)."""
    try:
        return time.time() - (folder / HEARTBEAT_NAME).stat().st_mtime
    except OSError:
        return float("inf")


def log_tail(folder: Path, record: dict | None, lines: int = 40) -> str:
    """The last ``lines`` lines of the job's output (and of the run's log.txt for train/distill)."""
    logs = [folder / LOG_NAME] + ([Path(record["run"]) / "log.txt"] if record else [])
    parts: list[tuple[Path, str]] = []
    for path in logs:
        if path.is_file() and path.resolve() not in [p for p, _ in parts]:
            parts.append((path.resolve(), _tail(path, lines)))
    return "\n".join(text for _, text in parts if text).rstrip()


def _tail(path: Path, lines: int) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    # tqdm/progress output uses carriage returns: keep each line's last state
    rows = [row.rsplit("\r", 1)[-1] for row in text.splitlines()]
    return "\n".join(rows[-lines:])


def last_line(text: str) -> str:
    rows = [row.strip() for row in text.splitlines() if row.strip()]
    return rows[-1][:300] if rows else ""
