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


# the loss curves' panels (Distill page), top to bottom: the total joins the detection losses
LOSS_PANELS = {"total": "detection", "detection": "detection", "Backbone": "backbone", "FPN": "FPN", "RPN": "RPN",
               "ROI head": "ROI head", "dense head": "dense head", "aux heads": "aux heads",
               "teacher (online)": "teacher (online)"}
LINE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
PANEL_PX, PANEL_GAP = 170, 0.04


def _curve_name(key: str) -> str:
    """A loss key without what its panel already says: ``kd/neck.p3/mse`` → ``neck.p3 · mse``."""
    if key == "loss":
        return "total"
    head, _, rest = key.partition("/")
    return rest.replace("/", " · ") if head in ("det", "kd", "aux") else rest


def loss_chart(groups: dict[str, dict[str, list]]) -> go.Figure:
    """One small panel per hierarchy (detection with the total, backbone, FPN, RPN, ROI, aux, teacher),
    stacked on a shared step axis, each with its own legend beside it. ``groups`` is
    ``{group: {key: [steps, values]}}`` (``app.services.finetune.loss_series``). A panel whose
    losses span more than a decade is on a log scale."""
    from plotly.subplots import make_subplots

    panels: dict[str, dict[str, list]] = {}
    for group, series in groups.items():
        panels.setdefault(LOSS_PANELS.get(group, group), {}).update(series)
    titles = list(panels)
    figure = make_subplots(rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=PANEL_GAP,
                           subplot_titles=titles)
    for row, title in enumerate(titles, start=1):
        legend = "legend" if row == 1 else f"legend{row}"
        values = []
        for i, (key, (steps, ys)) in enumerate(sorted(panels[title].items(), key=lambda kv: kv[0] != "loss")):
            values += ys
            figure.add_trace(go.Scatter(
                x=steps, y=ys, name=_curve_name(key), legend=legend, mode="lines+markers" if len(steps) < 3 else "lines",
                line=dict(color="#333333" if key == "loss" else LINE_COLORS[i % len(LINE_COLORS)],
                          width=2.5 if key == "loss" else 1.5)), row=row, col=1)
        positive = [v for v in values if v > 0]
        log = len(positive) == len(values) and positive and max(positive) > 10 * min(positive)
        # ticks at 1, 2, 5 × 10ⁿ over a few decades; one per decade (10⁻⁶, 10⁻⁵, …) over more
        dtick = ("D2" if math.log10(max(positive) / min(positive)) <= 3 else 1) if log else None
        figure.update_yaxes(type="log" if log else "linear", dtick=dtick, exponentformat="power", row=row, col=1)
        domain = figure.get_subplot(row, 1).yaxis.domain
        figure.update_layout({legend: dict(y=domain[1], yanchor="top", x=1.01, xanchor="left", font=dict(size=10),
                                           tracegroupgap=2)})
    figure.update_xaxes(title_text="step", row=len(titles), col=1)
    figure.update_layout(height=PANEL_PX * len(titles) + 80, margin=dict(t=30, b=40, r=10))
    return figure


def validation_chart(evals: list[tuple[int, float]]) -> go.Figure:
    """The periodic validation's MR⁻² Reasonable (%) over steps, on its own axis (lower is better)."""
    steps, values = [s for s, _ in evals], [v for _, v in evals]
    figure = go.Figure(go.Scatter(x=steps, y=values, mode="lines+markers+text", text=[f"{v:.2f}" for v in values],
                                  textposition="top center", marker=dict(size=9, symbol="diamond", color="#ff7f0e"),
                                  line=dict(color="#ff7f0e"), name="MR⁻² Reasonable"))
    low, high = min(values), max(values)
    pad = max(1.0, 0.15 * (high - low))
    figure.update_layout(title=dict(text="Validation MR⁻² Reasonable (%) — lower is better", x=0, xanchor="left"),
                         height=280, margin=dict(t=50, b=40), showlegend=False,
                         xaxis=dict(title="step", tickformat="d"),
                         yaxis=dict(title="MR⁻² (%)", tickformat=".1f", range=[max(0.0, low - pad), high + pad]))
    return figure
