"""Self-describing checkpoints: safetensors weights + JSON metadata in the header.

A checkpoint names its preset, classes, input size, training config, metrics,
parent checkpoint and library version, so ``load_checkpoint(path)`` rebuilds
the model without being told its architecture. Foreign ``.pth``/``.pt`` files
(e.g. torchvision's COCO weights) load only through
``torch.load(weights_only=True)`` with an explicit preset: nothing in an
untrusted file is ever unpickled into code. ``import_checkpoint`` (``hkd import``)
wraps such a file into an HKD checkpoint once (:mod:`hkd.models.foreign`).
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hkd.models.meta import (  # noqa: F401  (re-exported: the metadata API predates hkd.models.meta)
    FORMAT,
    META_KEY,
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    CheckpointError,
    atomic_write,
    CheckpointMeta,
    existing as _existing,
    file_sha256,
    foreign_meta,
    open_safetensors,
    preset_or_error as _preset_or_error,
    read_meta,
    read_safetensors_tensors,
    write_safetensors,
)
from hkd.models.foreign import compare_keys, counters_like, fit_state_dict, head_hint, read_state_dict
from hkd.models.presets import get_preset

@dataclass
class LoadedCheckpoint:
    model: nn.Module
    meta: CheckpointMeta
    path: Path
    sha256: str




def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    meta: CheckpointMeta,
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (.safetensors) atomically.

    ``dtype=torch.float16`` halves the file; floating tensors are cast back to
    float32 on load.
    """
    get_preset(meta.preset)  # refuse to write what cannot be loaded
    model = getattr(model, "module", model)  # unwrap DDP
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous()
    meta.dtype = str(dtype).replace("torch.", "")
    meta.created = meta.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return write_safetensors(path, state, meta.to_json())


def update_metadata(path: str | os.PathLike, out: str | os.PathLike | None = None, **changes: Any) -> Path:
    """Rewrite an HKD checkpoint's metadata (e.g. ``metrics`` measured after training).

    The tensors are copied unchanged (same dtype); the file is replaced atomically,
    or written to ``out``.
    """
    path = _existing(path)
    meta = read_meta(path)
    unknown = set(changes) - set(CheckpointMeta.__dataclass_fields__)
    if unknown:
        raise KeyError(f"unknown metadata fields {sorted(unknown)}; fields: {sorted(CheckpointMeta.__dataclass_fields__)}")
    for key, value in changes.items():
        setattr(meta, key, value)
    state = read_safetensors_tensors(path)
    return write_safetensors(out or path, state, meta.to_json())


def load_checkpoint(path: str | os.PathLike, *, preset: str | None = None, inference: bool = False) -> LoadedCheckpoint:
    """Rebuild the detector stored in ``path``.

    ``.safetensors`` with HKD metadata need nothing else; a foreign file
    (``.pth``/``.pt``/``.bin`` or bare safetensors) needs ``preset``.
    The returned model is in eval mode on the CPU. With ``inference=True`` it is
    also prepared for fast inference (:func:`hkd.models.optimize.prepare_for_inference`:
    frozen norms folded, channels-last): for running, not for training or saving.
    """
    loaded = _load_checkpoint(path, preset)
    if inference:
        from hkd.models.optimize import prepare_for_inference

        prepare_for_inference(loaded.model)
    return loaded


def _load_checkpoint(path: str | os.PathLike, preset: str | None) -> LoadedCheckpoint:
    path = _existing(path)
    if preset is not None or path.suffix.lower() in PICKLE_SUFFIXES:
        if preset is None:
            raise CheckpointError(
                f"{path}: a {path.suffix} file does not say which architecture it holds; "
                "give the preset explicitly (e.g. --preset fasterrcnn_resnet50_fpn.coco_person)"
            )
        model = load_foreign_weights(path, preset)
        return LoadedCheckpoint(model.eval(), foreign_meta(path, preset), path, file_sha256(path))
    meta = read_meta(path)
    state = read_safetensors_tensors(path)
    p = get_preset(meta.preset)
    model = p.build(pretrained_backbone=False, min_size=meta.min_size, max_size=meta.max_size)
    _load_state(model, state, path, meta.preset)
    return LoadedCheckpoint(model.eval(), meta, path, file_sha256(path))


def load_foreign_weights(path: str | os.PathLike, preset: str, *, head: str = "coco_person") -> nn.Module:
    """Build ``preset`` and load a foreign state dict from ``path`` safely (:mod:`hkd.models.foreign`).

    Accepts a bare state dict or one nested under ``state_dict``/``model``;
    strips DDP's ``module.`` prefix; by default shrinks torchvision's 91-class COCO
    heads to (background, person) (``head``: see :func:`~hkd.models.foreign.fit_state_dict`).
    Returns the model in eval mode.
    """
    return _foreign_model(path, preset, head)[0].eval()


@dataclass
class ImportedCheckpoint(LoadedCheckpoint):
    """An imported checkpoint (:func:`import_checkpoint`): the written file and what the import changed."""

    changes: list[str] = field(default_factory=list)


def import_checkpoint(
    source: str | os.PathLike,
    preset: str,
    out: str | os.PathLike,
    *,
    head: str = "strict",
    min_size: int | None = None,
    max_size: int | None = None,
) -> ImportedCheckpoint:
    """Wrap the foreign weights ``source`` into a self-describing HKD checkpoint ``out`` (``hkd import``).

    ``source``: a torchvision detection checkpoint, a torchvision-trained model, a ``.pth``
    with a ``state_dict`` / ``model`` entry, a DDP checkpoint or a bare ``.safetensors``
    (:func:`~hkd.models.foreign.read_state_dict`; nothing is unpickled). Every tensor must fit
    ``preset``'s model by key and shape; ``head`` (``"strict"``, ``"coco_person"``, ``"reset"``)
    says what happens to class layers of another number of classes
    (:func:`~hkd.models.foreign.fit_state_dict`). ``min_size`` / ``max_size``: the inference
    size recorded in the metadata (default: the preset's).

    Returns:
        the model as loaded (eval mode), its metadata, the written path and its sha256, and
        what the import changed.

    Raises:
        CheckpointError: an unreadable or unsafe file, an unknown preset, or weights that do
            not fit (counts and first names of missing, unexpected and mis-shaped tensors, and
            for class layers the options that would fit them).
    """
    from hkd.models.profile import params_by_hierarchy

    source = _existing(source)
    out = Path(out)
    if out.suffix.lower() not in SAFE_SUFFIXES:
        raise CheckpointError(f"{out}: HKD checkpoints are .safetensors files; name the output e.g. "
                              f"{out.with_suffix('.safetensors').name}")
    if out.resolve() == source.resolve():
        raise CheckpointError(f"{out} is the source file itself; writing it would destroy that input")
    p = _preset_or_error(preset, source)
    sizes = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
    model, changes = _foreign_model(source, preset, head, **sizes)
    digest = file_sha256(source)
    meta = CheckpointMeta(
        preset=preset, classes=list(p.classes),
        min_size=min_size or p.min_size, max_size=max_size or p.max_size,
        parent=source.name,
        notes="; ".join([f"imported from {source.name} (sha256 {digest[:12]})", *changes]),
        cost={"params": params_by_hierarchy(model)},
    )
    problem = meta.problem()
    if problem:
        raise CheckpointError(f"{out}: {problem}")
    path = save_checkpoint(out, model, meta)
    return ImportedCheckpoint(model.eval(), meta, path, file_sha256(path), changes)


def _foreign_model(path: str | os.PathLike, preset: str, head: str, **sizes: int) -> tuple[nn.Module, list[str]]:
    """``preset`` built (random init) with the weights of ``path`` fitted and loaded strictly."""
    path = _existing(path)
    p = _preset_or_error(preset, path)
    state = read_state_dict(path)
    model = p.build(pretrained_backbone=False, **sizes)
    state, changes = fit_state_dict(state, model, head=head)
    _load_state(model, state, path, preset)
    return model, changes


def load_backbone_weights(model: nn.Module, path: str | os.PathLike, prefix: str = "backbone.") -> int:
    """Copy the backbone and FPN (the ``backbone.*`` tensors) of the HKD checkpoint ``path`` into ``model``.

    For a detector of another family on the same body and FPN, e.g. the single-stage
    teacher started from the two-stage teacher's backbone. Every ``backbone.*`` tensor of
    ``model`` must be in the file with the same shape (else :class:`CheckpointError` naming
    the first mismatches); the file's other tensors (its heads) are ignored. Returns how
    many tensors were copied.
    """
    path = _existing(path)
    meta = read_meta(path)  # an HKD safetensors checkpoint: nothing is unpickled
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    if not target:
        raise CheckpointError(f"the model has no {prefix}* tensors to initialise from {path}")
    state = counters_like(read_safetensors_tensors(path, keys=target), target)
    report = compare_keys(target, state)
    if not report.ok:
        raise CheckpointError(f"{path} ({meta.preset}): its backbone does not fit this model: " + report.text()
                              + f" (of the model's {len(target)} {prefix}* tensors)")
    model.load_state_dict(_cast_like(state, target), strict=False)
    return len(state)


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or Inf: such a model detects nothing, or nonsense, without a word."""
    bad = [key for key, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or Inf values (e.g. {bad[0]}); the weights are "
                              "damaged — use an earlier checkpoint of the run (checkpoints/last.safetensors) or "
                              "retrain with a lower train.lr")


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, preset: str) -> None:
    _check_finite(state, path)
    target = model.state_dict()
    report = compare_keys(target, state)
    if not report.ok:
        hint = head_hint(report, state, model)
        raise CheckpointError(f"{path}: weights do not fit preset {preset!r}: " + report.text()
                              + (f". {hint[0].upper()}{hint[1:]}" if hint else ""))
    model.load_state_dict(_cast_like(counters_like(state, target), target), strict=True)


def _cast_like(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s floating tensors in the dtype of the model's (a float16 file loads into float32)."""
    return {k: (v.to(target[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}


