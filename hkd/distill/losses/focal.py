"""Focal-style distillation for single-stage detectors (RetinaNet, FCOS).

Dense heads score every anchor with one sigmoid per class; almost all anchors
are easy background, which would drown a plain per-anchor KD loss (the same
imbalance focal loss addresses). :func:`focal_kd` therefore weights each
anchor's binary KL by the teacher's confidence ``max_c p_t^γ`` and normalises by
the sum of the weights, so the loss concentrates where the teacher sees objects.
"""
from __future__ import annotations

from torch import Tensor

from hkd.distill.losses.rpn import binary_kl, check_logit_pair


def focal_kd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, gamma: float = 2.0) -> Tensor:
    """Teacher-confidence-weighted binary KL over dense class scores.

    ``T² · Σ_a w_a Σ_c KL(p_t,ac ‖ p_s,ac) / Σ_a w_a`` with ``p = σ(logit/T)`` and
    ``w_a = (max_c p_t,ac)^γ`` (teacher probabilities at temperature 1).

    Args:
        student: (..., C) student class logits per anchor, e.g. (N, A, C) from
            torchvision's ``RetinaNetClassificationHead``.
        teacher: teacher logits of the same anchors, same shape.
        temperature: T > 0.
        gamma: focusing exponent ≥ 0 (0: every anchor weighs the same).
    Returns:
        scalar.
    """
    check_logit_pair("focal_kd", student, teacher, temperature)
    if student.numel() == 0:
        return student.sum()
    kl = binary_kl(student, teacher, temperature).sum(dim=-1)  # (...,) per anchor
    weight = teacher.detach().sigmoid().amax(dim=-1).pow(gamma)
    return (weight * kl).sum() / weight.sum().clamp(min=1e-6) * temperature**2
