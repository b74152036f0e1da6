"""The Distill page's larger widgets: the distillation options of a preset and a job's live view.
Inputs return plain values (the keyword arguments of :func:`app.services.finetune.build_config`)."""
from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app import widgets
from app.services import finetune, models


def usable_entries() -> list:
    """The checkpoints a fine-tune can start from or learn from (readable HKD checkpoints)."""
    return [e for e in models.available()[0] if not e.error and not e.needs_preset]


def _pair(preset: dict, entries: list) -> dict:
    """Teacher and student paths to start from (:func:`app.services.finetune.pair_defaults`)."""
    return finetune.pair_defaults(preset, entries,
                                  {role: (models.current_ref(role) or {}).get("path") for role in models.ROLES})


def apply_preset() -> None:
    """The preset picker's callback: the fields a preset sets are set again from its values (assigned,
    so that the browser shows them too), the term table's edits are dropped, and the teacher and
    student pickers follow the preset's own files and detector family."""
    st.session_state.pop("distill_terms", None)
    label = st.session_state["distill_preset"]
    st.session_state.update(finetune.form_defaults(label))
    pair = _pair(finetune.load_preset(finetune.PRESETS[label]), usable_entries())
    st.session_state.update({f"distill_{role}": path for role, path in pair.items() if path})


def pair_select(preset: dict) -> tuple[str | None, str | None, str | None]:
    """The teacher (None for an online run, which trains its own), the student and the starting
    weights (the student's path, or None for ImageNet backbones), said explicitly under the picker."""
    entries, family, online = usable_entries(), finetune.family_of(preset), preset.get("online")
    pair = _pair(preset, entries)
    cols = st.columns(2)
    if online:
        teacher = None
        cols[0].markdown(f"**Teacher**: `{online.get('teacher_preset')}`, trained in the same job from "
                         + ("its checkpoint `online.init`" if online.get("init") else "ImageNet backbones"))
        cols[0].caption("Online distillation: no teacher checkpoint is needed; the job writes the teacher's "
                        "checkpoints (teacher_final) beside the student's.")
    else:
        teacher = widgets.path_select(cols[0], "Teacher", entries, "teacher", family, pair["teacher"],
                                      "distill_teacher")
    student = widgets.path_select(cols[1], "Student to start from", entries, "student", family, pair["student"],
                                  "distill_student")
    start = cols[1].radio("Student weights", ["its current weights", "ImageNet backbones"], horizontal=True,
                          key="distill_start")
    init = student if start == "its current weights" else None
    cols[1].caption(finetune.start_note(preset, init))
    return teacher, student, init


def kd_controls(preset: dict, steps: int) -> dict:
    """Per-hierarchy switches and weights, temperature, trust, aux heads, an online run's KD start and
    the loss-term table of ``preset``; returns ``terms``, ``enabled``, ``scale``, ``temperature``,
    ``trust``, ``aux`` and ``kd_after`` for ``build_config`` (``terms`` None: no KD)."""
    online = preset.get("online")
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
    return dict(terms=terms or None, enabled=enabled, scale=scale, temperature=temperature,
                trust=(trust_mode, wrong) if trust_mode else None, aux=aux, kd_after=kd_after)


def job_view(queue, job, prefix: str) -> None:
    """A train/distill job: progress and ETA, its loss curves per hierarchy, the validation MR⁻²,
    cancel/resume/delete, the log tail and where it runs."""
    from app.services import figures

    st.subheader(f"{job.name} · {job.state}")
    st.progress(job.progress, text=f"step {job.step} / {job.total or '?'}"
                + (f" · ETA {time.strftime('%M:%S', time.gmtime(job.eta_s))}" if job.eta_s and job.active else ""))
    if job.message:
        (st.error if job.state == "failed" else st.caption)(job.message)
    metrics = queue.metrics(job.id)
    groups, evals = finetune.loss_series(metrics), finetune.eval_series(metrics)
    if groups:
        st.plotly_chart(figures.loss_chart(groups), width="stretch", key=f"{prefix}_curves")
    if evals:
        st.metric("Validation MR⁻² Reasonable", f"{evals[-1][1]:.2f} %", help=f"at step {evals[-1][0]}")
        st.plotly_chart(figures.validation_chart(evals), width="stretch", key=f"{prefix}_validation")
    widgets.job_actions(queue, job, prefix)
    with st.expander("Log", expanded=job.state == "failed"):
        st.text(queue.log_tail(job.id, 30) or "(nothing yet)")
    st.caption(f"Run folder `{job.run}` · `{job.command_line}`")
