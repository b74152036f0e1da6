"""Checkpoint metadata without torch: what the Models page and ``hkd info`` show before any
weights load (reading it imports neither torch nor the model code).

:mod:`hkd.models.checkpoint` re-exports everything here.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from safetensors import SafetensorError, safe_open

import hkd
from hkd.models.presets import get_preset

FORMAT = "hkd-checkpoint/1"
META_KEY = "hkd"
DETECTOR_KIND = "detector"  # HKD files of other kinds (``kind`` in the metadata) are not detectors
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
# names of class 1 that mean a pedestrian (HKD presets: "pedestrian"; COCO-derived: "person")
PEDESTRIAN_NAMES = ("pedestrian", "person")


def _process_umask() -> int:
    """The umask, read once at import: ``os.umask`` can only be read by setting it, which is
    process-wide and would race with files other threads (app sessions) create meanwhile."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class CheckpointError(ValueError):
    """A checkpoint could not be read; the message names the file and the problem."""


@dataclass
class CheckpointMeta:
    preset: str
    classes: list[str] = field(default_factory=lambda: ["background", "pedestrian"])
    min_size: int = 480
    max_size: int = 640
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    parent: str | None = None
    library_version: str = hkd.__version__
    created: str = ""
    dtype: str = "float32"
    step: int | None = None
    notes: str = ""
    # {"params": {hierarchy: n}, "flops": {hierarchy: n}, "flops_size": [w, h]}, measured when saved
    cost: dict = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "checkpoint") -> "CheckpointMeta":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: HKD metadata is not valid JSON ({exc})") from None
        if isinstance(raw, dict) and raw.get("kind") not in (None, DETECTOR_KIND):
            raise NotADetectorError(f"{source}: holds {raw['kind']!r}, not a detector"
                                    + (" (a teacher's auxiliary heads made by `hkd train-aux`: name it in "
                                       "distill.aux.checkpoint)" if raw["kind"] == "aux_heads" else ""))
        if not isinstance(raw, dict) or "preset" not in raw:
            raise CheckpointError(f"{source}: HKD metadata has no 'preset'")
        known = {f for f in cls.__dataclass_fields__}
        meta = cls(**{k: v for k, v in raw.items() if k in known})
        problem = meta.problem()
        if problem:
            raise CheckpointError(f"{source}: impossible metadata: {problem}")
        return meta

    def problem(self) -> str | None:
        """Why this metadata cannot describe a detector (a size of -5 or "abc", no classes), or None."""
        for key, low, high in (("min_size", 32, 4096), ("max_size", 32, 8192)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                return f"{key} is {repr(value)[:80]}; expected a size in pixels from {low} to {high}"
        if not isinstance(self.classes, list) or len(self.classes) < 2 \
                or not all(isinstance(c, str) for c in self.classes):
            return (f"classes is {repr(self.classes)[:120]}; expected a list of names, background first, "
                    "e.g. ['background', 'pedestrian']")
        return None

    @property
    def pedestrian_class(self) -> bool:
        """Class 1 is a pedestrian: what ``hkd predict`` writes as category 1."""
        return len(self.classes) > 1 and str(self.classes[1]).lower() in PEDESTRIAN_NAMES


class NotADetectorError(CheckpointError):
    """An HKD safetensors file of another kind (e.g. a teacher's auxiliary heads), not a detector."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def open_safetensors(path: Path, framework: str = "numpy"):
    """``safe_open`` with a clear :class:`CheckpointError` for truncated or foreign files."""
    try:
        return safe_open(str(path), framework=framework, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        text = str(exc)
        if "MetadataIncompleteBuffer" in text or "incomplete" in text.lower():
            raise CheckpointError(f"{path}: truncated checkpoint (the file ends before its weights do)") from None
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({text})") from None


def read_safetensors_header(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata in a safetensors file's header (``{}`` when it has none); no tensor is read.

    Raises:
        CheckpointError: a missing, truncated or foreign file.
    """
    with open_safetensors(existing(path)) as fh:
        return fh.metadata() or {}


def read_safetensors_tensors(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict:
    """The tensors of a safetensors file (torch, CPU): all of them, or those of ``keys`` that it holds.

    Nothing is unpickled. torch loads here, not when this module is imported.

    Raises:
        CheckpointError: a missing, truncated or foreign file, or damaged weights.
    """
    path = existing(path)
    with open_safetensors(path, framework="pt") as fh:
        names = list(fh.keys())
        if keys is not None:
            held = set(names)
            names = [k for k in keys if k in held]
        try:
            return {key: fh.get_tensor(key) for key in names}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: damaged weights ({exc})") from None


def write_safetensors(path: str | os.PathLike, tensors: dict, meta_json: str) -> Path:
    """Write ``tensors`` (torch, contiguous) with ``meta_json`` under :data:`META_KEY` in the header,
    atomically (:func:`atomic_write`); the writer of every HKD safetensors file."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: meta_json}))


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """Metadata of an HKD checkpoint, read from the header only (no weights loaded)."""
    path = existing(path)
    if path.suffix.lower() not in SAFE_SUFFIXES:
        raise CheckpointError(f"{path}: HKD checkpoints are .safetensors files; use load_foreign_weights for {path.suffix}")
    header = read_safetensors_header(path)
    if META_KEY not in header:
        raise CheckpointError(
            f"{path}: safetensors file without HKD metadata; load it with an explicit preset "
            "(load_foreign_weights(path, preset) / --preset)"
        )
    meta = CheckpointMeta.from_json(header[META_KEY], source=str(path))
    preset_or_error(meta.preset, path)
    return meta


def foreign_meta(path: Path, preset: str) -> CheckpointMeta:
    """The metadata of foreign weights (no HKD header), from the preset the user names for them.

    Raises:
        CheckpointError: an unknown preset (the message lists the available ones).
    """
    p = preset_or_error(preset, path)
    return CheckpointMeta(preset=preset, classes=list(p.classes), min_size=p.min_size, max_size=p.max_size,
                          notes=f"foreign weights from {path.name}")


def preset_or_error(name: str, path: Path):
    try:
        return get_preset(name)
    except KeyError as exc:
        raise CheckpointError(f"{path}: {exc.args[0]}") from None


def existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path
