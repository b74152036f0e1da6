"""Background jobs: a queue of subprocesses, each running the CLI a user would run.

A job is ``python -m hkd <kind> …`` (``train``, ``distill``, ``predict``, ``synth``, ``diagnose``)
with absolute paths, started in its own session (process group) under a small supervisor process
(``python -m hkd.jobs.supervisor JOB_DIR``) that records how it exited. The queue is plain files,
so the app, ``hkd jobs`` and an app restarted later all see the same jobs::

    HKD_JOBS_DIR/                 (default runs/jobs)
        .lock                     file lock: one process changes the queue at a time
        <id>/job.json             what was asked, and when/how it was launched (atomic)
        <id>/output.txt           the job's stdout and stderr
        <id>/exit.json            written by the supervisor when the command exits
        <id>/heartbeat            touched by the supervisor every few seconds
        <id>/command.json         identity of the command the supervisor started (its training, …)
        <id>/run/                 the run folder of a train/distill job submitted without --out
        <id>/status.json          progress of predict/synth/diagnose jobs (train/distill: RUN/status.json)

The wing, one concern a module:

* :mod:`hkd.jobs.queue` — :class:`JobQueue`: submit, list, cancel, resume, delete, start what may start.
* :mod:`hkd.jobs.state` — the state machine: a job's state derived from its record and processes.
* :mod:`hkd.jobs.kinds` — :class:`JobKind`: each command declares, beside it (``hkd/cli/*_job.py``),
  how a request becomes its command line and its pre-launch check.
* :mod:`hkd.jobs.process` — process identity (pid and psutil's start time), the parent-death signal.
* :mod:`hkd.jobs.record` — :class:`Job`, ``job.json`` and the other files of a job folder.
* :mod:`hkd.jobs.status` — the status file every job's command writes.
* :mod:`hkd.jobs.supervisor` — the supervisor process.

At most ``HKD_MAX_JOBS`` (default 1) run at once; the rest wait in order and start as slots free.
A job killed with SIGKILL, by the OOM killer or by a reboot shows ``failed`` with its log tail
instead of ``running`` forever (:mod:`hkd.jobs.state`).
"""
from __future__ import annotations

from hkd.jobs.kinds import JobKind, Launch, register
from hkd.jobs.queue import JobQueue
from hkd.jobs.record import (FINAL_STATES, CorruptJobError, Job, JobError, default_threads, jobs_dir, max_jobs,
                             new_job_id)

__all__ = ["FINAL_STATES", "CorruptJobError", "Job", "JobError", "JobKind", "JobQueue", "Launch", "default_threads",
           "jobs_dir", "max_jobs", "new_job_id", "register"]
