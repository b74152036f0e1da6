"""The status file every job's command writes, and the job queue reads: one shape for all.

    {"state": "queued|running|succeeded|failed|cancelled", "step", "total", "eta_s", "message",
     "updated", ...}

A train/distill run writes it as ``RUN/status.json`` (:mod:`hkd.train.run_folder`); ``hkd predict``,
``hkd synth`` and ``hkd diagnose`` write it where ``--status`` says. It is replaced atomically
(written beside, then renamed), so a reader sees the old or the new file, never half of one.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hkd.configfile import quote
from hkd.models.meta import atomic_write

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def read_status(path: str | os.PathLike) -> dict[str, Any]:
    """A status file's fields, or {} while it does not exist (or is being replaced)."""
    try:
        status = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError, UnicodeDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


# the fields a status file must hold in these types, when it holds them (bool is no number)
_NUMBER_FIELDS = ("step", "total", "eta_s", "updated", "seconds", "started")


def read_status_checked(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """(the status file's fields, None), or ({}, why it cannot be used): a missing file is
    ``({}, None)``; a truncated file, one that is not an object, an unknown state or a
    non-numeric step/total give the reason, quoting at most 200 characters of the bad value."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"{path.name}: unreadable ({exc})"
    try:
        status = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"{path.name}: not valid JSON ({exc.msg} at character {exc.pos}; truncated?)"
    if not isinstance(status, dict):
        return {}, f"{path.name}: holds a JSON {type(status).__name__}, not an object"
    state = status.get("state")
    if state is not None and state not in STATES:
        return {}, f"{path.name}: unknown state {quote(state)}; one of {', '.join(STATES)}"
    for key in _NUMBER_FIELDS:
        value = status.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return {}, f"{path.name}: {key} is {quote(value)}, not a number"
    return status, None


def read_json_object(path: str | os.PathLike) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
