"""The registry of distillation losses: name → :class:`LossSpec`.

A loss is a plain function ``fn(student, teacher, *, <inputs>, <params>)``:

* ``student``, ``teacher`` — the level's tensors, prepared by the distiller
  (student through its adapter; per-anchor / per-proposal rows flattened);
* keyword-only arguments *without* a default are **inputs** the distiller
  provides (:data:`INPUTS`: ground-truth boxes, anchors and stride for the
  fine-grained imitation mask, ``target``: the ground-truth regression targets
  of the rows);
* keyword-only arguments named in :data:`INPUTS` with the default ``None`` are
  **optional inputs**: the distiller computes and passes them only for the
  terms whose params ask for them (``register(..., needs=…)``, see
  :meth:`LossSpec.inputs_for`), so a term that does not use them costs nothing —
  e.g. the rows' ground-truth labels for ``trust`` (:mod:`hkd.distill.losses.trust`);
* other keyword-only arguments *with* a default are the **params** a config may set
  (``temperature``, ``margin``, ``trust`` …); nothing else is accepted.

Each loss applies to some level **roles** (:data:`ROLES`, see :func:`level_role`):
a role says what a level's tensor *is* (a feature map, RPN objectness, ROI
class logits …), which is finer than ``Level.kind`` (logits and embeddings are
both ``"vectors"``).

    >>> LOSSES["kd_kl"].params
    {'temperature': 2.0, 'bg_weight': 0.5, 'trust': 'none', 'wrong_weight': 0.0}
    >>> LOSSES["kd_kl"].inputs_for({"trust": "iou"})
    ('row_labels', 'row_iou')
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from torch import Tensor

from hkd.distill.plan import ROLE_BY_NAME as _ROLE_BY_NAME, level_role  # noqa: F401

from hkd.distill.losses.feature import (
    attention,
    attention_map,
    box_area_mask,
    decoupled_nmse,
    imitation_mask,
    masked_mse,
    masked_nmse,
    masked_squared_error,
    mse,
    nmse,
    pearson,
)
from hkd.distill.losses.focal import focal_kd
from hkd.distill.losses.roi import class_deltas, kd_kl
from hkd.distill.losses.rpn import bounded_l2, soft_bce
from hkd.distill.losses.trust import TRUST_MODES, trust_inputs

# role -> what the prepared student/teacher tensors are
ROLES: dict[str, str] = {
    "feature": "backbone / FPN feature map, (N, C, H, W)",
    "objectness": "RPN objectness logits, one row per anchor, (M, 1)",
    "anchor_deltas": "RPN box deltas of the positive anchors, (P, 4)",
    "regions": "ROI-pooled region features of the sampled proposals, (K, C, 7, 7)",
    "embedding": "box-head embedding of the sampled proposals, (K, D)",
    "class_logits": "ROI class logits of the sampled proposals, (K, classes)",
    "box_deltas": "ROI box deltas of the ground-truth class of the positive proposals, (P, 4)",
    "dense_logits": "single-stage class logits per anchor, (N, A, classes)",
}

# inputs (keyword-only, no default; or default None: optional) the distiller knows how to provide
INPUTS: dict[str, str] = {
    "gt_boxes": "per image, (G, 4) ground-truth boxes in the transformed batch's coordinates",
    "cell_anchors": "(A, 4) zero-centred anchors of the student's anchor level closest to the map's stride",
    "stride": "(sy, sx) input pixels per cell of the map",
    "target": "ground-truth regression targets (P, 4) of the positive rows",
    "num_samples": "the detection loss's normaliser: anchors (RPN) or proposals (ROI) sampled in the batch",
    "row_labels": "int64 ground-truth label of each row the loss sees (sampled proposal, anchor), rows' shape: "
                  "0 background, c >= 1 the matched GT box's class, -1 ignored (between the matcher's thresholds)",
    "row_iou": "IoU of each row (sampled proposal, anchor) with its matched ground-truth box (its best), "
               "rows' shape; 0 in images without boxes",
}

# How the student tensor is adapted before the loss: "full" (1×1 conv / linear
# + resize), "spatial" (resize only: the loss compares across channels itself).
ADAPT_MODES = ("full", "spatial")


@dataclass(frozen=True)
class LossSpec:
    """A registered loss.

    Attributes:
        name: registry name used in configs (``masked_mse``).
        fn: the pure function.
        roles: level roles it applies to.
        params: config-settable params and their defaults (from ``fn``'s signature).
        inputs: names of the inputs the distiller must always provide.
        adapt: ``"full"`` or ``"spatial"`` adaptation of the student tensor.
        summary: one line for tables and error messages.
        optional_inputs: inputs (default ``None`` in ``fn``) provided only when ``needs`` asks.
        needs: ``params → names`` of the optional inputs a term with those params needs.
    """

    name: str
    fn: Callable[..., Tensor]
    roles: frozenset[str]
    params: dict
    inputs: tuple[str, ...]
    adapt: str
    summary: str
    optional_inputs: tuple[str, ...] = ()
    needs: Callable[[Mapping[str, Any]], Iterable[str]] | None = None

    def __call__(self, student: Tensor, teacher: Tensor, **kwargs) -> Tensor:
        return self.fn(student, teacher, **kwargs)

    def inputs_for(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """The inputs a term with ``params`` needs: :attr:`inputs`, then the optional ones it asks for.

        Raises:
            ValueError: from ``needs``, for params it cannot read (e.g. an unknown ``trust``).
        """
        if self.needs is None:
            return self.inputs
        wanted = set(self.needs({**self.params, **params}))
        return self.inputs + tuple(name for name in self.optional_inputs if name in wanted)


LOSSES: dict[str, LossSpec] = {}


def register(name: str, fn: Callable[..., Tensor], roles: tuple[str, ...], *, adapt: str = "full",
             summary: str = "", needs: Callable[[Mapping[str, Any]], Iterable[str]] | None = None) -> LossSpec:
    """Add ``fn`` to :data:`LOSSES` under ``name``; params and inputs are read from its signature.

    ``needs(params)`` names the optional inputs (keyword-only, in :data:`INPUTS`, default
    ``None``) a term with ``params`` (defaults filled in) needs; required with optional inputs.
    """
    if name in LOSSES:
        raise ValueError(f"loss {name!r} registered twice")
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"loss {name!r}: unknown roles {sorted(unknown)}; roles: {sorted(ROLES)}")
    if adapt not in ADAPT_MODES:
        raise ValueError(f"loss {name!r}: adapt must be one of {ADAPT_MODES}, got {adapt!r}")
    signature = inspect.signature(fn)
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if [p.name for p in positional] != ["student", "teacher"]:
        raise ValueError(f"loss {name!r}: positional arguments must be (student, teacher)")
    params, inputs, optional = {}, [], []
    for p in signature.parameters.values():
        if p.kind != p.KEYWORD_ONLY:
            continue
        if p.default is p.empty:
            if p.name not in INPUTS:
                raise ValueError(f"loss {name!r}: input {p.name!r} is not one the distiller provides: {sorted(INPUTS)}")
            inputs.append(p.name)
        elif p.name in INPUTS:
            if p.default is not None:
                raise ValueError(f"loss {name!r}: optional input {p.name!r} must default to None")
            optional.append(p.name)
        else:
            params[p.name] = p.default
    if optional and needs is None:
        raise ValueError(f"loss {name!r}: optional inputs {optional} need needs=…, saying which params use them")
    spec = LossSpec(name, fn, frozenset(roles), params, tuple(inputs), adapt,
                    summary or (inspect.getdoc(fn) or "").split("\n", 1)[0], tuple(optional), needs)
    LOSSES[name] = spec
    return spec


def losses_for(role: str | None) -> list[str]:
    """Names of the losses that apply to ``role``, in registry order."""
    return [name for name, spec in LOSSES.items() if role in spec.roles]


register("mse", mse, ("feature", "regions", "embedding"),
         summary="hint loss: mean squared difference (through an adapter)")
register("masked_mse", masked_mse, ("feature",),
         summary="fine-grained imitation: squared difference near objects (Wang et al. 2019)")
register("nmse", nmse, ("feature", "regions", "embedding"),
         summary="hint loss relative to the teacher's energy: mean (s - t)² / mean t²")
register("masked_nmse", masked_nmse, ("feature",),
         summary="fine-grained imitation relative to the teacher's energy near objects")
register("attention", attention, ("feature",), adapt="spatial",
         summary="attention transfer: squared difference of L2-normalised attention maps")
register("pearson", pearson, ("feature",),
         summary="PKD: hint loss of per-channel standardised maps, 1 - Pearson correlation (Cao et al. 2022)")
register("decoupled_nmse", decoupled_nmse, ("feature",),
         summary="decoupled imitation: foreground (GT boxes, by inverse area) and background apart (after FGD 2022)")
register("soft_bce", soft_bce, ("objectness",), needs=trust_inputs,
         summary="soft objectness: binary KL to the teacher's probabilities")
register("bounded_l2", bounded_l2, ("anchor_deltas", "box_deltas"),
         summary="teacher-bounded L2 regression on positive rows (Chen et al. 2017)")
register("kd_kl", kd_kl, ("class_logits",), needs=trust_inputs,
         summary="soft-target KD with temperature and background down-weighting")
register("focal_kd", focal_kd, ("dense_logits",), needs=trust_inputs,
         summary="teacher-confidence-weighted binary KL for dense single-stage heads")

__all__ = [
    "LOSSES", "ROLES", "INPUTS", "TRUST_MODES", "LossSpec", "register", "losses_for", "level_role",
    "mse", "masked_mse", "nmse", "masked_nmse", "masked_squared_error", "attention", "attention_map", "imitation_mask",
    "pearson", "decoupled_nmse", "box_area_mask",
    "soft_bce", "bounded_l2", "kd_kl", "class_deltas", "focal_kd",
]
