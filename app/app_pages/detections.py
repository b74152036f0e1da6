"""Detections: the pair's boxes (and an optional third model's) on one image, and where two of them agree."""
from collections import Counter
from itertools import combinations

import streamlit as st

from hkd.viz.draw import COLORS, comparison_rows, draw_boxes, draw_comparison

from app import widgets
from app.services import compute, models

COLOR = {"teacher": COLORS["teacher_only"], "student": COLORS["student_only"], "third": (170, 80, 220)}
SHORT = {"teacher": "T", "student": "S", "third": "3rd"}

st.title("Detections")
st.caption("The models on the same image; any two of them compared box by box: agreed, or found by one only.")
picture = widgets.require_image("det")
teacher, student = widgets.require_pair()
case_box = widgets.case_note(picture, "det")

third_path, third = widgets.third_model_select(teacher, student, "det_third")

has_gt = picture.gt_boxes is not None
ctl = widgets.detection_controls(has_gt)
score, nms, match_iou, layout, show_gt, use_onnx = ctl.score, ctl.nms, ctl.match_iou, ctl.layout, ctl.show_gt, ctl.onnx

shown = {"teacher": teacher, "student": student} | ({"third": third} if third is not None else {})
# names of the chosen paths (identical files share one cached model, which keeps the first one's path)
names = {"teacher": models.ref_name("teacher"), "student": models.ref_name("student"),
         "third": models.display_name(third_path)}
found, backend = {}, {role: "PyTorch" for role in shown}
for role, m in shown.items():
    with st.spinner(f"Running the {role} ({names[role]})…"):
        if role == "student" and use_onnx:
            try:
                found[role] = ctl.one_per_person(compute.detections(m, picture, backend="onnxruntime",
                                                                    zoom_out=ctl.zoom_out).filter(score, nms))
                backend[role] = "onnxruntime"
                continue
            except Exception as exc:  # noqa: BLE001 - any export/runtime failure: say so, fall back to PyTorch
                st.error(f"The student cannot run through onnxruntime ({type(exc).__name__}: {exc}); "
                         "showing PyTorch's detections.")
        found[role] = ctl.one_per_person(compute.detections(m, picture, zoom_out=ctl.zoom_out).filter(score, nms))

height, width = picture.pixels.shape[:2]
titles = {role: f"{role.title()} · {models.short_name(names[role])}" for role in shown}
places = st.tabs(list(titles.values())) if layout.startswith("one") else st.columns(len(shown), gap="large")
for place, (role, m) in zip(places, shown.items()):
    with place:
        st.subheader(titles[role], help=names[role], anchor=False)
        dets = found[role]
        drawn = draw_boxes(picture.pixels, dets.boxes, scores=dets.scores, color=COLOR[role])
        if case_box is not None:  # the case last, thin, so that a box right on it does not hide it
            drawn = draw_boxes(drawn, [case_box], color=COLORS["ground_truth"], thickness=1)
        st.image(drawn, width="stretch")
        st.caption(f"**{len(dets)} pedestrians** with score ≥ {score:.2f} · inference **{dets.seconds * 1000:.0f} ms** "
                   f"on the CPU ({backend[role]}){' in two looks' if ctl.zoom_out else ''} for {picture.name} ({width}×{height}; first run, cached afterwards)")

st.header("Agreement")
pairs = [f"{a}|{b}" for a, b in combinations(shown, 2)]
pair = st.selectbox("Compare A with B", pairs, key="det_pair",
                    format_func=lambda p: " with ".join(f"{r} ({names[r]})" for r in p.split("|")))
a, b = pair.split("|")
rows = comparison_rows(found[a].boxes, found[a].scores, found[b].boxes, found[b].scores, iou_thresh=match_iou)
counts = Counter(row["status"] for row in rows)
left, right = st.columns([3, 2], gap="large")
colors = {"teacher_only": COLOR[a], "student_only": COLOR[b]}  # each model keeps its colour
with left:
    st.image(draw_comparison(picture.pixels, rows, picture.gt_boxes if show_gt else None,
                             labels=(SHORT[a], SHORT[b]), colors=colors), width="stretch")
    legend = [("agreed", COLORS["agreed"]), (f"{a} only", COLOR[a]), (f"{b} only", COLOR[b])]
    widgets.legend(legend + ([("ground truth (dashed)", COLORS["ground_truth"])] if show_gt else []))
with right:
    metrics = st.columns(2) + st.columns(2)
    metrics[0].metric("Agreed", counts["agreed"])
    metrics[1].metric(f"{a.title()} only", counts["teacher_only"])
    metrics[2].metric(f"{b.title()} only", counts["student_only"])
    metrics[3].metric("Ground truth", len(picture.gt_boxes) if has_gt else "—")
    settings_used = {"score_thresh": score, "nms_iou": nms, "suppress_contained": ctl.contained, "zoom_out": ctl.zoom_out,
                     "agreement_iou": match_iou, "agreement_pair": [a, b]}
    st.download_button("Download detections (JSON)", key="det_download", mime="application/json",
                       file_name=f"{picture.name.rsplit('.', 1)[0]}_detections.json",
                       data=compute.detections_json(picture, {r: (shown[r], found[r]) for r in shown}, rows,
                                                    settings_used, pair=(a, b)))
# full width below: every column in view; a cell with no value is empty
st.dataframe(compute.agreement_table(rows, a, b), hide_index=True, width="stretch")
