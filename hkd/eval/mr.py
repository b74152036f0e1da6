"""Log-average miss rate (MR⁻²) exactly as the official CityPersons evaluation computes it.

Reference: ``evaluation/eval_script/eval_MR_multisetup.py`` (with its
``eval_demo.py`` driver and the CityPersons fork of ``coco.py``) in the
public repository ``cvgroup-njust/CityPersons``. This is an independent
implementation of that protocol which reproduces its numbers, quirks
included:

* Only category 1 (pedestrian) is evaluated, and only if the GT file lists
  category 1 in ``categories``; otherwise every setup is invalid.
* A detection's height is its box height ``bbox[3]`` (a ``height`` field in
  the results is ignored, as the fork's ``loadRes`` overwrites it).
* FPPI divides by the number of *all* images of the GT file, including
  images without annotations.
* When the first false positive comes before a reference FPPI (for instance
  FPPI 0.01 with fewer than 100 images), the official sampling index is -1,
  which Python reads as the *last* recall of the curve; reproduced here.
* A GT annotation with ``id`` 0 is matched (it blocks other detections) but
  the detection counts as a false positive, because the official code stores
  the matched GT id and tests it for truth.
* A setup without any non-ignored GT has no miss rate: the official script
  prints -100.00; :attr:`SetupResult.mr` is -100.0 and ``valid`` is False.

Inputs follow the COCO conventions used by CityPersons:

* ``gt``: ``{"images": [{"id": int, ...}], "categories": [{"id": int, ...}],
  "annotations": [{"id": int, "image_id": int, "category_id": int,
  "bbox": [x, y, w, h], "height": float, "vis_ratio": float, "ignore": 0|1}]}``.
  Defaults where a field is missing: ``height`` = ``bbox[3]`` (full-body box
  height), ``vis_ratio`` = 1.0 (fully visible), ``ignore`` = 0, ``iscrowd`` = 0
  (``iscrowd`` is used by AP only). The official script would fail with a
  KeyError on a missing ``height`` or ``vis_ratio``.
* ``dets``: a COCO results list ``[{"image_id": int, "category_id": int,
  "bbox": [x, y, w, h], "score": float}]`` in pixels; its order breaks score ties.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from hkd.eval.matching import (
    DET_FP,
    DET_TP,
    SETUP_NAMES,
    SETUPS,
    FppiMissRateCurve,
    Setup,
    fppi_miss_rate_curve,
    get_setup,
    match_image_arrays,
)

__all__ = [
    "FPPI_REFERENCE",
    "PEDESTRIAN_CATEGORY",
    "SETUPS",
    "SETUP_NAMES",
    "CountedDetections",
    "Detections",
    "GroundTruth",
    "MRResult",
    "SetupResult",
    "count_detections",
    "evaluate_mr",
    "log_average_miss_rate",
    "parse_detections",
    "parse_ground_truth",
]

PEDESTRIAN_CATEGORY = 1  # the only category the official accumulation reads
# Nine FPPI points log-spaced over [1e-2, 1e0], as printed in the official script.
FPPI_REFERENCE = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000])
INVALID_MR = -100.0  # what the official script prints for a setup without positives


# ---------------------------------------------------------------------------
# Input parsing and validation (shared with hkd.eval.ap)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """A validated COCO-style GT set, annotations in file order.

    Attributes:
        image_ids: (I,) int64 image ids, sorted ascending and unique.
        category_ids: (C,) int64 category ids listed in ``categories``.
        ann_id: (A,) int64 annotation ids.
        ann_image: (A,) int64 index into ``image_ids``.
        ann_category: (A,) int64 category ids.
        bbox: (A, 4) float64 boxes ``x, y, w, h`` in pixels.
        height: (A,) float64 heights in pixels (default ``bbox[3]``).
        visibility: (A,) float64 visible fractions (default 1.0).
        ignore: (A,) bool ``ignore`` flags (default False).
        iscrowd: (A,) bool ``iscrowd`` flags (default False).
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    ann_id: np.ndarray
    ann_image: np.ndarray
    ann_category: np.ndarray
    bbox: np.ndarray
    height: np.ndarray
    visibility: np.ndarray
    ignore: np.ndarray
    iscrowd: np.ndarray


@dataclass(frozen=True)
class Detections:
    """A validated COCO results list, in file order.

    Attributes:
        image: (N,) int64 index into :attr:`GroundTruth.image_ids`.
        category: (N,) int64 category ids.
        bbox: (N, 4) float64 boxes ``x, y, w, h`` in pixels.
        score: (N,) float64 confidences.
    """

    image: np.ndarray
    category: np.ndarray
    bbox: np.ndarray
    score: np.ndarray


def _is_int(value: Any) -> bool:
    # exact-type test first: the ABC check is slow on 10^5 values
    if type(value) is int:
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    if type(value) in (float, int):
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite_real(value: Any) -> bool:
    try:
        return _is_real(value) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _int_field(item: dict, key: str, where: str) -> int:
    if key not in item:
        raise ValueError(f"{where} has no {key!r}")
    value = item[key]
    if not _is_int(value):
        raise ValueError(f"{where} has {key}={value!r}; expected an integer")
    return int(value)


def _real_field(item: dict, key: str, where: str, default: float | None = None) -> float:
    if key not in item:
        if default is None:
            raise ValueError(f"{where} has no {key!r}")
        return default
    value = item[key]
    if not _is_finite_real(value):
        raise ValueError(f"{where} has {key}={value!r}; expected a finite number")
    return float(value)


def _flag_field(item: dict, key: str, where: str) -> bool:
    value = item.get(key, 0)
    # 0/1 only: the official code reads the flag both as a truth value and as
    # int(flag), which disagree for values such as 0.5.
    if value not in (0, 1) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} has {key}={value!r}; expected 0 or 1")
    return bool(value)


def _bbox_field(item: dict, where: str) -> list[float]:
    if "bbox" not in item:
        raise ValueError(f"{where} has no 'bbox'")
    box = item["bbox"]
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(_is_finite_real(v) for v in box)
    ):
        raise ValueError(f"{where} has bbox={box!r}; expected 4 finite numbers [x, y, w, h]")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{where} has bbox={box!r}; width and height must be >= 0")
    return [float(v) for v in box]


def _list_field(data: dict, key: str, what: str) -> list:
    if key not in data:
        raise ValueError(f"{what} has no {key!r} list")
    value = data[key]
    if not isinstance(value, list):
        raise ValueError(f"{what} {key!r} must be a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"{what} {key}[{i}] must be an object, got {type(item).__name__}")
    return value


def parse_ground_truth(gt: dict) -> GroundTruth:
    """Validate a COCO-style GT dict (see the module docstring) into arrays.

    Raises:
        ValueError: naming the first malformed entry (missing or non-integer
        ids, duplicate image or annotation ids, an annotation on an unknown
        image, a bbox that is not 4 finite numbers with w, h >= 0, a flag
        other than 0/1).
    """
    if not isinstance(gt, dict):
        raise ValueError(f"GT must be a COCO-style object, got {type(gt).__name__}")
    images = _list_field(gt, "images", "GT")
    categories = _list_field(gt, "categories", "GT")
    annotations = _list_field(gt, "annotations", "GT")

    image_ids = [_int_field(img, "id", f"GT images[{i}]") for i, img in enumerate(images)]
    unique_ids = np.unique(np.asarray(image_ids, dtype=np.int64))
    if len(unique_ids) != len(image_ids):
        seen: set[int] = set()
        dup = next(i for i in image_ids if i in seen or seen.add(i))
        raise ValueError(f"GT images has duplicate id {dup}")
    position = {int(image_id): k for k, image_id in enumerate(unique_ids)}
    category_ids = [_int_field(c, "id", f"GT categories[{i}]") for i, c in enumerate(categories)]

    n = len(annotations)
    ann_id = np.empty(n, dtype=np.int64)
    ann_image = np.empty(n, dtype=np.int64)
    ann_category = np.empty(n, dtype=np.int64)
    bbox = np.empty((n, 4), dtype=np.float64)
    height = np.empty(n, dtype=np.float64)
    visibility = np.empty(n, dtype=np.float64)
    ignore = np.empty(n, dtype=bool)
    iscrowd = np.empty(n, dtype=bool)
    for i, ann in enumerate(annotations):
        where = f"GT annotations[{i}]"
        ann_id[i] = _int_field(ann, "id", where)
        image_id = _int_field(ann, "image_id", where)
        if image_id not in position:
            raise ValueError(f"{where} has image_id={image_id}, which is not in GT images")
        ann_image[i] = position[image_id]
        ann_category[i] = _int_field(ann, "category_id", where)
        bbox[i] = _bbox_field(ann, where)
        height[i] = _real_field(ann, "height", where, default=bbox[i, 3])
        visibility[i] = _real_field(ann, "vis_ratio", where, default=1.0)
        ignore[i] = _flag_field(ann, "ignore", where)
        iscrowd[i] = _flag_field(ann, "iscrowd", where)
    if len(np.unique(ann_id)) != n:
        values, counts = np.unique(ann_id, return_counts=True)
        raise ValueError(f"GT annotations has duplicate id {int(values[counts > 1][0])}")

    return GroundTruth(
        image_ids=unique_ids,
        category_ids=np.unique(np.asarray(category_ids, dtype=np.int64)),
        ann_id=ann_id,
        ann_image=ann_image,
        ann_category=ann_category,
        bbox=bbox,
        height=height,
        visibility=visibility,
        ignore=ignore,
        iscrowd=iscrowd,
    )


def parse_detections(dets: Sequence[dict], truth: GroundTruth) -> Detections:
    """Validate a COCO results list against the GT it is evaluated on.

    Raises:
        ValueError: naming the first malformed detection (not an object, no or
        non-integer ``image_id``/``category_id``, an ``image_id`` absent from
        the GT images, a bbox that is not 4 finite numbers with w, h >= 0, a
        missing or non-finite ``score``), or a non-empty list without any
        detection of category 1 (the pedestrian, the only category scored).
    """
    if not isinstance(dets, (list, tuple)):
        raise ValueError(f"detections must be a list of objects, got {type(dets).__name__}")
    position = {int(image_id): k for k, image_id in enumerate(truth.image_ids)}
    n = len(dets)
    image = np.empty(n, dtype=np.int64)
    category = np.empty(n, dtype=np.int64)
    bbox = np.empty((n, 4), dtype=np.float64)
    score = np.empty(n, dtype=np.float64)
    for i, det in enumerate(dets):
        where = f"detection [{i}]"
        if not isinstance(det, dict):
            raise ValueError(f"{where} must be an object, got {type(det).__name__}")
        image_id = _int_field(det, "image_id", where)
        if image_id not in position:
            raise ValueError(f"{where} has image_id={image_id}, which is not in GT images")
        image[i] = position[image_id]
        category[i] = _int_field(det, "category_id", where)
        bbox[i] = _bbox_field(det, where)
        score[i] = _real_field(det, "score", where)
    if n and not (category == 1).any():
        # every detection of another category: scored, they would read as "nothing detected" (MR-2 100)
        found = ", ".join(str(c) for c in np.unique(category)[:5])
        raise ValueError(f"none of the {n} detections has category_id 1, the pedestrian category that MR-2 and "
                         f"AP score (found category_id {found}); write the pedestrian detections as category 1")
    return Detections(image=image, category=category, bbox=bbox, score=score)


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SetupResult:
    """MR⁻² of one setup, with the curve behind it.

    Attributes:
        setup: the evaluation subset.
        mr: log-average miss rate in percent (lower is better); -100.0 when
            not ``valid``, as the official script prints.
        valid: False when the setup has no non-ignored GT (or the GT file does
            not list category 1), so no miss rate exists.
        num_images: images FPPI is divided by (all GT images).
        num_positives: non-ignored GTs.
        curve: FPPI–miss-rate curve over all evaluated detections (plot
            ``curve.fppi`` against ``curve.miss_rate`` on log-log axes);
            None when not ``valid``.
        reference_miss_rate: (9,) miss rates sampled at :data:`FPPI_REFERENCE`,
            whose log-mean is ``mr``; NaN when not ``valid``.
    """

    setup: Setup
    mr: float
    valid: bool
    num_images: int
    num_positives: int
    curve: FppiMissRateCurve | None
    reference_miss_rate: np.ndarray


@dataclass(frozen=True)
class MRResult:
    """MR⁻² per setup; ``setups`` keeps the requested order."""

    setups: dict[str, SetupResult]

    @property
    def mr(self) -> dict[str, float]:
        """``{setup name: MR⁻² in percent}`` (-100.0 for an invalid setup)."""
        return {name: result.mr for name, result in self.setups.items()}


def log_average_miss_rate(curve: FppiMissRateCurve | None) -> tuple[float, np.ndarray]:
    """Sample a curve at :data:`FPPI_REFERENCE` and average the miss rates in log space.

    Args:
        curve: FPPI–miss-rate curve; None or empty means no detection counted.

    Returns:
        ``(mr, reference_miss_rate)``: MR⁻² in percent, and the (9,) sampled
        miss rates. With no detection every miss rate is 1 (MR 100); a
        sampled miss rate of 0 makes the MR 0.
    """
    recall_at = np.zeros(len(FPPI_REFERENCE))
    if curve is not None and len(curve.recall):
        # Last point with fppi <= reference. An index of -1 (the first false
        # positive already exceeds the reference) reads the LAST recall, as
        # Python's recall[-1] does in the official code.
        index = np.searchsorted(curve.fppi, FPPI_REFERENCE, side="right") - 1
        recall_at = curve.recall[index]
    miss_rate = 1.0 - recall_at
    with np.errstate(divide="ignore"):  # log(0) = -inf -> exp gives MR 0, as officially
        mr = float(np.exp(np.mean(np.log(miss_rate))) * 100.0)
    return mr, miss_rate


def _group_by_image(image_index: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order by image and (I + 1,) slice bounds of each image within it."""
    order = np.argsort(image_index, kind="stable")
    bounds = np.searchsorted(image_index[order], np.arange(num_images + 1))
    return order, bounds


@dataclass(frozen=True)
class CountedDetections:
    """The detections of one setup that count as TP or FP, in the official accumulation order.

    Rows are concatenated image by image in ascending image id, in input
    (file) order within an image: the order that breaks score ties in
    :func:`fppi_miss_rate_curve`.

    Attributes:
        setup: the evaluation subset.
        image: (N,) int64 index into :attr:`GroundTruth.image_ids`.
        row: (N,) int64 row of each detection in the :class:`Detections` it came from.
        score: (N,) float64 confidences.
        is_tp: (N,) bool, True for a true positive (GT-id-0 quirk applied: False there).
        positives: (I,) int64 non-ignored GTs of each image.
    """

    setup: Setup
    image: np.ndarray
    row: np.ndarray
    score: np.ndarray
    is_tp: np.ndarray
    positives: np.ndarray


def count_detections(
    truth: GroundTruth, found: Detections, setups: Iterable[str | Setup] = SETUP_NAMES
) -> dict[str, CountedDetections] | None:
    """Match every image once per setup by the official rules; the per-image table behind MR⁻².

    Args:
        truth: parsed GT.
        found: detections parsed against ``truth``.
        setups: names from :data:`SETUP_NAMES` or :class:`Setup` objects.

    Returns:
        ``{setup name: CountedDetections}`` in the requested order; None when
        no setup can be valid (category 1 not listed in the GT, or no image).

    Raises:
        ValueError: an unknown setup name.
    """
    specs = [get_setup(s) for s in setups]
    num_images = len(truth.image_ids)
    if PEDESTRIAN_CATEGORY not in truth.category_ids or num_images == 0:
        return None

    gt_keep = np.flatnonzero(truth.ann_category == PEDESTRIAN_CATEGORY)
    det_keep = np.flatnonzero(found.category == PEDESTRIAN_CATEGORY)
    gt_order, gt_bounds = _group_by_image(truth.ann_image[gt_keep], num_images)
    det_order, det_bounds = _group_by_image(found.image[det_keep], num_images)
    gt_rows, det_rows = gt_keep[gt_order], det_keep[det_order]  # file order within an image

    gt_box, det_box = truth.bbox[gt_rows], found.bbox[det_rows]
    gt_xyxy = np.concatenate([gt_box[:, :2], gt_box[:, :2] + gt_box[:, 2:]], axis=1)
    det_xyxy = np.concatenate([det_box[:, :2], det_box[:, :2] + det_box[:, 2:]], axis=1)
    gt_area = gt_box[:, 2] * gt_box[:, 3]
    det_area = det_box[:, 2] * det_box[:, 3]
    gt_id = truth.ann_id[gt_rows]
    gt_height, gt_vis = truth.height[gt_rows], truth.visibility[gt_rows]
    gt_ignore = truth.ignore[gt_rows]
    det_height, det_score = det_box[:, 3], found.score[det_rows]
    busy = np.flatnonzero((np.diff(gt_bounds) > 0) | (np.diff(det_bounds) > 0))

    out: dict[str, CountedDetections] = {}
    for spec in specs:
        images, rows, is_tp = [], [], []
        positives = np.zeros(num_images, dtype=np.int64)
        for img in busy:  # ascending image id, which breaks score ties officially
            g = slice(gt_bounds[img], gt_bounds[img + 1])
            d = slice(det_bounds[img], det_bounds[img + 1])
            match = match_image_arrays(
                gt_xyxy=gt_xyxy[g],
                gt_area=gt_area[g],
                gt_height=gt_height[g],
                gt_visibility=gt_vis[g],
                gt_ignore=gt_ignore[g],
                det_xyxy=det_xyxy[d],
                det_area=det_area[d],
                det_height=det_height[d],
                det_scores=det_score[d],
                setup=spec,
            )
            positives[img] = np.count_nonzero(~match.gt_ignored)
            tp = match.det_status == DET_TP
            counted = tp | (match.det_status == DET_FP)
            # GT id 0 quirk: the official code keeps the matched GT's id and
            # tests it for truth, so a match on id 0 counts as a false positive.
            tp[tp] = gt_id[g][match.det_gt_index[tp]] != 0
            rows.append(det_rows[d][counted])
            is_tp.append(tp[counted])
            images.append(np.full(len(rows[-1]), img, dtype=np.int64))
        row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        out[spec.name] = CountedDetections(
            setup=spec,
            image=np.concatenate(images) if images else np.zeros(0, dtype=np.int64),
            row=row,
            score=found.score[row],
            is_tp=np.concatenate(is_tp) if is_tp else np.zeros(0, dtype=bool),
            positives=positives,
        )
    return out


def evaluate_mr(
    gt: dict | GroundTruth,
    dets: Sequence[dict] | Detections,
    setups: Iterable[str | Setup] = SETUP_NAMES,
) -> MRResult:
    """Log-average miss rate MR⁻² per setup, as the official CityPersons script.

    Args:
        gt: COCO-style GT dict (see module docstring) or a parsed :class:`GroundTruth`.
        dets: COCO results list, or :class:`Detections` parsed against ``gt``.
        setups: names from :data:`SETUP_NAMES` (``Reasonable``, ``Small``,
            ``Heavy``, ``All``) or :class:`Setup` objects.

    Returns:
        :class:`MRResult`; ``result.mr`` maps setup name to MR⁻² in percent.

    Raises:
        ValueError: malformed GT or detections, or an unknown setup name.
    """
    specs = [get_setup(s) for s in setups]
    truth = gt if isinstance(gt, GroundTruth) else parse_ground_truth(gt)
    found = dets if isinstance(dets, Detections) else parse_detections(dets, truth)
    num_images = len(truth.image_ids)
    counted = count_detections(truth, found, specs)

    results: dict[str, SetupResult] = {}
    for spec in specs:
        table = None if counted is None else counted[spec.name]
        num_positives = 0 if table is None else int(table.positives.sum())
        if num_positives == 0:
            results[spec.name] = _invalid(spec, num_images)
            continue
        curve = fppi_miss_rate_curve(
            table.score, table.is_tp, num_images=num_images, num_positives=num_positives
        )
        mr, reference = log_average_miss_rate(curve)
        results[spec.name] = SetupResult(
            setup=spec,
            mr=mr,
            valid=True,
            num_images=num_images,
            num_positives=num_positives,
            curve=curve,
            reference_miss_rate=reference,
        )
    return MRResult(results)


def _invalid(spec: Setup, num_images: int) -> SetupResult:
    return SetupResult(
        setup=spec,
        mr=INVALID_MR,
        valid=False,
        num_images=num_images,
        num_positives=0,
        curve=None,
        reference_miss_rate=np.full(len(FPPI_REFERENCE), np.nan),
    )
