"""Checkpoints for HKD Studio: list them, describe them, load each one once, remember the chosen pair.

:func:`info` reads a checkpoint's header only (no torch): the Models page is drawn
from it, so the app's first page appears before torch has even been imported.
A loaded detector (:func:`load`) is cached with ``st.cache_resource`` under its
file's sha256 (and the preset, for foreign weights), so every browser session
shares one model object. ``load_checkpoint`` returns it in eval mode and nothing
here or in the pages changes it afterwards: taps, CAMs and timings are per call.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
from safetensors import safe_open

from hkd.models.hierarchy import HierarchySpec
from hkd.models.meta import (
    META_KEY,
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    CheckpointError,
    CheckpointMeta,
    NotADetectorError,
    file_sha256,
    foreign_meta,
    read_meta,
)
from hkd.models.presets import PRESETS, Preset, get_preset

from app.services import settings

if TYPE_CHECKING:
    from hkd.models.checkpoint import LoadedCheckpoint

SUFFIXES = SAFE_SUFFIXES + PICKLE_SUFFIXES
ROLES = ("teacher", "student")
# the width × height the Models page reports FLOPs and latency at
PROFILE_SIZE = (640, 480)


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint file as listed (header only, no weights loaded)."""

    path: str
    source: str  # "folder" | "upload" | "job"
    preset: str | None = None  # from the HKD metadata; None for foreign weights
    role: str | None = None  # the preset's role: teacher | student | reference
    needs_preset: bool = False  # foreign weights: the user names the architecture
    error: str | None = None  # unreadable header: why
    job: str | None = None  # "<name> (<id>)" of the fine-tune job that wrote it
    other_kind: bool = False  # an HKD file that is not a detector (a teacher's aux heads): not listed in folders

    @property
    def name(self) -> str:
        return f"job {self.job}" if self.job else Path(self.path).name

    @property
    def label(self) -> str:
        kind = self.preset or "foreign weights — pick a preset"
        return f"{self.name} · {kind}" + (" (uploaded)" if self.source == "upload" else "")


class _Described:
    """``preset`` and ``spec`` of anything with a checkpoint ``meta``."""

    meta: CheckpointMeta

    @property
    def preset(self) -> Preset:
        return get_preset(self.meta.preset)

    @property
    def spec(self) -> HierarchySpec:
        return self.preset.hierarchy


@dataclass(frozen=True)
class ModelInfo(_Described):
    """What a checkpoint says about itself, without its weights (header only)."""

    path: str
    key: str  # sha256 of the file, plus the preset for foreign weights
    meta: CheckpointMeta

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True, eq=False)
class LoadedModel(_Described):
    """A loaded detector and what the pages need to know about it."""

    checkpoint: LoadedCheckpoint
    key: str  # sha256 of the file, plus the preset for foreign weights

    @property
    def model(self):
        return self.checkpoint.model

    @property
    def meta(self) -> CheckpointMeta:
        return self.checkpoint.meta

    @property
    def name(self) -> str:
        return self.checkpoint.path.name


def preset_names() -> list[str]:
    return sorted(PRESETS)


def _has_hkd_header(path: Path) -> bool | None:
    """True/False for a readable safetensors header with/without HKD metadata; None if unreadable."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return META_KEY in (fh.metadata() or {})
    except Exception:  # noqa: BLE001 - any failure means "not a readable safetensors file"
        return None


def describe_file(path: Path, source: str) -> CheckpointEntry:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return CheckpointEntry(str(path), source, needs_preset=True)
    try:
        meta = read_meta(path)
    except NotADetectorError as exc:
        return CheckpointEntry(str(path), source, error=str(exc), other_kind=True)
    except CheckpointError as exc:
        if _has_hkd_header(path) is False:
            return CheckpointEntry(str(path), source, needs_preset=True)
        return CheckpointEntry(str(path), source, error=str(exc))
    return CheckpointEntry(str(path), source, preset=meta.preset, role=get_preset(meta.preset).role)


@st.cache_data(show_spinner=False, max_entries=64)
def _scan(folder: str, listing: tuple[tuple[str, int, int], ...], source: str) -> list[CheckpointEntry]:
    del listing  # part of the cache key only: a changed folder is scanned again
    entries = (describe_file(p, source) for p in sorted(Path(folder).iterdir())
               if p.is_file() and p.suffix.lower() in SUFFIXES)
    return [entry for entry in entries if not entry.other_kind]  # e.g. a teacher's aux heads: not a model


def scan_folder(folder: str | Path, source: str = "folder") -> list[CheckpointEntry]:
    """Checkpoint files directly in ``folder`` (confined to the allowed roots)."""
    root = settings.confine(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"models folder {root} does not exist")
    listing = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.iterdir()) if p.is_file())
    return _scan(str(root), listing, source)


def models_folder() -> str:
    return st.session_state.get("models_folder") or str(settings.models_dir())


def available() -> tuple[list[CheckpointEntry], str | None]:
    """Checkpoints in the models folder plus this session's uploads, and a folder problem (or None)."""
    problem = None
    try:
        entries = scan_folder(models_folder())
    except (settings.PathNotAllowed, FileNotFoundError, OSError) as exc:
        entries, problem = [], str(exc)
    uploads = [describe_file(Path(p), "upload") for p in st.session_state.get("uploaded_checkpoints", [])
               if Path(p).is_file()]
    return entries + uploads + job_checkpoints(), problem


def job_checkpoints() -> list[CheckpointEntry]:
    """The final checkpoints of finished fine-tunes (the Distill page's jobs), named after their job."""
    from app.services import finetune

    out = []
    for job, path in finetune.finished_checkpoints():
        entry = describe_file(path, "job")
        out.append(CheckpointEntry(entry.path, "job", entry.preset, entry.role, entry.needs_preset, entry.error,
                                   job=job_label(job)))
    return out


def job_label(job) -> str:
    """``<name> (<id>)``: how a fine-tune job names its checkpoint (``job <name> (<id>)`` in the pickers)."""
    return f"{job.name} ({job.id})"


def display_name(path: str | None) -> str:
    """How the app names a checkpoint: a fine-tune's after its job (``job <name> (<id>)``, as the
    pickers list it), any other by its file name; ``none`` for no path."""
    from app.services import finetune

    if not path:
        return "none"
    job = finetune.job_for_checkpoint(path)
    return f"job {job_label(job)}" if job is not None else Path(path).name


def short_name(name: str, limit: int = 24) -> str:
    """A checkpoint name for a narrow heading: without its file suffix, and cut in the middle (…) past
    ``limit`` characters; the pages give the full name on hover."""
    stem = next((name[:-len(s)] for s in SUFFIXES if name.lower().endswith(s)), name)
    return stem if len(stem) <= limit else f"{stem[:limit - 9]}…{stem[-8:]}"


def ref_name(role: str) -> str:
    """:func:`display_name` of the session's choice for ``role``."""
    return display_name((current_ref(role) or {}).get("path"))


def save_upload(name: str, data: bytes) -> Path:
    """Write an uploaded checkpoint under the upload folder (named by content) and remember it."""
    suffix = Path(name).suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"{name}: not a checkpoint file; accepted: {', '.join(SUFFIXES)}")
    digest = hashlib.sha256(data).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem)[:60] or "checkpoint"
    path = settings.upload_dir() / f"{stem}-{digest}{suffix}"
    if not path.exists():
        path.write_bytes(data)
    uploads = st.session_state.setdefault("uploaded_checkpoints", [])
    if str(path) not in uploads:
        uploads.append(str(path))
    return path


def family_of(entry: CheckpointEntry) -> str | None:
    """``two_stage`` or ``single_stage`` from the entry's preset; None for foreign weights."""
    return get_preset(entry.preset).family if entry.preset else None


def for_role(entries: list[CheckpointEntry], role: str, family: str | None = None,
             keep: str | None = None) -> tuple[list[CheckpointEntry], int]:
    """The entries a ``role`` picker lists first, and how many others it hides until the user asks:
    checkpoints of that role (and detector ``family``, when given), this session's uploads and
    foreign weights (whose role is not known yet), and ``keep`` (the current choice) whatever it is."""
    def fits(e: CheckpointEntry) -> bool:
        if e.path == keep or e.source == "upload" or e.needs_preset:
            return True
        return e.role == role and (family is None or family_of(e) == family)

    listed = [e for e in entries if fits(e)]
    return listed, len(entries) - len(listed)


def default_ref(role: str, entries: list[CheckpointEntry]) -> dict | None:
    """The checkpoint a role starts with: ``<role>*.safetensors`` of that role (HKD student first)."""
    usable = [e for e in entries if not e.error and not e.needs_preset]
    ranked = sorted(usable, key=lambda e: (e.role != role, e.source == "job", not e.name.startswith(role),
                                           "hkd" not in e.name, e.name))
    if not ranked:
        return None
    return {"path": ranked[0].path, "preset": None}


def current_ref(role: str) -> dict | None:
    """The session's choice for ``role`` ({"path", "preset"}), defaulting to the best match."""
    ref = st.session_state.get(f"{role}_ref")
    entries, _ = available()
    if ref and any(e.path == ref["path"] for e in entries):
        return ref
    return default_ref(role, entries)


@st.cache_data(show_spinner=False, max_entries=256)
def _sha(path: str, mtime_ns: int, size: int) -> str:
    del mtime_ns, size  # cache key only
    return file_sha256(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load(key: str, preset: str | None, _path: str) -> LoadedModel:
    from hkd.models.checkpoint import load_checkpoint  # torch: only when weights are needed

    return LoadedModel(load_checkpoint(_path, preset=preset, inference=True), key)


def _key(ref: dict) -> tuple[Path, str]:
    path = settings.confine(ref["path"])
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    stat = path.stat()
    return path, f"{_sha(str(path), stat.st_mtime_ns, stat.st_size)}:{ref.get('preset') or ''}"


def info(ref: dict) -> ModelInfo:
    """The header of ``ref``'s checkpoint (no weights, no torch); raises CheckpointError."""
    path, key = _key(ref)
    preset = ref.get("preset")
    return ModelInfo(str(path), key, read_meta(path) if preset is None else foreign_meta(path, preset))


def recorded_cost(meta: CheckpointMeta, size: tuple[int, int]) -> dict | None:
    """``{"params": {hierarchy: n}, "flops": {hierarchy: n}}`` from the metadata if it was
    measured at ``size`` (checkpoints written by ``hkd train``/``hkd distill`` carry it), else None."""
    cost = meta.cost or {}
    if cost.get("flops_size") == list(size) and "params" in cost and "flops" in cost:
        return {"params": cost["params"], "flops": cost["flops"]}
    return None


def adapter_rows(teacher: ModelInfo | LoadedModel, student: ModelInfo | LoadedModel) -> list[dict]:
    """The level table of both models with the adapter each level pair needs (from the presets)."""
    from hkd.distill.plan import adapter_plan

    return adapter_plan(teacher.spec, student.spec)


def load(ref: dict) -> LoadedModel:
    """The model of ``ref`` (loaded once per file content); raises CheckpointError with a clear message."""
    path, key = _key(ref)
    preset = ref.get("preset")
    try:
        return _load(key, preset, str(path))
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError, OSError) as exc:  # anything else a bad file may raise
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
