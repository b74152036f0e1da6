"""A run folder: everything one training/distillation run writes.

    RUN/status.json       {"state", "step", "total", "eta_s", "message", "pid", ...} (atomic)
    RUN/metrics.jsonl     one JSON object per log step; eval lines carry "eval"
    RUN/log.txt           human-readable log
    RUN/config.json       the resolved run config
    RUN/checkpoints/last.safetensors, RUN/checkpoints/final.safetensors
    RUN/train_state.pt    optimizer/scheduler state for --resume (tensors only)
    RUN/.lock             flock held by the one process that writes the run (:meth:`RunFolder.writer`)
    RUN/.writer.json      {"pid", "host", "started"} of that process, to name it to a second writer

The app's background jobs read the same files, so their shapes are public.
Every file but ``metrics.jsonl`` and ``log.txt`` (appended) is replaced
atomically: written to a temporary file beside it, then renamed.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from hkd.jobs.status import STATES, read_json_object, read_status, read_status_checked, write_status
from hkd.models.meta import atomic_write

__all__ = ["STATES", "RunFolder", "RunFolderError", "read_json_object", "read_status", "read_status_checked",
           "write_status"]
LOCK_NAME = ".lock"
WRITER_NAME = ".writer.json"


class RunFolderError(ValueError):
    """A run folder cannot be written by this process; the message says why and what to do."""


class RunFolder:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # paths
    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def log_path(self) -> Path:
        return self.root / "log.txt"

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def state_path(self) -> Path:
        return self.root / "train_state.pt"

    def checkpoint(self, name: str = "last") -> Path:
        return self.root / "checkpoints" / f"{name}.safetensors"

    def create(self) -> "RunFolder":
        (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
        return self

    @property
    def can_resume(self) -> bool:
        """Whether the folder holds what ``--resume`` continues from: the last checkpoint and the training state."""
        return self.checkpoint("last").is_file() and self.state_path.is_file()

    def check_writable_folder(self) -> None:
        """Refuse a ``--out`` that is a file, or lies under one, before anything is written."""
        for path in (self.root, *self.root.parents):
            if path.exists():
                if not path.is_dir():
                    raise RunFolderError(f"{self.root}: {'is' if path == self.root else f'{path} is'} a file, "
                                         "not a folder; choose another --out")
                return

    def check_new(self, *, resume: bool) -> None:
        """Refuse to start a run over another (one check for ``hkd train`` and ``hkd jobs submit``).

        Without ``resume``: a folder whose status names a run, or that holds checkpoints or a
        training state without a readable status (a run whose status was lost), is refused.
        With ``resume``: the last checkpoint and the training state must be there.
        """
        self.check_writable_folder()
        if resume:
            if not self.can_resume:
                raise RunFolderError(f"{self.root}: nothing to resume (no checkpoints/last.safetensors or "
                                     "train_state.pt)")
            return
        status, problem = read_status_checked(self.status_path)
        if problem is None and status.get("state") not in (None, "queued"):
            raise RunFolderError(f"{self.root} already holds a run ({status['state']}); use --resume to continue "
                                 "it or choose another --out")
        held = sorted(p.name for p in (self.root / "checkpoints").glob("*.safetensors")) \
            if (self.root / "checkpoints").is_dir() else []
        if self.state_path.is_file():
            held.append(self.state_path.name)
        if held:
            why = f"its status.json is unreadable ({problem})" if problem else "it has no status.json"
            raise RunFolderError(f"{self.root} holds a run's files ({', '.join(held[:4])}) but {why}; "
                                 "continue it with --resume, or choose another --out (nothing was overwritten)")

    def check_not_written(self) -> None:
        """Refuse a folder another process is writing now (for a check before a launch; the
        writer's own lock, :meth:`writer`, is what decides)."""
        from filelock import FileLock, Timeout

        if not (self.root / LOCK_NAME).is_file():
            return
        lock = FileLock(self.root / LOCK_NAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunFolderError(self._busy_message()) from None
        lock.release()

    def _busy_message(self) -> str:
        holder = read_json_object(self.root / WRITER_NAME) or {}
        who = f"pid {holder.get('pid')}" + (f" on {holder['host']}" if holder.get("host") else "") \
            if holder.get("pid") else "another process"
        return (f"{self.root} is being written by {who}; wait for that run to end (or cancel it) before "
                "training into this folder again")

    @contextlib.contextmanager
    def writer(self) -> Iterator["RunFolder"]:
        """Hold the run folder's write lock for the life of the block: one writer per run folder.

        The lock is an ``flock`` on ``RUN/.lock`` (the kernel releases it when the process
        dies, even by SIGKILL, so it never goes stale); ``RUN/.writer.json`` names the holder.

        Raises:
            RunFolderError: another process holds it (the message names its pid), or the
                folder cannot be created.
        """
        from filelock import FileLock, Timeout

        self.check_writable_folder()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"{self.root}: cannot create the run folder ({exc.strerror or exc})") from None
        lock = FileLock(self.root / LOCK_NAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunFolderError(self._busy_message()) from None
        try:
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
            atomic_write(self.root / WRITER_NAME, lambda tmp: Path(tmp).write_text(record))
            yield self
        finally:
            lock.release()

    # status
    def read_status(self) -> dict[str, Any]:
        return read_status(self.status_path)

    def write_status(self, state: str, **fields: Any) -> dict[str, Any]:
        return write_status(self.status_path, state, **fields)

    # metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line being written right now
        return out

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric lines past ``after_step`` (a resumed run rewrites them)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.metrics_path, lambda tmp: Path(tmp).write_text(text))
