"""Detections: teacher and student boxes on the same image, and where they agree."""
from collections import Counter

import streamlit as st

from hkd.viz.draw import COLORS, compare_detections, draw_boxes, draw_comparison

from app import widgets
from app.services import compute

st.title("Detections")
st.caption("Both models on the same image; every box is classed as agreed, teacher-only or student-only.")
picture = widgets.require_image("det")
teacher, student = widgets.require_pair()

cols = st.columns(4)
score = cols[0].slider("Score threshold", 0.05, 0.95, 0.5, 0.05, key="det_score")
nms = cols[1].slider("NMS IoU", 0.3, 0.9, 0.5, 0.05, key="det_nms",
                     help="Non-maximum suppression over the kept boxes: overlaps above this IoU are merged.")
match_iou = cols[2].slider("Agreement IoU", 0.3, 0.9, 0.5, 0.05, key="det_match",
                           help="A teacher box and a student box with at least this IoU count as agreed.")
has_gt = picture.gt_boxes is not None
show_gt = has_gt and cols[3].toggle("Show ground truth", value=has_gt, disabled=not has_gt, key="det_gt",
                         help="Available for the SynthPed samples (from their annotations).")

pair = {"teacher": teacher, "student": student}
colors = {"teacher": COLORS["teacher_only"], "student": COLORS["student_only"]}
found = {}
for role, m in pair.items():
    with st.spinner(f"Running the {role} ({m.name})…"):
        found[role] = compute.detections(m, picture).filter(score, nms)

height, width = picture.pixels.shape[:2]
for column, (role, m) in zip(st.columns(2, gap="large"), pair.items()):
    with column:
        st.subheader(f"{role.title()} · {m.name}")
        dets = found[role]
        st.image(draw_boxes(picture.pixels, dets.boxes, scores=dets.scores, color=colors[role]), width="stretch")
        st.caption(f"**{len(dets)} pedestrians** with score ≥ {score:.2f} · inference **{dets.seconds * 1000:.0f} ms** "
                   f"on the CPU for {picture.name} ({width}×{height}; first run, cached afterwards)")

st.header("Agreement")
rows = compare_detections(found["teacher"].boxes, found["teacher"].scores, found["student"].boxes,
                          found["student"].scores, iou_thresh=match_iou)
counts = Counter(row["status"] for row in rows)
metrics = st.columns(4)
metrics[0].metric("Agreed", counts["agreed"])
metrics[1].metric("Teacher only", counts["teacher_only"])
metrics[2].metric("Student only", counts["student_only"])
metrics[3].metric("Ground truth", len(picture.gt_boxes) if has_gt else "—")

left, right = st.columns([3, 2], gap="large")
with left:
    st.image(draw_comparison(picture.pixels, rows, picture.gt_boxes if show_gt else None), width="stretch")
    legend = [("agreed", COLORS["agreed"]), ("teacher only", COLORS["teacher_only"]),
              ("student only", COLORS["student_only"])]
    widgets.legend(legend + ([("ground truth (dashed)", COLORS["ground_truth"])] if show_gt else []))
with right:
    st.dataframe([{"status": r["status"].replace("_", " "), "teacher score": r["score_teacher"],
                   "student score": r["score_student"], "IoU": r["iou"],
                   "box (x1, y1, x2, y2) px": ", ".join(f"{v:.0f}" for v in r["box"])} for r in rows],
                 hide_index=True, width="stretch", height=360, column_config={
                     name: st.column_config.NumberColumn(format="%.2f") for name in ("teacher score", "student score", "IoU")})
    settings = {"score_thresh": score, "nms_iou": nms, "agreement_iou": match_iou}
    st.download_button("Download detections (JSON)", key="det_download", mime="application/json",
                       file_name=f"{picture.name.rsplit('.', 1)[0]}_detections.json",
                       data=compute.detections_json(picture, {r: (pair[r], found[r]) for r in pair}, rows, settings))
