"""Self-describing checkpoints: safetensors weights + JSON metadata in the header.

A checkpoint names its preset, classes, input size, training config, metrics,
parent checkpoint and library version, so ``load_checkpoint(path)`` rebuilds
the model without being told its architecture. Foreign ``.pth``/``.pt`` files
(e.g. torchvision's COCO weights) load only through
``torch.load(weights_only=True)`` with an explicit preset: nothing in an
untrusted file is ever unpickled into code.
"""
from __future__ import annotations

import datetime as _dt
import os
import pickle
from dataclasses import dataclass
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
from hkd.models.presets import adapt_coco_state_dict, get_preset

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


def load_foreign_weights(path: str | os.PathLike, preset: str) -> nn.Module:
    """Build ``preset`` and load a foreign state dict from ``path`` safely.

    Accepts a bare state dict or one nested under ``state_dict``/``model``;
    strips DDP's ``module.`` prefix; shrinks torchvision's 91-class COCO heads
    to (background, person).
    """
    path = _existing(path)
    p = _preset_or_error(preset, path)
    if path.suffix.lower() in SAFE_SUFFIXES:
        state = read_safetensors_tensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path}: refused to load — the file holds pickled objects other than tensors "
                f"(weights_only loading rejected it: {str(exc).splitlines()[0]})"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch weights file ({str(exc).splitlines()[0]})") from None
        state = _find_state_dict(obj, path)
    model = p.build(pretrained_backbone=False)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = adapt_coco_state_dict(state, model)
    _load_state(model, state, path, preset)
    return model.eval()


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
    state = read_safetensors_tensors(path, keys=target)
    missing = sorted(set(target) - set(state))
    parts = _shape_mismatches(target, state)
    if missing:
        parts.append(f"{len(missing)} of the model's {len(target)} {prefix}* tensors missing (e.g. {missing[0]})")
    if parts:
        raise CheckpointError(f"{path} ({meta.preset}): its backbone does not fit this model: " + "; ".join(parts))
    model.load_state_dict(_cast_like(state, target), strict=False)
    return len(state)


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _find_state_dict(obj[key], path)
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, or one under 'state_dict'/'model')")


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
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    parts = _shape_mismatches(target, state)
    if missing:
        parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if parts:
        raise CheckpointError(f"{path}: weights do not fit preset {preset!r}: " + "; ".join(parts))
    model.load_state_dict(_cast_like(state, target), strict=True)


def _shape_mismatches(target: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """``["N shape mismatches (e.g. key: file (…) vs model (…))"]`` over the keys both hold, or ``[]``."""
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in target.items() if k in state and state[k].shape != v.shape]
    return [f"{len(wrong)} shape mismatches (e.g. {wrong[0]})"] if wrong else []


def _cast_like(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s floating tensors in the dtype of the model's (a float16 file loads into float32)."""
    return {k: (v.to(target[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}


