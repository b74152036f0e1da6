"""Weights from elsewhere, read safely and fitted to an HKD preset with a readable report.

A foreign file is a torchvision detection checkpoint (``fasterrcnn_resnet50_fpn``'s
state dict as torchvision saves it), a model someone trained with torchvision
(``{"model": …, "optimizer": …, "args": Namespace(…)}`` from its reference scripts),
a ``state_dict`` / ``model`` entry of a ``.pth``, a DDP checkpoint (``module.``
prefixes) or a bare ``.safetensors`` file. It is read with
``torch.load(weights_only=True)`` (or safetensors): nothing in it is ever run.

    state = read_state_dict("coco.pth")                       # {key: tensor}, prefixes stripped
    state, notes = fit_state_dict(state, model, head="reset")  # counters, class layers
    report = compare_keys(model.state_dict(), state)           # missing / unexpected / mis-shaped

:func:`hkd.models.checkpoint.import_checkpoint` puts these together (``hkd import``).
"""
from __future__ import annotations

import argparse
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hkd.models.meta import SAFE_SUFFIXES, CheckpointError, existing, read_safetensors_tensors

# how the class-dependent layers are treated when their shapes differ from the preset's
HEAD_MODES = ("strict", "coco_person", "reset")
# the layers whose shapes follow the number of classes (two-stage predictor, dense class logits)
CLASS_LAYERS = ("roi_heads.box_predictor.", "head.classification_head.cls_logits.")
# torchvision's COCO detectors: 91 outputs (COCO's category ids, 0 = background, 1 = person)
COCO_CLASSES = 91
# a batch norm's step counter: no weight, absent from frozen norms, never worth a mismatch
_COUNTER = ".num_batches_tracked"
_NESTED = ("state_dict", "model", "model_state_dict")
# plain-data classes found beside the weights in training checkpoints: torchvision's reference
# scripts save their argparse options (a Namespace holds attributes only, building one runs no code)
_SAFE_EXTRAS = [argparse.Namespace]


@dataclass(frozen=True)
class KeyReport:
    """How a state dict's keys and shapes differ from a model's.

    Attributes:
        missing: the model's tensors the file lacks.
        unexpected: the file's tensors the model lacks.
        mismatched: ``(key, file shape, model shape)`` of tensors both hold with different shapes.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self, first: int = 3) -> list[str]:
        """One line per kind of difference: its count and the first ``first`` names."""
        def names(items: list[str]) -> str:
            more = f", … {len(items) - first} more" if len(items) > first else ""
            return ", ".join(items[:first]) + more

        out = []
        if self.mismatched:
            out.append(f"{len(self.mismatched)} shape mismatches (e.g. "
                       + names([f"{k}: file {tuple(f)} vs model {tuple(m)}" for k, f, m in self.mismatched]) + ")")
        if self.missing:
            out.append(f"{len(self.missing)} missing tensors (e.g. {names(self.missing)})")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected tensors (e.g. {names(self.unexpected)})")
        return out

    def text(self, first: int = 3) -> str:
        return "; ".join(self.lines(first)) or "keys and shapes match"


def compare_keys(target: dict[str, Tensor], state: dict[str, Tensor], *, ignore: tuple[str, ...] = ()) -> KeyReport:
    """The :class:`KeyReport` of ``state`` against the model state ``target`` (keys in ``target``'s order).

    Batch-norm step counters (``*.num_batches_tracked``) and keys starting with one of
    ``ignore`` are left out.
    """
    def counted(key: str) -> bool:
        return not key.endswith(_COUNTER) and not key.startswith(ignore)

    return KeyReport(
        missing=[k for k in target if counted(k) and k not in state],
        unexpected=[k for k in state if counted(k) and k not in target],
        mismatched=[(k, tuple(state[k].shape), tuple(v.shape)) for k, v in target.items()
                    if counted(k) and k in state and state[k].shape != v.shape],
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a foreign weights file, ``{key: tensor}`` on the CPU.

    ``.safetensors``: read as is. ``.pth`` / ``.pt`` / ``.bin`` (or anything else):
    ``torch.load(weights_only=True)``; a bare state dict or one under ``state_dict`` /
    ``model`` / ``model_state_dict`` (nested too). DDP's ``module.`` prefix is stripped.

    Raises:
        CheckpointError: a missing or unreadable file, pickled code (refused, never run),
            or no state dict inside.
    """
    path = existing(path)
    if path.suffix.lower() in SAFE_SUFFIXES:
        state = read_safetensors_tensors(path)
    else:
        try:
            with torch.serialization.safe_globals(_SAFE_EXTRAS):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(
                f"{path}: refused to load — the file holds pickled objects other than tensors "
                f"(weights_only loading rejected it: {str(exc).splitlines()[0]})"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch weights file ({str(exc).splitlines()[0]})") from None
        state = _find_state_dict(obj, path)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _find_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict):
        for key in _NESTED:
            if isinstance(obj.get(key), dict):
                return _find_state_dict(obj[key], path)
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return obj
    found = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, or one under "
                          f"{' / '.join(repr(k) for k in _NESTED)}; the file holds {found})")


def fit_state_dict(state: dict[str, Tensor], model: nn.Module, *,
                   head: str = "strict") -> tuple[dict[str, Tensor], list[str]]:
    """``state`` made to fit ``model`` where that changes no learned weight, and what ``head`` allows.

    Always: batch-norm step counters follow the model (frozen norms have none; plain
    ``BatchNorm2d`` layers keep their own). ``head`` treats the class layers
    (:data:`CLASS_LAYERS`) whose shapes differ:

    * ``"strict"``: left as they are (:func:`compare_keys` reports them);
    * ``"coco_person"``: a torchvision COCO head (91 classes) keeps background and
      ``person`` (COCO's class 1) as the preset's 2 classes (:func:`~hkd.models.presets.adapt_coco_state_dict`);
    * ``"reset"``: the model's own freshly initialised tensors replace them.

    Returns:
        (the fitted state, notes saying what was changed, for the checkpoint's metadata).

    Raises:
        CheckpointError: ``head="coco_person"`` for a file whose head is not a 91-class COCO one.
        ValueError: an unknown ``head``.
    """
    if head not in HEAD_MODES:
        raise ValueError(f"head={head!r}; expected one of {', '.join(HEAD_MODES)}")
    target = model.state_dict()
    out = counters_like(state, target)
    wrong = [k for k in _class_keys(target) if k in out and out[k].shape != target[k].shape]
    if not wrong or head == "strict":
        return out, []
    if not compare_keys(target, out, ignore=CLASS_LAYERS).ok:
        return out, []  # another architecture altogether: the key report says so, not a remark on the head
    classes = file_classes(out, model)
    want = model_classes(model)
    if head == "coco_person":
        if classes != COCO_CLASSES:
            raise CheckpointError(f"the file's class layers have {classes} classes, not torchvision's COCO "
                                  f"{COCO_CLASSES}: no 'person' row to keep; reset them instead (--reset-head)")
        from hkd.models.presets import adapt_coco_state_dict

        return adapt_coco_state_dict(out, model), [f"COCO head ({classes} classes) cut to background + person"]
    out.update({k: target[k] for k in wrong})
    return out, [f"class layers reset ({classes} classes in the file, {want} in the preset): "
                 + ", ".join(sorted({k.rsplit('.', 1)[0] for k in wrong}))]


def counters_like(state: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the batch-norm step counters of ``target``: a frozen norm has none, a
    ``BatchNorm2d`` does (torchvision's COCO files lack them; its randomly built detectors have them)."""
    out = {k: v for k, v in state.items() if not (k.endswith(_COUNTER) and k not in target)}
    out.update({k: v for k, v in target.items() if k.endswith(_COUNTER) and k not in out})
    return out


def head_hint(report: KeyReport, state: dict[str, Tensor], model: nn.Module) -> str:
    """Why the class layers do not fit and the options that would, or ``""`` if they fit."""
    wrong = [k for k, _, _ in report.mismatched if k.startswith(CLASS_LAYERS)]
    classes, want = file_classes(state, model), model_classes(model)
    if not wrong or classes == want:  # same classes: the layers differ for another reason (their inputs)
        return ""
    coco = classes == COCO_CLASSES
    text = (f"the class layers ({', '.join(sorted({k.rsplit('.', 1)[0] for k in wrong}))}) have {classes} "
            f"classes in the file{' (torchvision COCO layout)' if coco else ''} and {want} in the preset")
    options = ["--reset-head (head='reset') starts them afresh: train the model before using its detections"]
    if coco:
        options.insert(0, "--coco-person (head='coco_person') keeps COCO's background and person rows as "
                          "the preset's background and pedestrian")
    return text + ": " + "; or ".join(options)


def model_classes(model: nn.Module) -> int | None:
    """Classes of the model's box predictor (two-stage) or dense head (single-stage)."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    if predictor is not None:
        return predictor.cls_score.out_features
    return getattr(getattr(getattr(model, "head", None), "classification_head", None), "num_classes", None)


def file_classes(state: dict[str, Tensor], model: nn.Module) -> int | None:
    """Classes of the file's class layers, read against ``model``'s layout."""
    if "roi_heads.box_predictor.cls_score.weight" in state:
        return int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    logits = state.get("head.classification_head.cls_logits.weight")
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if logits is not None and head is not None:
        return int(logits.shape[0]) // head.num_anchors
    return None


def _class_keys(target: dict[str, Tensor]) -> list[str]:
    return [k for k in target if k.startswith(CLASS_LAYERS)]
