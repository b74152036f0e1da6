"""Running a detector on images: one function for the CLI, the app and evaluation.

**Post-processing: suppressing contained boxes** (:func:`suppress_contained`,
off by default). Class-wise NMS removes a box only when its IoU with a
higher-scoring one reaches the model's NMS threshold (0.5). A box on the legs
or the torso of a person lies almost wholly inside that person's full-body
box yet has an IoU of only about its share of the body's area (0.2–0.5), so
NMS keeps it, and it counts as a false positive ("part of a person", see
:mod:`hkd.eval.errors`). :func:`suppress_contained` removes, greedily by
descending score, a box whose *intersection over its own area* with a
higher-scoring kept box is at least ``containment``. Its cost: a person
standing behind another, whose box lies inside the nearer person's box, is
removed too. The measured effect on SynthPed is in docs/BENCHMARKS.md
("One box per person: suppressing contained boxes"); ``hkd predict
--suppress-contained C`` and ``detect(..., suppress_contained=C)`` apply it.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms, box_area

PEDESTRIAN = 1


@dataclass
class Detections:
    """Pedestrian detections of one image, in the image's pixel coordinates.

    boxes: (K, 4) float32 xyxy; scores: (K,) float32 in [0, 1], sorted descending.
    """

    boxes: np.ndarray
    scores: np.ndarray
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_prediction(cls, pred: dict, *, score_thresh: float = 0.05, max_dets: int = 100,
                        seconds: float = 0.0) -> "Detections":
        """Pedestrians (label 1) with score >= ``score_thresh`` from a torchvision prediction dict, at most ``max_dets``."""
        keep = (pred["labels"] == PEDESTRIAN) & (pred["scores"] >= score_thresh)
        boxes = pred["boxes"][keep][:max_dets].detach().cpu().numpy().astype(np.float32)
        scores = pred["scores"][keep][:max_dets].detach().cpu().numpy().astype(np.float32)
        return cls(boxes, scores, seconds)

    def filter(self, score_thresh: float = 0.0, nms_thresh: float | None = None) -> "Detections":
        """Keep scores >= ``score_thresh``; optionally re-run NMS at IoU ``nms_thresh``."""
        keep = self.scores >= score_thresh
        boxes, scores = self.boxes[keep], self.scores[keep]
        if nms_thresh is not None and len(scores):
            idx = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                              torch.zeros(len(scores), dtype=torch.int64), nms_thresh).numpy()
            boxes, scores = boxes[idx], scores[idx]
        return Detections(boxes, scores, self.seconds)

    def suppress_contained(self, containment: float = 0.8, *, score_ratio: float = 1.0) -> "Detections":
        """These detections without the boxes mostly contained in a higher-scoring kept one
        (:func:`suppress_contained`); order, dtype and ``seconds`` kept."""
        keep = suppress_contained(self.boxes, self.scores, containment=containment, score_ratio=score_ratio)
        keep = np.sort(keep)  # the input order (scores are already descending)
        return Detections(self.boxes[keep], self.scores[keep], self.seconds)

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO results: ``[{image_id, category_id: 1, bbox: [x, y, w, h], score}]``."""
        return [
            {"image_id": image_id, "category_id": 1,
             "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
             "score": round(float(s), 5)}
            for (x1, y1, x2, y2), s in zip(self.boxes, self.scores)
        ]


def suppress_contained(boxes, scores, *, containment: float = 0.8, score_ratio: float = 1.0) -> np.ndarray:
    """Indices of the boxes kept after removing those mostly contained in a higher-scoring kept box.

    Boxes are visited by descending score (ties: input order first). A box is
    removed when, for some higher-scoring box that is itself kept,
    ``area(box ∩ kept) / area(box) >= containment`` and
    ``score(box) <= score_ratio * score(kept)``. The measure is asymmetric on
    purpose: a leg box inside a full-body box is contained (IoA near 1) while
    their IoU is small, and the full-body box is never contained in the leg.
    A box is only ever removed by a higher-scoring one, so a confident small
    box survives a weaker large box around it. A zero-area box is contained in
    nothing (it is kept).

    Args:
        boxes: (K, 4) ``x1, y1, x2, y2`` (numpy array, tensor or nested lists).
        scores: (K,) scores.
        containment: share of a box's own area, in (0, 1], that must lie inside
            a higher-scoring kept box for it to be removed. 0.8 removes a box
            with four fifths of its area inside another.
        score_ratio: > 0; a box is removed only when its score is at most this
            times the containing box's. 1.0 (default): any lower-scoring box;
            0.5: only boxes scoring at most half the container's, which keeps a
            confident person standing behind another.

    Returns:
        (M,) int64 indices into ``boxes`` of the kept boxes, by descending
        score (as :func:`torchvision.ops.nms` returns them).

    Raises:
        ValueError: a ``containment`` outside (0, 1], a ``score_ratio`` that is
            not positive, or boxes and scores of mismatched shapes.
    """
    containment = _fraction(containment, "containment")
    if (isinstance(score_ratio, bool) or not isinstance(score_ratio, numbers.Real)
            or not math.isfinite(score_ratio) or score_ratio <= 0):
        raise ValueError(f"score_ratio must be a positive number, got {score_ratio!r}")
    b, s = _float64(boxes), _float64(scores)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {b.shape}")
    if s.ndim != 1 or len(s) != len(b):
        raise ValueError(f"scores must have shape ({len(b)},), got {s.shape}")
    b, s = torch.from_numpy(b), torch.from_numpy(s)
    order = torch.from_numpy(np.argsort(-s.numpy(), kind="stable"))
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    b, s = b[order], s[order]
    area = box_area(b)
    lt = torch.maximum(b[:, None, :2], b[None, :, :2])
    rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)  # (K, K), [i, j] = area(i ∩ j)
    # contained[i, j]: box i (lower-scoring, later) mostly lies in box j (earlier) and scores low enough
    ioa = torch.where(area[:, None] > 0, inter / area[:, None].clamp(min=1e-12), torch.zeros_like(inter))
    contained = (ioa >= containment) & (s[:, None] <= score_ratio * s[None, :])
    contained = torch.tril(contained, diagonal=-1).numpy()  # only earlier (higher-scoring) containers
    keep = np.ones(len(s), dtype=bool)
    for j in range(len(s)):  # greedy: a removed box removes nothing
        if keep[j]:
            keep[j + 1:] &= ~contained[j + 1:, j]
    return order.numpy()[keep].astype(np.int64)


def _float64(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.array(values, dtype=np.float64)  # a copy: the caller's array is never touched


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value <= 1):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def image_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array → (3, H, W) float in [0, 1]; tensors pass through."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@torch.inference_mode()
def detect(model: nn.Module, images: list, *, score_thresh: float = 0.05, max_dets: int = 100,
           suppress_contained: float | None = None) -> list[Detections]:
    """Pedestrian detections for each image (uint8 HWC arrays or float CHW tensors).

    The model must be in eval mode (a shared, cached model is never switched
    here). Only label 1 (pedestrian) is kept.

    ``suppress_contained``: None (default) keeps the model's boxes as they
    are; a containment in (0, 1] then removes the boxes mostly contained in a
    higher-scoring kept one (:meth:`Detections.suppress_contained`), after the
    score threshold and the ``max_dets`` cap. ``seconds`` times the model alone.
    """
    if suppress_contained is not None:
        _fraction(suppress_contained, "suppress_contained")
    if model.training:
        raise RuntimeError("detect() needs a model in eval mode; call model.eval() once when loading it")
    tensors = [image_tensor(im) for im in images]
    device = next(model.parameters()).device  # a model moved to a GPU (hkd predict --device cuda)
    out = []
    for tensor in tensors:
        start = time.perf_counter()
        (pred,) = model([tensor.to(device)])
        seconds = time.perf_counter() - start
        dets = Detections.from_prediction(pred, score_thresh=score_thresh, max_dets=max_dets, seconds=seconds)
        if suppress_contained is not None:
            dets = dets.suppress_contained(suppress_contained)
        out.append(dets)
    return out
