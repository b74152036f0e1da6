"""The result store: cached outputs (predictions, diagnoses, comparisons …) found by a digest of
their inputs, with the job that made them and one way to tell ready, running or failed.

See :mod:`hkd.results.store`. The wing stands on :mod:`hkd.jobs` and files only.
"""
from __future__ import annotations

from hkd.results.store import (PENDING, STARTABLE, Entry, EntryState, ResultStore, cache_dir, diagnosis_relpath,
                               digest, predictions_relpath, slug, write_atomic)

__all__ = ["PENDING", "STARTABLE", "Entry", "EntryState", "ResultStore", "cache_dir", "diagnosis_relpath", "digest",
           "predictions_relpath", "slug", "write_atomic"]
