"""Deprecated: the background jobs moved to :mod:`hkd.jobs` (2026-12-07); this module re-exports
them for one release so that older imports and ``python -m hkd.train.jobs JOB_DIR`` (supervisors
launched before the move) keep working. Import from :mod:`hkd.jobs` instead.

``process_alive`` and ``_proc_start`` read process identities the way records written before the
move hold them (``start_ticks``: the start in clock ticks since boot); new records hold psutil's
``create_time`` (:mod:`hkd.jobs.process`). ``check_run`` and ``run_summary`` now live beside the
command they check, in :mod:`hkd.cli.train_job`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import psutil

from hkd.jobs import (FINAL_STATES, CorruptJobError, Job, JobError, JobQueue, default_threads, jobs_dir, max_jobs,
                      new_job_id)
from hkd.jobs.kinds import names as _kind_names
from hkd.jobs.process import boot_id as _boot_id
from hkd.jobs.process import is_alive
from hkd.jobs.process import start_ticks as _start_ticks
from hkd.jobs.record import COMMAND_NAME, HEARTBEAT_DEAD_S, HEARTBEAT_S, LOG_NAME
from hkd.jobs.supervisor import supervise

KINDS = _kind_names()

__all__ = ["COMMAND_NAME", "FINAL_STATES", "HEARTBEAT_DEAD_S", "HEARTBEAT_S", "KINDS", "LOG_NAME", "CorruptJobError",
           "Job", "JobError", "JobQueue", "check_run", "default_threads", "jobs_dir", "max_jobs", "new_job_id",
           "process_alive", "run_summary", "supervise"]


def process_alive(pid: int | None, start_ticks: int | None, boot_id: str | None) -> bool | None:
    """True/False when it can be told whether the process recorded before the move still runs; None when it cannot."""
    return is_alive({"pid": pid, "start_ticks": start_ticks, "boot_id": boot_id})


def _proc_start(pid: int) -> tuple[int | None, str | None]:
    """(start in clock ticks since boot, psutil's status), as records before the move hold the start."""
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return None, None
    return _start_ticks(pid), status


def __getattr__(name: str):
    if name in ("check_run", "run_summary"):  # beside the train command now; imported on use only
        from hkd.cli import train_job

        return getattr(train_job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]).resolve()))
