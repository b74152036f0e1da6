"""One forward pass that keeps what each stage of a detector handed to the next.

A detector's final boxes say what it found, not where it lost what it did not
find. :func:`staged_forward` runs a torchvision Faster R-CNN or RetinaNet
exactly as its own ``forward`` does in eval mode — the same submodules, in the
same order, so taps (:mod:`hkd.models.taps`) fire as usual — and keeps the
intermediate results the diagnosis needs:

* two-stage: the proposals the RPN hands to the ROI head (boxes, objectness
  probability, rank), the box head's pedestrian score of every proposal and
  the box it regresses to;
* both: the pedestrian *candidates* before non-maximum suppression (above the
  model's own ``score_thresh``, the boxes NMS sees), which of them NMS kept and,
  for each one it removed, the kept candidate that removed it;
* the final detections, equal to ``model([image])`` (tested).

Everything is returned in the input image's pixel coordinates. The pedestrian
is class 1 (:data:`hkd.models.inference.PEDESTRIAN`); other classes of a
multi-class detector take no part in the candidates (NMS is per class, so they
never suppress a pedestrian box).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou, boxes as box_ops, nms

from hkd.models.inference import PEDESTRIAN, image_tensor

TWO_STAGE = "two_stage"
SINGLE_STAGE = "single_stage"


@dataclass(frozen=True)
class StagedOutput:
    """What each stage produced on one image (pixel coordinates of the input image).

    Attributes:
        family: :data:`TWO_STAGE` or :data:`SINGLE_STAGE`.
        proposals: (P, 4) float32 xyxy, the RPN's proposals in rank order
            (two-stage; (0, 4) for a single-stage detector).
        objectness: (P,) float32, the RPN's objectness probability of each proposal.
        proposal_score: (P,) float32, the box head's pedestrian probability of each proposal.
        proposal_box: (P, 4) float32, the pedestrian box each proposal regresses to.
        candidates: (C, 4) float32, pedestrian boxes before NMS, descending score.
        candidate_score: (C,) float32.
        candidate_proposal: (C,) int64, the proposal each candidate comes from (-1 single-stage).
        kept: (C,) bool, candidates NMS kept (and the per-image cap left).
        suppressor: (C,) int64, for a removed candidate the index of the kept
            candidate that removed it (-1 for kept ones, or where only the
            per-image cap removed it).
        nms_iou: the IoU above which NMS removes a lower-scoring box.
        boxes: (K, 4) float32, the final pedestrian detections, descending score.
        scores: (K,) float32.
    """

    family: str
    proposals: np.ndarray
    objectness: np.ndarray
    proposal_score: np.ndarray
    proposal_box: np.ndarray
    candidates: np.ndarray
    candidate_score: np.ndarray
    candidate_proposal: np.ndarray
    kept: np.ndarray
    suppressor: np.ndarray
    nms_iou: float
    boxes: np.ndarray
    scores: np.ndarray


def detector_family(model: nn.Module) -> str:
    """:data:`TWO_STAGE` for a torchvision Faster R-CNN, :data:`SINGLE_STAGE` for a RetinaNet."""
    if isinstance(model, FasterRCNN):
        return TWO_STAGE
    if isinstance(model, RetinaNet):
        return SINGLE_STAGE
    raise TypeError(f"staged_forward knows torchvision's FasterRCNN and RetinaNet, not {type(model).__name__}")


@torch.inference_mode()
def staged_forward(model: nn.Module, image: np.ndarray | Tensor) -> StagedOutput:
    """Run ``model`` (eval mode) on one image and keep every stage's output.

    Args:
        model: a torchvision ``FasterRCNN`` or ``RetinaNet`` in eval mode (never switched here).
        image: ``uint8 [H, W, 3]`` RGB array or ``float [3, H, W]`` tensor in [0, 1].

    Returns:
        :class:`StagedOutput`.
    """
    if model.training:
        raise RuntimeError("staged_forward() needs a model in eval mode")
    family = detector_family(model)
    tensor = image_tensor(image).to(next(model.parameters()).device)
    original = tuple(tensor.shape[-2:])
    images, _ = model.transform([tensor])
    size = images.image_sizes[0]
    features = model.backbone(images.tensors)
    if isinstance(features, Tensor):
        features = {"0": features}
    if family == TWO_STAGE:
        stages = _two_stage(model, images, features)
    else:
        stages = _single_stage(model, images, list(features.values()))
    return _finish(family, stages, size, original)


def _two_stage(model: FasterRCNN, images, features: dict[str, Tensor]) -> dict[str, Tensor]:
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    rpn, roi = model.rpn, model.roi_heads
    levels = list(features.values())
    # RegionProposalNetwork.forward, eval branch
    objectness, deltas = rpn.head(levels)
    anchors = rpn.anchor_generator(images, levels)
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    decoded = rpn.box_coder.decode(deltas.detach(), anchors).view(1, -1, 4)
    proposals, rpn_scores = rpn.filter_proposals(decoded, objectness, images.image_sizes, per_level)
    # RoIHeads.forward, eval branch
    pooled = roi.box_roi_pool(features, proposals, images.image_sizes)
    logits, regression = roi.box_predictor(roi.box_head(pooled))
    boxes = roi.box_coder.decode(regression, proposals)  # (P, classes, 4)
    boxes = box_ops.clip_boxes_to_image(boxes, images.image_sizes[0])[:, PEDESTRIAN]
    scores = torch.softmax(logits, -1)[:, PEDESTRIAN]
    # RoIHeads.postprocess_detections before its NMS: score above score_thresh, no empty box
    index = torch.where(scores > roi.score_thresh)[0]
    index = index[box_ops.remove_small_boxes(boxes[index], min_size=1e-2)]
    return {
        "proposals": proposals[0], "objectness": rpn_scores[0], "proposal_score": scores,
        "proposal_box": boxes, "candidates": boxes[index], "candidate_score": scores[index],
        "candidate_proposal": index, "nms_iou": roi.nms_thresh, "cap": roi.detections_per_img,
    }


def _single_stage(model: RetinaNet, images, levels: list[Tensor]) -> dict[str, Tensor]:
    from torchvision.models.detection import _utils as det_utils

    head = model.head(levels)
    anchors = model.anchor_generator(images, levels)[0]
    anchors_per_level = [x.size(2) * x.size(3) for x in levels]
    per_anchor = head["cls_logits"].size(1) // sum(anchors_per_level)
    split = [n * per_anchor for n in anchors_per_level]
    logits = head["cls_logits"][0].split(split)
    regression = head["bbox_regression"][0].split(split)
    boxes, scores = [], []
    # RetinaNet.postprocess_detections before its NMS, pedestrian class only
    for level_logits, level_regression, level_anchors in zip(logits, regression, anchors.split(split)):
        num_classes = level_logits.shape[-1]
        flat = torch.sigmoid(level_logits).flatten()
        index = torch.where(flat > model.score_thresh)[0]
        top, order = flat[index].topk(det_utils._topk_min(index, model.topk_candidates, 0))
        index = index[order]
        anchor, label = index // num_classes, index % num_classes
        pedestrian = label == PEDESTRIAN
        decoded = model.box_coder.decode_single(level_regression[anchor[pedestrian]], level_anchors[anchor[pedestrian]])
        boxes.append(box_ops.clip_boxes_to_image(decoded, images.image_sizes[0]))
        scores.append(top[pedestrian])
    boxes, scores = torch.cat(boxes), torch.cat(scores)
    order = torch.argsort(scores, descending=True, stable=True)
    empty = torch.zeros((0, 4))
    return {
        "proposals": empty, "objectness": torch.zeros(0), "proposal_score": torch.zeros(0),
        "proposal_box": empty, "candidates": boxes[order], "candidate_score": scores[order],
        "candidate_proposal": torch.full((len(order),), -1, dtype=torch.int64), "nms_iou": model.nms_thresh,
        "cap": model.detections_per_img,
    }


def _finish(family: str, s: dict, size: tuple[int, int], original: tuple[int, int]) -> StagedOutput:
    """NMS with suppressors, the per-image cap, and every box back to the input image's pixels."""
    candidates, score = s["candidates"], s["candidate_score"]
    order = torch.argsort(score, descending=True, stable=True)
    candidates, score, origin = candidates[order], score[order], s["candidate_proposal"][order]
    keep = nms(candidates, score, s["nms_iou"])  # the same call as batched_nms on one class
    kept = torch.zeros(len(score), dtype=torch.bool)
    kept[keep[: s["cap"]]] = True
    suppressor = torch.full((len(score),), -1, dtype=torch.int64)
    if len(keep):
        overlap = box_iou(candidates, candidates[keep]) > s["nms_iou"]
        # the first kept box (highest score) above the IoU threshold is the one greedy NMS removed it with
        higher = keep.unsqueeze(0) < torch.arange(len(score)).unsqueeze(1)
        hit = overlap & higher
        has = hit.any(1) & ~kept
        suppressor[has] = keep[hit[has].int().argmax(1)]
    final = keep[: s["cap"]]

    def pixels(boxes: Tensor) -> np.ndarray:
        return resize_boxes(boxes.float(), size, original).cpu().numpy().astype(np.float32).reshape(-1, 4)

    def array(values: Tensor, dtype=np.float32) -> np.ndarray:
        return values.detach().cpu().numpy().astype(dtype)

    return StagedOutput(
        family=family,
        proposals=pixels(s["proposals"]),
        objectness=array(s["objectness"]),
        proposal_score=array(s["proposal_score"]),
        proposal_box=pixels(s["proposal_box"]),
        candidates=pixels(candidates),
        candidate_score=array(score),
        candidate_proposal=array(origin, np.int64),
        kept=array(kept, bool),
        suppressor=array(suppressor, np.int64),
        nms_iou=float(s["nms_iou"]),
        boxes=pixels(candidates[final]),
        scores=array(score[final]),
    )
