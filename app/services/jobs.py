"""The background job queue HKD Studio shows and submits to (:mod:`hkd.jobs`): train and distill
runs, predictions, SynthPed splits and diagnoses, in ``HKD_JOBS_DIR`` (``hkd jobs`` reads the same)."""
from __future__ import annotations

from hkd.jobs import JobQueue

from app.services import settings


def queue() -> JobQueue:
    return JobQueue(settings.jobs_dir())
