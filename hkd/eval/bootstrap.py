"""Paired bootstrap intervals of MR⁻² and AP50 over the images of one GT set.

A resample draws the N images of the GT set N times with replacement; every
model is scored on the *same* resample, so the interval of a difference
``a − b`` reflects how much the comparison depends on which images were
drawn (a paired bootstrap). Intervals are percentile intervals of the
resampled values (``level`` 0.95: the 2.5th and 97.5th percentiles).

**No re-matching per resample.** Matching is per image, so an image drawn
``c`` times contributes ``c`` identical copies of its match table. Each
model's tables are built once — for MR⁻² by
:func:`hkd.eval.mr.count_detections` (the code path of
:func:`~hkd.eval.mr.evaluate_mr`, GT-id-0 quirk included), for AP50 by
pycocotools' ``evaluateImg`` (:func:`hkd.eval.ap.coco_evaluator`, IoU 0.5,
area ``all``, 100 detections) — and a resample is a vector of image
multiplicities ``c``: each detection weighs ``c[image]``.

Why a weight equals duplication: the accumulation of both protocols sorts
all detections of the set by score and takes running sums of TP and FP.
``c`` copies of an image put ``c`` copies of each of its detections at the
same score, so the running sums *after* them are the same as adding the
detection once with weight ``c``; the positives (MR⁻²) or non-ignored GTs
(AP) are ``Σ c_i · pos_i``, and FPPI still divides by N (a resample has N
images). The points *inside* a run of copies are never read:

* MR⁻² reads the recall of the last point with FPPI ≤ reference. Inside a
  run of FP copies the recall is constant; inside a run of TP copies the
  FPPI is, so the last point of the run is the one read. The official "-1"
  quirk (the first point already exceeds the reference, and Python's
  ``recall[-1]`` reads the *last* recall) happens in the duplicated set
  iff the first detection of positive weight is an FP and ``1 / N`` exceeds
  the reference; otherwise a weighted search that finds no point reads
  recall 0.
* AP reads the precision envelope (running maximum from the right) at the
  first point whose recall reaches each of the 101 thresholds. Inside a run
  of TP copies precision rises, so the envelope there equals the envelope
  at the run's last point; FP copies keep the recall of an earlier point and
  lower the precision, so they never raise an envelope. Detections of
  weight 0 (images not drawn) and ignored ones repeat the previous point.

Two shortcuts follow, both exact: MR⁻² reads no false positive beyond the
first one over the largest FPPI budget (FPPI 1, i.e. N false positives), so
it sums the weights of the first ``2 N + 64`` false positives only, falling
back to all of them for a chunk of resamples where that is not enough; and
AP50 keeps one point per true positive (with the false-positive weight ranked
above it), since by the same argument a false positive's point never changes
a value read.

The detections' order is fixed: descending score, stable, ascending image
then input order, as both protocols sort. One difference from literally
duplicating images remains: when an image has *several* detections of the
same score, copies of it interleave them (``d1 d2 d1 d2``) where weights
keep them together (``d1 d1 d2 d2``); the points inside such a tie can
differ, as they do between any two ways of breaking a tie. Real detector
scores seldom tie within an image.

**Skipped resamples.** A resample without any non-ignored GT of a setup (or,
for AP50, of the set) has no MR⁻² (AP50) and is left out of that metric's
interval for every model; :attr:`BootstrapReport.skipped` counts them.

Units: MR⁻² in percent (lower is better), AP50 in [0, 1] (higher is better);
a difference ``a − b`` in the same units.
"""
from __future__ import annotations

import contextlib
import io
import math
import numbers
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Iterable, Sequence

import numpy as np

from hkd.eval.ap import coco_evaluator
from hkd.eval.matching import SETUP_NAMES, fppi_miss_rate_curve, get_setup
from hkd.eval.mr import (
    FPPI_REFERENCE,
    INVALID_MR,
    PEDESTRIAN_CATEGORY,
    CountedDetections,
    Detections,
    GroundTruth,
    count_detections,
    log_average_miss_rate,
    parse_detections,
    parse_ground_truth,
)

__all__ = [
    "AP50",
    "BootstrapReport",
    "Interval",
    "bootstrap_intervals",
    "resample_indices",
]

AP50 = "ap50"  # metric name of COCO AP at IoU 0.5, beside the MR⁻² setup names
_CHUNK_ELEMENTS = 2_000_000  # resamples x detections held at once (about 16 MB per float array)
# MR⁻² reads the first _FP_FACTOR x (largest FP budget) + _FP_SLACK FPs before falling back to all
_FP_FACTOR, _FP_SLACK = 2, 64


@dataclass(frozen=True)
class Interval:
    """A point estimate on the full set and its bootstrap percentile interval.

    Attributes:
        point: value on the full set (for a difference, ``point_a - point_b``);
            None when the metric does not exist (a setup without GT).
        low, high: interval bounds; None when every resample was skipped.
    """

    point: float | None
    low: float | None
    high: float | None

    @property
    def within_noise(self) -> bool | None:
        """True when the interval contains 0 (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, float | None]:
        return {"point": self.point, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class BootstrapReport:
    """What :func:`bootstrap_intervals` found; :meth:`to_dict` is ``hkd compare --json``'s ``bootstrap``.

    Attributes:
        num_images: images of the GT set (N; each resample draws N).
        resamples: resamples drawn (R).
        seed: seed of :func:`resample_indices`.
        level: coverage of the intervals, e.g. 0.95.
        metrics: setup names in the requested order, then :data:`AP50`.
        models: ``{model: {metric: Interval}}``.
        differences: ``{(a, b): {metric: Interval of a − b}}``, one entry per
            unordered pair of models, ``a`` before ``b`` in the input order.
        skipped: ``{metric: resamples left out}`` (no non-ignored GT in them).
        samples: ``{model: (R, len(metrics)) float64}`` resampled values,
            NaN where skipped.
    """

    num_images: int
    resamples: int
    seed: int
    level: float
    metrics: tuple[str, ...]
    models: dict[str, dict[str, Interval]]
    differences: dict[tuple[str, str], dict[str, Interval]]
    skipped: dict[str, int]
    samples: dict[str, np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"num_images", "resamples", "seed", "level", "metrics", "skipped", "models",
        "differences"}``; ``models`` is ``{model: {metric: {"point", "low", "high"}}}``,
        ``differences`` a list of ``{"a", "b", "metrics": {metric: {"point", "low", "high",
        "within_noise"}}}``."""
        return {
            "num_images": self.num_images,
            "resamples": self.resamples,
            "seed": self.seed,
            "level": self.level,
            "metrics": list(self.metrics),
            "skipped": dict(self.skipped),
            "models": {
                name: {metric: interval.to_dict() for metric, interval in by_metric.items()}
                for name, by_metric in self.models.items()
            },
            "differences": [
                {
                    "a": a,
                    "b": b,
                    "metrics": {
                        metric: {**interval.to_dict(), "within_noise": interval.within_noise}
                        for metric, interval in by_metric.items()
                    },
                }
                for (a, b), by_metric in self.differences.items()
            ],
        }


def resample_indices(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """The image draws of every resample: (R, N) int64 indices into the sorted GT image ids."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_images, size=(resamples, num_images), dtype=np.int64)


def bootstrap_intervals(
    gt: dict | GroundTruth,
    dets: dict[str, Sequence[dict] | Detections],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    setups: Iterable[str] = SETUP_NAMES,
) -> BootstrapReport:
    """Paired bootstrap percentile intervals of MR⁻² per setup and AP50, per model and per pair.

    Args:
        gt: COCO-style GT dict (see :mod:`hkd.eval.mr`) or a parsed :class:`GroundTruth`.
        dets: ``{model name: COCO results list}`` (or :class:`Detections`
            parsed against ``gt``); order kept.
        resamples: number of resamples R (>= 1).
        seed: non-negative seed of the draws; the same seed gives the same intervals.
        level: interval coverage in (0, 1).
        setups: MR⁻² setups (names of :data:`SETUP_NAMES`); AP50 always follows.

    Returns:
        :class:`BootstrapReport`. Point estimates equal :func:`evaluate_mr`
        and :func:`evaluate_ap` on the full set (-100.0 / -1.0 there when the
        metric does not exist).

    Raises:
        ValueError: a bad argument (named), a GT without images, or malformed
            GT or detections (naming the model).
    """
    names, specs = _check_arguments(dets, resamples, seed, level, setups)
    truth = gt if isinstance(gt, GroundTruth) else parse_ground_truth(gt)
    num_images = len(truth.image_ids)
    if num_images == 0:
        raise ValueError("GT has no images: there is nothing to resample")
    found: dict[str, Detections] = {}
    for name in names:
        value = dets[name]
        try:
            found[name] = value if isinstance(value, Detections) else parse_detections(value, truth)
        except ValueError as exc:
            raise ValueError(f"detections of {name!r}: {exc}") from None

    metrics = (*[spec.name for spec in specs], AP50)
    draws = resample_indices(num_images, resamples, seed)
    points: dict[str, np.ndarray] = {}
    samples: dict[str, np.ndarray] = {}
    for name in names:
        tables = _model_tables(truth, found[name], specs)
        points[name] = np.array([table.point for table in tables])
        samples[name] = _resampled_values(tables, draws, num_images)

    first = samples[names[0]]
    skipped = {metric: int(np.count_nonzero(np.isnan(first[:, m]))) for m, metric in enumerate(metrics)}
    invalid = np.array([INVALID_MR] * len(specs) + [-1.0])
    models = {
        name: {
            metric: _interval(None if points[name][m] == invalid[m] else float(points[name][m]),
                              samples[name][:, m], level)
            for m, metric in enumerate(metrics)
        }
        for name in names
    }
    differences = {}
    for a, b in combinations(names, 2):
        by_metric = {}
        for m, metric in enumerate(metrics):
            pa, pb = models[a][metric].point, models[b][metric].point
            point = None if pa is None or pb is None else pa - pb
            by_metric[metric] = _interval(point, samples[a][:, m] - samples[b][:, m], level)
        differences[(a, b)] = by_metric
    return BootstrapReport(
        num_images=num_images,
        resamples=resamples,
        seed=seed,
        level=level,
        metrics=metrics,
        models=models,
        differences=differences,
        skipped=skipped,
        samples=samples,
    )


# ---------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------


def _check_arguments(dets: Any, resamples: Any, seed: Any, level: Any, setups: Any) -> tuple[list[str], list]:
    if not isinstance(dets, dict) or not dets:
        raise ValueError("dets must map at least one model name to its detections list")
    for name in dets:
        if not isinstance(name, str) or not name:
            raise ValueError(f"dets has model name {name!r}; expected a non-empty string")
    if isinstance(resamples, bool) or not isinstance(resamples, numbers.Integral) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if (isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(level)
            or not 0 < level < 1):
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.95; got {level!r}")
    if isinstance(setups, str):
        raise ValueError(f"setups must be a sequence of setup names, got the string {setups!r}; "
                         f"e.g. [{setups!r}]")
    specs = [get_setup(s) for s in setups]
    seen = [spec.name for spec in specs]
    if len(set(seen)) != len(seen):
        raise ValueError(f"setups has a repeated name: {seen}")
    return list(dets), specs


@dataclass(frozen=True)
class _MRTable:
    """One model's counted detections under one setup, by descending score.

    ``fp_image``/``tp_image``: (F,)/(T,) image of each FP/TP in that order;
    ``tp_before_fp``: (F + 1,) TPs ranked above each FP (last: T);
    ``tp_per_image``/``positives``: (I,) TPs / non-ignored GTs per image;
    ``point``: MR⁻² on the full set (-100.0 without GT).
    """

    fp_image: np.ndarray
    tp_image: np.ndarray
    tp_before_fp: np.ndarray
    tp_per_image: np.ndarray
    positives: np.ndarray
    point: float

    @property
    def width(self) -> int:
        return len(self.fp_image) + len(self.tp_image)


@dataclass(frozen=True)
class _APTable:
    """One model's AP50 true positives, by descending score, with the false positives above each.

    ``tp_image``: (T,) image of each TP; ``fp_image``: (F,) image of each FP
    (not ignored) in score order; ``fp_before_tp``: (T,) FPs ranked above
    each TP; ``positives``: (I,) non-ignored GTs per image; ``thresholds``:
    COCO's (101,) recall thresholds; ``point``: AP50 on the full set (-1.0 without GT).

    Only TP points are kept: a false positive keeps the recall of the point
    before it and lowers the precision, so it is never the first point to
    reach a recall threshold and never raises an envelope.
    """

    tp_image: np.ndarray
    fp_image: np.ndarray
    fp_before_tp: np.ndarray
    positives: np.ndarray
    thresholds: np.ndarray
    point: float

    @property
    def width(self) -> int:
        return len(self.fp_image) + len(self.tp_image)


def _model_tables(truth: GroundTruth, found: Detections, specs: list) -> list[_MRTable | _APTable]:
    """Match one model once: an MR⁻² table per setup, then the AP50 table."""
    num_images = len(truth.image_ids)
    counted = count_detections(truth, found, specs)
    tables: list[_MRTable | _APTable] = []
    for spec in specs:
        if counted is None:
            empty = np.zeros(0, dtype=np.int64)
            none = np.zeros(num_images, dtype=np.int64)
            tables.append(_MRTable(empty, empty, np.zeros(1, dtype=np.int64), none, none, INVALID_MR))
        else:
            tables.append(_mr_table(counted[spec.name], num_images))
    tables.append(_ap_table(truth, found))
    return tables


def _mr_table(counted: CountedDetections, num_images: int) -> _MRTable:
    num_positives = int(counted.positives.sum())
    point = INVALID_MR
    if num_positives:  # the same two calls as evaluate_mr, so the point estimate is its number
        curve = fppi_miss_rate_curve(counted.score, counted.is_tp, num_images=num_images,
                                     num_positives=num_positives)
        point, _ = log_average_miss_rate(curve)
    order = np.argsort(-counted.score, kind="stable")
    image, is_tp = counted.image[order], counted.is_tp[order]
    fp_at = np.flatnonzero(~is_tp)
    tp_at = np.flatnonzero(is_tp)
    return _MRTable(
        fp_image=image[fp_at],
        tp_image=image[tp_at],
        tp_before_fp=np.append(np.searchsorted(tp_at, fp_at), len(tp_at)),
        tp_per_image=np.bincount(image[tp_at], minlength=num_images),
        positives=counted.positives,
        point=point,
    )


def _ap_table(truth: GroundTruth, found: Detections) -> _APTable:
    """AP50 per-image results from COCOeval.evaluateImg, and COCO's own accumulate for the point."""
    evaluator = coco_evaluator(truth, found, category_id=PEDESTRIAN_CATEGORY, ap50_only=True)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, 0, 0, 0]
    # summarize()'s AP50: the mean over recall thresholds that exist (-1 when none does)
    point = float(np.mean(precision[precision > -1])) if np.any(precision > -1) else -1.0

    # evalImgs: one entry per image in ascending id (= index into truth.image_ids), None if empty
    images, scores, is_tp, counted = [], [], [], []
    positives = np.zeros(len(truth.image_ids), dtype=np.int64)
    for index, entry in enumerate(evaluator.evalImgs):
        if entry is None:
            continue
        positives[index] = np.count_nonzero(entry["gtIgnore"] == 0)
        matched, ignored = entry["dtMatches"][0] > 0, entry["dtIgnore"][0].astype(bool)
        images.append(np.full(len(matched), index, dtype=np.int64))
        scores.append(np.asarray(entry["dtScores"], dtype=np.float64))
        is_tp.append(matched & ~ignored)
        counted.append(~ignored)
    if images:
        image, score = np.concatenate(images), np.concatenate(scores)
        tp, keep = np.concatenate(is_tp), np.concatenate(counted)
    else:
        image, score = np.zeros(0, dtype=np.int64), np.zeros(0)
        tp, keep = np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    order = np.argsort(-score, kind="mergesort")  # as COCOeval.accumulate
    order = order[keep[order]]  # ignored detections only repeat the previous point
    tp_at, fp_at = np.flatnonzero(tp[order]), np.flatnonzero(~tp[order])
    return _APTable(tp_image=image[order][tp_at], fp_image=image[order][fp_at],
                    fp_before_tp=np.searchsorted(fp_at, tp_at), positives=positives,
                    thresholds=np.asarray(evaluator.params.recThrs, dtype=np.float64), point=point)


def _resampled_values(tables: list[_MRTable | _APTable], draws: np.ndarray, num_images: int) -> np.ndarray:
    """(R, len(tables)) metric of every resample, NaN where it has no positives."""
    resamples = len(draws)
    width = max([1] + [t.width for t in tables])
    chunk = max(1, min(resamples, _CHUNK_ELEMENTS // width))
    budget = _fp_budget(num_images)
    out = np.empty((resamples, len(tables)))
    for start in range(0, resamples, chunk):
        rows = draws[start:start + chunk]
        # image multiplicities (r, I): a bincount per row, offset so one call serves all rows
        offset = (np.arange(len(rows)) * num_images)[:, None]
        counts = np.bincount((rows + offset).ravel(), minlength=len(rows) * num_images).reshape(len(rows), -1)
        for k, table in enumerate(tables):
            if isinstance(table, _APTable):
                out[start:start + chunk, k] = _weighted_ap50(table, counts)
            else:
                out[start:start + chunk, k] = _weighted_mr(table, counts, budget)
    return out


def _fp_budget(num_images: int) -> np.ndarray:
    """(9,) largest false-positive count m with ``m / N <= reference`` in float64, per reference FPPI.

    Integer counts compared with these give exactly the float test ``fp / N <= ref``
    of :func:`hkd.eval.mr.log_average_miss_rate`.
    """
    budget = []
    for ref in FPPI_REFERENCE:
        m = int(math.floor(ref * num_images))
        while (m + 1) / num_images <= ref:
            m += 1
        while m > 0 and m / num_images > ref:
            m -= 1
        budget.append(m)
    return np.array(budget, dtype=np.int64)


def _weighted_mr(table: _MRTable, counts: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """(r,) MR⁻² of each row of ``counts`` (r, I), NaN without positives (see the module docstring)."""
    r = len(counts)
    rows = np.arange(r)[:, None]
    npos = counts @ table.positives
    n_fp = len(table.fp_image)
    within = np.zeros((r, len(budget)), dtype=np.int64)  # FPs whose running weight stays within budget
    if n_fp:
        # Only the FPs up to the largest budget are read. Their weights average 1, so twice that
        # many almost always exceed it; a chunk where a row does not falls back to all FPs.
        kept = min(n_fp, _FP_FACTOR * int(budget.max()) + _FP_SLACK)
        fp_cum = np.cumsum(counts[:, table.fp_image[:kept]], axis=1)
        if kept < n_fp and fp_cum[:, -1].min() <= budget.max():
            kept = n_fp
            fp_cum = np.cumsum(counts[:, table.fp_image], axis=1)
        # searchsorted 'right' per row, all rows in one call: row k's values lifted into
        # [k * span, (k + 1) * span)
        span = int(max(fp_cum[:, -1].max(), budget.max())) + 1
        lift = np.arange(r, dtype=np.int64)[:, None] * span
        within = np.searchsorted((fp_cum + lift).ravel(), (budget[None, :] + lift).ravel(), side="right")
        within = within.reshape(r, len(budget)) - rows * kept
    # TPs ranked above the first FP over budget (all TPs when none is)
    tp_index = table.tp_before_fp[within]
    needed = int(tp_index.max())
    tp_cum = np.zeros((r, needed + 1), dtype=np.int64)
    np.cumsum(counts[:, table.tp_image[:needed]], axis=1, out=tp_cum[:, 1:])
    found = tp_cum[rows, tp_index]
    # the official -1 index: the first detection drawn is an FP that alone exceeds the budget
    # (possible only when 1 / N > reference, i.e. budget 0); then the LAST recall is read
    last = (budget[None, :] == 0) & (within < n_fp) & (found == 0)
    found = np.where(last, (counts @ table.tp_per_image)[:, None], found)
    with np.errstate(divide="ignore", invalid="ignore"):
        miss_rate = 1.0 - found / npos[:, None]
        mr = np.exp(np.mean(np.log(miss_rate), axis=1)) * 100.0
    return np.where(npos > 0, mr, np.nan)


def _weighted_ap50(table: _APTable, counts: np.ndarray) -> np.ndarray:
    """(r,) AP50 of each row of ``counts`` (r, I), NaN without positives: COCO's accumulate, weighted."""
    r = len(counts)
    npos = counts @ table.positives
    out = np.zeros(r)
    num_tp = len(table.tp_image)
    if num_tp:
        tp = np.cumsum(counts[:, table.tp_image], axis=1)
        fp_cum = np.zeros((r, len(table.fp_image) + 1), dtype=np.int64)
        np.cumsum(counts[:, table.fp_image], axis=1, out=fp_cum[:, 1:])
        fp = fp_cum[:, table.fp_before_tp]
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = tp / npos[:, None]
        precision = tp / (fp + tp + np.spacing(1))  # COCO's operation order
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for k in range(r):
            at = np.searchsorted(recall[k], table.thresholds, side="left")
            # thresholds beyond the last recall keep precision 0, as COCO's try/except does
            out[k] = np.mean(np.where(at < num_tp, envelope[k, np.minimum(at, num_tp - 1)], 0.0))
    return np.where(npos > 0, out, np.nan)


def _interval(point: float | None, values: np.ndarray, level: float) -> Interval:
    kept = values[~np.isnan(values)]
    if len(kept) == 0:
        return Interval(point=point, low=None, high=None)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(kept, [tail, 100.0 - tail])
    return Interval(point=point, low=float(low), high=float(high))
