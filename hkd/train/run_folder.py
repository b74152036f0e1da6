"""A run folder: everything one training/distillation run writes.

    RUN/status.json       {"state", "step", "total", "eta_s", "message", "pid", ...} (atomic)
    RUN/metrics.jsonl     one JSON object per log step; eval lines carry "eval"
    RUN/log.txt           human-readable log
    RUN/config.json       the resolved run config
    RUN/checkpoints/last.safetensors, RUN/checkpoints/final.safetensors
    RUN/train_state.pt    optimizer/scheduler state for --resume (tensors only)

The app's background jobs read the same files, so their shapes are public.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hkd.models.meta import atomic_write

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


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


def read_status(path: str | os.PathLike) -> dict[str, Any]:
    """A status file's fields, or {} while it does not exist (or is being replaced)."""
    try:
        status = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    return status if isinstance(status, dict) else {}


def write_status(path: str | os.PathLike, state: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` and ``state`` into the status file at ``path`` (atomically).

    The same shape serves run folders and the status files of ``hkd predict --status``
    and ``hkd synth --status``, which the background jobs read.
    """
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; one of {STATES}")
    path = Path(path)
    status = {**read_status(path), **fields, "state": state, "updated": time.time()}
    text = json.dumps(status, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return status
