"""COCO average precision (AP50 and AP@[.5:.95]) from pycocotools' COCOeval.

Differences from handing the raw CityPersons files to pycocotools, and why:

* Stock COCOeval overwrites each GT's ``ignore`` with ``iscrowd``, so the GT
  copy given to it has ``iscrowd = ignore or iscrowd``: ignored GTs then act
  as crowd regions (matched by intersection over the detection's area, any
  number of detections, neither TP nor FP), as in the MR⁻² protocol.
* ``area`` is recomputed as ``w * h`` of the box.
* GT annotation ids are renumbered 1..A in the copy: COCOeval stores the
  matched GT id and tests it for truth, so a GT with id 0 would turn its
  true positive into a false positive.
* Only category 1 (pedestrian) is scored, as in :mod:`hkd.eval.mr`.
* An empty detection list scores 0 instead of crashing ``COCO.loadRes``.

Detections per image are capped at COCO's usual 100 (``maxDets``). AP is -1.0
when there is no GT to score against (COCOeval's own convention).
"""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hkd.eval.mr import (
    PEDESTRIAN_CATEGORY,
    Detections,
    GroundTruth,
    parse_detections,
    parse_ground_truth,
)

__all__ = ["AP_MAX_DETS", "coco_evaluator", "evaluate_ap"]

AP_MAX_DETS = 100  # COCO's detections per image for the AP summary


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    coco.createIndex()
    return coco


def coco_evaluator(
    truth: GroundTruth,
    found: Detections,
    *,
    category_id: int = PEDESTRIAN_CATEGORY,
    ap50_only: bool = False,
) -> COCOeval:
    """COCOeval on this module's COCO copies of the GT and detections, after ``evaluate()``.

    Args:
        truth: parsed GT.
        found: detections parsed against ``truth``.
        category_id: the category scored.
        ap50_only: evaluate IoU 0.5, area range ``all`` and ``maxDets`` 100
            only (what AP50 reads; :mod:`hkd.eval.bootstrap` reuses its
            ``evalImgs``), instead of COCO's full parameter grid.

    Returns:
        The evaluator; ``evalImgs`` holds one entry per image (ascending id),
        None where the image has neither GT nor detection of the category.
    """
    images = [{"id": int(i)} for i in truth.image_ids]
    categories = [{"id": int(c)} for c in truth.category_ids]
    gt_annotations = [
        {
            "id": k + 1,
            "image_id": int(truth.image_ids[truth.ann_image[k]]),
            "category_id": int(truth.ann_category[k]),
            "bbox": box.tolist(),
            "area": float(box[2] * box[3]),
            "iscrowd": int(truth.ignore[k] or truth.iscrowd[k]),
        }
        for k, box in enumerate(truth.bbox)
    ]
    det_annotations = [
        {
            "id": k + 1,
            "image_id": int(truth.image_ids[found.image[k]]),
            "category_id": int(found.category[k]),
            "bbox": box.tolist(),
            "score": float(found.score[k]),
            "area": float(box[2] * box[3]),
            "iscrowd": 0,
        }
        for k, box in enumerate(found.bbox)
    ]

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = _coco(images, categories, gt_annotations)
        # built directly rather than with loadRes, which fails on an empty list
        coco_dt = _coco(images, categories, det_annotations)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.catIds = [category_id]
        if ap50_only:
            evaluator.params.iouThrs = np.array([0.5])
            evaluator.params.areaRng = [evaluator.params.areaRng[0]]  # "all"
            evaluator.params.areaRngLbl = ["all"]
            evaluator.params.maxDets = [AP_MAX_DETS]
        evaluator.evaluate()
    return evaluator


def evaluate_ap(
    gt: dict | GroundTruth,
    dets: Sequence[dict] | Detections,
    *,
    category_id: int = PEDESTRIAN_CATEGORY,
) -> dict[str, float]:
    """AP at IoU 0.5 and AP averaged over IoU 0.50:0.05:0.95, all box sizes.

    Args:
        gt: COCO-style GT dict (see :mod:`hkd.eval.mr`) or a parsed :class:`GroundTruth`.
        dets: COCO results list ``[{image_id, category_id, bbox: [x, y, w, h], score}]``
            or parsed :class:`Detections`.
        category_id: the category scored.

    Returns:
        ``{"ap50": float, "ap": float}`` in [0, 1]; -1.0 when no GT of
        ``category_id`` is left to score (all ignored, or none at all).

    Raises:
        ValueError: malformed GT or detections (see :func:`parse_ground_truth`).
    """
    truth = gt if isinstance(gt, GroundTruth) else parse_ground_truth(gt)
    found = dets if isinstance(dets, Detections) else parse_detections(dets, truth)
    evaluator = coco_evaluator(truth, found, category_id=category_id)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    return {"ap50": ap50, "ap": ap}
