"""The case against the norm: how far the student is from the teacher on one box, level by level,
placed among the same measure on the boxes both models get right.

* :func:`case_distances` — one image, K boxes: the teacher–student distance of each box per level.
* :func:`distances_over_cases` — a list of :class:`~hkd.viz.divergence.Case`: the distances per
  (level, group), one forward per model and image.
* :func:`percentile_profile` — where a case's distances sit among the successes', per level (0–100).
* :func:`summarise` — mean per (level, group) with a 95 % bootstrap interval of the mean.
* :func:`distance_chart` — those rows as grouped bars with their intervals (Evaluate's chart).

**The measure.** At every level both features are pooled on the box to 7×7 (``roi_align`` at
the level's stride, the ROI head's own pooling, as :func:`hkd.viz.divergence.case_similarities`
does); the student's pooled features are mapped to the teacher's channels by a 1×1 least-squares
adapter (:func:`hkd.viz.featmaps.fit_adapter`, the Features page's adapter), and the distance is
the *relative residual* ``‖t − A(s)‖ / ‖t‖`` over the region's C_t·7·7 values: the Features
page's number restricted to the box. 0: the student holds the teacher's features of this box up
to that linear map; 1: no closer than predicting zeros. Why this and not CKA: CKA of a 7×7
region with tens of channels is high for any pair of features (failures and successes both at
0.90–0.98 on every level), while the residual is what the imitation loss penalises.

* The adapter of a map level (``backbone.c*``, ``neck.p*``) is fitted on the image's whole map of
  that level (padding cropped, the student resized to the teacher's cells) *less the cells within
  one cell of the box*: a held-out residual. Fitted with the box's own cells, a box where the
  student diverges strongly drags the least-squares map towards itself (its noise shrinks the
  map) and hides its own divergence. A box's distance depends on its image and on nothing else
  (not on the other boxes measured with it). The fit is also applied where widths are equal: the
  channels of two separately trained networks need not correspond. A map with too few cells for
  the fit (at most 2·(C_s + 1) for the image's size, e.g. C5 of a 640×480 image: 300 cells for 193
  unknowns; the fit would interpolate the teacher) uses ``1 − cosine`` of the region's attention
  maps instead (:func:`hkd.viz.divergence.region_similarity`), channel-agnostic, also 0 for the
  same features. :func:`level_measures` says which level uses which.
* ``rpn.objectness``: the sigmoid objectness of the FPN level whose anchor sizes are nearest the
  box's size (each model's own anchors), pooled the same way, no adapter (a channel is an anchor
  shape in both models); compared only where both have the same number of anchors per cell.
* ``roi.features``: the 7×7 region each model's own ``box_roi_pool`` gives the box (the FPN level
  chosen by its size); one adapter fitted on every cell of the FPN levels that pooler reads (the
  ROI head reads them all through one set of weights; a box is a small share of those cells).

A percentile compares a case with the successes *per level*, so the units of different levels
are never compared with each other.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from hkd.models.hierarchy import HierarchySpec
from hkd.viz.divergence import Case, _check_boxes, _regions, chosen_levels, paired_forward, region_similarity
from hkd.viz.featmaps import Geometry, fit_adapter, resize_map

OBJECTNESS = "rpn.objectness"
ROI_FEATURES = "roi.features"
RESIDUAL, ATTENTION = "residual", "attention"  # the two forms of the distance (see level_measures)
CONFIDENCE = 0.95
RESAMPLES = 1000


def distance_levels(t_spec: HierarchySpec, s_spec: HierarchySpec) -> list[str]:
    """Levels both detectors have where a box can be measured, in the teacher's computation order
    (also the default): backbone and FPN maps, ``rpn.objectness`` (same anchors per cell in both)
    and ``roi.features``."""
    out = []
    for name in t_spec.shared_with(s_spec, kinds=("map", "maps", "regions")):
        level, other = t_spec[name], s_spec[name]
        if level.kind == "map" and level.hierarchy in ("backbone", "neck"):
            out.append(name)
        elif name == OBJECTNESS and level.channels == other.channels:
            out.append(name)
        elif name == ROI_FEATURES:
            out.append(name)
    return out


def _check_levels(t_spec: HierarchySpec, s_spec: HierarchySpec, levels: Sequence[str] | None) -> list[str]:
    return chosen_levels(distance_levels(t_spec, s_spec), levels, action="measured on a box",
                         none_shared="the two detectors share no backbone/FPN map, rpn.objectness or roi.features "
                                     "level")


def _fits(cells: int, student_channels: int) -> bool:
    """Whether a 1×1 adapter (C_s + 1 unknowns per teacher channel) can be fitted on ``cells``
    positions without interpolating them (the Features page's rule)."""
    return cells > 2 * (student_channels + 1)


def _map_cells(model: nn.Module, image_hw: Sequence[int], stride: int) -> int:
    """Cells of a map level at ``stride`` that cover an (H, W) image once ``model`` resized it
    (its eval-time ``min_size``/``max_size`` rule), padding left out."""
    transform = model.transform
    height, width = float(image_hw[0]), float(image_hw[1])
    scale = min(float(transform.min_size[-1]) / min(height, width), float(transform.max_size) / max(height, width))
    return math.ceil(math.floor(height * scale) / stride) * math.ceil(math.floor(width * scale) / stride)


def level_measures(teacher: nn.Module, t_spec: HierarchySpec, s_spec: HierarchySpec, image_hw: Sequence[int],
                   levels: Sequence[str] | None = None) -> dict[str, str]:
    """``{level: "residual" | "attention"}``: the form of the distance :func:`case_distances` gives
    each level on an (H, W) image: the adapter's relative residual, or ``1 − cosine`` of the
    attention maps where the teacher's map has too few cells to fit the adapter on."""
    out = {}
    for name in _check_levels(t_spec, s_spec, levels):
        level = t_spec[name]
        fits = level.kind != "map" or _fits(_map_cells(teacher, image_hw, level.stride or 1), s_spec[name].channels)
        out[name] = RESIDUAL if fits else ATTENTION
    return out


def case_distances(
    teacher: nn.Module,
    t_spec: HierarchySpec,
    student: nn.Module,
    s_spec: HierarchySpec,
    image: np.ndarray,
    boxes,
    *,
    levels: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Teacher–student distance of each box's region, per level, on one (H, W, 3) uint8 image.

    boxes: (K, 4) xyxy in ``image``'s pixels. Returns ``{level: (K,) float64}`` in computation
    order (the module docstring defines the distance; 0 = the same features), NaN where the
    teacher's region is all zeros. Each model runs one forward for all K boxes (transform →
    backbone, its RPN when ``rpn.objectness`` is asked for, its ROI pooler when ``roi.features``
    is), under ``torch.no_grad`` in eval mode (a model in train mode is refused), with a detached
    Tap removed on return. K = 0 runs nothing.

    Raises ValueError for a level that cannot be measured (naming those that can) or a box that
    is not ``[x1, y1, x2, y2]`` with x2 > x1 and y2 > y1.
    """
    names = _check_levels(t_spec, s_spec, levels)
    tapped = list(names)
    if ROI_FEATURES in names:  # the FPN maps its pooler reads, for the roi.features adapter
        tapped += [lv.name for lv in t_spec if lv.hierarchy == "neck" and lv.kind == "map"
                   and lv.name in s_spec and lv.name not in tapped]
    pair = paired_forward(teacher, t_spec, student, s_spec, image, boxes, tapped, who="case_distances")
    if pair is None:
        return {name: np.zeros(0, dtype=np.float64) for name in names}
    box_tensor, tensor, (t_values, t_geometry), (s_values, s_geometry) = pair
    measures = level_measures(teacher, t_spec, s_spec, tensor.shape[-2:], names)
    out = {}
    for name in names:
        kind = t_spec[name].kind
        if kind == "map":
            t_regions = _regions(t_values[name], kind, t_spec[name].stride, t_geometry, box_tensor)
            s_regions = _regions(s_values[name], kind, s_spec[name].stride, s_geometry, box_tensor)
            t_map, s_map = t_geometry.crop(t_values[name]).float().cpu(), s_geometry.crop(s_values[name]).float().cpu()
            if measures[name] == RESIDUAL:
                out[name] = _held_out_residual(t_map, s_map, t_regions, s_regions, box_tensor, t_geometry,
                                               t_spec[name].stride)
            else:
                out[name] = 1.0 - region_similarity(t_regions, s_regions, "cosine")
        elif name == OBJECTNESS:
            t_regions = _objectness_regions(teacher, t_values[name], t_geometry, box_tensor)
            s_regions = _objectness_regions(student, s_values[name], s_geometry, box_tensor)
            out[name] = relative_residual(t_regions, s_regions)
        else:
            adapter = _roi_adapter(_pooled_maps(teacher, t_spec, t_values, t_geometry),
                                   _pooled_maps(student, s_spec, s_values, s_geometry))
            out[name] = relative_residual(t_values[name].float().cpu(), _adapt(adapter, s_values[name].float().cpu()))
    return out


def _held_out_residual(t_map: Tensor, s_map: Tensor, t_regions: Tensor, s_regions: Tensor, boxes: Tensor,
                       geometry: Geometry, stride: int | None) -> np.ndarray:
    """(K,) relative residuals, box k's through the adapter fitted on the map's cells outside it.

    t_map (C_t, h, w), s_map (C_s, h', w'): the cropped maps; the student's is resized to the
    teacher's cells, then a cell is left out of box k's fit when its centre lies within one cell
    of the box.
    """
    h, w = t_map.shape[-2:]
    student = resize_map(s_map, (h, w))
    scale = 1.0 / (stride or geometry.stride(t_map.shape[-2:]))
    cells_x = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :]
    cells_y = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None]
    out = np.empty(len(boxes), dtype=np.float64)
    for k, box in enumerate(geometry.to_model(boxes) * scale):
        inside = ((cells_x > box[0] - 1) & (cells_x < box[2] + 1) & (cells_y > box[1] - 1) & (cells_y < box[3] + 1))
        keep = ~inside.reshape(-1)
        if int(keep.sum()) <= student.shape[0] + 1:  # the box covers the map: no cells left to fit on
            keep = torch.ones_like(keep)
        adapter = fit_adapter(t_map.flatten(1)[:, None, keep], student.flatten(1)[:, None, keep])
        out[k] = relative_residual(t_regions[k:k + 1], _adapt(adapter, s_regions[k:k + 1]))[0]
    return out


def relative_residual(teacher_regions: Tensor, adapted_regions: Tensor) -> np.ndarray:
    """(K,) float64 ``‖t − a‖ / ‖t‖`` per region of (K, C, h, w) pairs; NaN where ``t`` is all zeros."""
    if tuple(teacher_regions.shape) != tuple(adapted_regions.shape):
        raise ValueError(f"relative_residual needs regions of one shape, got {tuple(teacher_regions.shape)} "
                         f"and {tuple(adapted_regions.shape)}")
    t = teacher_regions.detach().double().flatten(1)
    a = adapted_regions.detach().double().flatten(1)
    norm = t.norm(dim=1)
    residual = (t - a).norm(dim=1) / norm.clamp(min=1e-300)
    return torch.where(norm > 0, residual, torch.full_like(residual, math.nan)).numpy()


def _adapt(adapter: nn.Conv2d, regions: Tensor) -> Tensor:
    with torch.no_grad():
        return adapter(regions.float())


def _objectness_regions(model: nn.Module, maps: list[Tensor], geometry: Geometry, boxes: Tensor) -> Tensor:
    """(K, A, 7, 7) sigmoid objectness of each box on the FPN level whose anchors are sized for it."""
    sizes = [math.exp(np.mean(np.log(level_sizes))) for level_sizes in model.rpn.anchor_generator.sizes]
    model_boxes = geometry.to_model(boxes)
    side = ((model_boxes[:, 2] - model_boxes[:, 0]) * (model_boxes[:, 3] - model_boxes[:, 1])).sqrt()
    regions = []
    for k, box_side in enumerate(side.tolist()):
        index = int(np.argmin([abs(math.log(box_side / s)) for s in sizes[:len(maps)]]))
        fmap = maps[index].float().sigmoid()
        regions.append(_regions(fmap, "map", geometry.stride(fmap.shape[-2:]), geometry, boxes[k:k + 1]))
    return torch.cat(regions)


def _pooled_maps(model: nn.Module, spec: HierarchySpec, values: dict, geometry: Geometry) -> dict[str, Tensor]:
    """``{level: (C, h, w)}``: every FPN map the model's ROI pooler reads (its scales, set by the
    forward just run; every FPN map when it has none), padding cropped."""
    scales = getattr(model.roi_heads.box_roi_pool, "scales", None) or []
    strides = {round(1 / s) for s in scales}
    return {lv.name: geometry.crop(values[lv.name]).float().cpu() for lv in spec
            if lv.name in values and lv.hierarchy == "neck" and lv.kind == "map" and (not strides or lv.stride in strides)}


def _roi_adapter(t_maps: dict[str, Tensor], s_maps: dict[str, Tensor]) -> nn.Conv2d:
    """One 1×1 adapter fitted on the cells of all the pooler's FPN maps together (the student's
    resized to the teacher's cells, level by level)."""
    names = [name for name in t_maps if name in s_maps]
    teacher = torch.cat([t_maps[n].flatten(1) for n in names], dim=1)[:, None, :]  # (C_t, 1, n)
    student = torch.cat([resize_map(s_maps[n], t_maps[n].shape[-2:]).flatten(1) for n in names], dim=1)[:, None, :]
    return fit_adapter(teacher, student)


# ---------------------------------------------------------------------------
# Over a dataset
# ---------------------------------------------------------------------------
def distances_over_cases(
    teacher: nn.Module,
    t_spec: HierarchySpec,
    student: nn.Module,
    s_spec: HierarchySpec,
    cases: Sequence[Case],
    *,
    levels: list[str] | None = None,
    load_image: Callable[[str], np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """``{level: {group: (n,) distances}}`` of every case, in computation order and in the order the
    groups first appear in ``cases`` (a group's distances in the order of its cases).

    Cases are grouped by ``image_path``: each image is loaded once (``load_image(path) -> (H, W, 3)
    uint8``, default :func:`hkd.data.images.load_image`, the pixels the boxes are given in) and all
    its boxes go through one :func:`case_distances` call. ``progress(done_images, total_images)``
    after each image. Every case is checked before the first forward.
    """
    names = _check_levels(t_spec, s_spec, levels)
    for i, case in enumerate(cases):
        if not isinstance(case, Case):
            raise TypeError(f"cases[{i}] is a {type(case).__name__}, not a Case")
        if not isinstance(case.group, str) or not case.group:
            raise ValueError(f"cases[{i}] has no group name (got {case.group!r})")
        try:
            _check_boxes([case.box])
        except ValueError as exc:
            raise ValueError(f"cases[{i}] ({case.image_path}): {exc}") from None
    if load_image is None:
        from hkd.data.images import load_image
    by_image: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        by_image.setdefault(str(case.image_path), []).append(i)
    per_case = np.full((len(names), len(cases)), math.nan)
    for done, (path, indices) in enumerate(by_image.items(), start=1):
        try:
            found = case_distances(teacher, t_spec, student, s_spec, load_image(path),
                                   [cases[i].box for i in indices], levels=names)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        for row, name in enumerate(names):
            per_case[row, indices] = found[name]
        if progress is not None:
            progress(done, len(by_image))
    groups = list(dict.fromkeys(case.group for case in cases))
    return {name: {group: per_case[row, [i for i, c in enumerate(cases) if c.group == group]]
                   for group in groups} for row, name in enumerate(names)}


def percentile_profile(case: Mapping[str, float], successes: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``{level: percentile}``: the share (0–100) of the successes' distances at that level below the
    case's, ties counted half (mid-rank). 50: as far from the teacher as a typical success; 100:
    farther than every success. NaN where the case's distance is NaN or the level has no finite
    success distance. Levels of ``case`` in its order; a level missing from ``successes`` raises
    ValueError."""
    missing = [level for level in case if level not in successes]
    if missing:
        raise ValueError(f"no success distances for levels {missing}; successes have {list(successes)}")
    out = {}
    for level, value in case.items():
        norm = np.asarray(successes[level], dtype=np.float64).reshape(-1)
        norm = norm[np.isfinite(norm)]
        value = float(np.asarray(value, dtype=np.float64).reshape(-1)[0]) if np.size(value) == 1 else math.nan
        if not norm.size or not math.isfinite(value):
            out[level] = math.nan
            continue
        out[level] = 100.0 * (float((norm < value).sum()) + 0.5 * float((norm == value).sum())) / norm.size
    return out


def mean_interval(values: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                  seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the finite ``values``: the percentile bootstrap interval of the mean
    (``resamples`` resamples with replacement, ``seed``). One value: its interval is the value
    itself; none: NaNs."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = np.asarray(list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    if not array.size:
        return math.nan, math.nan, math.nan
    mean = float(array.mean())
    if array.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(resamples, array.size))].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return mean, float(low), float(high)


def summarise(values: Mapping[str, Mapping[str, Sequence[float]]], *, confidence: float = CONFIDENCE,
              resamples: int = RESAMPLES, seed: int = 0) -> list[dict]:
    """``{level: {group: distances}}`` (:func:`distances_over_cases`) → rows ``{"level", "hierarchy",
    "group", "mean", "low", "high", "n"}``: the mean distance with its :func:`mean_interval`, ``n``
    the finite values, in the mappings' order. The same ``seed`` for every cell, so a rerun gives
    the same intervals."""
    rows = []
    for level, groups in values.items():
        for group, distances in groups.items():
            array = np.asarray(list(distances), dtype=np.float64)
            mean, low, high = mean_interval(array, confidence=confidence, resamples=resamples, seed=seed)
            rows.append({"level": level, "hierarchy": level.split(".", 1)[0], "group": group, "mean": mean,
                         "low": low, "high": high, "n": int(np.isfinite(array).sum())})
    return rows


def distance_chart(rows: list[dict], *, confidence: float = CONFIDENCE):
    """Grouped bars of :func:`summarise` rows: level on x, one trace per group, the bar the mean
    distance, the whisker its bootstrap interval, ``n`` on hover. A ``plotly`` Figure."""
    import plotly.graph_objects as go

    missing = [key for key in ("level", "group", "mean", "low", "high", "n") if rows and key not in rows[0]]
    if missing:
        raise ValueError(f"distance_chart needs rows of summarise; missing keys {missing}")
    figure = go.Figure()
    if not rows:
        figure.add_annotation(text="no cases to compare", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        figure.update_layout(height=360, xaxis_visible=False, yaxis_visible=False)
        return figure
    levels = list(dict.fromkeys(r["level"] for r in rows))
    by_key = {(r["level"], r["group"]): r for r in rows}
    for group in dict.fromkeys(r["group"] for r in rows):
        cells = [by_key.get((level, group)) for level in levels]
        means = [c["mean"] if c else None for c in cells]
        figure.add_trace(go.Bar(
            name=group, x=levels, y=means,
            error_y=dict(type="data", symmetric=False, visible=True,
                         array=[c["high"] - c["mean"] if c else None for c in cells],
                         arrayminus=[c["mean"] - c["low"] if c else None for c in cells]),
            customdata=[[c["low"], c["high"], c["n"]] if c else [None, None, 0] for c in cells],
            hovertemplate=f"<b>{group}</b> · %{{x}}<br>mean %{{y:.3f}} ({confidence:.0%} interval "
                          "%{customdata[0]:.3f}–%{customdata[1]:.3f})<br>n = %{customdata[2]}<extra></extra>",
        ))
    figure.update_layout(
        barmode="group", height=420, margin=dict(t=50, b=40),
        title="Teacher–student distance on the case's box, per level (bars: mean, whiskers: "
              f"{confidence:.0%} bootstrap interval)",
        xaxis_title="level (computation order)",
        yaxis=dict(title="‖t − A(s)‖ / ‖t‖ on the box (0 = same features)", rangemode="tozero"),
        legend=dict(orientation="h", y=-0.25, yanchor="top", x=0),
    )
    return figure
