"""Models: choose the teacher and the student, and compare what they are and what they cost."""
import streamlit as st

from hkd.models.meta import CheckpointError

from app import widgets
from app.services import figures, models, settings

st.title("Models")
st.caption("Pick a teacher and a student checkpoint. Every other page compares this pair.")

with st.expander("Checkpoint sources", expanded=not any(not e.error for e in models.available()[0])):
    folder = st.text_input("Models folder", value=models.models_folder(), key="models_folder_input",
                           help="HKD_MODELS_DIR, or any folder under the allowed roots (HKD_DATA_ROOTS).")
    st.session_state["models_folder"] = folder
    uploaded = st.file_uploader("Upload a checkpoint (.safetensors, or foreign .pth/.pt/.bin weights)",
                                type=[s.lstrip(".") for s in models.SUFFIXES], accept_multiple_files=True,
                                key="models_upload")
    for file in uploaded or []:
        try:
            models.save_upload(file.name, file.getvalue())
        except (CheckpointError, OSError) as exc:
            st.error(str(exc))

entries, problem = models.available()
if problem:
    st.error(f"Models folder problem: {problem}")
for entry in entries:
    if entry.error:
        st.error(f"**{entry.name}** cannot be used: {entry.error}")
usable = [e for e in entries if not e.error]
if not usable:
    widgets.no_checkpoints_help(models.models_folder())
    st.stop()

# Drawn from the checkpoints' headers: their weights load only where they are needed (other
# pages, the latency button, or a checkpoint whose header does not record its cost).
infos: dict[str, models.ModelInfo] = {}
costs: dict[str, dict] = {}
refs: dict[str, dict] = {}
for column, role in zip(st.columns(2, gap="large"), models.ROLES):
    with column:
        st.subheader(role.title())
        refs[role] = widgets.checkpoint_select(role, usable)
        try:
            info = models.info(refs[role])
            cost = models.recorded_cost(info.meta, models.PROFILE_SIZE)
            if cost is None:  # foreign weights or an older checkpoint: load it and count
                from app.services import compute

                with st.spinner(f"Loading {info.name} and counting its FLOPs (one 640×480 forward)…"):
                    cost = compute.profile(models.load(refs[role]))
        except (CheckpointError, settings.PathNotAllowed) as exc:
            st.error(f"This checkpoint cannot be loaded: {exc}")
            continue
        infos[role], costs[role] = info, cost
        widgets.model_card(info)
if len(infos) < 2:
    st.stop()
teacher, student = infos["teacher"], infos["student"]

st.header("Cost per hierarchy")
st.caption("FLOPs of one forward of a 640×480 image (each model resizes it to its input size, "
           f"teacher min side {teacher.meta.min_size} px, student {student.meta.min_size} px); the ROI head's share "
           "depends on the number of proposals each model keeps.")
ratio = costs["teacher"]["params"]["total"] / max(costs["student"]["params"]["total"], 1)
flops_ratio = costs["teacher"]["flops"]["total"] / max(costs["student"]["flops"]["total"], 1)
st.markdown(f"The student has **{ratio:.1f}× fewer parameters** and needs **{flops_ratio:.1f}× fewer FLOPs** "
            "than the teacher.")
for column, (what, scale, unit) in zip(st.columns(2), [("params", 1e6, "M parameters"), ("flops", 1e9, "GFLOPs")]):
    column.plotly_chart(figures.cost_chart(costs, what, scale, unit), width="stretch", key=f"models_{what}_chart")

st.subheader("CPU latency")
widgets.latency_panel(refs, teacher, student)

st.header("Levels and distillation adapters")
st.caption("Every tappable level of both models, and the adapter that maps the student's tensor onto "
           "the teacher's (channels × stride in input pixels).")
# static tables (st.table), not st.dataframe: its grid is the heaviest script the browser would
# have to load before the first page appears (about 1 s of the cold start on a 2-core machine)
columns = {"level": "level", "kind": "kind", "student_channels": "student channels", "student_stride": "student stride",
           "teacher_channels": "teacher channels", "teacher_stride": "teacher stride", "adapter": "adapter",
           "params": "adapter params"}
rows = models.adapter_rows(teacher, student)
if rows:
    st.table([{title: ("—" if row[key] is None else str(row[key])) for key, title in columns.items()} for row in rows],
             hide_index=True)
