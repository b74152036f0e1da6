"""Distill: launch a short fine-tune of the student in the background, watch it, use its checkpoint."""
import os

import streamlit as st

from hkd.jobs import JobError

from app import finetune_widgets, widgets
from app.services import datasets, finetune, models

st.title("Distill")
st.caption("Fine-tune the student with the teacher at the hierarchies you choose. A job runs as a background "
           "process (`hkd distill`), outlives the browser tab and the app, and its checkpoint appears in every "
           "model picker when it is done. The same queue: `hkd jobs list`.")
queue = finetune.queue()


def fine_tunes() -> list:
    return [j for j in queue.list() if j.kind in ("train", "distill")]


# open until the first fine-tune (a data generation job keeps it open: its progress is in the form)
with st.expander("New fine-tune", expanded=not fine_tunes()):
    preset_label = st.selectbox("Start from", list(finetune.PRESETS), key="distill_preset",
                                on_change=finetune_widgets.apply_preset,
                                help="A shipped config in assets/configs/; every field below starts from it.")
    for key, value in finetune.form_defaults(preset_label).items():
        st.session_state.setdefault(key, value)
    preset = finetune.load_preset(finetune.PRESETS[preset_label])
    teacher, student, init = finetune_widgets.pair_select(preset)
    student_preset = models.info({"path": student, "preset": None}).meta.preset if student else None
    by_key = {c.key: c for c in datasets.choices()}
    cols = st.columns(2)
    train_key = widgets.dataset_select(cols[0], "Training data", by_key, "synthped:train_small", "distill_train")
    val_key = widgets.dataset_select(cols[1], "Validation data", by_key, "synthped:val", "distill_val")

    cols = st.columns(5)
    steps = cols[0].number_input("Steps", 1, 100_000, key="distill_steps")
    lr = cols[1].number_input("Learning rate", 1e-5, 1.0, format="%.4f", key="distill_lr")
    eval_every = cols[2].number_input("Eval every (steps, 0: at the end)", 0, 100_000, 0, key="distill_eval_every")
    val_images = cols[3].number_input("Validation images", 10, 5000, key="distill_val_images")
    threads = cols[4].number_input("Threads", 1, os.cpu_count() or 1, max(1, (os.cpu_count() or 2) - 1),
                                   key="distill_threads", help="Default: all cores but one, so the app stays responsive.")
    kd = finetune_widgets.kd_controls(preset, steps)
    cfg = finetune.build_config(
        preset, teacher=teacher, init=init, train=by_key[train_key].path, val=by_key[val_key].path if val_key else None,
        val_images=val_images, steps=steps, lr=lr, eval_every=eval_every, threads=threads, **kd)
    if student_preset:
        cfg["model"]["preset"] = student_preset
    with st.popover("Show the config (YAML)"):
        st.caption("Save it and run `hkd distill --config it.yaml --out runs/my_run` to do the same from a shell.")
        st.code(finetune.config_yaml(cfg), language="yaml")
    name = st.text_input("Job name", key="distill_name")
    ready = widgets.data_step([train_key, val_key], "distill")
    if st.button("Launch", type="primary", key="distill_launch", disabled=not ready):
        try:
            job = finetune.submit(cfg, name, threads)
            st.session_state["distill_job"] = job.id
            st.success(f"Job **{job.id}** is {job.state}.")
        except JobError as exc:
            st.error(f"Not launched: {exc}")


def jobs_view() -> None:
    """The jobs table and the chosen job's live view; polled every 2 s while a job is queued or running."""
    jobs = fine_tunes()
    active = [j.id for j in jobs if j.active]
    if set(st.session_state.get("distill_active", [])) - set(active):
        st.session_state["distill_active"] = active
        st.rerun()  # a job just ended: redraw the page (its checkpoint joins the pickers, polling stops)
    st.session_state["distill_active"] = active
    st.header("Jobs")
    selected = widgets.jobs_table(jobs, "distill_jobs_table")
    job_id = selected or st.session_state.get("distill_job")
    if job_id not in {j.id for j in jobs}:
        job_id = next((j.id for j in reversed(jobs) if j.state == "running"), jobs[-1].id)
    st.session_state["distill_job"] = job_id
    finetune_widgets.job_view(queue, queue.get(job_id), "distill")


if not fine_tunes():
    st.info("No fine-tunes yet. Launch one above (the quick demo finishes in 2–5 minutes on a 2-core CPU).")
    st.stop()
# a fragment: it redraws itself without reloading the page
st.fragment(jobs_view, run_every=2.0 if any(j.active for j in fine_tunes()) else None)()
