"""Where the student parts from the teacher on the cases it gets wrong, hierarchy by hierarchy.

A *case* is one box of one image (a pedestrian the teacher finds and the
student misses, a student-only false positive, a success …) with a group
label. For each case, the teacher's and the student's representations *of
that box's region* are compared at every level with the Features page's
measures (:mod:`hkd.viz.similarity`); averaged per group over a dataset, the
level where failures and successes separate is the hierarchy whose
representation the student lacks.

* :func:`case_similarities` — one image, K boxes: similarity of each box per level.
* :func:`divergence_over_cases` — a list of :class:`Case`, aggregated per (level, group).
* :func:`summarise` — the aggregation alone (mean, std, n per level and group).
* :func:`divergence_chart` — the rows as grouped bars, level on x, one trace per group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from hkd.models.hierarchy import HierarchySpec
from hkd.models.inference import image_tensor
from hkd.viz.featmaps import Geometry, require_eval
from hkd.viz.similarity import _aligned_forward, linear_cka

MEASURES = ("cka", "cosine")
# The region grid every level is pooled to: the ROI head's own 7×7 (MultiScaleRoIAlign of the presets).
POOL_SIZE = 7
SAMPLING_RATIO = 2


@dataclass(frozen=True)
class Case:
    """One box of one image to compare the two detectors on.

    image_path: the image file; box: (x1, y1, x2, y2) in the original image's
    pixels; group: what kind of case it is (e.g. ``"failure"``, ``"success"``).
    """

    image_path: str
    box: tuple[float, float, float, float]
    group: str


def comparable_levels(t_spec: HierarchySpec, s_spec: HierarchySpec) -> list[str]:
    """Levels both detectors have whose region can be compared, in the teacher's computation order:
    every backbone/FPN map level (``backbone.c*``, ``neck.p*``) and the pooled region features
    (``roi.features``). These are also the default levels."""
    return t_spec.shared_with(s_spec, kinds=("map", "regions"))


def chosen_levels(valid: list[str], levels: Sequence[str] | None, *, none_shared: str, action: str) -> list[str]:
    """``levels`` (None: every one of ``valid``) checked against ``valid`` and put in its order,
    without repeats. ``none_shared`` is the error when ``valid`` is empty; ``action`` completes
    "levels [...] cannot be …" for a level not in ``valid``. Raises ValueError / TypeError."""
    if levels is None:
        if not valid:
            raise ValueError(none_shared)
        return valid
    if isinstance(levels, str):
        raise TypeError(f"levels must be a list of level names, got the string {levels!r}")
    unknown = [name for name in levels if name not in valid]
    if unknown:
        raise ValueError(f"levels {unknown} cannot be {action}; choose from {valid}")
    if not levels:
        raise ValueError(f"levels is empty, and an empty choice cannot be {action}; choose from {valid}")
    chosen = set(levels)
    return [name for name in valid if name in chosen]  # computation order, no repeats


def _check_levels(t_spec: HierarchySpec, s_spec: HierarchySpec, levels: Sequence[str] | None) -> list[str]:
    return chosen_levels(comparable_levels(t_spec, s_spec), levels, action="compared on a box region",
                         none_shared="the two detectors share no backbone/FPN map level and no roi.features level")


def _check_measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose from {', '.join(MEASURES)}")
    return measure


def _check_boxes(boxes) -> Tensor:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return torch.zeros(0, 4)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) [x1, y1, x2, y2] rows, got shape {array.shape}")
    bad = ~np.isfinite(array).all(axis=1) | (array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1])
    if bad.any():
        raise ValueError(f"boxes must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1; "
                         f"bad rows {np.flatnonzero(bad).tolist()}: {array[bad].tolist()}")
    return torch.as_tensor(array, dtype=torch.float32)


def case_similarities(
    teacher: nn.Module,
    t_spec: HierarchySpec,
    student: nn.Module,
    s_spec: HierarchySpec,
    image: np.ndarray,
    boxes,
    *,
    levels: list[str] | None = None,
    measure: str = "cka",
) -> dict[str, np.ndarray]:
    """Teacher–student similarity of each box's region, per level, on one (H, W, 3) uint8 image.

    Returns ``{level: (K,) float64}`` in computation order; NaN where a box's
    region has no variance in either model (see :func:`linear_cka`).

    * The regions: ``boxes`` (K, 4) xyxy in ``image``'s pixels are mapped into
      each model's transformed input (its own resize, :class:`Geometry`). A map
      level (``backbone.*``, ``neck.*``; (C, h, w)) is pooled at each box with
      ``torchvision.ops.roi_align`` to 7×7 at the level's stride (sampling ratio
      2, as the ROI head's pooler does); ``roi.features`` is the (7×7) region
      both models' own ``box_roi_pool`` gives that box (the FPN level chosen by
      the box's size), read from its tap.
    * ``measure="cka"``: linear CKA per box with the 49 cells as samples and the
      channels as features — the Features page's CKA restricted to the box, and
      defined although the teacher's and the student's widths differ. With 49
      samples and tens to hundreds of channels, CKA of unrelated features is
      well above 0; compare groups with each other, not with 0. A box smaller
      than a cell of a coarse level (P6's 64 px) samples a bilinear blend of
      at most 4 cells there, so both models look alike on it whatever they
      compute: a coarse level separates groups only for boxes of its scale.
    * ``measure="cosine"``: cosine of the two 7×7 *attention maps* (mean of
      squares over channels, :func:`hkd.models.ops.attention_map`),
      the Features page's cosine, channel-agnostic. A least-squares channel map
      fitted per box is not offered: with 49 cells and ≥ 40 student channels it
      interpolates the teacher and every cosine would be about 1.

    Each model runs one forward for all K boxes (transform → backbone, plus its
    ROI pooler when ``roi.features`` is asked for), under ``torch.no_grad`` in
    eval mode (a model in train mode is refused), with a detached Tap that is
    removed on return. K = 0 runs nothing and gives empty arrays.
    """
    measure = _check_measure(measure)
    names = _check_levels(t_spec, s_spec, levels)
    pair = paired_forward(teacher, t_spec, student, s_spec, image, boxes, names, who="case_similarities")
    if pair is None:
        return {name: np.zeros(0, dtype=np.float64) for name in names}
    box_tensor, _, (t_values, t_geometry), (s_values, s_geometry) = pair
    out = {}
    for name in names:
        t_regions = _regions(t_values[name], t_spec[name].kind, t_spec[name].stride, t_geometry, box_tensor)
        s_regions = _regions(s_values[name], s_spec[name].kind, s_spec[name].stride, s_geometry, box_tensor)
        out[name] = region_similarity(t_regions, s_regions, measure)
    return out


def paired_forward(teacher: nn.Module, t_spec: HierarchySpec, student: nn.Module, s_spec: HierarchySpec,
                   image: np.ndarray, boxes, tapped: Sequence[str], *, who: str):
    """Both models (each in eval mode, else ValueError naming ``who``) run once on ``image`` with
    ``tapped`` levels read and ``boxes`` (checked: K × [x1, y1, x2, y2]) in their ROI poolers.
    Returns ``(boxes tensor, image tensor, (teacher values, geometry), (student values, geometry))``,
    or None for K = 0 (nothing runs)."""
    require_eval(teacher, who)
    require_eval(student, who)
    box_tensor = _check_boxes(boxes)
    if len(box_tensor) == 0:
        return None
    tensor = image_tensor(image)
    t_values, t_geometry, _ = _aligned_forward(teacher, t_spec, list(tapped), tensor, box_tensor)
    s_values, s_geometry, _ = _aligned_forward(student, s_spec, list(tapped), tensor, box_tensor)
    return box_tensor, tensor, (t_values, t_geometry), (s_values, s_geometry)


def _regions(value: Tensor, kind: str, stride: int | None, geometry: Geometry, boxes: Tensor) -> Tensor:
    """(K, C, 7, 7) float32 on the CPU: a map level pooled at the boxes, or the pooled regions as tapped."""
    if kind == "regions":
        return value.float().cpu()
    fmap = value.float()
    # The nominal stride, not padded size / map size: P6 (max-pool of P5) has ceil(h/2) cells,
    # so the measured ratio is off by a cell whenever P5's height is odd.
    scale = 1.0 / (stride or geometry.stride(fmap.shape[-2:]))
    model_boxes = geometry.to_model(boxes).to(fmap.device)
    pooled = roi_align(fmap[None], [model_boxes], output_size=POOL_SIZE, spatial_scale=scale,
                       sampling_ratio=SAMPLING_RATIO, aligned=False)
    return pooled.cpu()


def region_similarity(teacher_regions: Tensor, student_regions: Tensor, measure: str = "cka") -> np.ndarray:
    """(K,) float64 similarity of K region pairs: teacher (K, C_t, h, w), student (K, C_s, h, w).

    ``"cka"``: linear CKA of each pair with the h·w cells as samples; ``"cosine"``:
    cosine of the pair's attention maps. NaN for a region without variance.
    """
    from hkd.models.ops import attention_map  # the attention-transfer loss's own map

    measure = _check_measure(measure)
    if teacher_regions.dim() != 4 or student_regions.dim() != 4 or \
            teacher_regions.shape[0] != student_regions.shape[0] or \
            teacher_regions.shape[-2:] != student_regions.shape[-2:]:
        raise ValueError(f"region_similarity expects (K, C_t, h, w) and (K, C_s, h, w) with the same K, h, w, "
                         f"got {tuple(teacher_regions.shape)} and {tuple(student_regions.shape)}")
    t, s = teacher_regions.detach().double(), student_regions.detach().double()
    if measure == "cka":
        return np.array([linear_cka(t[k].flatten(1).T, s[k].flatten(1).T) for k in range(len(t))], dtype=np.float64)
    a_t, a_s = attention_map(t), attention_map(s)  # (K, h·w), unit rows (or all zeros)
    cos = (a_t * a_s).sum(dim=1)
    empty = (a_t.norm(dim=1) == 0) | (a_s.norm(dim=1) == 0)
    return torch.where(empty, torch.full_like(cos, math.nan), cos).numpy()


def divergence_over_cases(
    teacher: nn.Module,
    t_spec: HierarchySpec,
    student: nn.Module,
    s_spec: HierarchySpec,
    cases: list[Case],
    *,
    levels: list[str] | None = None,
    measure: str = "cka",
    load_image: Callable[[str], np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Mean teacher–student similarity per level and case group, over a dataset of cases.

    Cases are grouped by ``image_path``: each image is loaded once
    (``load_image(path) -> (H, W, 3) uint8``; default
    :func:`hkd.data.images.load_image`, the original pixels the boxes are given
    in) and all its boxes go through one :func:`case_similarities` call, i.e.
    one teacher and one student forward per image. ``progress(done_images,
    total_images)`` is called after each image.

    Returns :func:`summarise`'s rows ``{"level", "hierarchy", "group", "mean",
    "std", "n"}``: levels in computation order, groups in the order they first
    appear in ``cases``. No cases: no rows.
    """
    measure = _check_measure(measure)
    names = _check_levels(t_spec, s_spec, levels)
    for i, case in enumerate(cases):
        if not isinstance(case, Case):
            raise TypeError(f"cases[{i}] is a {type(case).__name__}, not a Case")
        if not isinstance(case.group, str) or not case.group:
            raise ValueError(f"cases[{i}] has no group name (got {case.group!r})")
        try:
            _check_boxes([case.box])
        except ValueError as exc:  # before any forward: a bad case found after an hour helps no one
            raise ValueError(f"cases[{i}] ({case.image_path}): {exc}") from None
    if load_image is None:
        from hkd.data.images import load_image
    by_image: dict[str, list[Case]] = {}
    for case in cases:
        by_image.setdefault(str(case.image_path), []).append(case)
    values: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for name in names:
        for case in cases:
            values[name].setdefault(case.group, [])
    for done, (path, image_cases) in enumerate(by_image.items(), start=1):
        image = load_image(path)
        try:
            sims = case_similarities(teacher, t_spec, student, s_spec, image, [c.box for c in image_cases],
                                     levels=names, measure=measure)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        for name in names:
            for case, value in zip(image_cases, sims[name]):
                values[name][case.group].append(float(value))
        if progress is not None:
            progress(done, len(by_image))
    return summarise(values)


def summarise(values: Mapping[str, Mapping[str, Sequence[float]]]) -> list[dict]:
    """``{level: {group: similarities}}`` → rows ``{"level", "hierarchy", "group", "mean", "std", "n"}``.

    Rows follow the mappings' order (level, then group). NaN similarities (a
    region without variance) are left out; ``n`` counts the values kept, ``std``
    is their population standard deviation (0 for one value); ``mean`` and
    ``std`` are NaN when no value is left. ``hierarchy`` is the level name's
    first part (``neck.p3`` → ``neck``).
    """
    rows = []
    for level, groups in values.items():
        for group, sims in groups.items():
            array = np.asarray(list(sims), dtype=np.float64)
            array = array[np.isfinite(array)]
            n = int(array.size)
            rows.append({"level": level, "hierarchy": level.split(".", 1)[0], "group": group,
                         "mean": float(array.mean()) if n else math.nan,
                         "std": float(array.std()) if n else math.nan, "n": n})
    return rows


_MEASURE_TITLES = {"cka": "linear CKA on the case's region", "cosine": "cosine of the region's attention maps"}


def divergence_chart(rows: list[dict], *, measure: str | None = None):
    """Grouped bars of :func:`divergence_over_cases` rows: level on x (in row order), one trace per
    group, the bar the group's mean similarity, the whisker its standard deviation, ``n`` on hover.

    ``measure`` (``"cka"``/``"cosine"``) only names the y axis. Returns a ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    missing = [key for key in ("level", "group", "mean", "std", "n") if rows and key not in rows[0]]
    if missing:
        raise ValueError(f"divergence_chart needs rows of divergence_over_cases; missing keys {missing}")
    if measure is not None:
        _check_measure(measure)
    figure = go.Figure()
    if not rows:
        figure.add_annotation(text="no cases to compare", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        figure.update_layout(height=360, xaxis_visible=False, yaxis_visible=False)
        return figure
    levels = list(dict.fromkeys(r["level"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    by_key = {(r["level"], r["group"]): r for r in rows}
    for group in groups:
        cells = [by_key.get((level, group)) for level in levels]
        figure.add_trace(go.Bar(
            name=group, x=levels,
            y=[c["mean"] if c else None for c in cells],
            error_y=dict(type="data", array=[c["std"] if c else None for c in cells], visible=True),
            customdata=[[c["n"] if c else 0, c["std"] if c else math.nan] for c in cells],
            hovertemplate=f"<b>{group}</b> · %{{x}}<br>mean %{{y:.3f}} ± %{{customdata[1]:.3f}}"
                          "<br>n = %{customdata[0]}<extra></extra>",
        ))
    low = min([0.0] + [r["mean"] - r["std"] for r in rows if np.isfinite(r["mean"]) and np.isfinite(r["std"])])
    figure.update_layout(
        barmode="group", height=420, margin=dict(t=50, b=40),
        title="Teacher–student similarity per level, by case group",
        xaxis_title="level (computation order)",
        yaxis=dict(title=_MEASURE_TITLES.get(measure, "similarity (1 = same representation)"),
                   range=[low, 1.05]),
        legend=dict(orientation="h", y=-0.25, yanchor="top", x=0),
    )
    return figure
