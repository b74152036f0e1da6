"""Distill: launch a short fine-tune of the student in the background, watch it, use its checkpoint."""
import os
import time
from pathlib import Path

import streamlit as st

from hkd.train.jobs import JobError

from app import widgets
from app.services import datasets, finetune, models

st.title("Distill")
st.caption("Fine-tune the student with the teacher at the hierarchies you choose. A job runs as a background "
           "process (`hkd distill`), outlives the browser tab and the app, and its checkpoint appears in every "
           "model picker when it is done. The same queue: `hkd jobs list`.")
queue = finetune.queue()


def _pair(preset: dict, entries: list) -> dict:
    """Teacher and student paths to start from: the Models page's, or checkpoints of the preset's family."""
    return finetune.pair_defaults(preset, entries,
                                  {role: (models.current_ref(role) or {}).get("path") for role in models.ROLES})


def _usable() -> list:
    return [e for e in models.available()[0] if not e.error and not e.needs_preset]


# the fields a preset sets: picking another preset sets them again from its values (assigned, so that
# the browser shows them too), the term table's edits are dropped, and the teacher and student
# pickers follow the preset's detector family
def _apply_preset() -> None:
    st.session_state.pop("distill_terms", None)
    label = st.session_state["distill_preset"]
    st.session_state.update(finetune.form_defaults(label))
    pair = _pair(finetune.load_preset(finetune.PRESETS[label]), _usable())
    st.session_state.update({f"distill_{role}": path for role, path in pair.items() if path})


with st.expander("New fine-tune", expanded=not queue.ids()):
    preset_label = st.selectbox("Start from", list(finetune.PRESETS), key="distill_preset", on_change=_apply_preset,
                                help="A shipped config in assets/configs/; every field below starts from it.")
    for key, value in finetune.form_defaults(preset_label).items():
        st.session_state.setdefault(key, value)
    preset = finetune.load_preset(finetune.PRESETS[preset_label])
    entries = _usable()
    labels = {e.path: e.label for e in entries}
    online = preset.get("online")
    cols = st.columns(2)
    pair = _pair(preset, entries)
    if online:
        teacher = None
        cols[0].markdown(f"**Teacher**: `{online.get('teacher_preset')}`, trained in the same job from "
                         + ("its checkpoint `online.init`" if online.get("init") else "ImageNet backbones"))
        cols[0].caption("Online distillation: no teacher checkpoint is needed; the job writes the teacher's "
                        "checkpoints (teacher_final) beside the student's.")
    else:
        teacher = widgets.path_select(cols[0], "Teacher", labels, pair["teacher"], "distill_teacher")
    student = widgets.path_select(cols[1], "Student to start from", labels, pair["student"], "distill_student")
    start = cols[1].radio("Student weights", ["its current weights", "ImageNet backbones"], horizontal=True,
                          key="distill_start")
    student_preset = models.info({"path": student, "preset": None}).meta.preset if student else None
    ready = [c for c in datasets.choices()]
    by_key = {c.key: c for c in ready}
    train_key = widgets.dataset_select(cols[0], "Training data", by_key, "synthped:train_small", "distill_train")
    val_key = widgets.dataset_select(cols[1], "Validation data", by_key, "synthped:val", "distill_val")

    cols = st.columns(5)
    steps = cols[0].number_input("Steps", 1, 100_000, key="distill_steps")
    lr = cols[1].number_input("Learning rate", 1e-5, 1.0, format="%.4f", key="distill_lr")
    eval_every = cols[2].number_input("Eval every (steps, 0: at the end)", 0, 100_000, 0, key="distill_eval_every")
    val_images = cols[3].number_input("Validation images", 10, 5000, key="distill_val_images")
    threads = cols[4].number_input("Threads", 1, os.cpu_count() or 1, max(1, (os.cpu_count() or 2) - 1),
                                   key="distill_threads", help="Default: all cores but one, so the app stays responsive.")
    terms = finetune.terms_of(preset.get("distill"))
    enabled, scale = {}, {}
    if terms:
        st.markdown("**Hierarchies** — switch each on or off and scale its weights")
        shown = finetune.hierarchies_of(preset)
        for col, (h, title) in zip(st.columns(len(shown)), shown.items()):
            has = any(term.hierarchy == h for term in terms)
            enabled[h] = col.toggle(title, key=f"distill_on_{h}", disabled=not has)
            scale[h] = col.number_input(f"{title} weight ×", 0.0, 100.0, step=0.25, key=f"distill_scale_{h}",
                                        disabled=not has)
        cols = st.columns(3)
        temperature = cols[0].slider("ROI soft-target temperature", 1.0, 8.0, step=0.5, key="distill_temperature")
        trust_mode = cols[1].selectbox(
            "Trust in the teacher", list(finetune.TRUST_MODES),
            format_func=lambda m: f"{m}: {finetune.TRUST_MODES[m]}", key="distill_trust",
            help="Weights each proposal's / anchor's soft-target terms (ROI logits, RPN objectness, focal KD) by the "
                 "teacher's quality there, judged by the ground truth (hkd.distill.losses.trust).")
        wrong = cols[2].number_input("Weight where the teacher is wrong", 0.0, 1.0, step=0.1, key="distill_wrong",
                                     disabled=trust_mode != "label", help="0 drops the KD term there (trust: label).")
        preset_aux = (preset.get("distill") or {}).get("aux")
        aux = None
        if preset_aux:
            cols = st.columns(2)
            on = cols[0].toggle("Self-supervised aux heads (HSAKD)", key="distill_aux",
                                help=f"Training-only heads on {', '.join(preset_aux.get('levels') or ['every level'])} "
                                     f"match the teacher's heads of `{Path(preset_aux['checkpoint']).name}` "
                                     "(made by `hkd train-aux` for that teacher); the saved student gains no parameters.")
            aux = cols[1].number_input("aux weight ×", 0.0, 100.0, step=0.25, key="distill_aux_scale",
                                       disabled=not on) if on else None
        kd_after = None
        if online:
            last = max(0, int(steps) - 1)
            if st.session_state["distill_kd_after"] > last:  # fewer steps than the warm-up: KD from a quarter in
                st.session_state["distill_kd_after"] = min(last, int(steps) // 4)
            kd_after = st.number_input("KD from step (the teacher learns alone before)", 0, last,
                                       key="distill_kd_after")
        terms = widgets.terms_editor(terms, "distill_terms")
    else:
        temperature = trust_mode = aux = kd_after = None
        st.info("This config trains without a teacher (no KD): the honest baseline for a distilled fine-tune.")
    cfg = finetune.build_config(
        preset, teacher=teacher, init=student if start == "its current weights" else None,
        train=by_key[train_key].path, val=by_key[val_key].path if val_key else None, val_images=val_images,
        steps=steps, lr=lr, eval_every=eval_every, terms=terms or None, enabled=enabled, scale=scale,
        temperature=temperature, threads=threads, trust=(trust_mode, wrong) if trust_mode else None, aux=aux,
        kd_after=kd_after)
    if student_preset:
        cfg["model"]["preset"] = student_preset
    with st.popover("Show the config (YAML)"):
        st.caption("Save it and run `hkd distill --config it.yaml --out runs/my_run` to do the same from a shell.")
        st.code(finetune.config_yaml(cfg), language="yaml")
    name = st.text_input("Job name", key="distill_name")
    missing = [c for c in (by_key[train_key], by_key.get(val_key)) if c is not None and not c.exists]
    for choice in missing:
        widgets.generate_dataset(choice)
    if st.button("Launch", type="primary", key="distill_launch", disabled=bool(missing)):
        try:
            job = finetune.submit(cfg, name, threads)
            st.session_state["distill_job"] = job.id
            st.success(f"Job **{job.id}** is {job.state}.")
        except JobError as exc:
            st.error(f"Not launched: {exc}")

def fine_tunes() -> list:
    return [j for j in queue.list() if j.kind in ("train", "distill")]


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
    job = queue.get(job_id)
    st.subheader(f"{job.name} · {job.state}")
    st.progress(job.progress, text=f"step {job.step} / {job.total or '?'}"
                + (f" · ETA {time.strftime('%M:%S', time.gmtime(job.eta_s))}" if job.eta_s and job.active else ""))
    if job.message:
        (st.error if job.state == "failed" else st.caption)(job.message)
    metrics = queue.metrics(job_id)
    groups, evals = finetune.loss_series(metrics), finetune.eval_series(metrics)
    if groups:
        from app.services import figures

        st.plotly_chart(figures.loss_chart(groups, evals), width="stretch", key="distill_curves")
    if evals:
        st.metric("Validation MR⁻² Reasonable", f"{evals[-1][1]:.2f} %", help=f"at step {evals[-1][0]}")
    widgets.job_actions(queue, job, "distill")
    with st.expander("Log", expanded=job.state == "failed"):
        st.text(queue.log_tail(job_id, 30) or "(nothing yet)")
    st.caption(f"Run folder `{job.run}` · `{job.command_line}`")


if not fine_tunes():
    st.info("No fine-tunes yet. Launch one above (the quick demo finishes in 2–5 minutes on a 2-core CPU).")
    st.stop()
# a fragment: it redraws itself without reloading the page
st.fragment(jobs_view, run_every=2.0 if any(j.active for j in fine_tunes()) else None)()
