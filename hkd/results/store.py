"""The result store: output files found by a digest of their inputs, and the job that makes them.

An entry is one result (the predictions of a checkpoint on N images of a dataset, a diagnosis, a
comparison …) at a path computed from its key. Beside it a ``.job`` marker names what is making
it: a job id of the queue (:mod:`hkd.jobs`), or, for a command that runs its own subprocesses
(``hkd compare --data``), the identity of that process as JSON (``{"pid", "create_time",
"boot_id"}``, :func:`hkd.jobs.process.identify`). Its state is read from the file and the marker,
never from the marker alone::

    ready     the file is there and nothing is still writing it
    queued    its job waits for a slot              running    its job or process is alive
    failed    its job failed, or ended without writing the file (``message`` says why)
    cancelled its job was cancelled                 missing    no file and no job

:meth:`Entry.claim` starts the work of a missing, failed or cancelled entry under the entry's file
lock (:mod:`filelock`): the state is read again inside the lock and the marker written atomically,
so two sessions or processes asking at once start one job.

The on-disk layout of each kind (relative to the store's root, by default ``HKD_CACHE_DIR``)::

    predictions/<checkpoint sha256>/<dataset slug>-<N|all>-<images digest>.json   (+ .job, .lock)
    diagnosis/<checkpoint sha256>/<dataset slug>-<N|all>-<images digest>-fppi<F>/diagnosis.json
        marker and lock: the folder's name with its last suffix replaced by .job / .lock
        (as written since the Evaluate page's diagnoses began: ``-fppi0.1`` → ``-fppi0.job``)
    compare/<sha256 of the key as JSON (sorted keys), 24 hex>.json   the Evaluate page's comparisons (+ .lock)
    onnx/<checkpoint stem>.<sha256, 16 hex>.<WxH|any>.onnx  checked ONNX exports (+ .lock)
    <any other kind>/<digest of the key>.json                                     (+ .job, .lock)

These are the layouts the app wrote before this store existed; files written then are read as they
are. Results a process computes for itself (a comparison, an export) have no job:
:meth:`Entry.computed` reads them, or computes and writes them once under the entry's lock.

The store stands on :mod:`hkd.jobs` and files only: no model, no dataset reader.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock

STARTABLE = ("missing", "failed", "cancelled")
PENDING = ("queued", "running")


def cache_dir() -> Path:
    """``HKD_CACHE_DIR``, else ``runs/cache`` under the working directory (the app's default)."""
    return Path(os.environ.get("HKD_CACHE_DIR") or "runs/cache").expanduser().resolve()


def digest(*parts: Any, length: int = 12) -> str:
    """A short SHA-256 of ``parts`` (anything JSON can write; other values by ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def slug(text: str) -> str:
    """``text`` made safe as a file name part, with a hash of the whole so two texts never share one."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:48] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it onto ``path``: readers
    never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _count(n: int | None) -> str:
    return str(n) if n else "all"


def predictions_relpath(sha256: str, dataset: str, n: int | None, images: str) -> Path:
    """``predictions/<sha256>/<slug(dataset)>-<N|all>-<images digest>.json``."""
    return Path("predictions") / sha256 / f"{slug(dataset)}-{_count(n)}-{images}.json"


def diagnosis_relpath(sha256: str, dataset: str, n: int | None, images: str, fppi: float) -> Path:
    """``diagnosis/<sha256>/<slug(dataset)>-<N|all>-<images digest>-fppi<F>/diagnosis.json``."""
    return Path("diagnosis") / sha256 / f"{slug(dataset)}-{_count(n)}-{images}-fppi{fppi:g}" / "diagnosis.json"


@dataclass(frozen=True)
class EntryState:
    """Where an entry stands: ``state`` (see the module), the job's progress and why it failed."""

    state: str
    path: Path
    job_id: str | None = None
    step: int = 0
    total: int = 0
    message: str = ""
    job_state: str | None = None  # the state of the queue job the marker names, as the queue says it
    owner: str = ""  # what the marker names, in words: "job <id>" or "process <pid>"

    @property
    def pending(self) -> bool:
        return self.state in PENDING

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class ResultStore:
    """The entries under ``root`` (default :func:`cache_dir`); ``queue`` gives the job queue that
    markers' job ids are looked up in (default ``JobQueue()``: ``HKD_JOBS_DIR``)."""

    def __init__(self, root: str | os.PathLike | None = None, *, queue: Callable[[], Any] | None = None) -> None:
        self.root = Path(root).expanduser().resolve() if root is not None else cache_dir()
        self._queue = queue

    def queue(self):
        if self._queue is not None:
            return self._queue()
        from hkd.jobs import JobQueue

        return JobQueue()

    def entry(self, kind: str, key_parts: dict[str, Any]) -> "Entry":
        """The entry of ``kind`` keyed by ``key_parts``.

        ``predictions``: ``sha256``, ``dataset`` (its key, e.g. ``path:/abs/folder``), ``n`` (None:
        every image), ``images`` (:func:`hkd.evaluation.workflow.images_digest` of the GT);
        ``diagnosis``: the same and ``fppi``; ``compare``: any JSON value; ``onnx``: ``stem``, ``sha256``
        and ``size`` ((W, H) or None). Any other kind: any JSON-able parts.
        """
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", kind):
            raise ValueError(f"result kind {kind!r}: expected a lower-case name such as 'predictions'")
        if kind == "predictions":
            p = key_parts
            return Entry(self, kind, self.root / predictions_relpath(p["sha256"], p["dataset"], p.get("n"),
                                                                     p["images"]))
        if kind == "diagnosis":
            p = key_parts
            path = self.root / diagnosis_relpath(p["sha256"], p["dataset"], p.get("n"), p["images"], p["fppi"])
            return Entry(self, kind, path, path.parent.with_suffix(".job"))
        if kind == "compare":  # key_parts: any JSON value, named as the Evaluate page named its comparisons
            name = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:24]
            return Entry(self, kind, self.root / "compare" / f"{name}.json")
        if kind == "onnx":
            p = key_parts
            shape = "any" if p.get("size") is None else f"{p['size'][0]}x{p['size'][1]}"
            return Entry(self, kind, self.root / "onnx" / f"{p['stem']}.{p['sha256'][:16]}.{shape}.onnx")
        return Entry(self, kind, self.root / kind / f"{digest(key_parts, length=24)}.json")

    def at(self, kind: str, path: str | os.PathLike, marker: str | os.PathLike | None = None) -> "Entry":
        """The entry whose result file is ``path`` (a path an entry gave before)."""
        return Entry(self, kind, Path(path), Path(marker) if marker else None)


class Entry:
    """One result: ``path`` (the file), ``folder`` (where it lies), ``marker`` (names its job)."""

    def __init__(self, store: ResultStore, kind: str, path: Path, marker: Path | None = None) -> None:
        self.store, self.kind, self.path = store, kind, Path(path)
        self.marker = Path(marker) if marker is not None else self.path.with_suffix(".job")

    def __repr__(self) -> str:
        return f"Entry({self.kind!r}, {str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.kind, self.path, self.marker) == (other.kind, other.path,
                                                                                    other.marker)

    def __hash__(self) -> int:
        return hash((self.kind, self.path, self.marker))

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.marker.with_suffix(".lock")

    @property
    def log_path(self) -> Path:
        """Where a process started by :meth:`claim` (not a queue job: that has its own) writes its output."""
        return self.marker.with_suffix(".log")

    # -- the marker ----------------------------------------------------------------
    def _marker_text(self) -> str | None:
        try:
            return self.marker.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None

    @property
    def job_id(self) -> str | None:
        """The queue job the marker names (None for none, or for a process of a command)."""
        text = self._marker_text()
        return text if text and not text.startswith("{") else None

    def job(self):
        """The queue job the marker names, or None; a marker whose job the queue no longer holds
        (the queue was cleared) is removed, so that the entry can be started afresh."""
        from hkd.jobs import JobError

        job_id = self.job_id
        if job_id is None:
            return None
        try:
            return self.store.queue().get(job_id)
        except (JobError, KeyError, OSError, ValueError):
            self.marker.unlink(missing_ok=True)
            return None

    def process(self) -> dict | None:
        """The process identity the marker names (a command's own subprocess), or None."""
        text = self._marker_text()
        if not text or not text.startswith("{"):
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def record(self, owner: str | dict) -> None:
        """Write the marker (atomically): a job id, or a process identity."""
        text = owner if isinstance(owner, str) else json.dumps(owner)
        write_atomic(self.marker, text)

    # -- the state -------------------------------------------------------------------
    def state(self) -> EntryState:
        """Ready, queued, running, failed, cancelled or missing (see the module)."""
        process = self.process()
        if process is not None:
            return self._process_state(process)
        job = self.job()
        # the commands write their file once, at the end: complete unless its job is still running
        if self.path.is_file() and (job is None or job.finished):
            return EntryState("ready", self.path, job.id if job else None, message=(job.message or "") if job else "",
                              job_state=job.state if job else None)
        if job is None:
            return EntryState("missing", self.path)
        if job.state == "succeeded":  # finished but nothing readable: say so, do not loop
            return EntryState("failed", self.path, job.id, job_state=job.state,
                              message=f"the {job.kind} job {job.id} succeeded but {self.path} is missing")
        return EntryState(job.state, self.path, job.id, int(job.step or 0), int(job.total or 0), job.message or "",
                          job.state, f"job {job.id}")

    def _process_state(self, process: dict) -> EntryState:
        from hkd.jobs.process import is_alive

        alive = is_alive(process)
        if alive:  # None (cannot tell) counts as ended: its file decides
            return EntryState("running", self.path, message=f"process {process.get('pid')} is writing it",
                              owner=f"process {process.get('pid')}")
        if self.path.is_file():
            return EntryState("ready", self.path)
        tail = self.log_tail()
        return EntryState("failed", self.path, message=(f"process {process.get('pid')} ended without writing "
                                                        f"{self.path}" + (f": {tail}" if tail else "")))

    def log_tail(self, lines: int = 6) -> str:
        """The last lines of :attr:`log_path` (a process started by a command), or ""."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    # -- starting ------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The entry's file lock (one process at a time starts or clears its work)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.lock_path)):
            yield

    def claim(self, start: Callable[[], str | dict]) -> EntryState:
        """Start the work of a missing, failed or cancelled entry, once: under the entry's lock the
        state is read again, and only if it may still start is ``start()`` called; what it returns
        (a queue job id, or a process identity) is written to the marker. Returns the state after."""
        current = self.state()
        if current.state not in STARTABLE:
            return current
        with self.locked():
            current = self.state()
            if current.state in STARTABLE:
                self.record(start())
        return self.state()

    # -- results a process computes for itself ---------------------------------------------
    def read_json(self, valid: Callable[[Any], bool] | None = None) -> Any | None:
        """The JSON in :attr:`path`, or None when it is missing, unreadable, or not ``valid``."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return data if valid is None or valid(data) else None

    def computed(self, compute: Callable[[], Any], *,
                 valid: Callable[[Any], bool] | None = None) -> tuple[Any, str | None]:
        """``(data, problem)``: the entry's JSON when it is there (and ``valid``), else ``compute()``
        written to :attr:`path` atomically — under the entry's lock, so two processes asking at once
        compute it once. The file only spares later work: when it cannot be written (a full disk, a
        read-only cache) the data still comes back, with ``problem`` saying why it was not kept."""
        data = self.read_json(valid)
        if data is not None:
            return data, None
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.lock_path))
            lock.acquire()
        except OSError as exc:
            return compute(), f"{self.path} was not kept ({self.lock_path.parent}: {exc.strerror or exc})"
        try:
            data = self.read_json(valid)
            if data is not None:
                return data, None
            data = compute()
            try:
                write_atomic(self.path, json.dumps(data))
            except OSError as exc:
                return data, f"{self.path} was not kept ({self.path.parent}: {exc.strerror or exc})"
            return data, None
        finally:
            lock.release()
