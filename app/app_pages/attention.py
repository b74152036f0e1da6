"""Attention: which pixels drive each model's detections (CAMs), and attention-transfer maps per level."""
import numpy as np
import streamlit as st

from hkd.viz.draw import COLORS, draw_boxes

from app import widgets
from app.services import compute, figures, images, models

st.title("Attention")
st.caption("Class activation maps of pedestrian detections, teacher and student side by side.")
picture = widgets.require_image("att")
teacher, student = widgets.require_pair()
pair = {"teacher": teacher, "student": student}

levels = compute.map_levels(teacher, student)
if images.focus_pending("att"):  # a box sent from Evaluate: explain that detection (a gradient method)
    st.session_state.update(att_method="Grad-CAM", att_level="neck.p3" if "neck.p3" in levels else levels[0])
cols = st.columns([3, 2, 2, 2])
method_label = cols[0].radio("Method", list(compute.CAM_METHODS), horizontal=True, key="att_method",
                             help="EigenCAM (no target: the level's first principal component) gives the readable "
                                  "maps on real photos; Grad-CAM and Grad-CAM++ explain one chosen detection.")
method = compute.CAM_METHODS[method_label]
level = cols[1].selectbox("Level", levels, index=levels.index(compute.CAM_LEVEL) if compute.CAM_LEVEL in levels else 0,
                          key="att_level", format_func=widgets.level_label)
score = cols[2].slider("Score threshold", 0.05, 0.95, 0.5, 0.05, key="att_score")
opacity = cols[3].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="att_opacity")
cols = st.columns([3, 2, 2, 2])

with st.spinner("Finding detections…"):
    found = {role: compute.detections(m, picture).filter(score) for role, m in pair.items()}
targets = ["all"] + list(range(min(len(found["teacher"]), 20)))
try:
    focus = images.focus_for(picture)
except ValueError as exc:
    st.warning(f"The box sent from another page cannot be used: {exc}")
    focus = None
if focus is not None:
    match = compute.matching_index(np.asarray(focus.box), found["teacher"])
    match = match if match in targets else None
    if match is not None and images.take_focus("att"):  # once: the user may explain another box afterwards
        st.session_state["att_target"] = match
    note, clear = st.columns([8, 1], vertical_alignment="center")
    note.info(f"Looking at the {focus.describe()}: " + (
        f"it is teacher detection #{match + 1}." if match is not None else
        f"no teacher detection with score ≥ {score:.2f} overlaps it (IoU ≥ 0.3); lower the score threshold."))
    clear.button("Clear", key="att_focus_clear", on_click=images.clear_focus)
target = cols[0].selectbox("Explain", targets, key="att_target", disabled=method == "eigencam",
                          help="EigenCAM has no target: it shows the first principal component of the level.",
                          format_func=lambda t: "all pedestrians" if t == "all" else
                          f"teacher detection #{t + 1} (score {found['teacher'].scores[t]:.2f}) + student's match")
box_index = {"teacher": None, "student": None}
if target != "all" and method != "eigencam":
    box_index = {"teacher": target,
                 "student": compute.matching_index(found["teacher"].boxes[target], found["student"])}

for column, (role, m) in zip(st.columns(2, gap="large"), pair.items()):
    with column:
        st.subheader(f"{role.title()} · {models.ref_name(role)}")
        if target != "all" and method != "eigencam" and box_index[role] is None:
            st.info("The student has no detection overlapping the chosen teacher box (IoU ≥ 0.3).")
            continue
        with st.spinner(f"{method_label} of the {role} at {level}…"):
            result = compute.cam(m, picture, method=method, level=level, box_index=box_index[role],
                                 score_thresh=score)
        if isinstance(result, str):
            st.warning(f"No {method_label} for the {role}: {result}")
            continue
        if problem := compute.cam_problem(result.heat, method, level):
            st.warning(f"{role.title()}: {problem}")
        # the explained box, or the 10 best: more would hide the map
        shown = result.boxes[:10] if result.box_index is None else result.boxes[[result.box_index]]
        st.image(draw_boxes(figures.heat_on(picture.pixels, result.heat, opacity), shown, color=COLORS["agreed"]),
                 width="stretch")
        what = ("no target: first principal component of the level" if method == "eigencam" else
                "explains " + ("all" if result.box_index is None else f"detection #{result.box_index + 1} of the")
                + f" {len(result.boxes)} detections with score ≥ {score:.2f}")
        st.caption(f"{method_label} at {level} · {what} (at most 10 boxes drawn) · red = strongest")

st.header("Attention-transfer maps per level")
st.caption("Mean of squared activations over channels (the attention-transfer loss's own map), min–max scaled. "
           "Distillation makes the student's row look like the teacher's.")
for role, m in pair.items():
    with st.spinner(f"Attention maps of the {role}…"):
        maps = compute.attention(m, picture, levels)
    st.markdown(f"**{role.title()}**")
    for column, name in zip(st.columns(len(levels)), levels):
        column.image(figures.heat_on(picture.pixels, maps[name], opacity), width="stretch", caption=name)
