"""Several detectors on one GT set: MR⁻², operating points, miss rate per bin, disagreements.

The computation behind ``hkd compare`` and the app's Evaluate page. Nothing
here re-implements matching: MR⁻² and the FPPI–miss-rate curves come from
:func:`hkd.eval.mr.evaluate_mr`, AP from :func:`hkd.eval.ap.evaluate_ap`, and
every "found / missed / false positive" from
:func:`hkd.eval.matching.match_image_arrays`; false positives of two models
are paired with :func:`hkd.eval.matching.match_pair`.

**Operating point.** Each model is looked at with one score threshold: by
default the lowest score at which its FPPI on ``setup`` (Reasonable) is still
at most ``fppi`` (0.1, the CityPersons convention), read off the curve that
MR⁻² averages; or the user's ``score`` for every model.

**Which ground truths count (breakdown and disagreements).** Every
pedestrian (category 1) GT that is *not* ignore-flagged and is at least as
tall as the lowest height bin (20 px by default), whatever its visibility.
They are matched under one analysis setup covering all bins at once —
height ``[20, ∞)``, visibility ``[0, ∞)`` — with the protocol's rules
(detections of height ``< 20 / 1.25`` px take no part; shorter or
ignore-flagged GTs absorb detections by IoA and count neither way). A GT is
*found* by a model when a detection scoring at least the model's operating
score matches it; matching is greedy by score, so thresholding keeps the
matches of the full run. GT id 0 is an ordinary GT here (the COCO-file quirk
of :mod:`hkd.eval.mr` applies to MR⁻² only). Bins are half-open
``[low, high)`` on the annotation's ``height`` and ``vis_ratio``.

**Disagreements**, per ordered pair of models ``(a, b)``:

* ``found_by_a_missed_by_b``: a counted GT that ``a`` finds at its
  operating point and ``b`` does not. ``box`` is the GT; ``score_a``,
  ``iou_a`` belong to ``a``'s matched detection; ``score_b`` is the best
  score of ``b``'s detections (any score) with IoU >= ``iou`` on the GT —
  below ``b``'s operating score, or taken by another GT — and ``iou_b`` its
  IoU; when no ``b`` detection reaches ``iou``, ``score_b`` is 0 and
  ``iou_b`` the largest IoU of any ``b`` detection (a near miss reads 0.4).
  ``severity`` is ``score_a - score_b``.
* ``fp_of_a_only``: a false positive of ``a`` at its operating point that
  no false positive of ``b`` at ``b``'s operating point matches (IoU >=
  ``iou``). ``box``/``score_a`` are the FP's; ``iou_a`` is its largest IoU
  with a counted GT (0: background, 0.3–0.5: a poorly placed box);
  ``score_b``/``iou_b`` as above on the FP's box; ``height`` and
  ``visibility`` are None. ``severity`` is ``score_a``.

The list is sorted by ``severity``, highest first (ties: pair order, kind,
image id, box).

**Errors**, per model: its false positives on ``setup`` at its operating
point classed as ``duplicate``, ``crowd``, ``part_of_person``,
``localization`` or ``background``, and the MR⁻² on ``setup`` it would
have without each type (:mod:`hkd.eval.errors`, which states the rules and
thresholds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any, Sequence

import numpy as np

from hkd.eval.ap import evaluate_ap
from hkd.eval.errors import false_positive_errors
from hkd.eval.matching import (
    DET_FP,
    FppiMissRateCurve,
    Setup,
    box_overlaps,
    get_setup,
    match_image_arrays,
    match_pair,
)
from hkd.eval.mr import (
    PEDESTRIAN_CATEGORY,
    Detections,
    GroundTruth,
    _group_by_image,
    evaluate_mr,
    parse_detections,
    parse_ground_truth,
)

__all__ = [
    "DISAGREEMENT_KINDS",
    "HEIGHT_BINS",
    "VISIBILITY_BINS",
    "ComparisonInputError",
    "ComparisonReport",
    "bin_label",
    "compare_models",
    "operating_point",
]

# GT height bins in pixels and visibility bins (visible fraction), [low, high)
HEIGHT_BINS: tuple[tuple[float, float], ...] = ((20, 30), (30, 50), (50, 80), (80, 120), (120, math.inf))
VISIBILITY_BINS: tuple[tuple[float, float], ...] = ((0, 0.2), (0.2, 0.65), (0.65, 0.9), (0.9, math.inf))
FOUND_MISSED = "found_by_a_missed_by_b"
FP_ONLY = "fp_of_a_only"
DISAGREEMENT_KINDS = (FOUND_MISSED, FP_ONLY)


class ComparisonInputError(ValueError):
    """Malformed GT or detections; ``source`` is ``"gt"`` or the model's name."""

    def __init__(self, source: str, message: str):
        super().__init__(message)
        self.source = source


@dataclass(frozen=True)
class ComparisonReport:
    """What :func:`compare_models` found; :meth:`to_dict` is the JSON of ``hkd compare --json``.

    Attributes:
        setup: the setup the operating points and :attr:`curves` are taken on.
        models: ``{name: {"mr", "ap50", "ap", "num_detections", "operating_point", "versus"}}``.
        breakdown: ``{name: {"score", "counted", "height": [bin…], "visibility": [bin…]}}``.
        disagreements: records sorted by ``severity`` (see the module docstring).
        curves: ``{name: {"fppi": [...], "miss_rate": [...]}}`` on :attr:`setup`,
            one point per evaluated detection by descending score (empty when
            the setup has no GT); plot with :func:`hkd.viz.plots.fppi_figure`.
        skipped: one line per input that was left out (e.g. detections of
            another category), for the user to see.
        errors: ``{name: {"counts", "counts_any_score", "mr_if_fixed",
            "thresholds", "false_positives"}}`` on :attr:`setup`
            (:meth:`hkd.eval.errors.FalsePositiveErrors.to_dict`): false
            positives at the operating point per error type, MR⁻² (percent)
            without each type's false positives at any score, the rules'
            thresholds, and one record per false positive at the operating
            point ``{"image_id", "file_name", "box": [x1, y1, x2, y2], "score",
            "type", "iou"}`` by descending score (about ``fppi`` x images per
            model, so it stays small).
    """

    setup: str
    models: dict[str, dict]
    breakdown: dict[str, dict]
    disagreements: list[dict]
    curves: dict[str, dict[str, list[float]]]
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"models", "breakdown", "disagreements", "errors"}``, JSON-able (no NaN or infinity)."""
        return {"models": self.models, "breakdown": self.breakdown, "disagreements": self.disagreements,
                "errors": self.errors}

    @property
    def false_positives(self) -> list[dict]:
        """Every model's false positives at its operating point, ``{"model", **record}`` (see :attr:`errors`)."""
        return [{"model": name, **record} for name, e in self.errors.items() for record in e["false_positives"]]


@dataclass(frozen=True)
class _Image:
    """One image's pedestrian GTs, in file order."""

    image_id: int
    file_name: str | None
    xyxy: np.ndarray  # (G, 4)
    area: np.ndarray
    height: np.ndarray
    visibility: np.ndarray
    ignore: np.ndarray


@dataclass(frozen=True)
class _ModelImage:
    """One model's pedestrian detections on one image and their match to its GTs."""

    xyxy: np.ndarray  # (D, 4)
    scores: np.ndarray
    status: np.ndarray  # (D,) matching.DET_* under the analysis setup, all detections
    max_iou: np.ndarray  # (D,) largest IoU with a counted GT
    gt_det: np.ndarray  # (G,) detection matching each counted GT, -1 if none
    gt_iou: np.ndarray  # (D, G) IoU of every detection with every GT


def compare_models(
    gt: dict,
    dets: dict[str, list[dict]],
    *,
    score: float | None = None,
    fppi: float = 0.1,
    setup: str = "Reasonable",
    height_bins: Sequence[tuple[float, float]] = HEIGHT_BINS,
    visibility_bins: Sequence[tuple[float, float]] = VISIBILITY_BINS,
    iou: float = 0.5,
    max_disagreements: int | None = None,
) -> ComparisonReport:
    """Compare detectors on one CityPersons-style GT set (see the module docstring for the rules).

    Args:
        gt: COCO-style GT dict, as ``hkd eval --gt`` reads (:mod:`hkd.eval.mr`).
        dets: ``{model name: COCO results list}``, as ``hkd predict`` writes; order kept.
        score: one operating score for every model; None: each model's own
            score at FPPI ``fppi`` on ``setup``.
        fppi: the false positives per image that fix the operating point (> 0).
        setup: the setup of the operating point and of the curves (a name of
            :data:`hkd.eval.matching.SETUP_NAMES`). MR⁻² is given for all four.
        height_bins: ``(low, high)`` GT height bins in pixels, ``[low, high)``;
            ``math.inf`` for an open top. The lowest ``low`` is the smallest GT counted.
        visibility_bins: ``(low, high)`` visible-fraction bins, ``[low, high)``.
        iou: minimum IoU of a match in the breakdown and the disagreements
            (MR⁻² always uses the protocol's 0.5).
        max_disagreements: keep at most this many records per ordered pair and
            kind (the most severe); None keeps all. ``models[a]["versus"]``
            has the full counts.

    Returns:
        :class:`ComparisonReport`.

    Raises:
        ComparisonInputError: malformed GT or detections (a ValueError naming
            ``"gt"`` or the model, and the first bad entry).
        ValueError: a bad argument (no model, unknown setup, bins, fppi, iou).
    """
    spec = get_setup(setup)
    heights = _check_bins(height_bins, "height_bins")
    visibilities = _check_bins(visibility_bins, "visibility_bins")
    if not isinstance(dets, dict) or not dets:
        raise ValueError("dets must map at least one model name to its detections list")
    if score is not None and not (isinstance(score, (int, float)) and math.isfinite(score)):
        raise ValueError(f"score must be a finite number, got {score!r}")
    if not (isinstance(fppi, (int, float)) and math.isfinite(fppi) and fppi > 0):
        raise ValueError(f"fppi must be a positive number, got {fppi!r}")
    if not (isinstance(iou, (int, float)) and 0 < iou <= 1):
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    if max_disagreements is not None and (not isinstance(max_disagreements, int) or max_disagreements < 0):
        raise ValueError(f"max_disagreements must be a non-negative integer or None, got {max_disagreements!r}")

    try:
        truth = parse_ground_truth(gt)
    except ValueError as exc:
        raise ComparisonInputError("gt", f"ground truth: {exc}") from None
    found: dict[str, Detections] = {}
    skipped: list[str] = []
    for name, results in dets.items():
        try:
            found[name] = parse_detections(results, truth)
        except ValueError as exc:
            raise ComparisonInputError(name, f"detections of {name!r}: {exc}") from None
        other = int(np.count_nonzero(found[name].category != PEDESTRIAN_CATEGORY))
        if other:
            skipped.append(f"{name}: {other} detection(s) of a category other than "
                           f"{PEDESTRIAN_CATEGORY} (pedestrian) not evaluated")
    if PEDESTRIAN_CATEGORY not in truth.category_ids:
        skipped.append(f"ground truth: category {PEDESTRIAN_CATEGORY} (pedestrian) is not listed in "
                       "'categories', so no MR⁻² exists")

    analysis = Setup("Analysis", (float(heights[0][0]), math.inf), (0.0, math.inf))
    images = _gt_images(gt, truth)
    models: dict[str, dict] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    operating: dict[str, float] = {}
    per_image: dict[str, list[_ModelImage]] = {}
    errors: dict[str, dict] = {}
    file_names = {img.image_id: img.file_name for img in images}
    for name, detections in found.items():
        mr = evaluate_mr(truth, detections)
        ap = evaluate_ap(truth, detections)
        result = mr.setups[spec.name]
        op = operating_point(result.curve, score, fppi, spec.name)
        operating[name] = op["score"]
        curves[name] = _curve_lists(result.curve)
        models[name] = {
            "mr": mr.mr,
            "ap50": ap["ap50"],
            "ap": ap["ap"],
            "num_detections": int(np.count_nonzero(detections.category == PEDESTRIAN_CATEGORY)),
            "operating_point": op,
        }
        per_image[name] = _match_model(images, truth, detections, analysis, iou)
        errors[name] = false_positive_errors(truth, detections, score=op["score"], setup=spec).to_dict()
        errors[name]["false_positives"] = [{"image_id": r["image_id"], "file_name": file_names[r["image_id"]], **r}
                                           for r in errors[name]["false_positives"]]

    counted = [~img.ignore & (img.height >= analysis.height_range[0]) for img in images]
    breakdown = {
        name: _breakdown(images, counted, per_image[name], operating[name], heights, visibilities)
        for name in found
    }
    records, counts = _disagreements(images, counted, per_image, operating, iou)
    for name in found:
        models[name]["versus"] = {
            other: {kind: counts[(name, other, kind)] for kind in DISAGREEMENT_KINDS}
            for other in found if other != name
        }
    records = _rank(records, list(found), max_disagreements)
    return ComparisonReport(
        setup=spec.name,
        models=models,
        breakdown=breakdown,
        disagreements=records,
        curves=curves,
        skipped=skipped,
        errors=errors,
    )


# ---------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------


def _check_bins(bins: Sequence[tuple[float, float]], name: str) -> list[tuple[float, float]]:
    try:
        pairs = [(float(lo), float(hi)) for lo, hi in bins]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of (low, high) pairs, got {bins!r}") from None
    if not pairs:
        raise ValueError(f"{name} must have at least one (low, high) bin")
    for lo, hi in pairs:
        if not (math.isfinite(lo) and lo >= 0 and hi > lo):
            raise ValueError(f"{name} has bin ({lo:g}, {hi:g}); expected 0 <= low < high (high may be inf)")
    return sorted(pairs)


def bin_label(lo: float, hi: float) -> str:
    """``20-30``, ``<0.2``, ``120+``: how a ``[low, high)`` bin is named in reports."""
    if math.isinf(hi):
        return f"{lo:g}+"
    if lo == 0:
        return f"<{hi:g}"
    return f"{lo:g}-{hi:g}"


def _gt_images(gt: dict, truth: GroundTruth) -> list[_Image]:
    """Pedestrian GTs of every GT image (ascending id), with corners in pixels."""
    names = {img["id"]: img.get("file_name") for img in gt["images"]}
    keep = np.flatnonzero(truth.ann_category == PEDESTRIAN_CATEGORY)
    order, bounds = _group_by_image(truth.ann_image[keep], len(truth.image_ids))
    rows = keep[order]
    out = []
    for k, image_id in enumerate(truth.image_ids):
        r = rows[bounds[k]:bounds[k + 1]]
        box = truth.bbox[r]
        file_name = names.get(int(image_id))
        out.append(_Image(
            image_id=int(image_id),
            file_name=None if file_name is None else str(file_name),
            xyxy=np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1),
            area=box[:, 2] * box[:, 3],
            height=truth.height[r],
            visibility=truth.visibility[r],
            ignore=truth.ignore[r],
        ))
    return out


def _match_model(images: list[_Image], truth: GroundTruth, found: Detections, analysis: Setup,
                 iou: float) -> list[_ModelImage]:
    """Match every detection of one model under the analysis setup, image by image."""
    keep = np.flatnonzero(found.category == PEDESTRIAN_CATEGORY)
    order, bounds = _group_by_image(found.image[keep], len(truth.image_ids))
    rows = keep[order]
    out = []
    for k, img in enumerate(images):
        r = rows[bounds[k]:bounds[k + 1]]
        box, scores = found.bbox[r], found.score[r]
        xyxy = np.concatenate([box[:, :2], box[:, :2] + box[:, 2:]], axis=1)
        area = box[:, 2] * box[:, 3]
        match = match_image_arrays(
            gt_xyxy=img.xyxy, gt_area=img.area, gt_height=img.height, gt_visibility=img.visibility,
            gt_ignore=img.ignore, det_xyxy=xyxy, det_area=area, det_height=box[:, 3], det_scores=scores,
            setup=analysis, iou_threshold=iou,
        )
        gt_iou = box_overlaps(xyxy, area, img.xyxy, img.area, np.zeros(len(img.xyxy), dtype=bool))
        out.append(_ModelImage(xyxy=xyxy, scores=scores, status=match.det_status, max_iou=match.det_max_iou,
                               gt_det=match.gt_det_index, gt_iou=gt_iou))
    return out


def operating_point(curve: FppiMissRateCurve | None, score: float | None, fppi: float, setup: str) -> dict:
    """The score threshold of one model and where it puts the model on ``setup``'s curve."""
    rule = "given" if score is not None else f"fppi={fppi:g}"
    if curve is None:
        if score is None:
            raise ValueError(f"setup {setup!r} has no non-ignored ground truth, so no score reaches "
                             f"FPPI {fppi:g} on it; choose another setup or give a score")
        return {"score": float(score), "rule": rule, "setup": setup, "fppi": None, "miss_rate": None}
    if score is None:
        scores = curve.scores
        if len(scores) == 0:
            score = 0.0  # nothing was evaluated: keeping everything costs no FP
        else:
            # the last point of each run of equal scores is where that threshold lands
            last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
            ok = last[curve.fppi[last] <= fppi]
            # even the best detection overshoots: a threshold just above it keeps none
            score = float(scores[ok[-1]]) if len(ok) else float(np.nextafter(scores[0], math.inf))
    kept = int(np.count_nonzero(curve.scores >= score))
    return {
        "score": float(score),
        "rule": rule,
        "setup": setup,
        "fppi": float(curve.fppi[kept - 1]) if kept else 0.0,
        "miss_rate": float(curve.miss_rate[kept - 1]) if kept else 1.0,
    }


def _curve_lists(curve: FppiMissRateCurve | None) -> dict[str, list[float]]:
    if curve is None:
        return {"fppi": [], "miss_rate": []}
    return {"fppi": curve.fppi.tolist(), "miss_rate": curve.miss_rate.tolist()}


def _found(m: _ModelImage, score: float) -> np.ndarray:
    """(G,) bool: GTs matched by a detection scoring at least ``score``."""
    hit = m.gt_det >= 0
    out = np.zeros(len(m.gt_det), dtype=bool)
    out[hit] = m.scores[m.gt_det[hit]] >= score
    return out


def _breakdown(images: list[_Image], counted: list[np.ndarray], matches: list[_ModelImage], score: float,
               heights: list[tuple[float, float]], visibilities: list[tuple[float, float]]) -> dict:
    height = np.concatenate([img.height[c] for img, c in zip(images, counted)])
    visibility = np.concatenate([img.visibility[c] for img, c in zip(images, counted)])
    missed = np.concatenate([~_found(m, score)[c] for m, c in zip(matches, counted)])

    def rows(values: np.ndarray, bins: list[tuple[float, float]]) -> list[dict]:
        out = []
        for lo, hi in bins:
            inside = (values >= lo) & (values < hi)
            n, m = int(np.count_nonzero(inside)), int(np.count_nonzero(missed & inside))
            out.append({"bin": bin_label(lo, hi), "low": lo, "high": None if math.isinf(hi) else hi,
                        "gt": n, "missed": m, "miss_rate": m / n if n else None})
        return out

    total, lost = len(missed), int(np.count_nonzero(missed))
    return {
        "score": score,
        "counted": {"gt": total, "missed": lost, "miss_rate": lost / total if total else None},
        "height": rows(height, heights),
        "visibility": rows(visibility, visibilities),
    }


def _best_on(m: _ModelImage, overlaps: np.ndarray, iou: float) -> tuple[float, float]:
    """``(score, iou)`` of the best-scoring detection with IoU >= ``iou`` on a box, given the
    (D,) IoUs of the model's detections with it; ``(0, largest IoU)`` when none reaches ``iou``."""
    if len(overlaps) == 0:
        return 0.0, 0.0
    hits = np.flatnonzero(overlaps >= iou)
    if len(hits) == 0:
        return 0.0, float(overlaps.max())
    best = hits[np.argmax(m.scores[hits])]
    return float(m.scores[best]), float(overlaps[best])


def _disagreements(images: list[_Image], counted: list[np.ndarray], per_image: dict[str, list[_ModelImage]],
                   operating: dict[str, float], iou: float) -> tuple[list[dict], dict]:
    counts = {(a, b, kind): 0 for a, b in permutations(per_image, 2) for kind in DISAGREEMENT_KINDS}
    records: list[dict] = []
    for k, img in enumerate(images):
        found = {name: _found(per_image[name][k], operating[name]) & counted[k] for name in per_image}
        fps = {name: np.flatnonzero((per_image[name][k].status == DET_FP)
                                    & (per_image[name][k].scores >= operating[name])) for name in per_image}
        for a, b in permutations(per_image, 2):
            ma, mb = per_image[a][k], per_image[b][k]
            for g in np.flatnonzero(found[a] & ~found[b]):
                det = int(ma.gt_det[g])
                score_b, iou_b = _best_on(mb, mb.gt_iou[:, g], iou)
                score_a = float(ma.scores[det])
                records.append(_record(a, b, FOUND_MISSED, img, img.xyxy[g], score_a, score_b,
                                       float(ma.gt_iou[det, g]), iou_b, score_a - score_b,
                                       float(img.height[g]), float(img.visibility[g])))
                counts[(a, b, FOUND_MISSED)] += 1
            if len(fps[a]) == 0:
                continue
            a_boxes = ma.xyxy[fps[a]]
            pair = match_pair(a_boxes, ma.scores[fps[a]], mb.xyxy[fps[b]], mb.scores[fps[b]], iou)
            a_area = (a_boxes[:, 2] - a_boxes[:, 0]) * (a_boxes[:, 3] - a_boxes[:, 1])
            b_area = (mb.xyxy[:, 2] - mb.xyxy[:, 0]) * (mb.xyxy[:, 3] - mb.xyxy[:, 1])
            b_iou = box_overlaps(mb.xyxy, b_area, a_boxes, a_area, np.zeros(len(a_boxes), dtype=bool))
            for j in np.flatnonzero(pair.a_only):
                det = int(fps[a][j])
                score_b, iou_b = _best_on(mb, b_iou[:, j], iou)
                score_a = float(ma.scores[det])
                records.append(_record(a, b, FP_ONLY, img, ma.xyxy[det], score_a, score_b,
                                       float(ma.max_iou[det]), iou_b, score_a, None, None))
                counts[(a, b, FP_ONLY)] += 1
    return records, counts


def _record(a: str, b: str, kind: str, img: _Image, box: np.ndarray, score_a: float, score_b: float,
            iou_a: float, iou_b: float, severity: float, height: float | None,
            visibility: float | None) -> dict:
    return {
        "a": a, "b": b, "kind": kind, "image_id": img.image_id, "file_name": img.file_name,
        "box": [float(v) for v in box], "score_a": score_a, "score_b": score_b,
        "iou_a": iou_a, "iou_b": iou_b, "height": height, "visibility": visibility, "severity": severity,
    }


def _rank(records: list[dict], names: list[str], limit: int | None) -> list[dict]:
    position = {name: i for i, name in enumerate(names)}
    kind_order = {kind: i for i, kind in enumerate(DISAGREEMENT_KINDS)}

    def key(r: dict) -> tuple:
        return (-r["severity"], position[r["a"]], position[r["b"]], kind_order[r["kind"]], r["image_id"], r["box"])

    ranked = sorted(records, key=key)
    if limit is None:
        return ranked
    kept, seen = [], {}
    for r in ranked:
        group = (r["a"], r["b"], r["kind"])
        if seen.get(group, 0) < limit:
            seen[group] = seen.get(group, 0) + 1
            kept.append(r)
    return kept
