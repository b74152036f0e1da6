"""Focal-style distillation for single-stage detectors (RetinaNet, FCOS).

Dense heads score every anchor with one sigmoid per class; almost all anchors
are easy background, which would drown a plain per-anchor KD loss (the same
imbalance focal loss addresses). :func:`focal_kd` therefore weights each
anchor's binary KL by the teacher's confidence ``max_c p_t^γ`` and normalises by
the sum of the weights, so the loss concentrates where the teacher sees objects.
It can also weight each anchor by the trust in the teacher there (``trust``,
``wrong_weight``: see :mod:`hkd.distill.losses.trust`).
"""
from __future__ import annotations

from torch import Tensor

from hkd.distill.losses.rpn import binary_kl, check_logit_pair
from hkd.distill.losses.trust import check_trust, multilabel_belief, trust_weights


def focal_kd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, gamma: float = 2.0,
             trust: str = "none", wrong_weight: float = 0.0,
             row_labels: Tensor | None = None, row_iou: Tensor | None = None) -> Tensor:
    """Teacher-confidence-weighted binary KL over dense class scores.

    ``T² · Σ_a τ_a w_a Σ_c KL(p_t,ac ‖ p_s,ac) / Σ_a w_a`` with ``p = σ(logit/T)`` and
    ``w_a = (max_c p_t,ac)^γ`` (teacher probabilities at temperature 1). ``τ_a`` is
    the trust in the teacher on anchor ``a`` (:mod:`hkd.distill.losses.trust`; 1 under
    ``trust: none``); the normaliser stays ``Σ_a w_a``.

    Args:
        student: (..., C) student class logits per anchor, e.g. (N, A, C) from
            torchvision's ``RetinaNetClassificationHead``.
        teacher: teacher logits of the same anchors, same shape.
        temperature: T > 0.
        gamma: focusing exponent ≥ 0 (0: every anchor weighs the same).
        trust: ``none``, ``label``, ``confidence`` or ``iou``.
        wrong_weight: ``τ_a`` of the anchors the teacher gets wrong (``label``), ≥ 0.
        row_labels: (...) int64 label per anchor (0 background, c ≥ 1 the matched GT
            box's class = channel, -1 between the matcher's thresholds); needed unless ``trust: none``.
        row_iou: (...) each anchor's IoU with its matched GT box; needed by ``trust: iou``.
    Returns:
        scalar.
    """
    check_logit_pair("focal_kd", student, teacher, temperature)
    check_trust("focal_kd", trust, wrong_weight)
    if student.numel() == 0:
        return student.sum()
    kl = binary_kl(student, teacher, temperature).sum(dim=-1)  # (...,) per anchor
    weight = teacher.detach().sigmoid().amax(dim=-1).pow(gamma)
    if trust == "none":
        return (weight * kl).sum() / weight.sum().clamp(min=1e-6) * temperature**2
    trusted = weight * trust_weights("focal_kd", trust, multilabel_belief, teacher, row_labels, row_iou, wrong_weight)
    return (trusted * kl).sum() / weight.sum().clamp(min=1e-6) * temperature**2
