"""RPN distillation losses (Chen et al., NeurIPS 2017).

* :func:`soft_bce` — soft objectness: the teacher's sigmoid probabilities
  (optionally softened with a temperature) as targets of the student's
  objectness, written as a binary KL divergence (BCE minus the teacher's
  entropy), so it is 0 when the student equals the teacher; optionally weighted
  per anchor by the trust in the teacher (``trust``, ``wrong_weight``: see
  :mod:`hkd.distill.losses.trust`).
* :func:`bounded_l2` — teacher-bounded regression: an L2 loss on the student's
  box deltas that is active only while the student is not better than the
  teacher by a margin. The ROI head uses the same function on the deltas of
  the ground-truth class (:mod:`hkd.distill.losses.roi`).

Inputs are flattened per anchor in torchvision's order
(``rpn.concat_box_prediction_layers``: image, FPN level, y, x, anchor).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hkd.distill.losses.trust import binary_belief, check_trust, trust_weights


def check_logit_pair(name: str, student: Tensor, teacher: Tensor, temperature: float) -> None:
    """Raise ``ValueError`` unless the two logit tensors have one shape and ``temperature > 0``."""
    if student.shape != teacher.shape:
        raise ValueError(f"{name}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    if temperature <= 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")


def binary_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Element-wise ``KL(σ(t/T) ‖ σ(s/T))`` of two logit tensors, written as BCE minus the
    teacher's entropy so that it is exactly 0 where ``s == t``. Same shape as the inputs."""
    t = teacher.detach() / temperature
    target = torch.sigmoid(t)
    cross = F.binary_cross_entropy_with_logits(student / temperature, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(t, target, reduction="none")
    return cross - entropy


def soft_bce(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, trust: str = "none",
             wrong_weight: float = 0.0, row_labels: Tensor | None = None, row_iou: Tensor | None = None) -> Tensor:
    """Binary KL between teacher and student objectness, averaged over anchors.

    ``T² · Σ_m τ_m [ BCE(σ(s_m/T), p_t,m) − H(p_t,m) ] / M`` with ``p_t = σ(t/T)``;
    the ``T²`` keeps the gradient scale independent of the temperature (Hinton et al.).
    ``τ_m`` is the trust in the teacher on anchor ``m`` (:mod:`hkd.distill.losses.trust`;
    1 under ``trust: none``, which is the plain mean); the normaliser stays ``M``.

    Args:
        student: (M,) or (M, 1) student objectness logits.
        teacher: teacher objectness logits, same shape.
        temperature: softening temperature T > 0.
        trust: ``none``, ``label``, ``confidence`` or ``iou``.
        wrong_weight: ``τ_m`` of the anchors the teacher gets wrong (``label``), ≥ 0.
        row_labels: (M,) anchor labels (1 object, 0 background, -1 between the matcher's
            thresholds); needed unless ``trust: none``.
        row_iou: (M,) each anchor's IoU with its matched GT box; needed by ``trust: iou``.
    Returns:
        scalar.
    """
    check_logit_pair("soft_bce", student, teacher, temperature)
    check_trust("soft_bce", trust, wrong_weight)
    if student.numel() == 0:
        return student.sum()
    if trust == "none":
        return binary_kl(student, teacher, temperature).mean() * temperature**2
    if teacher.numel() != teacher.shape[0]:
        raise ValueError(f"soft_bce: trust needs one objectness logit per anchor, got {tuple(teacher.shape)}")
    kl = binary_kl(student, teacher, temperature).reshape(-1)  # (M,)
    weight = trust_weights("soft_bce", trust, binary_belief, teacher.reshape(-1), row_labels, row_iou, wrong_weight)
    return (weight * kl).sum() / kl.shape[0] * temperature**2


def bounded_l2(student: Tensor, teacher: Tensor, *, target: Tensor, num_samples: int, margin: float = 0.0) -> Tensor:
    """Teacher-bounded L2 regression (Chen et al. 2017, eq. 3).

    Per row, ``‖R_s − y‖²`` if ``‖R_s − y‖² + margin > ‖R_t − y‖²``, else 0;
    summed over the rows (the positive anchors or proposals) and divided by
    ``num_samples``, the number of anchors or proposals the detection loss was
    sampled over: the normalisation torchvision's own box losses use, so that
    the bound sits next to ``det/loss_box_reg`` as in the paper
    (``L_reg = L_sL1 + ν·L_b``) instead of growing with the share of positives.

    Args:
        student: (P, 4) student box deltas of the positive anchors/proposals.
        teacher: (P, 4) teacher box deltas of the same rows.
        target: (P, 4) ground-truth regression targets ``y`` (same box coder).
        num_samples: the normaliser (≥ P; ≥ 1).
        margin: m ≥ 0; with 0 the student is only pulled while worse than the teacher.
    Returns:
        scalar.
    """
    if not (student.shape == teacher.shape == target.shape):
        raise ValueError(
            f"bounded_l2: student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and "
            f"target {tuple(target.shape)} must have one shape"
        )
    if int(num_samples) < max(1, student.shape[0]):
        raise ValueError(f"bounded_l2: num_samples must be ≥ the {student.shape[0]} rows and ≥ 1, got {num_samples}")
    if student.shape[0] == 0:
        return student.sum()
    target = target.detach()
    student_err = (student - target).pow(2).sum(dim=-1)
    teacher_err = (teacher.detach() - target).pow(2).sum(dim=-1)
    active = (student_err.detach() + margin > teacher_err).to(student_err.dtype)
    return (student_err * active).sum() / int(num_samples)
