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

**A second look, zoomed out: people larger than the frame** (``zoom_out``,
off by default). A detector finds people over the range of heights it was
trained on; a person nearer the camera than any of them — taller than the
image, cut by its border, as on many photos — scores low or not at all.
``detect(..., zoom_out=Z)`` also runs the model on a canvas ``1/Z`` times the
image's size with the image at its top-left and the normalisation's mean
everywhere else (zero after normalising, what the model's own batching pads
with), so the model's resize shows that person ``Z`` times as tall. The
second pass's boxes lie in the image's own coordinates; they are clipped to
the image, only those at least ``zoom_min_height`` of the image's height are
kept (the pass is for large people: smaller ones are the first pass's, at a
resolution fit for them), and the two passes are merged by NMS
(:func:`merge_zoomed`). It costs one more forward pass. The measured effect
is in docs/BENCHMARKS.md ("People larger than the frame: a zoomed-out second
look"); ``hkd predict --zoom-out Z`` applies it.
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
# the canvas of the zoomed-out pass is filled with the models' normalisation mean (0 once normalised)
CANVAS_FILL = (0.485, 0.456, 0.406)
ZOOM_MIN_HEIGHT = 0.5  # the zoomed-out pass keeps boxes at least this share of the image's height
ZOOM_NMS = 0.5  # the merge's NMS IoU: the models' own box NMS threshold


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
    b, s = boxes_and_scores(boxes, scores)
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


def boxes_and_scores(boxes, scores) -> tuple[np.ndarray, np.ndarray]:
    """(K, 4) boxes and (K,) scores (numpy arrays, tensors or nested lists) as float64 copies;
    ValueError naming the shape that is wrong."""
    b, s = _float64(boxes), _float64(scores)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {b.shape}")
    if s.ndim != 1 or len(s) != len(b):
        raise ValueError(f"scores must have shape ({len(b)},), got {s.shape}")
    return b, s


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


def zoomed_canvas(image: torch.Tensor, zoom: float, fill=CANVAS_FILL) -> torch.Tensor:
    """(3, H, W) float image at the top-left of a (3, ceil(H/zoom), ceil(W/zoom)) canvas filled with
    ``fill`` (per channel): the model's resize then shows everything ``zoom`` times as large, and a box
    on the canvas is a box in the image's own coordinates."""
    zoom = _zoom(zoom)
    _, h, w = image.shape
    canvas = torch.tensor(fill, dtype=image.dtype, device=image.device).view(3, 1, 1)
    canvas = canvas.expand(3, math.ceil(h / zoom), math.ceil(w / zoom)).clone()
    canvas[:, :h, :w] = image
    return canvas


def merge_zoomed(base: Detections, zoomed: Detections, height: int, width: int, *,
                 min_height: float = ZOOM_MIN_HEIGHT, nms_thresh: float = ZOOM_NMS,
                 max_dets: int = 100) -> Detections:
    """The first pass's detections and the zoomed-out pass's large ones, merged.

    ``zoomed``'s boxes (in the image's coordinates, as :func:`zoomed_canvas` places the image)
    are clipped to the ``height`` × ``width`` image; those shorter than ``min_height`` × ``height``
    are dropped (a box wholly on the canvas's fill has height 0). The union is reduced by NMS at
    ``nms_thresh`` (the higher score wins) and cut to ``max_dets``, by descending score;
    ``seconds`` is the two passes' sum.
    """
    min_height = float(min_height)
    if not 0 <= min_height <= 1:
        raise ValueError(f"zoom_min_height must be a share of the image height in [0, 1], got {min_height!r}")
    boxes = zoomed.boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    tall = (boxes[:, 3] - boxes[:, 1] >= max(min_height * height, 1e-6)) & (boxes[:, 2] > boxes[:, 0])
    all_boxes = np.concatenate([base.boxes, boxes[tall]]).astype(np.float32)
    all_scores = np.concatenate([base.scores, zoomed.scores[tall]]).astype(np.float32)
    seconds = base.seconds + zoomed.seconds
    if not len(all_scores):
        return Detections(all_boxes.reshape(0, 4), all_scores, seconds)
    keep = batched_nms(torch.from_numpy(all_boxes), torch.from_numpy(all_scores),
                       torch.zeros(len(all_scores), dtype=torch.int64), nms_thresh).numpy()[:max_dets]
    return Detections(all_boxes[keep], all_scores[keep], seconds)


def detect_one(run, tensor: torch.Tensor, *, score_thresh: float = 0.05, max_dets: int = 100,
               suppress_contained: float | None = None, zoom_out: float | None = None,
               zoom_min_height: float = ZOOM_MIN_HEIGHT) -> Detections:
    """One image's pedestrians, ``run`` being the model (a (3, H, W) tensor → a torchvision
    prediction dict): the model's boxes, then the zoomed-out pass (:func:`merge_zoomed`) and the
    contained-box suppression when asked. Both backends (PyTorch, onnxruntime) go through this."""
    def timed(t):
        start = time.perf_counter()
        pred = run(t)
        return Detections.from_prediction(pred, score_thresh=score_thresh, max_dets=max_dets,
                                          seconds=time.perf_counter() - start)

    dets = timed(tensor)
    if zoom_out is not None:
        zoomed = timed(zoomed_canvas(tensor, zoom_out))
        dets = merge_zoomed(dets, zoomed, tensor.shape[1], tensor.shape[2], min_height=zoom_min_height,
                            max_dets=max_dets)
    if suppress_contained is not None:
        dets = dets.suppress_contained(suppress_contained)
    return dets


def check_options(suppress_contained: float | None = None, zoom_out: float | None = None) -> None:
    """A clear ValueError for an option out of range (before any image is read)."""
    if suppress_contained is not None:
        _fraction(suppress_contained, "suppress_contained")
    if zoom_out is not None:
        _zoom(zoom_out)


def _zoom(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < 1):
        raise ValueError(f"zoom_out must be a scale in (0, 1) (0.5: a second look at half size), got {value!r}")
    return float(value)


@torch.inference_mode()
def detect(model: nn.Module, images: list, *, score_thresh: float = 0.05, max_dets: int = 100,
           suppress_contained: float | None = None, zoom_out: float | None = None,
           zoom_min_height: float = ZOOM_MIN_HEIGHT) -> list[Detections]:
    """Pedestrian detections for each image (uint8 HWC arrays or float CHW tensors).

    The model must be in eval mode (a shared, cached model is never switched
    here). Only label 1 (pedestrian) is kept.

    ``zoom_out``: None (default) runs the model once; a scale Z in (0, 1) adds
    a second pass on a canvas ``1/Z`` times the image's size and merges its
    boxes taller than ``zoom_min_height`` of the image (:func:`merge_zoomed`):
    people larger than the model's training range. ``suppress_contained``:
    None (default) keeps the model's boxes as they are; a containment in
    (0, 1] then removes the boxes mostly contained in a higher-scoring kept one
    (:meth:`Detections.suppress_contained`), after the score threshold, the
    ``max_dets`` cap and the merge. ``seconds`` times the model alone (both
    passes).
    """
    check_options(suppress_contained, zoom_out)
    if model.training:
        raise RuntimeError("detect() needs a model in eval mode; call model.eval() once when loading it")
    device = next(model.parameters()).device  # a model moved to a GPU (hkd predict --device cuda)

    def run(tensor):
        (pred,) = model([tensor.to(device)])
        return pred

    return [detect_one(run, image_tensor(im), score_thresh=score_thresh, max_dets=max_dets,
                       suppress_contained=suppress_contained, zoom_out=zoom_out, zoom_min_height=zoom_min_height)
            for im in images]
