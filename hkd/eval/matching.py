"""Per-image detection matching and the FPPI–miss-rate curve of the CityPersons protocol.

This module is the single implementation of the matching rules of the official
CityPersons evaluation (``evaluation/eval_script/eval_MR_multisetup.py`` in
``cvgroup-njust/CityPersons``). :mod:`hkd.eval.mr` calls
:func:`match_image_arrays` for every image, and the app calls
:func:`match_image` for failure analysis, so both see exactly the same TP/FP.

Rules, per image and evaluation setup:

* A ground truth (GT) is *ignored* when its own ignore flag is set or its
  height or visibility ratio falls outside the setup's inclusive ranges.
  GTs are visited regular-first, ignored-last (stable order otherwise).
* Detections are visited by score, highest first (stable for ties), cut to
  the best :data:`MAX_DETS`, and only those with height in
  ``[h_min / 1.25, h_max * 1.25)`` take part (the rest are ``out_of_range``).
* Overlap is IoU for a regular GT and intersection over the *detection's*
  area (IoA) for an ignored GT; boxes that do not overlap with positive
  width and height have overlap 0.
* Greedy matching at overlap >= 0.5: each detection takes the unmatched
  regular GT with the largest IoU (the *last* such GT when IoUs tie, as the
  official loop replaces on equality); only when no regular GT qualifies does
  it fall into the *first* ignored GT whose IoA qualifies. Ignored GTs absorb
  any number of detections, and such detections count neither as TP nor FP.

:func:`match_pair` matches two models' detections with each other by the
same overlap and greedy code (model B's boxes play the regular GTs), so the
app's teacher/student agreement and :mod:`hkd.eval.compare`'s disagreements
pair boxes exactly as the MR⁻² protocol pairs detections with people.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DET_FP",
    "DET_IGNORED",
    "DET_OUT_OF_RANGE",
    "DET_TP",
    "EXPAND_FILTER",
    "IOU_THRESHOLD",
    "MAX_DETS",
    "SETUPS",
    "SETUP_NAMES",
    "FppiMissRateCurve",
    "ImageMatch",
    "PairMatch",
    "Setup",
    "box_overlaps",
    "fppi_miss_rate_curve",
    "get_setup",
    "match_image",
    "match_image_arrays",
    "match_pair",
]

# Official "infinite" upper bound (1e5 ** 2).
_NO_LIMIT = 1e10
IOU_THRESHOLD = 0.5
MAX_DETS = 1000  # detections kept per image, best scores first
EXPAND_FILTER = 1.25  # detection heights are kept in [h_min / 1.25, h_max * 1.25)

DET_TP = "tp"
DET_FP = "fp"
DET_IGNORED = "ignored"  # matched an ignored GT: neither TP nor FP
DET_OUT_OF_RANGE = "out_of_range"  # beyond the top MAX_DETS or outside the height filter


@dataclass(frozen=True)
class Setup:
    """One evaluation subset of the CityPersons protocol.

    Both ranges are inclusive; GTs outside them are ignored (not removed).
    """

    name: str
    height_range: tuple[float, float]  # GT height in pixels
    visibility_range: tuple[float, float]  # GT visible-area fraction


SETUPS: dict[str, Setup] = {
    s.name: s
    for s in (
        Setup("Reasonable", (50.0, _NO_LIMIT), (0.65, _NO_LIMIT)),
        Setup("Small", (50.0, 75.0), (0.65, _NO_LIMIT)),
        Setup("Heavy", (50.0, _NO_LIMIT), (0.2, 0.65)),
        Setup("All", (20.0, _NO_LIMIT), (0.2, _NO_LIMIT)),
    )
}
SETUP_NAMES: tuple[str, ...] = tuple(SETUPS)


def get_setup(setup: str | Setup) -> Setup:
    """Return the :class:`Setup` named ``setup`` (a :class:`Setup` passes through)."""
    if isinstance(setup, Setup):
        return setup
    try:
        return SETUPS[setup]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown evaluation setup {setup!r}; choose one of {', '.join(SETUP_NAMES)}"
        ) from None


@dataclass(frozen=True)
class ImageMatch:
    """Matching result of one image for one setup; arrays are in *input* order.

    Attributes:
        setup: name of the evaluation setup.
        det_status: (D,) str, one of ``tp``, ``fp``, ``ignored`` (absorbed by an
            ignored GT), ``out_of_range`` (beyond the top ``MAX_DETS`` or outside
            the setup's detection height filter; not evaluated).
        det_gt_index: (D,) int64, index of the matched GT (regular or ignored), -1 if none.
        det_iou: (D,) float64, overlap with the matched GT (IoU, or IoA for an
            ignored GT), 0 if unmatched.
        det_max_iou: (D,) float64, largest IoU with any regular GT of the image
            (matched or not), 0 for ``out_of_range`` detections; tells a
            localisation error (say 0.45) from a background false positive.
        gt_ignored: (G,) bool, GT ignored in this setup (flag or out of range).
        gt_det_index: (G,) int64, index of the detection that matched this
            regular GT, -1 if none (always -1 for ignored GTs).
    """

    setup: str
    det_status: np.ndarray
    det_gt_index: np.ndarray
    det_iou: np.ndarray
    det_max_iou: np.ndarray
    gt_ignored: np.ndarray
    gt_det_index: np.ndarray

    @property
    def gt_matched(self) -> np.ndarray:
        """(G,) bool: regular GTs found by a detection."""
        return self.gt_det_index >= 0

    @property
    def gt_missed(self) -> np.ndarray:
        """(G,) bool: regular GTs no detection found (false negatives)."""
        return ~self.gt_ignored & (self.gt_det_index < 0)

    @property
    def num_tp(self) -> int:
        return int(np.count_nonzero(self.det_status == DET_TP))

    @property
    def num_fp(self) -> int:
        return int(np.count_nonzero(self.det_status == DET_FP))

    @property
    def num_fn(self) -> int:
        return int(np.count_nonzero(self.gt_missed))


def box_overlaps(
    det_xyxy: np.ndarray,
    det_area: np.ndarray,
    gt_xyxy: np.ndarray,
    gt_area: np.ndarray,
    gt_ignored: np.ndarray,
) -> np.ndarray:
    """Overlap matrix of the protocol: IoU, or IoA (over the detection) for ignored GTs.

    Areas are passed in rather than derived from the corners so that COCO
    ``[x, y, w, h]`` boxes give bit-for-bit the official arithmetic
    (area ``w * h``, corner ``x + w``).

    Args:
        det_xyxy: (D, 4) float64 detection corners ``x1, y1, x2, y2`` in pixels.
        det_area: (D,) float64 detection areas in pixels².
        gt_xyxy: (G, 4) float64 GT corners.
        gt_area: (G,) float64 GT areas.
        gt_ignored: (G,) bool, GTs scored by IoA instead of IoU.

    Returns:
        (D, G) float64 overlaps in [0, 1] (up to rounding); 0 where the boxes
        do not overlap with positive width and height.
    """
    inter_w = np.minimum(det_xyxy[:, None, 2], gt_xyxy[None, :, 2]) - np.maximum(
        det_xyxy[:, None, 0], gt_xyxy[None, :, 0]
    )
    inter_h = np.minimum(det_xyxy[:, None, 3], gt_xyxy[None, :, 3]) - np.maximum(
        det_xyxy[:, None, 1], gt_xyxy[None, :, 1]
    )
    inter = inter_w * inter_h
    # same operation order as the official loop: (det + gt) - inter
    union = np.where(
        gt_ignored[None, :], det_area[:, None], det_area[:, None] + gt_area[None, :] - inter
    )
    overlapping = (inter_w > 0) & (inter_h > 0)
    out = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=overlapping)
    return out


def _greedy_match(overlaps: np.ndarray, num_regular: int, threshold: float) -> np.ndarray:
    """Greedy assignment of score-sorted detections to regular-first GTs.

    Args:
        overlaps: (D, G) from :func:`box_overlaps`, rows in score order,
            columns with the ``num_regular`` regular GTs first.
        threshold: minimum overlap of a match.

    Returns:
        (D,) int64 column matched by each detection, -1 if none.
    """
    num_dets = overlaps.shape[0]
    matched = np.full(num_dets, -1, dtype=np.int64)
    hits = overlaps >= threshold

    # Fallback for every detection: the *first* ignored GT that qualifies. The
    # official loop breaks at the next ignored GT once anything has matched,
    # so a later ignored GT with a larger IoA never wins.
    region_hits = hits[:, num_regular:]
    if region_hits.shape[1]:
        in_region = region_hits.any(axis=1)
        matched[in_region] = num_regular + region_hits.argmax(axis=1)[in_region]

    # Regular GTs: sequential, since each match removes a GT for later detections.
    regular_hits = hits[:, :num_regular]
    taken = np.zeros(num_regular, dtype=bool)
    for det in np.flatnonzero(regular_hits.any(axis=1)):
        candidates = np.flatnonzero(regular_hits[det] & ~taken)
        if candidates.size == 0:
            continue  # keeps the ignored-GT fallback, if any
        values = overlaps[det, candidates]
        # the official loop replaces the best on *equal* IoU: the last maximum wins
        best = candidates[candidates.size - 1 - int(np.argmax(values[::-1]))]
        matched[det] = best
        taken[best] = True
    return matched


def match_image_arrays(
    *,
    gt_xyxy: np.ndarray,
    gt_area: np.ndarray,
    gt_height: np.ndarray,
    gt_visibility: np.ndarray,
    gt_ignore: np.ndarray,
    det_xyxy: np.ndarray,
    det_area: np.ndarray,
    det_height: np.ndarray,
    det_scores: np.ndarray,
    setup: str | Setup = "Reasonable",
    iou_threshold: float = IOU_THRESHOLD,
) -> ImageMatch:
    """Match one image's detections to its GTs under one setup (the protocol core).

    Inputs are validated float64/bool arrays (see :func:`match_image` for a
    friendlier entry point). Shapes: ``gt_xyxy`` (G, 4); ``gt_area``,
    ``gt_height``, ``gt_visibility``, ``gt_ignore`` (G,); ``det_xyxy`` (D, 4);
    ``det_area``, ``det_height``, ``det_scores`` (D,). Heights in pixels.

    Returns:
        :class:`ImageMatch` with arrays in input order.
    """
    spec = get_setup(setup)
    (h_lo, h_hi), (v_lo, v_hi) = spec.height_range, spec.visibility_range
    num_gts, num_dets = len(gt_xyxy), len(det_xyxy)

    gt_ignored = (
        gt_ignore.astype(bool)
        | (gt_height < h_lo)
        | (gt_height > h_hi)
        | (gt_visibility < v_lo)
        | (gt_visibility > v_hi)
    )
    gt_order = np.argsort(gt_ignored, kind="stable")  # regular first
    num_regular = int(np.count_nonzero(~gt_ignored))

    det_order = np.argsort(-det_scores, kind="stable")[:MAX_DETS]
    height = det_height[det_order]
    det_order = det_order[(height >= h_lo / EXPAND_FILTER) & (height < h_hi * EXPAND_FILTER)]

    overlaps = box_overlaps(
        det_xyxy[det_order],
        det_area[det_order],
        gt_xyxy[gt_order],
        gt_area[gt_order],
        gt_ignored[gt_order],
    )
    column = _greedy_match(overlaps, num_regular, min(iou_threshold, 1 - 1e-10))

    det_status = np.full(num_dets, DET_OUT_OF_RANGE, dtype="U12")
    det_gt_index = np.full(num_dets, -1, dtype=np.int64)
    det_iou = np.zeros(num_dets, dtype=np.float64)
    det_max_iou = np.zeros(num_dets, dtype=np.float64)
    gt_det_index = np.full(num_gts, -1, dtype=np.int64)

    is_match = column >= 0
    status = np.where(column >= num_regular, DET_IGNORED, np.where(is_match, DET_TP, DET_FP))
    det_status[det_order] = status
    det_gt_index[det_order[is_match]] = gt_order[column[is_match]]
    det_iou[det_order[is_match]] = overlaps[is_match, column[is_match]]
    if num_regular:
        det_max_iou[det_order] = overlaps[:, :num_regular].max(axis=1)
    is_tp = status == DET_TP
    gt_det_index[gt_order[column[is_tp]]] = det_order[is_tp]

    return ImageMatch(
        setup=spec.name,
        det_status=det_status,
        det_gt_index=det_gt_index,
        det_iou=det_iou,
        det_max_iou=det_max_iou,
        gt_ignored=gt_ignored,
        gt_det_index=gt_det_index,
    )


@dataclass(frozen=True)
class PairMatch:
    """One-to-one matching of model A's detections with model B's on one image.

    Attributes:
        a_to_b: (A,) int64 index of the B detection matched to each A detection, -1 if none.
        b_to_a: (B,) int64 index of the A detection matched to each B detection, -1 if none.
        iou: (A,) float64 IoU of each A detection with its match, 0 if unmatched.
    """

    a_to_b: np.ndarray
    b_to_a: np.ndarray
    iou: np.ndarray

    @property
    def a_only(self) -> np.ndarray:
        """(A,) bool: A detections no B detection matched."""
        return self.a_to_b < 0

    @property
    def b_only(self) -> np.ndarray:
        """(B,) bool: B detections no A detection matched."""
        return self.b_to_a < 0


def match_pair(
    boxes_a: Any,
    scores_a: Any,
    boxes_b: Any,
    scores_b: Any,
    iou_threshold: float = IOU_THRESHOLD,
) -> PairMatch:
    """Match two models' detections of one image, greedily, by the protocol's own code.

    Model A's detections are visited highest score first (stable for ties);
    each takes the unmatched B detection with the largest IoU if that IoU is
    at least ``iou_threshold`` — :func:`match_image_arrays`'s rule with B's
    boxes as regular ground truths (:func:`box_overlaps`, the same greedy
    loop). On equal IoU the higher-scoring B detection wins. There is no
    height filter and no ``MAX_DETS`` cut: every box takes part.

    Args:
        boxes_a: (A, 4) boxes ``x1, y1, x2, y2`` in pixels (array, list or tensor).
        scores_a: (A,) confidences of ``boxes_a``.
        boxes_b: (B, 4) boxes ``x1, y1, x2, y2`` in pixels.
        scores_b: (B,) confidences of ``boxes_b``.
        iou_threshold: minimum IoU of a match.

    Returns:
        :class:`PairMatch`, arrays in input order.

    Raises:
        ValueError: a shape mismatch, non-finite values or inverted corners.
    """
    a_xyxy = _to_numpy(boxes_a, "boxes_a", (4,))
    b_xyxy = _to_numpy(boxes_b, "boxes_b", (4,))
    a_scores = _to_numpy(scores_a, "scores_a", ())
    b_scores = _to_numpy(scores_b, "scores_b", ())
    for name, boxes, scores in (("a", a_xyxy, a_scores), ("b", b_xyxy, b_scores)):
        if len(scores) != len(boxes):
            raise ValueError(f"scores_{name} has {len(scores)} entries for {len(boxes)} boxes_{name}")
        if (boxes[:, 2:] < boxes[:, :2]).any():
            raise ValueError(f"boxes_{name} must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")

    a_order = np.argsort(-a_scores, kind="stable")
    # ascending score: the greedy loop gives equal IoUs to the *last* column
    b_order = np.argsort(b_scores, kind="stable")
    a_size = a_xyxy[a_order, 2:] - a_xyxy[a_order, :2]
    b_size = b_xyxy[b_order, 2:] - b_xyxy[b_order, :2]
    overlaps = box_overlaps(
        a_xyxy[a_order],
        a_size[:, 0] * a_size[:, 1],
        b_xyxy[b_order],
        b_size[:, 0] * b_size[:, 1],
        np.zeros(len(b_order), dtype=bool),
    )
    column = _greedy_match(overlaps, len(b_order), min(iou_threshold, 1 - 1e-10))

    a_to_b = np.full(len(a_xyxy), -1, dtype=np.int64)
    b_to_a = np.full(len(b_xyxy), -1, dtype=np.int64)
    iou = np.zeros(len(a_xyxy), dtype=np.float64)
    hit = column >= 0
    a_to_b[a_order[hit]] = b_order[column[hit]]
    b_to_a[b_order[column[hit]]] = a_order[hit]
    iou[a_order[hit]] = overlaps[hit, column[hit]]
    return PairMatch(a_to_b=a_to_b, b_to_a=b_to_a, iou=iou)


def _to_numpy(values: Any, name: str, shape_tail: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """Array from a numpy array, list or torch tensor (duck-typed: no torch import)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(values).__name__}: {exc}") from None
    if array.size == 0:
        array = array.reshape((0, *shape_tail))
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        want = "(N, 4)" if shape_tail else "(N,)"
        raise ValueError(f"{name} must have shape {want}, got {array.shape}")
    if dtype == np.float64 and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def match_image(
    gt_boxes: Any,
    det_boxes: Any,
    det_scores: Any,
    *,
    gt_ignore: Any = None,
    gt_heights: Any = None,
    gt_visibility: Any = None,
    setup: str | Setup = "Reasonable",
    iou_threshold: float = IOU_THRESHOLD,
) -> ImageMatch:
    """Match one image's detections to its GTs, for failure analysis.

    Same rules and code path as :func:`hkd.eval.mr.evaluate_mr`, minus the
    COCO-file quirk of GT id 0 (there are no ids here, so a match is a TP).

    Args:
        gt_boxes: (G, 4) GT boxes ``x1, y1, x2, y2`` in pixels (array, list or tensor).
        det_boxes: (D, 4) detection boxes ``x1, y1, x2, y2`` in pixels.
        det_scores: (D,) detection confidences.
        gt_ignore: (G,) bool ignore flags (ignore regions, crowds); default none.
        gt_heights: (G,) GT heights in pixels used by the setup's height range;
            default the box height ``y2 - y1`` (CityPersons boxes are full-body).
        gt_visibility: (G,) visible fraction of each GT; default 1.0.
        setup: a name in :data:`SETUP_NAMES` or a :class:`Setup`.
        iou_threshold: minimum IoU (IoA for ignored GTs) of a match.

    Returns:
        :class:`ImageMatch`, arrays in input order.
    """
    gt_xyxy = _to_numpy(gt_boxes, "gt_boxes", (4,))
    det_xyxy = _to_numpy(det_boxes, "det_boxes", (4,))
    scores = _to_numpy(det_scores, "det_scores", ())
    if len(scores) != len(det_xyxy):
        raise ValueError(f"det_scores has {len(scores)} entries for {len(det_xyxy)} det_boxes")
    for name, boxes in (("gt_boxes", gt_xyxy), ("det_boxes", det_xyxy)):
        if (boxes[:, 2:] < boxes[:, :2]).any():
            raise ValueError(f"{name} must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
    num_gts = len(gt_xyxy)

    def per_gt(values: Any, name: str, default: np.ndarray, dtype=np.float64) -> np.ndarray:
        if values is None:
            return default
        array = _to_numpy(values, name, (), dtype)
        if len(array) != num_gts:
            raise ValueError(f"{name} has {len(array)} entries for {num_gts} gt_boxes")
        return array

    gt_size = gt_xyxy[:, 2:] - gt_xyxy[:, :2]
    det_size = det_xyxy[:, 2:] - det_xyxy[:, :2]
    return match_image_arrays(
        gt_xyxy=gt_xyxy,
        gt_area=gt_size[:, 0] * gt_size[:, 1],
        gt_height=per_gt(gt_heights, "gt_heights", gt_size[:, 1]),
        gt_visibility=per_gt(gt_visibility, "gt_visibility", np.ones(num_gts)),
        gt_ignore=per_gt(gt_ignore, "gt_ignore", np.zeros(num_gts, dtype=bool), bool),
        det_xyxy=det_xyxy,
        det_area=det_size[:, 0] * det_size[:, 1],
        det_height=det_size[:, 1],
        det_scores=scores,
        setup=setup,
        iou_threshold=iou_threshold,
    )


@dataclass(frozen=True)
class FppiMissRateCurve:
    """Miss rate against false positives per image, one point per evaluated detection.

    Attributes:
        scores: (N,) detection scores, descending: point ``i`` is the operating
            point of keeping every detection scoring at least ``scores[i]``.
        fppi: (N,) float64 false positives per image, non-decreasing.
        recall: (N,) float64 fraction of non-ignored GTs found.
        num_images: images the FPPI is divided by (every image of the GT set).
        num_positives: non-ignored GTs the recall is divided by.
    """

    scores: np.ndarray
    fppi: np.ndarray
    recall: np.ndarray
    num_images: int
    num_positives: int

    @property
    def miss_rate(self) -> np.ndarray:
        """(N,) float64, ``1 - recall``."""
        return 1.0 - self.recall


def fppi_miss_rate_curve(
    scores: np.ndarray, is_tp: np.ndarray, *, num_images: int, num_positives: int
) -> FppiMissRateCurve:
    """Accumulate evaluated detections of a whole set into an FPPI–miss-rate curve.

    Args:
        scores: (N,) scores of the detections that count as TP or FP (ignored
            and out-of-range ones excluded), concatenated image by image in
            ascending image id, and in input order within an image: ties in
            score are resolved by that order (stable sort), as officially.
        is_tp: (N,) bool, True for a true positive, False for a false positive.
        num_images: number of images in the GT set (all of them, with or
            without GTs or detections).
        num_positives: number of non-ignored GTs; must be positive.

    Returns:
        :class:`FppiMissRateCurve` sorted by descending score.
    """
    if num_positives <= 0:
        raise ValueError("num_positives must be positive: recall is undefined without GTs")
    if num_images <= 0:
        raise ValueError("num_images must be positive")
    scores = np.asarray(scores, dtype=np.float64)
    is_tp = np.asarray(is_tp, dtype=bool)
    if scores.shape != is_tp.shape or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape} and is_tp {is_tp.shape} must be matching (N,) arrays"
        )
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(is_tp[order])
    fp = np.cumsum(~is_tp[order])
    return FppiMissRateCurve(
        scores=scores[order],
        fppi=fp / num_images,
        recall=tp / num_positives,
        num_images=num_images,
        num_positives=num_positives,
    )
