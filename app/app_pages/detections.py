"""Detections: the pair's boxes (and an optional third model's) on one image, and where two of them agree."""
from collections import Counter
from itertools import combinations

import streamlit as st

from hkd.viz.draw import COLORS, comparison_rows, draw_boxes, draw_comparison

from app import widgets
from app.services import compute, models

COLOR = {"teacher": COLORS["teacher_only"], "student": COLORS["student_only"], "third": (170, 80, 220)}
SHORT = {"teacher": "T", "student": "S", "third": "3rd"}
# the share of a box inside a higher-scoring one above which it is suppressed (None: keep every box)
CONTAINED = {"keep them all": None, "suppress if ≥ 90 % inside": 0.9, "suppress if ≥ 80 % inside": 0.8}

st.title("Detections")
st.caption("The models on the same image; any two of them compared box by box: agreed, or found by one only.")
picture = widgets.require_image("det")
teacher, student = widgets.require_pair()
case_box = widgets.case_note(picture, "det")

third_path, third = widgets.third_model_select(teacher, student, "det_third")

cols = st.columns(4)
score = cols[0].slider("Score threshold", 0.05, 0.95, 0.5, 0.05, key="det_score")
nms = cols[1].slider("NMS IoU", 0.3, 0.9, 0.5, 0.05, key="det_nms",
                     help="Non-maximum suppression over the kept boxes: overlaps above this IoU are merged.")
match_iou = cols[2].slider("Agreement IoU", 0.3, 0.9, 0.5, 0.05, key="det_match",
                           help="Two boxes of the compared models with at least this IoU count as agreed.")
contained = cols[3].selectbox(
    "Boxes inside a bigger one", list(CONTAINED), index=1, key="det_contained",
    help="A box on a leg or a torso lies mostly inside the person's full box, so NMS (IoU) keeps both. Suppressing "
         "a box when this share of it lies inside a higher-scoring one (hkd predict --suppress-contained) leaves "
         "one box per person. 90 % halves such boxes at score 0.5 on SynthPed val for MR⁻² +0.3 to +0.6 "
         "(docs/BENCHMARKS.md, 'One box per person').")
cols = st.columns(3)
layout = cols[0].radio("Layout", ["side by side", "one at a time, full width"], horizontal=True, key="det_layout",
                       help="One at a time: each model's image at the page's full width (tabs), to read the scores.")
has_gt = picture.gt_boxes is not None
show_gt = has_gt and cols[1].toggle("Show ground truth", value=has_gt, disabled=not has_gt, key="det_gt",
                                    help="Available for the SynthPed samples (from their annotations).")
use_onnx = cols[2].toggle("Student via ONNX", key="det_onnx",
                          help="Run the student's ONNX export through onnxruntime (hkd export; made and checked "
                               "against PyTorch on first use) instead of PyTorch.")



def one_per_person(dets):
    share = CONTAINED[contained]
    return dets if share is None else dets.suppress_contained(share)


shown = {"teacher": teacher, "student": student} | ({"third": third} if third is not None else {})
# names of the chosen paths (identical files share one cached model, which keeps the first one's path)
names = {"teacher": models.ref_name("teacher"), "student": models.ref_name("student"),
         "third": models.display_name(third_path)}
found, backend = {}, {role: "PyTorch" for role in shown}
for role, m in shown.items():
    with st.spinner(f"Running the {role} ({names[role]})…"):
        if role == "student" and use_onnx:
            try:
                found[role] = one_per_person(compute.detections(m, picture, backend="onnxruntime").filter(score, nms))
                backend[role] = "onnxruntime"
                continue
            except Exception as exc:  # noqa: BLE001 - any export/runtime failure: say so, fall back to PyTorch
                st.error(f"The student cannot run through onnxruntime ({type(exc).__name__}: {exc}); "
                         "showing PyTorch's detections.")
        found[role] = one_per_person(compute.detections(m, picture).filter(score, nms))

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
                   f"on the CPU ({backend[role]}) for {picture.name} ({width}×{height}; first run, cached afterwards)")

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
    settings_used = {"score_thresh": score, "nms_iou": nms, "suppress_contained": CONTAINED[contained],
                     "agreement_iou": match_iou, "agreement_pair": [a, b]}
    st.download_button("Download detections (JSON)", key="det_download", mime="application/json",
                       file_name=f"{picture.name.rsplit('.', 1)[0]}_detections.json",
                       data=compute.detections_json(picture, {r: (shown[r], found[r]) for r in shown}, rows,
                                                    settings_used, pair=(a, b)))
# full width below: every column in view; a cell with no value is empty
st.dataframe(compute.agreement_table(rows, a, b), hide_index=True, width="stretch")
