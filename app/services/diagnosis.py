"""The Evaluate page's "why": intervals on every number, and where each model loses its misses.

* **Intervals** are :func:`hkd.eval.bootstrap.bootstrap_intervals` (paired over images), computed
  with the comparison and cached with it (:func:`app.services.evaluation.compare`); here they are
  only formatted.
* **Diagnosis** is ``hkd diagnose`` run as a background job per (checkpoint, dataset, N, FPPI),
  writing ``diagnosis.json`` into ``cache_dir()/diagnosis/<checkpoint sha256>/<dataset>-<N>-<GT
  digest>-fppi<F>/`` (a result store entry, :mod:`hkd.results`); a ``.job`` marker beside the
  folder names the job, as for predictions.
  Cases are every non-ignored pedestrian >= 20 px (``--setup Analysis``, the gallery's cases) at
  each model's operating point on Reasonable (the table's). The pairs' extra misses and the
  figures come from :mod:`hkd.analysis.diagnose`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import streamlit as st

from hkd.analysis.diagnose import FOUND, describe, extra_misses, stages_of
from hkd.models.meta import CheckpointError
from hkd.results import STARTABLE

from app.services import eval_scores, evaluation, models, settings
from app.services.jobs import queue

STAGE_COLORS = {"rpn": "#d62728", "roi_score": "#ff7f0e", "nms": "#9467bd", "localization": "#1f77b4",
                "dense_head": "#d62728"}
ERROR_COLORS = {"duplicate": "#9467bd", "crowd": "#8c564b", "part_of_person": "#e377c2", "localization": "#1f77b4",
                "background": "#7f7f7f"}
STAGE_TEXT = {"rpn": "no proposal covered it (RPN)", "roi_score": "proposed, but the box head scored it low",
              "nms": "scored high, then removed by NMS", "localization": "a box came, but not on it",
              "dense_head": "the dense head scored nothing on it", "found": "found"}


# -- intervals ---------------------------------------------------------------------------
def _cell(interval: dict | None, digits: int = 2, *, difference: bool = False) -> str:
    """``12.79 (10.00–15.60)``; "—" for no value (MR⁻² -100 means none, unless a ``difference``)."""
    if not interval or interval.get("point") is None or (interval["point"] < 0 and not difference):
        return "—"
    low, high = interval.get("low"), interval.get("high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{interval['point']:.{digits}f}"
    return f"{interval['point']:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def score_rows(result: evaluation.Evaluation, refs: dict, measured: dict) -> list[dict]:
    """The Scores table with a 95 % interval beside each MR⁻² and AP50, e.g. ``12.79 (11.10–14.61)``;
    latency "—" until measured or recorded."""
    rows = eval_scores.table_rows(result, refs, measured)
    boot = result.bootstrap or {}
    for row in rows:
        intervals = boot.get("models", {}).get(row["model"], {})
        for setup in evaluation.SETUPS:
            key = f"MR⁻² {setup}"
            row[key] = _cell(intervals.get(setup)) if intervals else ("—" if row[key] is None else f"{row[key]:.2f}")
        ap = intervals.get("ap50")
        row["AP50"] = _cell(ap, 3) if ap else ("—" if row["AP50"] is None else f"{row['AP50']:.3f}")
        row["CPU latency (ms)"] = "—" if row["CPU latency (ms)"] is None else f"{row['CPU latency (ms)']:.0f}"
    return rows


def difference_rows(result: evaluation.Evaluation, setup: str = "Reasonable") -> list[dict]:
    """One row per pair: the MR⁻² difference (a − b) on ``setup`` and in AP50 with their paired
    intervals, and whether each interval contains 0 ("within noise")."""
    rows = []
    for diff in (result.bootstrap or {}).get("differences", []):
        mr, ap = diff["metrics"].get(setup), diff["metrics"].get("ap50")
        if not mr:
            continue
        rows.append({
            "pair (a − b)": f"{diff['a']} − {diff['b']}",
            f"Δ MR⁻² {setup} (95 %)": _cell(mr, difference=True),
            "MR⁻² verdict": "within noise" if mr["within_noise"] else ("a better" if mr["point"] < 0 else "b better"),
            "Δ AP50 (95 %)": _cell(ap, 3, difference=True) if ap else "—",
            "AP50 verdict": "—" if not ap else ("within noise" if ap["within_noise"] else
                                        ("a better" if ap["point"] > 0 else "b better")),
        })
    return rows


# -- diagnosis jobs ------------------------------------------------------------------------
# a diagnosis stands where a prediction can: the same states, so the same record serves both
DiagnosisState = evaluation.PredictionState


def _entry(sha256: str, prepared, fppi: float):
    return evaluation.store().entry("diagnosis", {"sha256": sha256, "dataset": prepared.key, "n": prepared.limit,
                                                  "images": prepared.digest, "fppi": fppi})


def diagnosis_path(sha256: str, prepared, fppi: float) -> Path:
    return _entry(sha256, prepared, fppi).path


def state(candidate, prepared, fppi: float) -> DiagnosisState:
    """Ready, in progress, failed, missing or refused (as :func:`evaluation.prediction_state`)."""
    try:
        info = models.info(candidate.ref)
    except (CheckpointError, settings.PathNotAllowed) as exc:
        return DiagnosisState(candidate, None, "refused", message=str(exc))
    if candidate.ref.get("preset") or not str(candidate.ref["path"]).endswith(".safetensors"):
        return DiagnosisState(candidate, None, "refused", message="diagnosis needs an HKD .safetensors checkpoint")
    problem = evaluation.pedestrian_problem(info)
    if problem:
        return DiagnosisState(candidate, None, "refused", message=problem)
    entry = _entry(info.key.split(":")[0], prepared, fppi)
    now = entry.state()
    if now.ready:
        return DiagnosisState(candidate, now.path, "ready", job_id=now.job_id)
    if now.job_state == "succeeded":
        return DiagnosisState(candidate, now.path, "failed", message=f"job {now.job_id} succeeded but wrote no "
                                                                           f"{now.path}")
    return DiagnosisState(candidate, now.path, now.state, now.step, now.total, now.message, now.job_id)


def launch(candidate, prepared, fppi: float) -> DiagnosisState:
    """Start the diagnose job of a missing (or failed) diagnosis; two sessions clicking at once start one
    (the store's claim: the state read again under the entry's lock)."""
    current = state(candidate, prepared, fppi)
    if current.state not in STARTABLE or current.path is None:
        return current

    def start() -> str:
        first = f" (first {prepared.limit})" if prepared.limit else ""
        return queue().submit_diagnose(
            checkpoint=candidate.ref["path"], images=str(prepared.images_dir), gt=str(prepared.gt_path),
            out=str(current.path.parent), name_in_report=candidate.label, limit=prepared.limit, fppi=fppi,
            threads=evaluation.PREDICT_THREADS, name=f"diagnose {candidate.label} on {prepared.label}{first}").id

    _entry(models.info(candidate.ref).key.split(":")[0], prepared, fppi).claim(start)
    return state(candidate, prepared, fppi)


def _read(path: str) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "cases" in data else None


# a resource, not data: read-only, and copying thousands of cases on every rerun would be the slow part
@st.cache_resource(show_spinner=False, max_entries=8)
def _merged(files: tuple[tuple[str, int], ...]) -> dict:
    out: dict = {"operating_point": {}, "cases": {}, "summary": {}}
    for path, _ in files:
        data = _read(path)
        for key in ("operating_point", "cases", "summary"):
            out[key].update((data or {}).get(key, {}))
    out["index"] = {label: {_key(c["image_id"], c["box"]): c for c in cases} for label, cases in out["cases"].items()}
    return out


def merged(states: list[DiagnosisState]) -> dict:
    """``{"operating_point", "cases", "summary", "index"}`` of every ready diagnosis, keyed by model
    label (each job diagnosed one model under its own label); ``index`` finds a case by image and box."""
    files = tuple((str(s.path), s.path.stat().st_mtime_ns) for s in states if s.state == "ready" and s.path)
    return _merged(files)


def pair(diagnosis: dict, reference: str, compared: str) -> dict | None:
    """The pedestrians ``reference`` finds and ``compared`` misses, by ``compared``'s stage."""
    cases = diagnosis["cases"]
    if reference not in cases or compared not in cases:
        return None
    family = diagnosis["operating_point"][compared].get("family", "two_stage")
    return extra_misses(cases[reference], cases[compared], reference, compared, family)


def headline(pair_: dict) -> str:
    return describe(pair_)


def _key(image_id, box) -> tuple:
    return (int(image_id), *(round(float(v)) for v in box))


def case_stages(diagnosis: dict, record: dict) -> dict[str, dict]:
    """``{model label: case}`` of a gallery record's pedestrian for every diagnosed model (its stage,
    suppressor, nearby box …); empty for a false positive or an undiagnosed model."""
    if record.get("height") is None:
        return {}
    key = _key(record["image_id"], record["box"])
    return {label: by_key[key] for label, by_key in diagnosis.get("index", {}).items() if key in by_key}


def stage_caption(cases: dict[str, dict]) -> str:
    """``teacher: found · student: lost at rpn (a 0.96 box nearby matched another pedestrian)``."""
    parts = []
    for label, case in cases.items():
        if case["stage"] == FOUND:
            parts.append(f"{label}: found")
            continue
        text = f"{label}: lost at {case['stage']}"
        near = case.get("nearby")
        if case["stage"] == "nms" and case.get("suppressor"):
            other = " that matched another pedestrian" if case["suppressor"].get("matched_other") else ""
            text += (f" (its {case['best_score_before_nms']:.2f} box removed by a "
                     f"{case['suppressor']['score']:.2f} box{other})")
        elif near and near["score"] >= 0.3:
            text += f" (its {near['score']:.2f} box here {near['why']})"
        parts.append(text)
    return " · ".join(parts)


# -- figures -------------------------------------------------------------------------------
def stages_figure(diagnosis: dict, labels: list[str]):
    """Stacked bars: for each model, its missed pedestrians by the stage that lost them."""
    import plotly.graph_objects as go

    fig = go.Figure()
    present = [label for label in labels if label in diagnosis["summary"]]
    stages = []
    for label in present:
        for st_ in stages_of(diagnosis["operating_point"][label].get("family", "two_stage")):
            if st_ not in stages:
                stages.append(st_)
    for stage in stages:
        counts = [diagnosis["summary"][label]["stages"].get(stage, {}).get("count", 0) for label in present]
        fig.add_bar(name=stage, x=present, y=counts, marker_color=STAGE_COLORS.get(stage),
                    hovertemplate=f"%{{x}}: %{{y}} missed at {stage}<extra>{STAGE_TEXT.get(stage, '')}</extra>")
    fig.update_layout(barmode="stack", height=320, margin=dict(l=10, r=10, t=40, b=10),
                      title="Missed pedestrians (≥ 20 px) by the stage that lost them",
                      yaxis_title="missed pedestrians", legend=dict(orientation="h", y=-0.2))
    return fig


def bins_figure(summary_or_pair: dict, by: str, title: str):
    """Stacked bars per height or visibility bin of one model's (or one pair's) misses by stage."""
    import plotly.graph_objects as go

    fig = go.Figure()
    bins = summary_or_pair[by]
    stages = list(bins[0]["stages"]) if bins else []
    for stage in stages:
        fig.add_bar(name=stage, x=[b["bin"] for b in bins], y=[b["stages"][stage]["count"] for b in bins],
                    marker_color=STAGE_COLORS.get(stage))
    fig.update_layout(barmode="stack", height=300, margin=dict(l=10, r=10, t=40, b=10), title=title,
                      xaxis_title="height (px)" if by == "height" else "visible fraction",
                      yaxis_title="missed", legend=dict(orientation="h", y=-0.3))
    return fig


def error_rows(result: evaluation.Evaluation) -> list[dict]:
    """One row per model: its false positives at the operating point by type, with MR⁻² (Reasonable)
    if that type were fixed."""
    rows = []
    for label, errors in (result.report.get("errors") or {}).items():
        row = {"model": label, "MR⁻² now": f"{result.report['models'][label]['mr']['Reasonable']:.1f}"}
        for kind, n in errors["counts"].items():
            fixed = errors["mr_if_fixed"].get(kind)
            row[kind] = f"{n}" + (f" → {fixed:.1f}" if fixed is not None and fixed >= 0 else "")
        rows.append(row)
    return rows


def error_types(result: evaluation.Evaluation) -> list[str]:
    errors = result.report.get("errors") or {}
    first = next(iter(errors.values()), {"counts": {}})
    return list(first["counts"])


def fp_type(result: evaluation.Evaluation, record: dict) -> str | None:
    """The error type of a false-positive gallery record (compare's ``errors`` records), or None."""
    errors = (result.report.get("errors") or {}).get(record["a"])
    if not errors or record["kind"] != "fp_of_a_only":
        return None
    key = _key(record["image_id"], record["box"])
    for fp in errors.get("false_positives", []):
        if _key(fp["image_id"], fp["box"]) == key:
            return fp["type"]
    return None
