"""Widget helpers shared by the pages. Inputs return plain values (refs, keys, numbers)."""
from __future__ import annotations

import json

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


def checkpoint_select(role: str, entries: list[models.CheckpointEntry]) -> dict | None:
    """A selectbox of checkpoints (plus a preset picker for foreign weights); returns the ref."""
    current = models.current_ref(role)
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
    """Sidebar lines naming the current teacher and student (no loading)."""
    for role in models.ROLES:
        ref = models.current_ref(role)
        name = ref["path"].rsplit("/", 1)[-1] if ref else "none"
        st.caption(f"**{role.title()}:** `{name}`")


def require_pair() -> tuple[models.LoadedModel, models.LoadedModel]:
    """The loaded teacher and student, or a clear message and the end of this page run."""
    refs = {role: models.current_ref(role) for role in models.ROLES}
    if not all(refs.values()):
        no_checkpoints_help(models.models_folder())
        st.stop()
    loaded = {}
    for role, ref in refs.items():
        try:
            with st.spinner(f"Loading the {role} ({ref['path'].rsplit('/', 1)[-1]})…"):
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
    st.table([{"field": k, "value": str(v)} for k, v in provenance.items()], hide_index=True)
    if meta.metrics:
        st.table([{"metric": k, "value": v} for k, v in flat_metrics(meta.metrics)], hide_index=True)
    else:
        st.caption("No evaluation metrics recorded in this checkpoint.")
    with st.expander("Training configuration"):
        # st.text, not st.code: the code block's highlighter is ~1 s of script for the browser on the first page
        st.text(json.dumps(meta.train_config, indent=2) if meta.train_config else "(none recorded)")


# -- images -------------------------------------------------------------------
def image_select(prefix: str) -> str | None:
    """Sidebar: a sample/uploaded image picker and an uploader. Returns the current image key."""
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
    except (ImageError, KeyError, OSError) as exc:
        st.error(f"This image cannot be used: {exc}")
        st.stop()
    note = " · ground truth from the SynthPed annotations" if picture.gt_boxes is not None else ""
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
