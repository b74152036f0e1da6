"""Repulsion from the neighbours of a target: the RepGT term of Wang et al., "Repulsion Loss:
Detecting Pedestrians in a Crowd" (CVPR 2018), for the box head of a two-stage detector.

In a crowd, a box regressed towards one person drifts towards the person beside them: the box
that ends between two people is a false positive that NMS keeps (its IoU with the right box is
small) and that :mod:`hkd.eval.errors` counts as ``crowd`` or ``localization``. RepGT pushes each
positive proposal's predicted box away from the ground-truth person it is *not* assigned to and
overlaps most:

    L_RepGT = sum over positive proposals P with such a person G of Smooth_ln(IoG(B_P, G)) / |positives|

with ``B_P`` the box the head predicts for ``P`` (its deltas decoded on ``P``), ``IoG(B, G) =
area(B ∩ G) / area(G)`` and ``Smooth_ln(x) = -ln(1 - x)`` for ``x <= sigma``, ``(x - sigma) / (1 -
sigma) - ln(1 - sigma)`` above (linear there, so a box wholly over the other person has a finite
loss). Every person counts: crowd regions and ignore-flagged boxes are already out of the
training targets (:mod:`hkd.train.data`). The term is added to the detector's own losses as
``det/loss_rep_gt``, weighted by ``train.repulsion`` (the paper's 0.5; 0: off, the default);
``train.repulsion_sigma`` is its ``sigma`` (default 0.5). ``hkd train`` takes it for Faster
R-CNN presets (:class:`RepulsionTraining`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from hkd.distill.distiller import two_stage_training

__all__ = ["RepulsionTraining", "rep_gt_loss", "smooth_ln"]


def smooth_ln(x: Tensor, sigma: float) -> Tensor:
    """``-ln(1 - x)`` up to ``sigma``, then its tangent line: finite for every ``x`` in [0, 1]."""
    if not 0 <= sigma < 1:
        raise ValueError(f"sigma must be in [0, 1), got {sigma!r}")
    below = -torch.log1p(-x.clamp(max=sigma))
    above = (x - sigma) / (1 - sigma) - math.log1p(-sigma)
    return torch.where(x <= sigma, below, above)


def rep_gt_loss(proposals: list[Tensor], matched_idxs: list[Tensor], labels: list[Tensor], box_regression: Tensor,
                gt_boxes: list[Tensor], box_coder, sigma: float = 0.5) -> Tensor:
    """The RepGT loss of one batch (see the module docstring): a scalar, 0 without positives.

    Args:
        proposals, matched_idxs, labels: per image, the sampled proposals (P_i, 4), the index of
            each one's GT box and its label (> 0: positive), as ``RoIHeads.select_training_samples``
            returns them.
        box_regression: (sum P_i, num_classes * 4), the box head's deltas, in the proposals' order.
        gt_boxes: per image, the (G_i, 4) GT boxes the proposals were matched to.
        box_coder: the head's ``BoxCoder`` (decodes deltas on proposals).
        sigma: the Smooth_ln threshold, in [0, 1).
    """
    decoded = box_coder.decode(box_regression, proposals)  # (sum P_i, num_classes, 4)
    total = box_regression.new_zeros(())
    positives = 0
    start = 0
    for props, matched, label, gt in zip(proposals, matched_idxs, labels, gt_boxes):
        rows = slice(start, start + len(props))
        start += len(props)
        pos = torch.nonzero(label > 0).flatten()
        positives += len(pos)
        if len(pos) == 0 or len(gt) < 2:
            continue
        overlap = box_iou(props[pos], gt)  # the proposal's neighbours, as the paper picks them
        overlap[torch.arange(len(pos)), matched[pos]] = -1.0  # not its own target
        best, other = overlap.max(dim=1)
        near = best > 0
        if not near.any():
            continue
        boxes = decoded[rows][pos[near], label[pos[near]]]  # the box predicted for the proposal's class
        neighbour = gt[other[near]]
        lt = torch.maximum(boxes[:, :2], neighbour[:, :2])
        rb = torch.minimum(boxes[:, 2:], neighbour[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        area = (neighbour[:, 2:] - neighbour[:, :2]).prod(dim=1).clamp(min=1e-6)
        total = total + smooth_ln((inter / area).clamp(0, 1), sigma).sum()
    return total / max(positives, 1)


class RepulsionTraining(nn.Module):
    """A Faster R-CNN's training forward with the RepGT term: ``forward(images, targets)`` returns the
    detector's own losses (``loss_classifier``, ``loss_box_reg``, the RPN's) and ``loss_rep_gt`` ×
    ``weight``. Its parameters are the model's (the optimiser and checkpoints see the model alone)."""

    def __init__(self, model: nn.Module, weight: float, sigma: float = 0.5):
        super().__init__()
        if not hasattr(getattr(model, "roi_heads", None), "box_coder"):
            raise ValueError(f"repulsion needs a two-stage detector with a box head; {type(model).__name__} has none")
        self.model, self.weight, self.sigma = model, float(weight), float(sigma)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        batch, targets = self.model.transform(images, targets)
        out = two_stage_training(self.model, batch, targets)
        losses = {key.removeprefix("det/"): value for key, value in out.losses.items()}
        rep = rep_gt_loss(out.proposals, out.matched_idxs, out.labels, out.box_regression,
                          [t["boxes"] for t in targets], self.model.roi_heads.box_coder, self.sigma)
        losses["loss_rep_gt"] = self.weight * rep
        return losses
