"""ROI-head distillation losses (Chen et al., NeurIPS 2017; Hinton et al. 2015).

* :func:`kd_kl` — soft-target KD on the class logits of the sampled proposals,
  with temperature (T² scaling), background down-weighting and, optionally,
  per-proposal trust in the teacher (``trust``, ``wrong_weight``: see
  :mod:`hkd.distill.losses.trust`).
* region features (K, C, 7, 7) and embeddings (K, D) use
  :func:`hkd.distill.losses.feature.mse` through an adapter;
* box deltas use :func:`hkd.distill.losses.rpn.bounded_l2` on the deltas of the
  ground-truth class of the positive proposals, picked by :func:`class_deltas`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hkd.distill.losses.rpn import bounded_l2, check_logit_pair
from hkd.distill.losses.trust import check_trust, softmax_belief, trust_weights

__all__ = ["kd_kl", "class_deltas", "bounded_l2"]


def kd_kl(student: Tensor, teacher: Tensor, *, temperature: float = 2.0, bg_weight: float = 0.5,
          trust: str = "none", wrong_weight: float = 0.0,
          row_labels: Tensor | None = None, row_iou: Tensor | None = None) -> Tensor:
    """Soft-target KD: ``T² · Σ_k τ_k · w_k · KL(p_t,k ‖ p_s,k) / K``.

    ``p = softmax(logits / T)``; ``w_k = bg_weight`` for the proposals whose
    teacher argmax is class 0 (background), 1 otherwise. Dividing by ``K``
    (not ``Σ w``) keeps the down-weighting effective when most proposals are
    background, as they are. ``τ_k`` is the trust in the teacher on proposal
    ``k`` (:mod:`hkd.distill.losses.trust`; 1 under ``trust: none``); the
    normaliser stays ``K``.

    Args:
        student: (K, C) student class logits (C includes background at index 0).
        teacher: (K, C) teacher class logits for the same proposals.
        temperature: T > 0.
        bg_weight: weight of background proposals, ≥ 0.
        trust: ``none``, ``label``, ``confidence`` or ``iou``.
        wrong_weight: ``τ_k`` of the proposals whose teacher argmax is not their label (``label``), ≥ 0.
        row_labels: (K,) int64 label of each sampled proposal (0 background); needed unless ``trust: none``.
        row_iou: (K,) IoU of each proposal with its matched GT box; needed by ``trust: iou``.
    Returns:
        scalar.
    """
    check_logit_pair("kd_kl", student, teacher, temperature)
    check_trust("kd_kl", trust, wrong_weight)
    if student.shape[0] == 0:
        return student.sum()
    teacher = teacher.detach()
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1)  # (K,)
    weight = torch.where(teacher.argmax(dim=1) == 0, torch.full_like(kl, bg_weight), torch.ones_like(kl))
    if trust != "none":
        weight = weight * trust_weights("kd_kl", trust, softmax_belief, teacher, row_labels, row_iou, wrong_weight)
    return (weight * kl).sum() / kl.shape[0] * temperature**2


def class_deltas(deltas: Tensor, labels: Tensor) -> Tensor:
    """The 4 box deltas of each proposal's class.

    Args:
        deltas: (K, 4·C) class-specific deltas from ``FastRCNNPredictor``.
        labels: (K,) int64 class per proposal.
    Returns:
        (K, 4).
    """
    k = deltas.shape[0]
    return deltas.reshape(k, deltas.shape[1] // 4, 4)[torch.arange(k, device=deltas.device), labels]
