"""Where each missed pedestrian is lost: the stage of the detector that dropped it.

The computation behind ``hkd diagnose`` and the app's diagnosis view. One
:func:`~hkd.analysis.stages.staged_forward` pass per image keeps what every
stage handed on; :func:`diagnose` then looks at each ground-truth pedestrian of
the setup at the model's operating point (as ``hkd compare``: the lowest score
whose FPPI on the setup is at most 0.1, unless a score is given) and names
the stage where it was lost. The operating point is fixed on Reasonable, as
in ``hkd compare``, whichever setup chooses the cases.

**Stages, two-stage detector** (checked in this order for a missed pedestrian):

``nms``
    a candidate box before NMS scored at least the operating score and has
    IoU >= 0.5 with the pedestrian, and NMS removed every such box. The case
    names the *suppressor* (the kept box that removed the best of them) and
    whether the suppressor matched another pedestrian.
``localization``
    (a) such a candidate survived NMS but the official matching gave it to
    another pedestrian (or an ignore region, or its height fell outside the
    setup's filter); or (b) a proposal with IoU >= 0.5 was scored at least the
    operating score by the box head, but the box it regressed to has IoU < 0.5.
``rpn``
    no proposal handed to the ROI head has IoU >= 0.5 with the pedestrian.
``roi_score``
    such proposals exist, but the box head's pedestrian score of every one of
    them is below the operating score.

Checking ``nms`` and ``localization (a)`` first means a box the head got
right is never blamed on the RPN, even where the regression rescued a poor
proposal. **Single-stage** (RetinaNet): ``nms`` and ``localization (a)`` as
above; ``localization`` also when a candidate scoring at least the operating
score has IoU in [:data:`NEAR_IOU`, 0.5) with the pedestrian and no other
pedestrian overlaps it more; ``dense_head`` otherwise.

**Which pedestrians** are cases: the non-ignored ground truths of the setup
(category 1, the setup's height and visibility ranges), matched with the
official rules (:func:`hkd.eval.matching.match_image_arrays`): ignore regions
absorb detections, detections outside the setup's height filter take no part.
A pedestrian is ``found`` when a detection at or above the operating score
matches it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from hkd.analysis.stages import SINGLE_STAGE, TWO_STAGE, StagedOutput
from hkd.eval.compare import HEIGHT_BINS, VISIBILITY_BINS, bin_label, operating_point
from hkd.eval.matching import DET_TP, Setup, box_overlaps, get_setup, match_image_arrays
from hkd.eval.mr import PEDESTRIAN_CATEGORY, _group_by_image, evaluate_mr, parse_detections, parse_ground_truth

FOUND = "found"
RPN = "rpn"
ROI_SCORE = "roi_score"
NMS = "nms"
LOCALIZATION = "localization"
DENSE_HEAD = "dense_head"
TWO_STAGE_STAGES = (RPN, ROI_SCORE, NMS, LOCALIZATION)
SINGLE_STAGE_STAGES = (DENSE_HEAD, NMS, LOCALIZATION)
MATCH_IOU = 0.5  # the protocol's match criterion
NEAR_IOU = 0.3  # a box this close (and closest to this pedestrian) counts as a localization error
ANALYSIS = "Analysis"
# every non-ignored pedestrian from the lowest height bin up, at any visibility (hkd compare's breakdown)
ANALYSIS_SETUP = Setup(ANALYSIS, (float(HEIGHT_BINS[0][0]), math.inf), (0.0, math.inf))


class DiagnosisInputError(ValueError):
    """Ground truth or stage records that cannot be diagnosed (the message names the input)."""


@dataclass(frozen=True)
class ImageStages:
    """One image's stage outputs, keyed to the ground truth by ``image_id``."""

    image_id: int
    file_name: str | None
    stages: StagedOutput


def stages_over_dataset(
    model,
    gt: dict,
    load: Callable[[dict], np.ndarray],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[ImageStages]:
    """Run :func:`~hkd.analysis.stages.staged_forward` on every image of ``gt``.

    Args:
        model: a torchvision Faster R-CNN or RetinaNet in eval mode.
        gt: COCO-style GT dict; its ``images`` are run in file order.
        load: ``image record -> uint8 [H, W, 3]`` (where to find the file is the caller's).
        progress: called with ``(done, total)`` after each image.
    """
    from hkd.analysis.stages import staged_forward

    images = gt.get("images") if isinstance(gt, dict) else None
    if not images:
        raise DiagnosisInputError("ground truth: no 'images' to diagnose")
    out = []
    for n, record in enumerate(images):
        out.append(ImageStages(int(record["id"]), record.get("file_name"), staged_forward(model, load(record))))
        if progress is not None:
            progress(n + 1, len(images))
    return out


def detections_of(stages: Sequence[ImageStages]) -> list[dict]:
    """The final detections of a staged pass as a COCO results list (what ``hkd predict`` writes)."""
    out = []
    for image in stages:
        for (x1, y1, x2, y2), s in zip(image.stages.boxes, image.stages.scores):
            out.append({"image_id": image.image_id, "category_id": PEDESTRIAN_CATEGORY,
                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)})
    return out


def diagnose(
    gt: dict,
    runs: Mapping[str, Sequence[ImageStages]],
    *,
    score: float | None = None,
    fppi: float = 0.1,
    setup: str | Setup = "Reasonable",
    point_setup: str = "Reasonable",
) -> dict:
    """Stage of every pedestrian of ``setup`` for each model, a summary, and the pairs' extra misses.

    Args:
        gt: COCO-style GT dict (CityPersons fields ``height``, ``vis_ratio``, ``ignore``).
        runs: ``{model name: stage records of every GT image}`` (:func:`stages_over_dataset`).
        score: one operating score for every model; None: each model's score at FPPI ``fppi``.
        fppi: false positives per image that fix the operating point.
        setup: ``Reasonable``, ``Small``, ``Heavy``, ``All`` or :data:`ANALYSIS` (every
            non-ignored pedestrian >= 20 px at any visibility: those ``hkd compare``'s breakdown
            and disagreements count), or a :class:`~hkd.eval.matching.Setup`: which pedestrians are cases.
        point_setup: the setup whose FPPI fixes the operating point (Reasonable, as ``hkd compare``).

    Returns:
        ``{"setup", "operating_point": {name: …}, "cases": {name: [case…]},
        "summary": {name: …}, "pairs": [...]}`` (``pairs`` is empty for one model), JSON-able.
    """
    spec = ANALYSIS_SETUP if setup == ANALYSIS else get_setup(setup)
    point = get_setup(point_setup)
    if not runs:
        raise ValueError("runs must name at least one model")
    try:
        truth = parse_ground_truth(gt)
    except ValueError as exc:
        raise DiagnosisInputError(f"ground truth: {exc}") from None
    if PEDESTRIAN_CATEGORY not in truth.category_ids:
        raise DiagnosisInputError(f"ground truth: category {PEDESTRIAN_CATEGORY} (pedestrian) is not listed in "
                                  "'categories', so there is no pedestrian to diagnose")
    names = {int(im["id"]): im.get("file_name") for im in gt["images"]}
    result: dict = {"setup": spec.name, "operating_point": {}, "cases": {}, "summary": {}, "pairs": []}
    pedestrians = pedestrians_by_image(truth)  # once, for every model
    for name, records in runs.items():
        by_image = {r.image_id: r for r in records}
        unknown = sorted(set(by_image) - set(names))
        if unknown:
            raise DiagnosisInputError(f"{name}: stage records of image id {unknown[0]} which the ground truth "
                                      f"does not list ({len(unknown)} such images): records of other images?")
        dets = detections_of(records)
        curve = evaluate_mr(truth, parse_detections(dets, truth), [point]).setups[point.name].curve
        op = operating_point(curve, score, fppi, point.name)
        family = records[0].stages.family if records else TWO_STAGE
        cases = []
        for image_id, gts in zip(truth.image_ids.tolist(), pedestrians):
            if image_id in by_image:
                cases.extend(_image_cases(gts, by_image[image_id], op["score"], spec, names.get(image_id)))
        result["operating_point"][name] = {**op, "family": family}
        result["cases"][name] = cases
        result["summary"][name] = summarise(cases, family)
    for ref, student in permutations(runs, 2):
        result["pairs"].append(extra_misses(result["cases"][ref], result["cases"][student], ref, student,
                                            result["operating_point"][student]["family"]))
    return result


# ---------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------


def pedestrians_by_image(truth) -> list[dict[str, np.ndarray]]:
    """The pedestrian GTs of every image of ``truth`` (in ``image_ids`` order), each in file order:
    ``xyxy`` (G, 4), ``area``, ``height``, ``visibility``, ``ignore`` (G,), ``ann_id`` (G,)."""
    keep = np.flatnonzero(truth.ann_category == PEDESTRIAN_CATEGORY)
    order, bounds = _group_by_image(truth.ann_image[keep], len(truth.image_ids))
    grouped = keep[order]
    out = []
    for k in range(len(truth.image_ids)):
        rows = grouped[bounds[k]:bounds[k + 1]]
        box = truth.bbox[rows]
        out.append({
            "xyxy": np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1).reshape(-1, 4),
            "area": box[:, 2] * box[:, 3], "height": truth.height[rows], "visibility": truth.visibility[rows],
            "ignore": truth.ignore[rows], "ann_id": truth.ann_id[rows],
        })
    return out


def _iou(boxes: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """(N, G) plain IoU of xyxy boxes with xyxy GT boxes."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_g = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])
    return box_overlaps(boxes, area_b, gts, area_g, np.zeros(len(gts), dtype=bool))


def _box(values) -> list[float]:
    return [round(float(v), 2) for v in values]


def _image_cases(g: dict, image: ImageStages, score: float, spec, file_name) -> list[dict]:
    s = image.stages
    keep = s.scores >= score
    boxes, scores = s.boxes[keep], s.scores[keep]
    match = match_image_arrays(
        gt_xyxy=g["xyxy"], gt_area=g["area"], gt_height=g["height"], gt_visibility=g["visibility"],
        gt_ignore=g["ignore"], det_xyxy=boxes.astype(np.float64),
        det_area=((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float64),
        det_height=(boxes[:, 3] - boxes[:, 1]).astype(np.float64), det_scores=scores.astype(np.float64),
        setup=spec,
    )
    regular = np.flatnonzero(~match.gt_ignored)
    if len(regular) == 0:
        return []
    final_iou = _iou(boxes, g["xyxy"])  # (K, G)
    cand_iou = _iou(s.candidates, g["xyxy"])  # (C, G)
    prop_iou = _iou(s.proposals, g["xyxy"])  # (P, G)
    reg_iou = _iou(s.proposal_box, g["xyxy"])  # (P, G)
    # which final box each kept candidate became (final boxes are the kept candidates, in order)
    kept_rank = np.cumsum(s.kept) - 1
    cases = []
    for gi in regular:
        case = {
            "image_id": image.image_id, "file_name": file_name, "annotation_id": int(g["ann_id"][gi]),
            "box": _box(g["xyxy"][gi]), "height": float(g["height"][gi]), "visibility": float(g["visibility"][gi]),
        }
        det = int(match.gt_det_index[gi])
        case["detection"] = None if det < 0 else {
            "box": _box(boxes[det]), "score": float(scores[det]), "iou": float(final_iou[det, gi])}
        case.update(_proposal_facts(s, prop_iou[:, gi]))
        hits = np.flatnonzero(cand_iou[:, gi] >= MATCH_IOU)
        case["best_score_before_nms"] = float(s.candidate_score[hits].max()) if len(hits) else 0.0
        case["suppressor"] = None
        if det >= 0:
            case["stage"] = FOUND
        else:
            case["stage"] = _lost_stage(case, s, gi, score, hits, prop_iou[:, gi], reg_iou[:, gi], cand_iou,
                                        kept_rank, match, boxes, scores, g)
        case["nearby"] = _nearby(final_iou[:, gi], det, match, scores, boxes, gi)
        cases.append(case)
    return cases


def _proposal_facts(s: StagedOutput, prop_iou: np.ndarray) -> dict:
    if s.family == SINGLE_STAGE or len(prop_iou) == 0:
        return {"best_proposal": None}
    best = int(np.argmax(prop_iou))
    good = prop_iou >= MATCH_IOU
    return {"best_proposal": {
        "iou": float(prop_iou[best]), "objectness": float(s.objectness[best]), "rank": best,
        "box": _box(s.proposals[best]), "head_score": float(s.proposal_score[best]),
        "proposals_over_iou": int(np.count_nonzero(good)),
        "best_head_score": float(s.proposal_score[good].max()) if good.any() else 0.0,
    }}


def _lost_stage(case, s: StagedOutput, gi, score, hits, prop_iou, reg_iou, cand_iou, kept_rank, match, boxes,
                scores, g) -> str:
    strong = hits[s.candidate_score[hits] >= score]
    if len(strong):
        survivors = strong[s.kept[strong]]
        if len(survivors) == 0:
            best = strong[np.argmax(s.candidate_score[strong])]
            case["suppressor"] = _suppressor(s, int(best), kept_rank, match, boxes, g)
            return NMS
        return LOCALIZATION  # kept, yet the official matching gave the pedestrian no detection
    if s.family == SINGLE_STAGE:
        near = np.flatnonzero((s.candidate_score >= score) & (cand_iou[:, gi] >= NEAR_IOU))
        closest = near[np.argmax(cand_iou[near], axis=1) == gi] if len(near) else near
        return LOCALIZATION if len(closest) else DENSE_HEAD
    good = prop_iou >= MATCH_IOU
    if not good.any():
        return RPN
    if s.proposal_score[good].max() < score:
        return ROI_SCORE
    return LOCALIZATION  # well proposed and well scored, regressed to IoU < 0.5


def _suppressor(s: StagedOutput, candidate: int, kept_rank, match, boxes, g) -> dict | None:
    sup = int(s.suppressor[candidate])
    if sup < 0:
        return None  # removed by the per-image cap, not by a box
    final = int(kept_rank[sup])
    matched_other = None
    iou_gt = None
    if final < len(match.det_status) and final < len(boxes) and np.allclose(boxes[final], s.candidates[sup]):
        matched_other = bool(match.det_status[final] == DET_TP)
        other = int(match.det_gt_index[final])
        iou_gt = _box(g["xyxy"][other]) if matched_other and other >= 0 else None
    return {"box": _box(s.candidates[sup]), "score": float(s.candidate_score[sup]),
            "iou": float(_iou(s.candidates[sup][None], s.candidates[candidate][None])[0, 0]),
            "matched_other": matched_other, "other_box": iou_gt}


def _nearby(iou_row: np.ndarray, det: int, match, scores, boxes, gi) -> dict | None:
    """The best-scoring detection at the operating point that overlaps this pedestrian and did not count for it."""
    near = [k for k in np.flatnonzero(iou_row >= 0.1) if k != det]
    if not near:
        return None
    k = max(near, key=lambda i: scores[i])
    if match.det_status[k] == DET_TP:
        why = "matched another pedestrian"
    elif match.det_status[k] == "ignored":
        why = "absorbed by an ignore region"
    elif match.det_status[k] == "out_of_range":
        why = "outside the setup's height range"
    elif iou_row[k] < MATCH_IOU:
        why = f"IoU {iou_row[k]:.2f} below {MATCH_IOU}"
    else:
        why = "matched nothing"
    return {"box": _box(boxes[k]), "score": float(scores[k]), "iou": float(iou_row[k]), "why": why}


# ---------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------


def stages_of(family: str) -> tuple[str, ...]:
    """The loss stages of a detector family (``two_stage`` or ``single_stage``)."""
    return SINGLE_STAGE_STAGES if family == SINGLE_STAGE else TWO_STAGE_STAGES


def _count_stages(cases: Iterable[dict], stages: Sequence[str]) -> dict:
    cases = list(cases)
    missed = [c for c in cases if c["stage"] != FOUND]
    counts = {st: sum(c["stage"] == st for c in missed) for st in stages}
    return {
        "cases": len(cases), "found": len(cases) - len(missed), "missed": len(missed),
        "stages": {st: {"count": n, "share": n / len(missed) if missed else None} for st, n in counts.items()},
    }


def summarise(cases: Sequence[dict], family: str, key: str = "stage") -> dict:
    """Counts and shares of missed cases per stage, overall and per height and visibility bin."""
    stages = stages_of(family)
    out = _count_stages(cases, stages)
    for field, bins in (("height", HEIGHT_BINS), ("visibility", VISIBILITY_BINS)):
        out[field] = [{"bin": bin_label(lo, hi), **_count_stages((c for c in cases if lo <= c[field] < hi), stages)}
                      for lo, hi in bins]
    return out


def extra_misses(ref_cases: Sequence[dict], cases: Sequence[dict], ref: str, name: str, family: str) -> dict:
    """Pedestrians ``ref`` finds and ``name`` misses, by ``name``'s stage (overall and per bin)."""
    found_by_ref = {(c["image_id"], c["annotation_id"], tuple(c["box"])) for c in ref_cases if c["stage"] == FOUND}
    extra = [c for c in cases if c["stage"] != FOUND
             and (c["image_id"], c["annotation_id"], tuple(c["box"])) in found_by_ref]
    summary = summarise(extra, family)
    return {"reference": ref, "model": name, "count": len(extra), "stages": summary["stages"],
            "height": summary["height"], "visibility": summary["visibility"]}


def describe(pair: dict) -> str:
    """One sentence on where ``model`` loses what ``reference`` finds, e.g. for the app's headline."""
    if not pair["count"]:
        return f"{pair['model']} misses no pedestrian that {pair['reference']} finds."
    stage, info = max(pair["stages"].items(), key=lambda kv: kv[1]["count"])
    share = info["count"] / pair["count"]
    bins = [b for b in pair["height"] if b["stages"][stage]["count"]]
    where = ""
    if bins:
        top = max(bins, key=lambda b: b["stages"][stage]["count"])
        part = top["stages"][stage]["count"] / info["count"]
        where = f", {part:.0%} of those {top['bin']} px tall"
    return (f"Of the {pair['count']} pedestrians {pair['reference']} finds and {pair['model']} misses, "
            f"{share:.0%} are lost at {stage}{where}.")
