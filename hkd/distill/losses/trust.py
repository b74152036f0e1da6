"""Trust in the teacher: per-row weights of the soft-target losses by the teacher's quality on the row.

A trained teacher's soft targets are wrong on some proposals / anchors; distilling
them there teaches the student the teacher's mistakes. The soft-target losses
(:func:`~hkd.distill.losses.roi.kd_kl`, :func:`~hkd.distill.losses.rpn.soft_bce`,
:func:`~hkd.distill.losses.focal.focal_kd`) take two params that say how far to
trust it, one scheme for all three:

``trust`` — how each row's KD contribution is weighted, from the row's
ground-truth label ``y`` (``row_labels``: ``0`` background, ``c ≥ 1`` the class
of its matched GT box, ``-1`` ignored) and, for ``iou``, its IoU with the
matched GT box (``row_iou``):

* ``none`` (default): weight 1 everywhere; the loss is exactly what it was
  before trust existed (same code path, bit for bit).
* ``label``: weight 1 where the teacher's predicted class equals ``y``,
  ``wrong_weight`` elsewhere (default 0: the KD term is dropped where the
  teacher is wrong).
* ``confidence``: weight ``p_t(y)``, the teacher's probability of the row's
  GT class (background included), at temperature 1.
* ``iou``: foreground rows (``y ≥ 1``) weigh their IoU with the matched GT box
  (∈ [0, 1]: a row that barely overlaps its object has an uncertain label, so
  whatever the teacher says there counts less); background rows weigh the
  teacher's background probability ``p_t(0)``, as under ``confidence``.

Rows labelled ``-1`` (RPN / RetinaNet anchors between the matcher's thresholds,
which the detection loss ignores as well) weigh 1 under every mode: there is no
ground truth to judge the teacher by, so the KD term stays as it was.

The teacher's *predicted class* and ``p_t`` per kind of logits:

* softmax logits (ROI class logits, (K, C), background at index 0): the argmax;
  ``p_t = softmax(t)``;
* one objectness logit (RPN, (M,)): 1 if ``σ(t) ≥ 0.5`` else 0;
  ``p_t(1) = σ(t)``, ``p_t(0) = 1 − σ(t)``;
* one sigmoid per class (single-stage dense logits, (…, C), labels index the
  channels as torchvision's heads do; 0 is background): the argmax channel if its
  probability is ≥ 0.5, else 0 (background); ``p_t(c) = σ(t_c)`` for ``c ≥ 1``,
  ``p_t(0) = 1 − max_c σ(t_c)``.

``wrong_weight`` (≥ 0) is used by ``label`` only.

Normalisation: the weights multiply the rows' contributions and each loss keeps
its normaliser (``K`` proposals for ``kd_kl``, ``M`` anchors for ``soft_bce``,
the sum of the focal weights for ``focal_kd``), so distrusted rows are dropped,
not re-normalised over the trusted ones: the term shrinks where the teacher is
often wrong instead of pulling harder on the rows left.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

TRUST_MODES = ("none", "label", "iou", "confidence")
# the optional inputs each mode needs from the distiller
_TRUST_INPUTS = {"none": (), "label": ("row_labels",), "confidence": ("row_labels",),
                 "iou": ("row_labels", "row_iou")}

__all__ = ["TRUST_MODES", "check_trust", "trust_inputs", "trust_weights",
           "softmax_belief", "binary_belief", "multilabel_belief"]


def check_trust(name: str, trust: str, wrong_weight: float) -> None:
    """Raise ``ValueError`` unless ``trust`` is one of :data:`TRUST_MODES` and ``wrong_weight ≥ 0``."""
    if trust not in TRUST_MODES:
        raise ValueError(f"{name}: unknown trust {trust!r}; choices: {', '.join(TRUST_MODES)}")
    if not wrong_weight >= 0:
        raise ValueError(f"{name}: wrong_weight must be >= 0, got {wrong_weight}")


def trust_inputs(params: Mapping) -> tuple[str, ...]:
    """The optional inputs (``row_labels``, ``row_iou``) a term with ``params`` needs."""
    trust = params.get("trust", "none")
    if trust not in TRUST_MODES:
        raise ValueError(f"unknown trust {trust!r}; choices: {', '.join(TRUST_MODES)}")
    return _TRUST_INPUTS[trust]


def trust_weights(name: str, trust: str, belief: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                  teacher: Tensor, row_labels: Tensor | None, row_iou: Tensor | None,
                  wrong_weight: float) -> Tensor:
    """Per-row trust weights (see the module docstring).

    Args:
        name: the loss, for error messages.
        trust: ``label``, ``confidence`` or ``iou`` (``none`` needs no weights).
        belief: :func:`softmax_belief`, :func:`binary_belief` or :func:`multilabel_belief`:
            the teacher's predicted class and probability of the row's label, per row.
        teacher: the teacher's logits, rows first (R…, C) or (R,) for objectness.
        row_labels: (R…) int64 GT label per row: 0 background, ≥ 1 class, -1 ignored.
        row_iou: (R…) IoU of each row with its matched GT box (``iou`` only).
        wrong_weight: weight of the rows the teacher gets wrong under ``label``.
    Returns:
        (R…) float weights, detached.
    """
    if row_labels is None:
        raise ValueError(f"{name}: trust {trust!r} needs row_labels (the rows' ground-truth labels)")
    try:
        predicted, label_prob = belief(teacher, row_labels)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    row_labels = row_labels.to(predicted.device, torch.int64)
    if trust == "label":
        weight = torch.where(predicted == row_labels, torch.ones_like(label_prob),
                             torch.full_like(label_prob, float(wrong_weight)))
    elif trust == "confidence":
        weight = label_prob
    elif trust == "iou":
        if row_iou is None or row_iou.shape != predicted.shape:
            raise ValueError(f"{name}: trust 'iou' needs row_iou, one IoU per row {tuple(predicted.shape)}")
        weight = torch.where(row_labels > 0, row_iou.detach().to(label_prob), label_prob)
    else:
        raise ValueError(f"{name}: trust {trust!r} has no weights; choices: {', '.join(TRUST_MODES[1:])}")
    return torch.where(row_labels < 0, torch.ones_like(weight), weight)


def softmax_belief(teacher: Tensor, row_labels: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted class, probability of the row's label) from (R, C) softmax logits."""
    _check_rows(row_labels, teacher.shape[:-1])
    teacher = teacher.detach()
    prob = teacher.softmax(dim=-1)
    index = row_labels.to(teacher.device, torch.int64).clamp(min=0)
    return teacher.argmax(dim=-1), prob.gather(-1, index[..., None])[..., 0]


def binary_belief(teacher: Tensor, row_labels: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted class, probability of the row's label) from (R,) objectness logits (label 1: object)."""
    _check_rows(row_labels, teacher.shape)
    prob = teacher.detach().sigmoid()
    row_labels = row_labels.to(prob.device)
    return (prob >= 0.5).to(torch.int64), torch.where(row_labels == 1, prob, 1 - prob)


def multilabel_belief(teacher: Tensor, row_labels: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted class, probability of the row's label) from (…, C) per-class sigmoid logits; 0 is background."""
    _check_rows(row_labels, teacher.shape[:-1])
    prob = teacher.detach().sigmoid()
    top, top_class = prob.max(dim=-1)
    predicted = torch.where(top >= 0.5, top_class, torch.zeros_like(top_class))
    labels = row_labels.to(prob.device, torch.int64)
    of_class = prob.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return predicted, torch.where(labels > 0, of_class, 1 - top)


def _check_rows(row_labels: Tensor, rows: torch.Size) -> None:
    if row_labels.shape != rows:
        raise ValueError(f"row_labels {tuple(row_labels.shape)} do not match the {tuple(rows)} rows")
