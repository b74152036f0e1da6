"""False positives by error type, and the MR⁻² a model would have without each type.

Which detections are false positives is the protocol's call: the detections
that :func:`hkd.eval.mr.count_detections` counts as false under the setup
(Reasonable by default), from one full run of the official matching — so a
detection is a false positive or not whatever the threshold, and the
GT-id-0 quirk's false positive counts too. Each is then classed by where its
box lies against the *people* of its image: pedestrian (category 1)
annotations that are not ignore-flagged, of any height and visibility (a
person too small or too occluded for the setup is still a person the box may
be about). The first rule that holds wins, in this priority order
(:data:`ERROR_TYPES`):

1. ``duplicate``: IoU >= :data:`DUPLICATE_IOU` (0.5) with a person. For a
   false positive this means a higher-ranked detection already took that
   person (otherwise the greedy matching would have); the one exception, the
   GT-id-0 quirk, lands here too.
2. ``crowd``: one box over several people — at least
   :data:`CROWD_MIN_PEOPLE` (2) people each covered by at least
   :data:`CROWD_COVER` (0.5) of their own area, each smaller than the box.
3. ``part_of_person``: a piece of one person (a leg, a torso) — at least
   :data:`PART_INSIDE` (0.7) of the box's area lies inside a person whose
   area is at least 1 / :data:`PART_AREA_RATIO` (2) times the box's.
4. ``localization``: a poorly placed box, largest IoU with a person in
   [:data:`LOCALIZATION_IOU`, :data:`DUPLICATE_IOU`) = [0.1, 0.5).
5. ``background``: anything else (nobody there).

Crowd and part come before localization because such boxes often also have
IoU 0.1–0.5 with a person, and the more specific reading is the useful one.

**MR⁻² if fixed.** For each type, the MR⁻² on the setup after removing every
false positive of that type *at any score* (their classes from the same
full run), computed by :func:`hkd.eval.mr.evaluate_mr` on the remaining
detections. Any score, not only above the operating point, because MR⁻²
averages the miss rate over FPPI 0.01–1, i.e. over many thresholds, most of
them below a single operating point; removing only the false positives
above it would leave the rest of the curve as it is and make the figure
depend on where the operating point sits. A false positive matches no
person, so removing it changes no other detection's match (but for the
id-0 quirk's detection and the protocol's cap of 1000 detections per image).
A type without any false positive keeps the model's own MR⁻².
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from hkd.eval.matching import FppiMissRateCurve, Setup, box_overlaps, fppi_miss_rate_curve, get_setup
from hkd.eval.mr import (
    INVALID_MR,
    PEDESTRIAN_CATEGORY,
    Detections,
    GroundTruth,
    _group_by_image,
    count_detections,
    evaluate_mr,
    log_average_miss_rate,
)

__all__ = [
    "CROWD_COVER",
    "CROWD_MIN_PEOPLE",
    "DUPLICATE_IOU",
    "ERROR_TYPES",
    "LOCALIZATION_IOU",
    "PART_AREA_RATIO",
    "PART_INSIDE",
    "FalsePositiveErrors",
    "classify_false_positives",
    "false_positive_errors",
]

DUPLICATE_IOU = 0.5  # the protocol's match threshold
LOCALIZATION_IOU = 0.1  # a box overlapping a person less than this is background
PART_INSIDE = 0.7  # share of the box's area inside one person
PART_AREA_RATIO = 0.5  # box area / person area, at most
CROWD_COVER = 0.5  # share of each covered person's area inside the box
CROWD_MIN_PEOPLE = 2
DUPLICATE, CROWD, PART_OF_PERSON, LOCALIZATION, BACKGROUND = (
    "duplicate", "crowd", "part_of_person", "localization", "background")
ERROR_TYPES: tuple[str, ...] = (DUPLICATE, CROWD, PART_OF_PERSON, LOCALIZATION, BACKGROUND)  # priority order
THRESHOLDS = {
    "duplicate_iou": DUPLICATE_IOU,
    "localization_iou": LOCALIZATION_IOU,
    "part_inside": PART_INSIDE,
    "part_area_ratio": PART_AREA_RATIO,
    "crowd_cover": CROWD_COVER,
    "crowd_min_people": CROWD_MIN_PEOPLE,
}


def classify_false_positives(fp_xyxy: np.ndarray, people_xyxy: np.ndarray) -> np.ndarray:
    """Error type of each false-positive box of one image, by the rules of the module docstring.

    Args:
        fp_xyxy: (F, 4) float64 false-positive boxes ``x1, y1, x2, y2`` in pixels.
        people_xyxy: (P, 4) float64 boxes of the image's people, same format.

    Returns:
        (F,) array of :data:`ERROR_TYPES` names.

    Raises:
        ValueError: an array that is not (N, 4), or inverted corners.
    """
    types, _ = _classify(_boxes(fp_xyxy, "fp_xyxy"), _boxes(people_xyxy, "people_xyxy"))
    return types


def _classify(fp: np.ndarray, people: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F,) error types and (F,) largest IoU with a person, of validated (F, 4) and (P, 4) corners."""
    out = np.full(len(fp), BACKGROUND, dtype=object)
    if len(fp) == 0 or len(people) == 0:
        return out.astype(str), np.zeros(len(fp))
    fp_area = np.prod(fp[:, 2:] - fp[:, :2], axis=1)
    person_area = np.prod(people[:, 2:] - people[:, :2], axis=1)
    iou = box_overlaps(fp, fp_area, people, person_area, np.zeros(len(people), dtype=bool))
    inter_w = np.minimum(fp[:, None, 2], people[None, :, 2]) - np.maximum(fp[:, None, 0], people[None, :, 0])
    inter_h = np.minimum(fp[:, None, 3], people[None, :, 3]) - np.maximum(fp[:, None, 1], people[None, :, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero-area box covers nothing
        share_of_fp = np.where(fp_area[:, None] > 0, inter / fp_area[:, None], 0.0)
        share_of_person = np.where(person_area[None, :] > 0, inter / person_area[None, :], 0.0)

    larger = fp_area[:, None] > person_area[None, :]
    rules = [
        (DUPLICATE, (iou >= DUPLICATE_IOU).any(axis=1)),
        (CROWD, ((share_of_person >= CROWD_COVER) & larger).sum(axis=1) >= CROWD_MIN_PEOPLE),
        (PART_OF_PERSON, ((share_of_fp >= PART_INSIDE)
                          & (fp_area[:, None] <= PART_AREA_RATIO * person_area[None, :])).any(axis=1)),
        (LOCALIZATION, iou.max(axis=1) >= LOCALIZATION_IOU),
    ]
    for name, holds in reversed(rules):  # the first rule in priority order is written last
        out[holds] = name
    return out.astype(str), iou.max(axis=1)


@dataclass(frozen=True)
class FalsePositiveErrors:
    """One model's false positives by type.

    Attributes:
        setup: the setup the false positives and MR⁻² are taken on.
        score: operating score; ``counts`` and ``records`` keep detections scoring at least this.
        mr: the model's MR⁻² on ``setup`` (percent; -100.0 when the setup has no GT).
        counts: ``{type: false positives at the operating point}``, every type of :data:`ERROR_TYPES`.
        counts_any_score: ``{type: false positives at any score}`` (what ``mr_if_fixed`` removes).
        mr_if_fixed: ``{type: MR⁻² without that type's false positives}`` (percent).
        records: false positives at the operating point, by descending score:
            ``{"image_id", "box": [x1, y1, x2, y2] (pixels), "score", "type", "iou"}``,
            ``iou`` the largest IoU with a person.
    """

    setup: str
    score: float
    mr: float
    counts: dict[str, int]
    counts_any_score: dict[str, int]
    mr_if_fixed: dict[str, float]
    records: list[dict]

    def to_dict(self) -> dict[str, Any]:
        """``{"counts", "counts_any_score", "mr_if_fixed", "thresholds", "false_positives"}``, JSON-able."""
        return {
            "counts": dict(self.counts),
            "counts_any_score": dict(self.counts_any_score),
            "mr_if_fixed": dict(self.mr_if_fixed),
            "thresholds": dict(THRESHOLDS),
            "false_positives": [dict(r) for r in self.records],
        }


def false_positive_errors(
    truth: GroundTruth, found: Detections, *, score: float, setup: str | Setup = "Reasonable"
) -> FalsePositiveErrors:
    """Class every false positive of one model on ``setup`` and compute MR⁻² if each type were fixed.

    Args:
        truth: parsed GT (:func:`hkd.eval.mr.parse_ground_truth`).
        found: the model's detections parsed against ``truth``.
        score: the operating score (e.g. :func:`hkd.eval.compare.compare_models`'
            score at FPPI 0.1); counts and records keep detections scoring at least this.
        setup: a name of :data:`hkd.eval.matching.SETUP_NAMES` or a :class:`Setup`.

    Returns:
        :class:`FalsePositiveErrors`.

    Raises:
        ValueError: an unknown setup or a score that is not a finite number.
    """
    spec = get_setup(setup)
    if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
        raise ValueError(f"score must be a finite number, got {score!r}")
    counted = count_detections(truth, found, [spec])
    empty = {name: 0 for name in ERROR_TYPES}
    if counted is None:  # category 1 is not in the GT: nothing is evaluated
        return FalsePositiveErrors(spec.name, float(score), INVALID_MR, empty, dict(empty),
                                   {name: INVALID_MR for name in ERROR_TYPES}, [])
    table = counted[spec.name]
    num_positives = int(table.positives.sum())
    mr = INVALID_MR
    if num_positives:  # evaluate_mr's own two calls on the same table
        curve: FppiMissRateCurve = fppi_miss_rate_curve(
            table.score, table.is_tp, num_images=len(truth.image_ids), num_positives=num_positives)
        mr, _ = log_average_miss_rate(curve)

    rows = table.row[~table.is_tp]
    types, iou = _classify_rows(truth, found, rows)
    kept = found.score[rows] >= score
    counts = {name: int(np.count_nonzero(kept & (types == name))) for name in ERROR_TYPES}
    counts_any = {name: int(np.count_nonzero(types == name)) for name in ERROR_TYPES}
    mr_if_fixed = {}
    for name in ERROR_TYPES:
        if counts_any[name] == 0:
            mr_if_fixed[name] = mr
            continue
        keep = np.ones(len(found.score), dtype=bool)
        keep[rows[types == name]] = False
        mr_if_fixed[name] = evaluate_mr(truth, _subset(found, keep), setups=[spec]).mr[spec.name]
    return FalsePositiveErrors(
        setup=spec.name,
        score=float(score),
        mr=mr,
        counts=counts,
        counts_any_score=counts_any,
        mr_if_fixed=mr_if_fixed,
        records=_records(truth, found, rows[kept], types[kept], iou[kept]),
    )


# ---------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------


def _boxes(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        array = array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {array.shape}")
    if (array[:, 2:] < array[:, :2]).any():
        raise ValueError(f"{name} must be x1, y1, x2, y2 with x2 >= x1 and y2 >= y1")
    return array


def _xyxy(bbox: np.ndarray) -> np.ndarray:
    """(N, 4) ``x, y, w, h`` to corners."""
    return np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)


def _classify_rows(truth: GroundTruth, found: Detections, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Error type and largest IoU with a person of the detections ``rows`` (false positives),
    image by image: two (len(rows),) arrays."""
    people = np.flatnonzero((truth.ann_category == PEDESTRIAN_CATEGORY) & ~truth.ignore)
    num_images = len(truth.image_ids)
    person_order, person_bounds = _group_by_image(truth.ann_image[people], num_images)
    people = people[person_order]
    fp_order, fp_bounds = _group_by_image(found.image[rows], num_images)
    types = np.full(len(rows), BACKGROUND, dtype=object)
    iou = np.zeros(len(rows))
    for img in np.flatnonzero(np.diff(fp_bounds)):
        mine = fp_order[fp_bounds[img]:fp_bounds[img + 1]]
        theirs = people[person_bounds[img]:person_bounds[img + 1]]
        types[mine], iou[mine] = _classify(_xyxy(found.bbox[rows[mine]]), _xyxy(truth.bbox[theirs]))
    return types.astype(str), iou


def _subset(found: Detections, keep: np.ndarray) -> Detections:
    return Detections(image=found.image[keep], category=found.category[keep], bbox=found.bbox[keep],
                      score=found.score[keep])


def _records(truth: GroundTruth, found: Detections, rows: np.ndarray, types: np.ndarray,
             iou: np.ndarray) -> list[dict]:
    """The false positives ``rows`` as records, by descending score (stable)."""
    order = np.argsort(-found.score[rows], kind="stable")
    boxes = _xyxy(found.bbox[rows])
    return [
        {
            "image_id": int(truth.image_ids[found.image[rows[k]]]),
            "box": [float(v) for v in boxes[k]],
            "score": float(found.score[rows[k]]),
            "type": str(types[k]),
            "iou": float(iou[k]),
        }
        for k in order
    ]
