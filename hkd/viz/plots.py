"""The FPPI–miss-rate figure of several detectors (``hkd compare --out``, the app's Evaluate page).

Input is :attr:`hkd.eval.compare.ComparisonReport.curves`:
``{model: {"fppi": [...], "miss_rate": [...]}}``, one point per evaluated
detection by descending score. :func:`fppi_figure` draws it with plotly (HTML,
the app); :func:`fppi_png` draws the same figure with matplotlib, because
plotly's static export (kaleido) needs a Chrome this server does not have.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["FPPI_BAND", "PALETTE", "fppi_figure", "fppi_png"]

FPPI_BAND = (1e-2, 1e0)  # the FPPI range MR⁻² averages over
# one colour per model, in order (plotly's default sequence)
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
_TITLE = "Miss rate against false positives per image"


def _staircase(curve: Mapping[str, list[float]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """The corners of one curve that a log–log plot can show (FPPI > 0, miss rate > 0)."""
    try:
        fppi = np.asarray(curve["fppi"], dtype=np.float64)
        miss = np.asarray(curve["miss_rate"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"curve of {name!r} must be {{'fppi': [...], 'miss_rate': [...]}} of numbers") from None
    if fppi.shape != miss.shape or fppi.ndim != 1:
        raise ValueError(f"curve of {name!r} has {fppi.size} fppi values for {miss.size} miss rates")
    if len(fppi) > 2:
        # consecutive points share an FPPI or a miss rate: keep the first and last of each FPPI run
        change = fppi[1:] != fppi[:-1]
        keep = np.concatenate([[True], change]) | np.concatenate([change, [True]])
        fppi, miss = fppi[keep], miss[keep]
    shown = (fppi > 0) & (miss > 0)
    return fppi[shown], miss[shown]


def _label(name: str, mr: Mapping[str, float] | None) -> str:
    if mr and name in mr and mr[name] is not None and mr[name] >= 0:
        return f"{name} (MR⁻² {mr[name]:.1f} %)"
    return name


def fppi_figure(curves: Mapping[str, Mapping[str, list[float]]], *, mr: Mapping[str, float] | None = None,
                operating_points: Mapping[str, Mapping] | None = None):
    """A plotly figure: miss rate against FPPI on log–log axes, one trace per model.

    Args:
        curves: ``{model: {"fppi": [...], "miss_rate": [...]}}`` (points with
            FPPI or miss rate 0 cannot sit on a log axis and are left out).
        mr: optional ``{model: MR⁻² in percent}`` shown in the legend.
        operating_points: optional ``{model: {"fppi", "miss_rate", "score"}}``
            (``report.models[m]["operating_point"]``) marked on each curve.

    Returns:
        ``plotly.graph_objects.Figure`` with the 10⁻²…10⁰ FPPI band that
        MR⁻² averages over shaded.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_vrect(x0=FPPI_BAND[0], x1=FPPI_BAND[1], fillcolor="#888888", opacity=0.12, line_width=0,
                  layer="below", annotation_text="MR⁻² range", annotation_position="top left")
    for i, (name, curve) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        fppi, miss = _staircase(curve, name)
        fig.add_trace(go.Scatter(x=fppi, y=miss, mode="lines", name=_label(name, mr), line={"color": color},
                                 hovertemplate="FPPI %{x:.3g}<br>miss rate %{y:.3f}<extra>" + name + "</extra>"))
        point = (operating_points or {}).get(name)
        if point and point.get("fppi") and point.get("miss_rate"):
            fig.add_trace(go.Scatter(
                x=[point["fppi"]], y=[point["miss_rate"]], mode="markers", showlegend=False,
                marker={"color": color, "size": 10, "symbol": "circle-open", "line": {"width": 2}},
                hovertemplate=f"{name} at score ≥ {point.get('score', 0):.3f}<br>FPPI %{{x:.3g}}<br>"
                              "miss rate %{y:.3f}<extra></extra>"))
    fig.update_xaxes(type="log", title_text="false positives per image (FPPI)", exponentformat="power")
    fig.update_yaxes(type="log", title_text="miss rate", exponentformat="power")
    fig.update_layout(title_text=_TITLE, legend={"title_text": "model"}, template="plotly_white",
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def fppi_png(curves: Mapping[str, Mapping[str, list[float]]], path: str | Path, *,
             mr: Mapping[str, float] | None = None, operating_points: Mapping[str, Mapping] | None = None,
             dpi: int = 120) -> Path:
    """The figure of :func:`fppi_figure` drawn with matplotlib (Agg) into a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axvspan(*FPPI_BAND, color="#888888", alpha=0.12, lw=0, label="MR⁻² range")
    drawn = False
    for i, (name, curve) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        fppi, miss = _staircase(curve, name)
        if len(fppi):
            ax.plot(fppi, miss, color=color, lw=1.6, label=_label(name, mr))
            drawn = True
        else:
            ax.plot([], [], color=color, lw=1.6, label=_label(name, mr) + " (no point to show)")
        point = (operating_points or {}).get(name)
        if point and point.get("fppi") and point.get("miss_rate"):
            ax.plot([point["fppi"]], [point["miss_rate"]], "o", mfc="none", mec=color, mew=2, ms=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if not drawn:
        ax.set_xlim(1e-3, 1e1)
        ax.set_ylim(1e-2, 1.0)
    ax.set_xlabel("false positives per image (FPPI)")
    ax.set_ylabel("miss rate")
    ax.set_title(_TITLE)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
