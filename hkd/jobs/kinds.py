"""Job kinds: each command the queue runs declares, beside the command, how a request becomes its
command line and what must hold before it is launched.

A kind is a :class:`JobKind`; a module declares its kinds with :func:`register`. The queue looks a
kind up by name (:func:`kind`) and imports the module that declares it on first use, the way
``hkd.cli.COMMANDS`` imports a command only when it runs. The queue itself knows commands as
processes and files: nothing here imports the commands' models or configs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hkd.jobs.record import JobError

# kind -> the module that declares it (beside its command in hkd/cli)
DECLARED_IN = {
    "train": "hkd.cli.train_job",
    "distill": "hkd.cli.train_job",
    "predict": "hkd.cli.predict_job",
    "synth": "hkd.cli.synth_job",
    "diagnose": "hkd.cli.diagnose_job",
}


@dataclass(frozen=True)
class Launch:
    """What the queue records for a checked request: ``python -m hkd <kind> <args…>`` and how the
    jobs table shows it."""

    args: list[str]
    name: str
    threads: int
    summary: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    run: Path | None = None  # a run folder: its status.json reports progress (train/distill)
    status_path: Path | None = None  # else the status file the command writes (``--status``)


@dataclass(frozen=True)
class JobKind:
    """One command as a job.

    ``prepare(folder, **request)`` is the pre-launch check and the command line together: it
    refuses (:class:`JobError`, naming the problem) what would fail at its first step, and returns
    the :class:`Launch` of the job whose folder will be ``folder``. A kind that writes a run folder
    (``run_folder``) owns it while it is queued or running, can be resumed when
    ``resume_problem(run)`` finds nothing against it, and has the metrics ``read_metrics(run)`` reads.
    """

    name: str
    prepare: Callable[..., Launch]
    run_folder: bool = False
    resume_problem: Callable[[Path], str | None] | None = None
    read_metrics: Callable[[Path], list[dict[str, Any]]] | None = None

    @property
    def resumable(self) -> bool:
        return self.resume_problem is not None


_REGISTRY: dict[str, JobKind] = {}


def register(*kinds: JobKind) -> None:
    """Declare ``kinds`` (a later declaration of the same name replaces the first)."""
    for job_kind in kinds:
        _REGISTRY[job_kind.name] = job_kind


def names() -> tuple[str, ...]:
    """Every kind the queue can run or read (no module is imported for this)."""
    return tuple(dict.fromkeys([*DECLARED_IN, *_REGISTRY]))


def kind(name: str) -> JobKind:
    """The declared kind ``name``; :class:`JobError` for a name no module declares."""
    if name not in _REGISTRY and name in DECLARED_IN:
        importlib.import_module(DECLARED_IN[name])
    if name not in _REGISTRY:
        raise JobError(f"unknown job kind {name!r}; one of {', '.join(names())}")
    return _REGISTRY[name]


def resumable_names() -> list[str]:
    return [name for name in names() if kind(name).resumable]
