"""The Evaluate page's numbers as the user reads and exports them: the scores table, the miss-rate
breakdowns, the FPPI curves (plotly, PNG, standalone HTML) and CSV rows, from an
:class:`app.services.evaluation.Evaluation`."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from hkd.models.meta import CheckpointError

from app.services import models, settings
from app.services.evaluation import SETUPS, Evaluation

def recorded_latency(meta) -> float | None:
    """Median CPU seconds of a 640×480 forward if the checkpoint records one (``cost.latency``, the
    dict ``hkd info --bench`` prints, measured at ``cost.flops_size``), else None."""
    cost = meta.cost or {}
    latency = cost.get("latency")
    if isinstance(latency, dict) and cost.get("flops_size") == list(models.PROFILE_SIZE):
        value = latency.get("median_s")
        return float(value) if isinstance(value, (int, float)) else None
    return None


def table_rows(evaluation: Evaluation, refs: dict[str, dict], measured: dict[str, float]) -> list[dict]:
    """One row per model: MR⁻² per setup (%), AP50, parameters (M), CPU latency (ms), operating point.

    ``refs``: label → checkpoint ref (the header gives parameters and a recorded latency);
    ``measured``: model key → median seconds measured in this session (preferred to a recorded one).
    MR⁻² of a setup without ground truth (-100 in ``hkd eval``) is None."""
    rows = []
    for label, result in evaluation.report["models"].items():
        info = models.info(refs[label])
        cost = models.recorded_cost(info.meta, models.PROFILE_SIZE)
        latency = measured.get(info.key, recorded_latency(info.meta))
        op = result["operating_point"]
        row = {"model": label}
        row.update({f"MR⁻² {setup}": (None if result["mr"][setup] < 0 else result["mr"][setup]) for setup in SETUPS})
        row.update({
            "AP50": result["ap50"] if result["ap50"] >= 0 else None,
            "params (M)": cost["params"]["total"] / 1e6 if cost else None,
            "CPU latency (ms)": latency * 1000 if latency is not None else None,
            "detections": result["num_detections"],
            "operating score": op["score"],
            "miss rate at operating point": op["miss_rate"],
        })
        rows.append(row)
    return rows


def breakdown_rows(evaluation: Evaluation) -> list[dict]:
    """Flat rows (model, by, bin, gt, missed, miss_rate) of the height and visibility breakdowns."""
    return [{"model": label, "by": by, "bin": row["bin"], "low": row["low"], "high": row["high"], "gt": row["gt"],
             "missed": row["missed"], "miss_rate": row["miss_rate"]}
            for label, breakdown in evaluation.report["breakdown"].items()
            for by in ("height", "visibility") for row in breakdown[by]]


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def breakdown_figure(evaluation: Evaluation, by: str):
    """Miss rate per GT ``by`` ("height" or "visibility") bin at each model's operating point,
    bars grouped by model; hover gives missed / GT."""
    import plotly.graph_objects as go

    from hkd.viz.plots import PALETTE  # the curves' colours: one colour per model on the whole page

    title = {"height": "GT height (px)", "visibility": "visible fraction"}[by]
    figure = go.Figure()
    for i, (label, breakdown) in enumerate(evaluation.report["breakdown"].items()):
        rows = breakdown[by]
        figure.add_trace(go.Bar(
            name=label, x=[r["bin"] for r in rows], y=[r["miss_rate"] for r in rows],
            marker_color=PALETTE[i % len(PALETTE)],
            customdata=[[r["missed"], r["gt"]] for r in rows],
            hovertemplate=f"<b>{label}</b> · %{{x}}<br>miss rate %{{y:.2f}}<br>%{{customdata[0]}} of "
                          "%{customdata[1]} missed<extra></extra>"))
    figure.update_layout(barmode="group", height=360, title=f"Miss rate by {title}", xaxis_title=title,
                         yaxis=dict(title="miss rate at the operating point", range=[0, 1.05]),
                         margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.3, yanchor="top", x=0))
    return figure


def _curve_marks(evaluation: Evaluation) -> dict:
    models_ = evaluation.report["models"]
    return {"mr": {label: m["mr"][evaluation.setup] for label, m in models_.items()},
            "operating_points": {label: m["operating_point"] for label, m in models_.items()}}


def curves_figure(evaluation: Evaluation):
    """FPPI–miss-rate curves on log–log axes with each model's operating point (:func:`hkd.viz.plots.fppi_figure`)."""
    from hkd.viz.plots import fppi_figure

    return fppi_figure(evaluation.curves, **_curve_marks(evaluation))


def curves_png(evaluation: Evaluation) -> bytes:
    """The same curves as a PNG (:func:`hkd.viz.plots.fppi_png`, matplotlib)."""
    import tempfile

    from hkd.viz.plots import fppi_png

    with tempfile.TemporaryDirectory() as folder:
        return fppi_png(evaluation.curves, Path(folder) / "curves.png", **_curve_marks(evaluation)).read_bytes()


def figure_html(figure) -> str:
    """A standalone HTML page of ``figure`` (plotly.js inlined: it opens offline)."""
    return figure.to_html(include_plotlyjs=True, full_html=True)


def measure_latency(refs: dict[str, dict], measured: dict[str, float]) -> list[str]:
    """Time each checkpoint of ``refs`` (``compute.latency``: 640×480, 2 threads) into ``measured``
    (model key → median seconds); returns a line per checkpoint that cannot be loaded."""
    from app.services import compute

    problems = []
    for label, ref in refs.items():
        try:
            measured[models.info(ref).key] = compute.latency(models.load(ref))["median_s"]
        except (CheckpointError, settings.PathNotAllowed) as exc:
            problems.append(f"{label}: {exc}")
    return problems


