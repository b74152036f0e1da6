"""Widget helpers shared by the pages. Inputs return plain values (refs, keys, numbers)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from hkd.models.meta import CheckpointError

from app.services import models, settings


# -- models -------------------------------------------------------------------
def no_checkpoints_help(folder: str) -> None:
    st.warning(
        f"**No usable checkpoints in `{folder}`.**  \n"
        "HKD Studio needs a teacher and a student checkpoint (`.safetensors` written by `hkd`). "
        "Either copy them into that folder (the demo files are `teacher.safetensors`, "
        "`student_baseline.safetensors` and `student_hkd.safetensors`), start the app with "
        "`HKD_MODELS_DIR=/path/to/checkpoints`, or upload them under **Checkpoint sources** on the Models page."
    )


def role_entries(container, role: str, entries: list, family: str | None, current: str | None, key: str) -> list:
    """The checkpoints a ``role`` picker lists (:func:`models.for_role`), or all of them once the user
    ticks the checkbox this draws where some are hidden."""
    listed, hidden = models.for_role(entries, role, family, keep=current)
    what = f"{role}s" + (f" of the {family.replace('_', '-')} family" if family else "")
    if hidden and not container.checkbox(f"Also the {hidden} other checkpoint(s)", key=f"{key}_all",
                                         help=f"Listed first: {what}, uploads and foreign weights."):
        return listed or entries
    return entries


def checkpoint_select(role: str, entries: list[models.CheckpointEntry]) -> dict | None:
    """A selectbox of checkpoints (plus a preset picker for foreign weights); returns the ref. The
    student picker lists students of the teacher's detector family first, the rest one click away."""
    current = models.current_ref(role)
    teacher = next((e for e in entries if e.path == (models.current_ref("teacher") or {}).get("path")), None)
    family = models.family_of(teacher) if role == "student" and teacher else None
    entries = role_entries(st, role, entries, family, (current or {}).get("path"), f"models_{role}")
    paths = [e.path for e in entries]
    by_path = {e.path: e for e in entries}
    index = paths.index(current["path"]) if current and current["path"] in paths else 0
    path = st.selectbox(f"{role.title()} checkpoint", paths, index=index, key=f"models_{role}",
                        format_func=lambda p: by_path[p].label)
    preset = None
    if path and by_path[path].needs_preset:
        names = models.preset_names()
        old = (current or {}).get("preset")
        preset = st.selectbox("Architecture of these weights", names, key=f"models_{role}_preset",
                              index=names.index(old) if old in names else 0,
                              help="Foreign weights (.pth/.pt/.bin or bare safetensors) do not say which "
                                   "detector they belong to; they are loaded with torch.load(weights_only=True).")
    ref = {"path": path, "preset": preset} if path else None
    st.session_state[f"{role}_ref"] = ref
    return ref


def pair_summary() -> None:
    """Sidebar lines naming the current teacher and student (no loading), a fine-tune after its job."""
    for role in models.ROLES:
        st.caption(f"**{role.title()}:** `{models.ref_name(role)}`")


def third_model_select(teacher, student, key: str) -> tuple[str | None, models.LoadedModel | None]:
    """A picker of a third model to show beside the pair (default: the no-KD student beside an HKD
    one), remembered across pages as ``third_ref``; returns its path and the loaded model (None, None
    for none or a checkpoint that cannot be used, which is said)."""
    from app.services import compute

    candidates = compute.third_candidates(models.available()[0], (teacher, student))
    options = ["none"] + [e.path for e in candidates]
    labels = {e.path: e.label for e in candidates} | {"none": "none"}
    saved = st.session_state.get("third_ref")  # None: not chosen yet; {"path": None}: "none" chosen
    wanted = saved["path"] if saved else compute.default_third(candidates, student)
    path = st.selectbox("Third model", options, index=options.index(wanted) if wanted in options else 0, key=key,
                        format_func=labels.get, help="Shown beside the pair, e.g. the no-KD student next to the HKD student.")
    path = None if path == "none" else path
    st.session_state["third_ref"] = {"path": path, "preset": None}
    if path is None:
        return None, None
    try:
        with st.spinner("Loading the third model…"):
            return path, models.load({"path": path, "preset": None})
    except (CheckpointError, settings.PathNotAllowed) as exc:
        st.error(f"The third checkpoint cannot be used: {exc}  \nPick another one or none.")
        return None, None


def require_pair() -> tuple[models.LoadedModel, models.LoadedModel]:
    """The loaded teacher and student, or a clear message and the end of this page run."""
    import torch

    from app.services import finetune

    torch.set_num_threads(finetune.app_threads())  # leave the running jobs their cores
    refs = {role: models.current_ref(role) for role in models.ROLES}
    if not all(refs.values()):
        no_checkpoints_help(models.models_folder())
        st.stop()
    loaded = {}
    for role, ref in refs.items():
        try:
            with st.spinner(f"Loading the {role} ({models.display_name(ref['path'])})…"):
                loaded[role] = models.load(ref)
        except (CheckpointError, settings.PathNotAllowed) as exc:
            st.error(f"The {role} checkpoint cannot be used: {exc}  \nPick another one on the Models page.")
    if len(loaded) < 2:
        st.stop()
    return loaded["teacher"], loaded["student"]


def flat_metrics(metrics: dict, prefix: str = "") -> list[tuple[str, str]]:
    """``{"mr": {"Reasonable": 28.3}, "dataset": "…"}`` → ``[("mr/Reasonable", "28.3"), ("dataset", "…")]``:
    nested dicts flattened with ``/``, numbers rounded, everything text (one column type)."""
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flat_metrics(value, f"{name}/")
        elif isinstance(value, float):
            rows.append((name, f"{value:.4g}"))
        else:
            rows.append((name, str(value)))
    return rows


def model_card(m: models.ModelInfo | models.LoadedModel) -> None:
    """Preset, classes, input size, provenance and metrics from a checkpoint's metadata."""
    meta, preset = m.meta, m.preset
    st.markdown(f"**{preset.name}** · {preset.role}  \n{preset.description}")
    st.caption(f"classes: {', '.join(meta.classes)} · input: min side {meta.min_size} px, max side "
               f"{meta.max_size} px · weights stored as {meta.dtype} · sha256 `{m.key[:12]}`")
    provenance = {"created": meta.created or "—", "library version": meta.library_version,
                  "parent": meta.parent or "—", "step": meta.step if meta.step is not None else "—",
                  "notes": meta.notes or "—"}
    config = meta.train_config or {}
    if (config.get("model") or {}).get("init") or config.get("teacher"):
        provenance["started from"] = Path((config.get("model") or {}).get("init") or "ImageNet backbones").name
        provenance["teacher"] = Path(config["teacher"]).name if config.get("teacher") else "— (no KD)"
    from app.services import finetune

    job = finetune.job_for_checkpoint(getattr(m, "path", None) or m.checkpoint.path)
    if job is not None:
        provenance["fine-tune job"] = f"{models.job_label(job)}, {job.kind}, {job.total} steps"
    st.table([{"field": k, "value": str(v)} for k, v in provenance.items()], hide_index=True)
    if meta.metrics:
        st.table([{"metric": k, "value": v} for k, v in flat_metrics(meta.metrics)], hide_index=True)
    else:
        st.caption("No evaluation metrics recorded in this checkpoint.")
    with st.expander("Training configuration"):
        # st.text, not st.code: the code block's highlighter is ~1 s of script for the browser on the first page
        st.text(json.dumps(meta.train_config, indent=2) if meta.train_config else "(none recorded)")


def latency_panel(refs: dict, teacher: models.ModelInfo, student: models.ModelInfo) -> None:
    """The latency button and its table: teacher and student side by side per runtime, with the spread
    over the timed runs and a note when other work ran meanwhile (``app.services.compute.measure_pair``)."""
    controls = st.columns([1, 1, 2], vertical_alignment="bottom")
    runs = controls[0].number_input("Timed runs per model", 1, 10, 3, key="models_latency_runs")
    if controls[1].button("Measure CPU latency", key="models_latency",
                          help="640×480 input, 2 threads, 1 warm-up run; PyTorch and onnxruntime (the ONNX export "
                               "is made and checked on first use, 10–30 s per model)"):
        from app.services import compute  # torch: not before the button (the first page loads without it)

        try:
            with st.spinner("Loading both models, exporting them to ONNX once, and timing both runtimes on the CPU…"):
                pair = {role: models.load(refs[role]) for role in models.ROLES}
                st.session_state["models_latency_result"] = compute.measure_pair(pair, runs)
        except Exception as exc:  # noqa: BLE001 - a checkpoint or an export that fails: say which and why
            st.error(f"Latency not measured: {type(exc).__name__}: {exc}")
    measured = st.session_state.get("models_latency_result")
    if measured and measured["keys"] == {"teacher": teacher.key, "student": student.key}:
        from app.services import compute

        st.table(compute.latency_rows(measured), hide_index=True)
        if note := compute.latency_note(measured):
            st.warning(note)
    else:
        st.caption("Not measured yet for this pair: the button runs one warm-up and the timed forwards of both "
                   "models in PyTorch and in onnxruntime.")


# -- images -------------------------------------------------------------------
def image_select(prefix: str) -> str | None:
    """Sidebar: an image picker (samples, uploads, the current ``file:`` image) and an uploader.
    Returns the current image key."""
    from app.services import images  # imports torch: only the image pages need it

    with st.sidebar:
        st.markdown("#### Image")
        picker = st.container()
        files = st.file_uploader("Upload images (JPEG, PNG, WebP)", type=images.UPLOAD_TYPES,
                                 accept_multiple_files=True, key=f"{prefix}_upload")
    for line in images.add_uploads(files):
        st.error(f"Not a usable image — {line}")
    options = images.choices()
    if not options:
        picker.info("No sample images found; upload one below.")
        return None
    key = f"{prefix}_image"
    if st.session_state.get("image_key") not in options:
        st.session_state["image_key"] = next(iter(options))
    # the shared choice wins (a new upload, another page's pick); the callback records the user's
    st.session_state[key] = st.session_state["image_key"]
    picker.selectbox("Sample or uploaded image", list(options), format_func=options.get, key=key,
                     on_change=lambda: st.session_state.update(image_key=st.session_state[key]))
    return st.session_state["image_key"]


def require_image(prefix: str) -> "images.Picture":
    """The current image, decoded; or a clear message and the end of this page run."""
    from hkd.data.images import ImageError

    from app.services import images

    key = image_select(prefix)
    if key is None:
        st.info("Choose a sample image or upload your own in the sidebar.")
        st.stop()
    try:
        picture = images.load(key)
    except (ImageError, KeyError, OSError, settings.PathNotAllowed) as exc:
        st.error(f"This image cannot be used: {exc}")
        st.stop()
    note = " · ground truth from its dataset's annotations" if picture.gt_boxes is not None else ""
    st.caption(f"Image **{picture.name}** · {picture.describe()} px{note}")
    return picture


# -- small display helpers ----------------------------------------------------
def legend(items: list[tuple[str, tuple[int, int, int]]]) -> None:
    """A one-line colour legend: [(label, (r, g, b))]."""
    spans = [f"<span style='display:inline-block;width:0.8em;height:0.8em;background:rgb{tuple(c)};"
             f"border-radius:2px;margin:0 0.3em 0 1em'></span>{label}" for label, c in items]
    st.markdown("".join(spans), unsafe_allow_html=True)


LEVEL_KINDS = {"backbone": "backbone stage", "neck": "FPN level", "rpn": "RPN", "roi": "ROI head"}
LEVEL_NAMES = {"rpn.objectness": "RPN objectness", "roi.features": "ROI features of a detection"}


def level_label(name: str) -> str:
    return f"{name} — {LEVEL_NAMES.get(name) or LEVEL_KINDS.get(name.split('.')[0], '')}"


def level_view_panel(view, pixels, mode: str, opacity: float, box: tuple | None = None) -> None:
    """One model's map at a level: energy or PCA over the image, or its top-k channels in a grid."""
    from app.services import figures

    where = "the detection's region" if box is not None else "the image"
    grid = (view.stride or 1) if box is None else None
    cell = f"one cell = {grid}×{grid} px" if grid else "7×7 pooled cells"
    if mode == "Top-k channels":
        cols = st.columns(2)
        for i, (channel, heat) in enumerate(view.topk):
            cols[i % 2].image(figures.enlarge(figures.heat_on(pixels, heat, opacity, box)), width="stretch",
                              caption=f"channel {channel} (rank {i + 1} by energy)")
    elif mode == "PCA → RGB":
        st.image(figures.enlarge(figures.rgb_on(pixels, view.pca_rgb, opacity, box)), width="stretch",
                 caption=f"first 3 principal components of the channels as R, G, B over {where}")
    else:
        what = "max objectness probability over anchors" if view.level == "rpn.objectness" else \
            "channel energy (mean of squares, min–max scaled)"
        st.image(figures.enlarge(figures.heat_on(pixels, view.energy, opacity, box)), width="stretch",
                 caption=f"{what} over {where}")
    st.caption(f"tensor {' × '.join(map(str, view.shape))} · {cell}")


# -- fine-tunes and jobs --------------------------------------------------------
def path_select(container, label: str, entries: list, role: str, family: str | None, default: str | None,
                key: str) -> str | None:
    """A checkpoint picker over ``entries`` (those of ``role`` and ``family`` first, the rest one click
    away); returns the chosen path."""
    entries = role_entries(container, role, entries, family, st.session_state.get(key, default), key)
    if not entries:
        container.warning(f"{label}: no usable checkpoint.")
        return None
    paths, labels = [e.path for e in entries], {e.path: e.label for e in entries}
    index = paths.index(default) if default in paths else 0
    return container.selectbox(label, paths, index=index, format_func=labels.get, key=key)


def dataset_select(container, label: str, choices: dict, default: str, key: str) -> str:
    """A dataset picker (SynthPed splits say whether they are generated yet); returns the key."""
    keys = list(choices)
    index = keys.index(default) if default in keys else 0
    return container.selectbox(label, keys, index=index, key=key,
                               format_func=lambda k: choices[k].label + ("" if choices[k].exists else " — not generated yet"))


def data_step(keys: list[str | None], prefix: str) -> bool:
    """The chosen datasets: True when all are on disk. Otherwise, for each missing SynthPed split, a
    Generate button or the live progress of its background job, in a fragment that polls the jobs'
    status files every second while one generates and reruns the whole page once all are ready (so
    that what waits on the data, such as a Launch button, enables by itself)."""
    from app.services import datasets

    missing = datasets.missing(keys)
    if not missing:
        return True
    generating = any((job := datasets.generation_job(c)) is not None and job.active for c in missing)
    st.fragment(_generation_panel, run_every=1.0 if generating else None)(keys, generating, prefix)
    return False


def _generation_panel(keys: list[str | None], generating: bool, prefix: str) -> None:
    from app.services import datasets

    datasets.queue().advance()  # the next queued generation starts when the one before it ends
    missing = datasets.missing(keys)
    jobs = {c.key: datasets.generation_job(c) for c in missing}
    if not missing or generating != any(j is not None and j.active for j in jobs.values()):
        st.rerun(scope="app")  # all ready, or polling must start or stop: the page redraws
    for choice in missing:
        job = jobs[choice.key]
        if job is not None and job.active:
            st.progress(job.progress, text=datasets.generation_text(choice, job))
            continue
        if job is not None and job.state == "failed":
            st.error(f"Generating {choice.label} failed: {job.message}")
        st.warning(f"**{choice.label}** is not generated yet (`{choice.path}`).")
        if choice.synth and st.button(f"Generate it ({choice.synth['num']} images, about "
                                      f"{choice.synth['num'] // 250 + 1} min)", key=f"{prefix}_generate_{choice.key}"):
            datasets.generate(choice)
            st.rerun(scope="app")


TERM_COLUMNS = {"level": "level", "loss": "loss", "weight": "weight", "params": "parameters (JSON)"}


def terms_editor(terms: list, key: str) -> list:
    """An editable table of the distillation terms (level, loss, weight, parameters); returns the terms."""
    from hkd.distill.losses import LOSSES

    from app.services.finetune import Term

    rows = [{"level": t.level, "loss": t.loss, "weight": t.weight, "params": json.dumps(t.params)} for t in terms]
    with st.expander("Loss terms per level (the loss of each level, from the registry)"):
        st.caption("Weights here are before the hierarchy's × factor above. A level or loss that does not fit "
                   "the pair is refused at launch with the valid choices.")
        edited = st.data_editor(rows, key=key, num_rows="dynamic", hide_index=True, width="stretch", column_config={
            "loss": st.column_config.SelectboxColumn("loss", options=list(LOSSES), required=True),
            "weight": st.column_config.NumberColumn("weight", min_value=0.0, format="%.4g"),
            "level": st.column_config.TextColumn("level", help="e.g. neck.p3, neck.p[34], roi.logits")})
    out = []
    for row in edited:
        if not row.get("level") or not row.get("loss"):
            continue
        try:
            params = json.loads(row.get("params") or "{}")
        except json.JSONDecodeError:
            st.error(f"{row['level']}: parameters must be a JSON object, got {row.get('params')!r}")
            params = {}
        out.append(Term(row["level"], row["loss"], float(row.get("weight") or 0.0), params if isinstance(params, dict) else {}))
    return out


def jobs_table(jobs: list, key: str) -> str | None:
    """Every job as a table row; returns the id of the row the user selected (or None)."""
    from app.services import finetune

    rows = [{"id": j.id, "name": j.name, "kind": j.kind, "state": j.state, "progress": j.progress,
             "starts from": finetune.parent_of(j) if j.kind in ("train", "distill") else "—",
             "step": f"{j.step}/{j.total}" if j.total else "—",
             "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created)),
             "config": ", ".join(f"{k} {v}" for k, v in j.summary.items() if k in ("teacher", "steps", "lr") and v),
             "run folder": j.run} for j in jobs]
    event = st.dataframe(rows, key=key, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                         column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})
    picked = event.selection.rows if event and event.selection else []
    return rows[picked[0]]["id"] if picked else None


def job_actions(queue, job, prefix: str) -> None:
    """Cancel (queued/running), resume (cancelled/failed) and delete (not running, confirmed) buttons."""
    from hkd.jobs import JobError

    cols = st.columns(4)
    try:
        if job.active and cols[0].button("Cancel", key=f"{prefix}_cancel_{job.id}"):
            queue.cancel(job.id)
            st.rerun()
        if job.state in ("cancelled", "failed") and job.kind in ("train", "distill") and \
                cols[1].button("Resume", key=f"{prefix}_resume_{job.id}"):
            queue.resume(job.id)
            st.rerun()
        if job.state != "running":
            confirm = cols[2].checkbox("I am sure", key=f"{prefix}_confirm_{job.id}")
            if cols[3].button("Delete job", key=f"{prefix}_delete_{job.id}", disabled=not confirm):
                queue.delete(job.id)
                st.session_state.pop(f"{prefix}_job", None)
                st.rerun(scope="app")
    except JobError as exc:
        st.error(str(exc))


def case_note(picture, prefix: str) -> tuple | None:
    """The box of a case opened from Evaluate on this image (or None), after saying what the case is,
    with a button that forgets it; the page draws the box on every model's image."""
    from app.services import images

    try:
        focus = images.focus_for(picture)
    except ValueError:
        focus = None
    if focus is None:
        return None
    note, clear = st.columns([6, 1], vertical_alignment="center")
    note.info(f"The case: {focus.describe()} — drawn in white on each model's image.")
    clear.button("Clear", key=f"{prefix}_focus_clear", on_click=images.clear_focus)
    return focus.box


# -- the Detections page's controls ---------------------------------------------------
# the share of a box inside a higher-scoring one above which it is suppressed (None: keep every box)
CONTAINED = {"keep them all": None, "suppress if ≥ 90 % inside": 0.9, "suppress if ≥ 80 % inside": 0.8}
LAYOUTS = ["side by side", "one at a time, full width"]
DETECTION_KEPT = {"det_score": 0.5, "det_nms": 0.5, "det_match": 0.5, "det_contained": "suppress if ≥ 90 % inside",
                  "det_layout": LAYOUTS[0], "det_onnx": False, "det_zoom": True}
ZOOM_OUT = 0.5  # the second look's scale (hkd predict --zoom-out 0.5)


@dataclass(frozen=True)
class DetectionControls:
    score: float
    nms: float
    match_iou: float
    contained: float | None  # None: every box kept
    layout: str
    show_gt: bool
    onnx: bool
    zoom_out: float | None = None  # None: one look

    def one_per_person(self, dets):
        """``dets`` without the boxes mostly inside a higher-scoring one, as chosen."""
        return dets if self.contained is None else dets.suppress_contained(self.contained)


def detection_controls(has_gt: bool) -> DetectionControls:
    """Score, NMS, agreement IoU, contained boxes, layout, ground truth, ONNX; the values outlive
    leaving the page and a reload (:mod:`app.services.page_state`)."""
    from app.services import page_state

    page_state.restore(DETECTION_KEPT)
    for key, default in DETECTION_KEPT.items():
        st.session_state.setdefault(key, default)
    page_state.valid("det_contained", list(CONTAINED), DETECTION_KEPT["det_contained"])
    page_state.valid("det_layout", LAYOUTS, DETECTION_KEPT["det_layout"])
    cols = st.columns(4)
    score = cols[0].slider("Score threshold", 0.05, 0.95, step=0.05, key="det_score")
    nms = cols[1].slider("NMS IoU", 0.3, 0.9, step=0.05, key="det_nms",
                         help="Non-maximum suppression over the kept boxes: overlaps above this IoU are merged.")
    match_iou = cols[2].slider("Agreement IoU", 0.3, 0.9, step=0.05, key="det_match",
                               help="Two boxes of the compared models with at least this IoU count as agreed.")
    contained = cols[3].selectbox(
        "Boxes inside a bigger one", list(CONTAINED), key="det_contained",
        help="A box on a leg or a torso lies mostly inside the person's full box, so NMS (IoU) keeps both. "
             "Suppressing a box when this share of it lies inside a higher-scoring one (hkd predict "
             "--suppress-contained) leaves one box per person. 90 % removes about 70 % of such boxes at score 0.5 "
             "on SynthPed val for MR⁻² +0.3 to +0.6 (docs/BENCHMARKS.md, 'One box per person').")
    cols = st.columns(4)
    layout = cols[0].radio("Layout", LAYOUTS, horizontal=True, key="det_layout",
                           help="One at a time: each model's image at the page's full width (tabs), to read the scores.")
    show_gt = has_gt and cols[1].toggle("Show ground truth", value=has_gt, disabled=not has_gt, key="det_gt",
                                        help="Available for the SynthPed samples (from their annotations).")
    onnx = cols[2].toggle("Student via ONNX", key="det_onnx",
                          help="Run the student's ONNX export through onnxruntime (hkd export; made and checked "
                               "against PyTorch on first use) instead of PyTorch.")
    zoom = cols[3].toggle("People larger than the frame", key="det_zoom",
                          help="A second look at the image zoomed out to half size (hkd predict --zoom-out 0.5): "
                               "finds a person nearer the camera than the models were trained for, cut by the "
                               "image's border. On SynthPed it finds about 60–70 % of the large people the models "
                               "missed, with no loss of MR⁻² on ordinary images; it doubles the inference time "
                               "(docs/BENCHMARKS.md, 'People larger than the frame').")
    page_state.keep(DETECTION_KEPT)
    return DetectionControls(score, nms, match_iou, CONTAINED[contained], layout, bool(show_gt), onnx,
                             ZOOM_OUT if zoom else None)
