"""The case against the norm on the Features page: how far the student is from the teacher on the
case's box at every level, as a percentile among the boxes both models find (issue #28, item 4).

The measure is :mod:`hkd.analysis.divergence`'s (pooled on the box, through the least-squares
adapter, ``‖t − A(s)‖ / ‖t‖``). The successes it is placed among are, in this order of preference:

* a distribution handed over by another page (Evaluate) under ``st.session_state[NORM_KEY]`` =
  ``{"teacher": model key, "student": model key, "distances": {level: [float, …]}, "label": str}``,
  used while the pair it was measured on is the current pair;
* otherwise, measured now on the same image: up to :data:`SUCCESS_LIMIT` boxes both models find
  (score ≥ :data:`SUCCESS_SCORE`, matched at IoU ≥ 0.5, the teacher's box), the case's own box
  left out — one forward per model for the case and all of them together.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app.services.images import Picture
from app.services.models import LoadedModel

NORM_KEY = "focus_norm"
SUCCESS_LIMIT = 16
SUCCESS_SCORE = 0.5
MIN_SUCCESSES = 3  # fewer, and a percentile can only say 0, 50 or 100
# roi.features of a box is drawn this tall, its width following the box (within the limits)
REGION_HEIGHT, REGION_MIN_WIDTH, REGION_MAX_WIDTH = 320, 140, 520
BOX_COLOR = (255, 255, 255)


def marked(pixels: np.ndarray, box: tuple | None) -> np.ndarray:
    """The image with the case's ``box`` (xyxy pixels) outlined white on black, so that the outline
    still shows through a heat map blended over it; the image itself when there is no box."""
    from hkd.viz.draw import draw_boxes

    if box is None:
        return pixels
    thick = max(2, round(max(pixels.shape[:2]) / 200))
    return draw_boxes(draw_boxes(pixels, [box], color=(0, 0, 0), thickness=thick + 2), [box], color=BOX_COLOR,
                      thickness=thick)


def region_width(box: tuple | None) -> int | str:
    """The width (px) that shows a crop of ``box`` :data:`REGION_HEIGHT` px tall at its own aspect
    ratio (clamped to readable widths); ``"stretch"`` for no box (the whole image fills its column)."""
    if box is None:
        return "stretch"
    width, height = max(float(box[2] - box[0]), 1e-6), max(float(box[3] - box[1]), 1e-6)
    return int(min(REGION_MAX_WIDTH, max(REGION_MIN_WIDTH, round(REGION_HEIGHT * width / height))))


def success_boxes(teacher_found, student_found, case_box: tuple) -> np.ndarray:
    """(n, 4) the teacher's boxes of the detections both models find (score ≥ :data:`SUCCESS_SCORE`,
    IoU ≥ 0.5), highest teacher score first, at most :data:`SUCCESS_LIMIT`, none overlapping the case
    (IoU ≥ 0.5: the case itself, when both find it)."""
    import torch
    from torchvision.ops import box_iou

    from hkd.viz.draw import comparison_rows

    t, s = teacher_found.filter(SUCCESS_SCORE, 0.5), student_found.filter(SUCCESS_SCORE, 0.5)
    rows = comparison_rows(t.boxes, t.scores, s.boxes, s.scores)
    boxes = np.asarray([r["box"] for r in rows if r["status"] == "agreed"], dtype=np.float64).reshape(-1, 4)
    if len(boxes):
        iou = box_iou(torch.as_tensor(boxes), torch.as_tensor([case_box], dtype=torch.float64))[:, 0].numpy()
        boxes = boxes[iou < 0.5]
    return boxes[:SUCCESS_LIMIT]


@st.cache_data(show_spinner=False, max_entries=64)
def _distances(t_key: str, s_key: str, image_key: str, boxes: tuple, _teacher, _t_spec, _student, _s_spec,
               _pixels: np.ndarray) -> dict:
    from hkd.analysis.divergence import case_distances, level_measures

    return {"distances": case_distances(_teacher, _t_spec, _student, _s_spec, _pixels, np.asarray(boxes)),
            "forms": level_measures(_teacher, _t_spec, _s_spec, _pixels.shape[:2])}


def given_norm(teacher: LoadedModel, student: LoadedModel) -> dict | None:
    """The success distribution another page handed over for this pair (see the module), or None."""
    norm = st.session_state.get(NORM_KEY)
    if not isinstance(norm, dict) or (norm.get("teacher"), norm.get("student")) != (teacher.key, student.key):
        return None
    return norm


def profile(teacher: LoadedModel, student: LoadedModel, picture: Picture, box: tuple) -> dict:
    """The case's percentile profile: ``{"percentiles": {level: 0–100}, "distances": {level: float},
    "forms": {level: "residual" | "attention"}, "n": successes, "source": what they are}``;
    ``percentiles`` is empty when fewer than :data:`MIN_SUCCESSES` successes were found."""
    from app.services import compute
    from hkd.analysis.divergence import percentile_profile

    norm = given_norm(teacher, student)
    others = np.zeros((0, 4)) if norm else success_boxes(compute.detections(teacher, picture),
                                                         compute.detections(student, picture), box)
    boxes = tuple(tuple(float(v) for v in b) for b in [box, *others])
    measured = _distances(teacher.key, student.key, picture.key, boxes, teacher.model, teacher.spec,
                          student.model, student.spec, picture.pixels)
    case = {level: float(d[0]) for level, d in measured["distances"].items()}
    if norm:
        successes = {level: np.asarray(norm["distances"].get(level, []), dtype=np.float64) for level in case}
        source = str(norm.get("label") or "the successes handed over by Evaluate")
    else:
        successes = {level: d[1:] for level, d in measured["distances"].items()}
        source = (f"the {len(others)} box(es) both models find on this image (score ≥ {SUCCESS_SCORE}, "
                  f"at most {SUCCESS_LIMIT}), measured now")
    n = min((int(np.isfinite(v).sum()) for v in successes.values()), default=0)
    percentiles = percentile_profile(case, successes) if n >= MIN_SUCCESSES else {}
    return {"percentiles": percentiles, "distances": case, "forms": measured["forms"], "n": n, "source": source}


def chart(result: dict) -> go.Figure:
    """Bars of the case's percentile per level (computation order), a dashed line at 50 (a typical
    success); the distance and its form on hover."""
    levels = list(result["percentiles"])
    values = [result["percentiles"][level] for level in levels]
    forms = {"residual": "‖t − A(s)‖ / ‖t‖ on the box", "attention": "1 − cosine of the box's attention maps"}
    figure = go.Figure(go.Bar(
        x=levels, y=values, marker_color=["#d62728" if v >= 90 else "#7f7f7f" for v in values],
        text=[f"{v:.0f}" if math.isfinite(v) else "–" for v in values], textposition="outside",
        customdata=[[result["distances"][level], forms.get(result["forms"].get(level), "")] for level in levels],
        hovertemplate="%{x}: farther than %{y:.0f} % of the successes<br>distance %{customdata[0]:.3f} "
                      "(%{customdata[1]})<extra></extra>"))
    # the label sits right of the last bar, in the margin, where no bar can hide it
    figure.add_hline(y=50, line_dash="dash", line_color="#333333", annotation_text="a typical success",
                     annotation_position="right", annotation_xanchor="left")
    figure.update_layout(height=360, margin=dict(t=40, b=40, r=120), showlegend=False,
                         title="This case's teacher–student distance per level, as a percentile of the successes",
                         xaxis_title="level (computation order)",
                         yaxis=dict(title="percentile among the successes", range=[0, 110]))
    return figure


def caption(result: dict) -> str:
    """What the chart shows and what a high bar means, or why there is no chart."""
    if not result["percentiles"]:
        return (f"Only {result['n']} success(es) to compare with ({result['source']}): too few to place the case. "
                "Try an image where both models find more pedestrians.")
    attention = [level for level, form in result["forms"].items() if form == "attention" and level in result["percentiles"]]
    note = (f" On {', '.join(attention)} the map is too small to fit an adapter on this image: the distance there "
            "is 1 − cosine of the attention maps." if attention else "")
    return ("A bar is the share of successes on which the student is closer to the teacher than on this case, at "
            "that level (the features pooled on the box, through the 1×1 least-squares adapter). A high bar (red: "
            "≥ 90) marks a level where this case parts from the teacher unusually far: where the student loses it; "
            f"bars near 50 are as usual. Successes: {result['source']}.{note}")
