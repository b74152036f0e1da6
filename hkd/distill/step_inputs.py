"""What a distillation step's losses need besides the level tensors (:class:`StepInputs`), computed
once per step and only when a term asks: GT boxes and anchors for imitation masks, the RPN's anchor
targets, the student's sampled proposals and their targets, each row's ground-truth label and IoU."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou


def _best_iou(rows: Tensor, gt_boxes: Tensor) -> Tensor:
    """(R,) IoU of each row box with its best-overlapping GT box; 0 without GT boxes."""
    if gt_boxes.numel() == 0:
        return rows.new_zeros(rows.shape[0])
    return box_iou(gt_boxes, rows).amax(dim=0)


class StepInputs:
    """What the losses need besides the level tensors, computed once per step on demand."""

    def __init__(self, batch: ImageList, targets: list[dict[str, Tensor]], student_features: list[Tensor],
                 anchor_generator: nn.Module, rpn: nn.Module | None = None,
                 roi_labels: Tensor | None = None, roi_targets: Tensor | None = None, *,
                 proposals: list[Tensor] | None = None, matcher: Matcher | None = None) -> None:
        self.batch = batch
        self.targets = targets
        self.student_features = student_features
        self.anchor_generator = anchor_generator
        self.rpn = rpn
        self.roi_labels = roi_labels
        self.roi_targets = roi_targets
        self.proposals = proposals  # per image, the student's sampled proposals (K_i, 4)
        self.matcher = matcher  # a single-stage student's anchor matcher (RetinaNet's proposal_matcher)
        self._anchors: list[Tensor] | None = None
        self._rpn_targets: tuple[Tensor, Tensor] | None = None
        self._rpn_labels: Tensor | None = None
        self._dense_truth: Tensor | None = None
        self._iou: dict[str, Tensor] = {}
        self.fitted: set[str] = set()  # levels whose least-squares adapter was updated this step

    def imitation_inputs(self, size: tuple[int, int]) -> dict[str, Any]:
        """GT boxes, stride and the cell anchors of the anchor level whose stride is closest to the map's."""
        height, width = self.batch.tensors.shape[-2:]
        stride = (height // size[0], width // size[1])
        anchor_strides = [height // f.shape[-2] for f in self.student_features]
        nearest = min(range(len(anchor_strides)), key=lambda i: abs(math.log2(anchor_strides[i] / stride[0])))
        cell = self.anchor_generator.cell_anchors[nearest].to(self.batch.tensors.device)
        return {"gt_boxes": [t["boxes"] for t in self.targets], "cell_anchors": cell, "stride": stride}

    def rpn_samples(self) -> int:
        """Anchors torchvision's RPN samples for its losses in this batch (its box-loss normaliser)."""
        return self.rpn.fg_bg_sampler.batch_size_per_image * len(self.targets)

    def anchors(self) -> list[Tensor]:
        """The student's anchors, per image (A, 4) in the batch's coordinates."""
        if self._anchors is None:
            self._anchors = self.anchor_generator(self.batch, self.student_features)
        return self._anchors

    def rpn_targets(self) -> tuple[Tensor, Tensor]:
        """(positive mask (M,), regression targets (M, 4)) over all anchors of the batch.

        Keeps the anchors' labels (1 object, 0 background, -1 between the matcher's
        thresholds) for :meth:`row_truth`.
        """
        if self._rpn_targets is None:
            anchors = self.anchors()
            labels, matched = self.rpn.assign_targets_to_anchors(anchors, self.targets)
            encoded = self.rpn.box_coder.encode(matched, anchors)
            self._rpn_labels = torch.cat(labels).to(torch.int64)
            self._rpn_targets = (self._rpn_labels == 1, torch.cat(encoded))
        return self._rpn_targets

    @torch.no_grad()
    def row_truth(self, role: str, names: list[str]) -> dict[str, Tensor]:
        """``row_labels`` and/or ``row_iou`` (see :data:`~hkd.distill.losses.INPUTS`) of the rows a loss on a
        ``role`` level sees: the sampled proposals (``class_logits``, (K,)), every anchor of the batch
        (``objectness``, (M,)), or every anchor per image (``dense_logits``, (N, A)).

        Labels: torchvision's own assignments: ``select_training_samples`` for proposals,
        ``rpn.assign_targets_to_anchors`` for RPN anchors, the student's ``proposal_matcher``
        (as in RetinaNet's loss) for dense anchors. IoU: with the best-overlapping GT box of
        the row's image (the box the matchers assign), 0 where the image has none.
        """
        if role == "class_logits":
            labels, boxes = self.roi_labels, self.proposals
        elif role == "objectness":
            self.rpn_targets()
            labels, boxes = self._rpn_labels, self.anchors()
        elif role == "dense_logits":
            labels, boxes = self._dense_labels(), self.anchors()
        else:
            raise ValueError(f"no per-row ground truth for {role} levels")
        out = {"row_labels": labels} if "row_labels" in names else {}
        if "row_iou" in names:
            if role not in self._iou:
                self._iou[role] = torch.cat([_best_iou(b, t["boxes"]) for b, t in zip(boxes, self.targets)])
            out["row_iou"] = self._iou[role].reshape(labels.shape)
        return out

    def _dense_labels(self) -> Tensor:
        """(N, A) int64 per-anchor labels by the student's matcher: the matched GT box's class, 0 below
        the background threshold (and in images without boxes), -1 between the thresholds."""
        if self.matcher is None:
            raise ValueError("per-anchor labels of a dense head need the student's proposal_matcher (RetinaNet)")
        if self._dense_truth is None:
            labels, best = [], []
            for anchors, target in zip(self.anchors(), self.targets):
                boxes = target["boxes"]
                if boxes.numel() == 0:
                    labels.append(torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device))
                    best.append(anchors.new_zeros(anchors.shape[0]))
                    continue
                iou = box_iou(boxes, anchors)
                best.append(iou.amax(dim=0))  # what row_truth's row_iou is (_best_iou): computed once
                matched = self.matcher(iou)
                label = target["labels"].to(torch.int64)[matched.clamp(min=0)]
                label = torch.where(matched >= 0, label, torch.zeros_like(label))
                labels.append(torch.where(matched == self.matcher.BETWEEN_THRESHOLDS, -1, label))
            self._dense_truth = torch.stack(labels)
            self._iou.setdefault("dense_logits", torch.cat(best))
        return self._dense_truth
