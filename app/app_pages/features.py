"""Features: teacher and student maps at one hierarchy level, their difference and a similarity profile."""
import streamlit as st

from app import widgets
from app.services import compute, figures

st.title("Features")
st.caption("What both models compute at each level of their hierarchy, on the same image.")
picture = widgets.require_image("feat")
teacher, student = widgets.require_pair()

cols = st.columns([3, 3, 2])
level = cols[0].selectbox("Hierarchy level", compute.feature_levels(teacher, student), key="feat_level",
                          format_func=widgets.level_label)
mode = cols[1].radio("Show", ["Channel energy", "Top-k channels", "PCA → RGB"], horizontal=True, key="feat_view")
opacity = cols[2].slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="feat_opacity")

box = None
if level == "roi.features":
    with st.spinner("Finding the teacher's detections…"):
        found = compute.detections(teacher, picture).filter(0.3, 0.5)
    if not len(found):
        st.info("The teacher finds no pedestrian with score ≥ 0.3 here: choose another image or level.")
        st.stop()
    index = st.selectbox("Detection (teacher, score ≥ 0.3)", range(min(len(found), 20)), key="feat_box",
                         format_func=lambda i: f"#{i + 1} · score {found.scores[i]:.2f} · box "
                                               f"{', '.join(f'{v:.0f}' for v in found.boxes[i])}")
    box = tuple(float(v) for v in found.boxes[index])

pair = {"teacher": teacher, "student": student}
with st.spinner(f"Tapping {level} in both models…"):
    views = {role: compute.level_view(m, picture, level, box=box) for role, m in pair.items()}
for column, (role, m) in zip(st.columns(2, gap="large"), pair.items()):
    with column:
        st.subheader(f"{role.title()} · {m.name}")
        widgets.level_view_panel(views[role], picture.pixels, mode, opacity, box)

st.header("Teacher vs student")
left, right = st.columns(2, gap="large")
with left:
    st.subheader("Difference after the distillation adapter")
    fitted = st.radio("Compare", ["through the best 1×1 adapter", "channel energy only"], horizontal=True,
                      key="feat_diff") == "through the best 1×1 adapter"
    with st.spinner("Comparing the two maps…"):
        diff = compute.difference(teacher, student, picture, level, fitted=fitted, box=box)
    st.image(figures.enlarge(figures.heat_on(picture.pixels, diff["heat"], opacity, box)), width="stretch")
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
