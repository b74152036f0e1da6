"""Pictures and charts the pages show: numpy images (H, W, 3) uint8 and plotly figures."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

ROLE_COLORS = {"teacher": "#1f77b4", "student": "#ff7f0e"}


def crop(pixels: np.ndarray, box: tuple | None) -> np.ndarray:
    """The image region of ``box`` (xyxy pixels), or the whole image."""
    if box is None:
        return pixels
    height, width = pixels.shape[:2]
    x1, y1 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x2, y2 = min(width, max(x1 + 1, int(math.ceil(box[2])))), min(height, max(y1 + 1, int(math.ceil(box[3]))))
    return pixels[y1:y2, x1:x2]


def heat_on(pixels: np.ndarray, heat: np.ndarray, opacity: float, box: tuple | None = None) -> np.ndarray:
    """A (h, w) heat map in [0, 1] over the image (or over the region of ``box``)."""
    from hkd.viz.featmaps import overlay  # torch: not needed by the Models page's charts

    return overlay(np.ascontiguousarray(crop(pixels, box)), heat, opacity)


def rgb_on(pixels: np.ndarray, rgb: np.ndarray, opacity: float, box: tuple | None = None) -> np.ndarray:
    """A (h, w, 3) uint8 colour map (e.g. PCA) blended over the image (or the region of ``box``)."""
    base = crop(pixels, box)
    import cv2  # only the image pages need it

    resized = cv2.resize(rgb, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.round(base * (1.0 - opacity) + resized * opacity).astype(np.uint8)


def enlarge(pixels: np.ndarray, min_side: int = 224) -> np.ndarray:
    """Nearest-neighbour upscale of small crops (a 7×7 ROI region) so they are visible."""
    factor = max(1, math.ceil(min_side / max(1, min(pixels.shape[:2]))))
    return pixels if factor == 1 else np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def cost_chart(costs: dict[str, dict[str, dict[str, int]]], what: str, scale: float, unit: str) -> go.Figure:
    """Grouped bars per hierarchy, teacher vs student. costs: role → {"params"|"flops": {hierarchy: n}}."""
    hierarchies = [h for h in ("backbone", "neck", "rpn", "roi", "head") if any(c[what].get(h) for c in costs.values())]
    figure = go.Figure([
        go.Bar(name=f"{role} — {cost[what]['total'] / scale:.2f} {unit.split()[0]} in total", x=hierarchies,
               y=[cost[what].get(h, 0) / scale for h in hierarchies], marker_color=ROLE_COLORS[role],
               text=[f"{cost[what].get(h, 0) / scale:.2f}" for h in hierarchies], textposition="outside")
        for role, cost in costs.items()])
    title = f"{unit} per hierarchy" + (" — one 640×480 forward" if what == "flops" else "")
    figure.update_layout(barmode="group", title=title, yaxis_title=unit, xaxis_title="hierarchy", height=420,
                         margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.25, yanchor="top", x=0))
    return figure


def similarity_chart(rows: list[dict]) -> go.Figure:
    """Linear CKA and cosine (of attention maps) per level, 1 = same representation."""
    levels = [r["level"] for r in rows]
    figure = go.Figure([
        go.Scatter(x=levels, y=[r["cka"] for r in rows], name="linear CKA", mode="lines+markers",
                   line=dict(color="#2ca02c", width=3)),
        go.Scatter(x=levels, y=[r["cosine"] for r in rows], name="cosine of attention maps", mode="lines+markers",
                   line=dict(color="#9467bd", dash="dot")),
    ])
    finite = [r for r in rows if r["cka"] == r["cka"]]  # NaN-free
    if finite:
        worst = min(finite, key=lambda r: r["cka"])
        figure.add_annotation(x=worst["level"], y=worst["cka"], text=f"lowest CKA: {worst['level']}",
                              showarrow=True, arrowhead=2, ax=-60, ay=-30, bgcolor="rgba(255,255,255,0.8)")
    figure.update_layout(yaxis=dict(title="similarity (1 = same representation)", range=[-0.05, 1.05]),
                         height=400, margin=dict(t=30, b=40), xaxis=dict(tickangle=-35),
                         legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return figure


# one colour per hierarchy group of the loss curves (Distill page)
GROUP_COLORS = {"total": "#333333", "detection": "#7f7f7f", "Backbone": "#1f77b4", "FPN": "#2ca02c",
                "RPN": "#9467bd", "ROI head": "#d62728", "aux heads": "#17becf", "teacher (online)": "#bcbd22"}


def loss_chart(groups: dict[str, dict[str, list]], evals: list[tuple[int, float]] | None = None) -> go.Figure:
    """Every loss key over steps, grouped (legend groups, one colour family) by hierarchy:
    ``groups`` is ``{group: {key: [steps, values]}}`` (``app.services.finetune.loss_series``);
    the periodic validation MR⁻² goes on a second y axis."""
    figure = go.Figure()
    for group, series in groups.items():
        color = GROUP_COLORS.get(group, "#8c564b")
        for i, (key, (steps, values)) in enumerate(sorted(series.items())):
            figure.add_trace(go.Scatter(
                x=steps, y=values, mode="lines+markers" if len(steps) < 3 else "lines", name=key,
                legendgroup=group, legendgrouptitle_text=group, line=dict(color=color, width=2 if i == 0 else 1,
                                                                           dash=("solid", "dot", "dash", "dashdot")[i % 4])))
    if evals:
        figure.add_trace(go.Scatter(x=[s for s, _ in evals], y=[v for _, v in evals], name="val MR⁻² Reasonable (%)",
                                    mode="lines+markers", yaxis="y2", legendgroup="validation",
                                    legendgrouptitle_text="validation", marker=dict(size=9, symbol="diamond"),
                                    line=dict(color="#ff7f0e")))
    figure.update_layout(height=460, margin=dict(t=30, b=40), xaxis_title="step", yaxis=dict(title="loss", type="log"),
                         yaxis2=dict(title="MR⁻² (%)", overlaying="y", side="right", showgrid=False),
                         legend=dict(groupclick="toggleitem", font=dict(size=10)))
    return figure
