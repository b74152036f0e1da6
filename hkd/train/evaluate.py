"""Evaluate a detector on a dataset: predictions as COCO results, then MR⁻² and AP."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from hkd.models.inference import detect


def predict_dataset(
    model: nn.Module,
    dataset,
    *,
    indices: Iterable[int] | None = None,
    score_thresh: float = 0.05,
    max_dets: int = 100,
    progress: bool = False,
) -> list[dict]:
    """COCO results (``image_id``, ``category_id`` 1, ``bbox`` xywh, ``score``) for the dataset's images.

    Low scores are kept on purpose: MR⁻² and AP need the whole score range.
    """
    indices = list(range(len(dataset))) if indices is None else list(indices)
    results: list[dict] = []
    for i in tqdm(indices, desc="predict", unit="img", disable=not progress):
        image, target = dataset[i]
        (dets,) = detect(model, [image], score_thresh=score_thresh, max_dets=max_dets)
        results.extend(dets.to_coco(int(target["image_id"])))
    return results


def subset_gt(gt: dict, image_ids: set[int]) -> dict:
    """The COCO GT restricted to ``image_ids`` (images and their annotations)."""
    return {
        **gt,
        "images": [im for im in gt["images"] if im["id"] in image_ids],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in image_ids],
    }


def evaluate_detections(gt: dict, dets: list[dict]) -> dict:
    """``{"mr": {Reasonable, Small, Heavy, All}, "ap50", "ap"}`` (MR in percent, AP in [0, 1])."""
    from hkd.eval.ap import evaluate_ap
    from hkd.eval.mr import evaluate_mr

    mr = evaluate_mr(gt, dets)
    ap = evaluate_ap(gt, dets)
    return {"mr": {k: round(float(v), 4) for k, v in mr.mr.items()}, "ap50": float(ap["ap50"]), "ap": float(ap["ap"])}


def evaluate_model(model: nn.Module, dataset, *, max_images: int | None = None, progress: bool = False) -> dict:
    """Predict on the first ``max_images`` images of ``dataset`` and score them."""
    was_training = model.training
    model.eval()
    try:
        n = len(dataset) if not max_images else min(max_images, len(dataset))
        indices = range(n)
        with torch.inference_mode():
            dets = predict_dataset(model, dataset, indices=indices, progress=progress)
    finally:
        model.train(was_training)
    ids = {int(dataset.image_ids[i]) for i in indices}
    return {**evaluate_detections(subset_gt(dataset.coco_gt(), ids), dets), "images": n}
