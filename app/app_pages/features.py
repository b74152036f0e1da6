"""Features: teacher and student maps at one hierarchy level, their difference and a similarity profile."""
import streamlit as st

from app import widgets
from app.services import case_profile, compute, figures, images, models

FOCUS = "focus"  # the feat_box option of the box picked on Evaluate

st.title("Features")
st.caption("What both models compute at each level of their hierarchy, on the same image.")
picture = widgets.require_image("feat")
teacher, student = widgets.require_pair()
levels = compute.feature_levels(teacher, student)

try:
    focus = images.focus_for(picture) if "roi.features" in levels else None
except ValueError as exc:
    st.warning(f"The box sent from another page cannot be shown: {exc}")
    focus = None
if focus is not None:
    if images.take_focus("feat"):  # once per focus: the user may pick another level or box afterwards
        st.session_state.update(feat_level="roi.features", feat_box=FOCUS)
    note, clear = st.columns([8, 1], vertical_alignment="center")
    note.info(f"Looking at the {focus.describe()}: `roi.features` shows its region "
              "(pick it under Detection); the other levels show the whole image with the box outlined.")
    clear.button("Clear", key="feat_focus_clear", on_click=images.clear_focus)

cols = st.columns([3, 3, 2])
level = cols[0].selectbox("Hierarchy level", levels, key="feat_level", format_func=widgets.level_label)
mode = cols[1].radio("Show", ["Channel energy", "Top-k channels", "PCA → RGB"], horizontal=True, key="feat_view")
opacity = cols[2].slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="feat_opacity")

box = None
if level == "roi.features":
    with st.spinner("Finding the teacher's detections…"):
        found = compute.detections(teacher, picture).filter(0.3, 0.5)
    options = ([FOCUS] if focus is not None else []) + list(range(min(len(found), 20)))
    if not options:
        st.info("The teacher finds no pedestrian with score ≥ 0.3 here: choose another image or level.")
        st.stop()
    if st.session_state.get("feat_box") not in options:  # the focus was cleared, or another image has fewer
        st.session_state.pop("feat_box", None)
    index = st.selectbox("Detection (teacher, score ≥ 0.3)", options, key="feat_box",
                         format_func=lambda i: focus.describe() if i == FOCUS else f"#{i + 1} · score "
                         f"{found.scores[i]:.2f} · box {', '.join(f'{v:.0f}' for v in found.boxes[i])}")
    box = focus.box if index == FOCUS else tuple(float(v) for v in found.boxes[index])

pair = {"teacher": teacher, "student": student}
base = case_profile.marked(picture.pixels, focus.box if focus is not None and box is None else None)
with st.spinner(f"Tapping {level} in both models…"):
    views = {role: compute.level_view(m, picture, level, box=box) for role, m in pair.items()}
for column, (role, m) in zip(st.columns(2, gap="large"), pair.items()):
    with column:
        st.subheader(f"{role.title()} · {models.ref_name(role)}")
        with st.container(width=case_profile.region_width(box)):  # a region at its own aspect ratio
            widgets.level_view_panel(views[role], base, mode, opacity, box)

if focus is not None:
    st.header("This case against the norm")
    with st.spinner("Measuring the case and the boxes both models find, at every level…"):
        case = case_profile.profile(teacher, student, picture, focus.box)
    if case["percentiles"]:
        st.plotly_chart(case_profile.chart(case), width="stretch", key="feat_case_profile")
    st.caption(case_profile.caption(case))

st.header("Teacher vs student")
left, right = st.columns(2, gap="large")
with left:
    st.subheader("Difference after the distillation adapter")
    fitted = st.radio("Compare", ["through the best 1×1 adapter", "channel energy only"], horizontal=True,
                      key="feat_diff") == "through the best 1×1 adapter"
    with st.spinner("Comparing the two maps…"):
        diff = compute.difference(teacher, student, picture, level, fitted=fitted, box=box)
    st.image(figures.enlarge(figures.heat_on(base, diff["heat"], opacity, box)), width=case_profile.region_width(box))
    if diff["fitted"]:
        st.caption(f"{level}: ‖teacher − adapter(student)‖₂ per position, scaled to its maximum. The 1×1 adapter is "
                   f"fitted to this image by least squares; relative residual ‖t − A(s)‖ / ‖t‖ = "
                   f"**{diff['residual']:.2f}** (0 = the student holds the teacher's features up to a linear map).")
    else:
        st.caption(f"{level}: " + ("too few positions here to fit an adapter; showing " if fitted else "") +
                   "|teacher energy − student energy|, both min–max scaled: where the two models attend "
                   "differently, whatever their channels.")
with right:
    st.subheader("Similarity profile across all levels")
    with st.spinner("Measuring similarity at every level (one forward per model)…"):
        rows = compute.similarity(teacher, student, picture)
    st.plotly_chart(figures.similarity_chart(rows), width="stretch", key="feat_similarity_chart")
    st.caption("Linear CKA compares the representations (positions as samples, channels as features); cosine "
               "compares the attention maps. A dip marks the level where the student diverges.")
