"""Cached calls into ``hkd`` for the pages.

Results are cached per (model key, image key, parameters) with ``st.cache_data``
so switching back to a level, an image or a page is instant and every session
shares the work. The arguments starting with ``_`` (the model objects and the
pixels) are not hashed: the keys identify them — a model key is its file's
sha256, an image key is its content hash or sample path.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
import torch

from hkd.models.inference import Detections, detect
from hkd.models.profile import cpu_latency, flops_by_hierarchy, params_by_hierarchy

from app.services.images import Picture
from app.services.models import PROFILE_SIZE, LoadedModel, recorded_cost


# -- models -------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def _profile(model_key: str, _model) -> dict[str, dict[str, int]]:
    return {"params": params_by_hierarchy(_model), "flops": flops_by_hierarchy(_model, *PROFILE_SIZE)}


def profile(m: LoadedModel) -> dict[str, dict[str, int]]:
    """``{"params": {hierarchy: n}, "flops": {hierarchy: n}}`` (FLOPs of one 640×480 forward).

    Checkpoints written by ``hkd train``/``hkd distill`` carry this in their metadata, which
    spares the Models page a FLOPs-counting forward on first load.
    """
    recorded = recorded_cost(m.meta, PROFILE_SIZE)
    return recorded if recorded is not None else _profile(m.key, m.model)


def latency(m: LoadedModel, runs: int = 3) -> dict[str, float]:
    """Measured now (never cached): median/min seconds of a 640×480 CPU forward, 2 threads."""
    return cpu_latency(m.model, *PROFILE_SIZE, threads=2, warmup=1, runs=runs)


# -- detections ---------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=256)
def _detections(model_key: str, image_key: str, zoom_out: float | None, _model, _pixels: np.ndarray) -> Detections:
    (found,) = detect(_model, [_pixels], score_thresh=0.0, zoom_out=zoom_out)
    return found


def detections(m: LoadedModel, picture: Picture, *, backend: str = "pytorch", zoom_out: float | None = None) -> Detections:
    """All detections of ``m`` on the image (the page filters by score and NMS); ``seconds`` is
    the inference time measured when first computed. ``backend="onnxruntime"`` runs the model's
    ONNX export (:func:`onnx_detector`) instead of PyTorch. ``zoom_out``: also a second look at
    that scale, for people larger than the frame (:func:`hkd.models.inference.merge_zoomed`)."""
    if backend == "onnxruntime":
        return _onnx_detections(m.key, picture.key, zoom_out, onnx_detector(m), picture.pixels)
    return _detections(m.key, picture.key, zoom_out, m.model, picture.pixels)


# -- the ONNX backend (hkd.deploy) ----------------------------------------------
def onnx_cache() -> Path:
    from app.services import settings

    return settings.cache_dir() / "onnx"


@st.cache_resource(show_spinner=False, max_entries=8)
def _onnx_detector(model_key: str, _path: str):
    from hkd.deploy import OnnxDetector, cached_export
    from hkd.results import ResultStore

    from app.services import settings

    return OnnxDetector(cached_export(_path, store=ResultStore(settings.cache_dir())), threads=2)


def onnx_detector(m: LoadedModel):
    """``m``'s checkpoint exported to ONNX (once per file content, checked against PyTorch on export)
    and run by onnxruntime; shared by every session and never mutated. Raises CheckpointError
    (e.g. a preset that cannot be exported) or hkd.deploy's OnnxCheckError."""
    return _onnx_detector(m.key, str(m.checkpoint.path))


@st.cache_data(show_spinner=False, max_entries=256)
def _onnx_detections(model_key: str, image_key: str, zoom_out: float | None, _detector,
                     _pixels: np.ndarray) -> Detections:
    (found,) = _detector.detect([_pixels], score_thresh=0.0, zoom_out=zoom_out)
    return found


def latency_both(m: LoadedModel, runs: int = 3) -> dict:
    """Measured now: PyTorch and onnxruntime median latency of a 640×480 forward, 2 threads each,
    back to back by the same protocol (``hkd.deploy.backend_latency``)."""
    from hkd.deploy import backend_latency

    return backend_latency(m.checkpoint.path, cache_dir=onnx_cache(), model=m.model, detector=onnx_detector(m),
                           width=PROFILE_SIZE[0], height=PROFILE_SIZE[1], threads=2, warmup=1, runs=runs)


RUNTIMES = {"pytorch": "PyTorch", "onnxruntime": "onnxruntime"}


def _running_jobs() -> set[str]:
    from app.services import finetune

    try:
        return {f"{j.name} ({j.id})" for j in finetune.queue().list(advance=False) if j.state == "running"}
    except OSError:
        return set()


def measure_pair(pair: dict[str, LoadedModel], runs: int) -> dict:
    """Teacher and student timed now in both runtimes (:func:`latency_both`, one after the other), with
    what else ran meanwhile: ``{"keys": {role: model key}, "results": {role: latency_both(...)},
    "jobs": [the queue's jobs running before or after], "load": the 1-min load average, "cores"}``."""
    import os

    jobs, load = _running_jobs(), os.getloadavg()[0]
    results = {role: latency_both(m, runs) for role, m in pair.items()}
    return {"keys": {role: m.key for role, m in pair.items()}, "results": results,
            "jobs": sorted(jobs | _running_jobs()), "load": max(load, os.getloadavg()[0]), "cores": os.cpu_count() or 1}


def _ms(result: dict) -> str:
    spread = f" (min {result['min_s'] * 1000:.0f}, max {result['max_s'] * 1000:.0f})" if "max_s" in result else ""
    return f"{result['median_s'] * 1000:.0f} ms{spread}"


def latency_rows(measured: dict) -> list[dict]:
    """One row per runtime: teacher and student side by side in it (median and the spread over the
    timed runs) and the student's speed-up there — never one runtime divided by the other."""
    t, s = measured["results"]["teacher"], measured["results"]["student"]
    return [{"runtime": title, "teacher": _ms(t[rt]), "student": _ms(s[rt]),
             "student speed-up": f"{t[rt]['median_s'] / s[rt]['median_s']:.1f}×", "runs": str(s[rt]["runs"])}
            for rt, title in RUNTIMES.items()]


def latency_note(measured: dict) -> str | None:
    """A warning when the timings were taken beside other work (queue jobs, or a busy machine)."""
    why = []
    if measured["jobs"]:
        why.append(f"background job(s) running: {', '.join(measured['jobs'])}")
    if measured["load"] > 0.5 * measured["cores"]:
        why.append(f"load average {measured['load']:.1f} on {measured['cores']} cores")
    if not why:
        return None
    return ("Measured while other work ran (" + "; ".join(why) + "): the times are slower and spread wider than on an "
            "idle machine; teacher and student were measured alike, so compare them within a row.")


# -- feature maps ---------------------------------------------------------------
def feature_levels(teacher: LoadedModel, student: LoadedModel) -> list[str]:
    """Levels both models have that the Features page can draw, in computation order:
    backbone and FPN maps, RPN objectness, ROI features of one detection."""
    spec = teacher.spec
    return [name for name in spec.shared_with(student.spec)
            if (spec[name].kind == "map" and spec[name].hierarchy in ("backbone", "neck"))
            or name in ("rpn.objectness", "roi.features")]


def _view_group(teacher: LoadedModel, level: str) -> tuple[str, ...]:
    """Levels computed together with ``level``: all backbone/FPN maps share one backbone forward."""
    if level in ("rpn.objectness", "roi.features"):
        return (level,)
    return tuple(lv.name for lv in teacher.spec if lv.kind == "map" and lv.hierarchy in ("backbone", "neck"))


@st.cache_data(show_spinner=False, max_entries=128)
def _views(model_key: str, image_key: str, levels: tuple[str, ...], k: int, box: tuple | None,
           _model, _spec, _pixels: np.ndarray):
    from hkd.viz.featmaps import level_views

    return level_views(_model, _spec, _pixels, list(levels), k=k, box_xyxy=box)


def level_view(m: LoadedModel, picture: Picture, level: str, *, k: int = 4, box: tuple | None = None):
    """The :class:`hkd.viz.featmaps.LevelView` of ``level`` (``box``: image pixels, for roi.features)."""
    group = tuple(n for n in _view_group(m, level) if n in m.spec) or (level,)
    return _views(m.key, picture.key, group, k, box if level == "roi.features" else None,
                  m.model, m.spec, picture.pixels)[level]


def _difference_of(t_map: torch.Tensor, s_map: torch.Tensor, fitted: bool) -> dict:
    from hkd.viz.featmaps import adapter_difference, fit_adapter

    t_map, s_map = t_map.float().cpu(), s_map.float().cpu()
    # a 1×1 adapter has C_s + 1 unknowns per teacher channel: fit it only where the map has
    # clearly more positions than that (not on a 7×7 ROI region of a 64-channel student)
    if fitted and t_map.shape[-2] * t_map.shape[-1] > 2 * (s_map.shape[0] + 1):
        residual = adapter_difference(t_map, s_map, fit_adapter(t_map, s_map))
        relative = float(np.sqrt((residual ** 2).sum()) / max(float(t_map.norm()), 1e-12))
        return {"heat": residual / max(float(residual.max()), 1e-12), "residual": relative, "fitted": True}
    return {"heat": adapter_difference(t_map, s_map, None), "residual": float("nan"), "fitted": False}


@st.cache_data(show_spinner=False, max_entries=64)
def _differences(t_key: str, s_key: str, image_key: str, levels: tuple[str, ...], fitted: bool, box: tuple | None,
                 _teacher, _t_spec, _student, _s_spec, _pixels: np.ndarray) -> dict[str, dict]:
    from hkd.viz.featmaps import roi_features_for_box, tapped_forward

    if levels == ("roi.features",):
        t_map = roi_features_for_box(_teacher, _pixels, box, spec=_t_spec)
        s_map = roi_features_for_box(_student, _pixels, box, spec=_s_spec)
        return {"roi.features": _difference_of(t_map, s_map, fitted)}
    t_values, t_geometry = tapped_forward(_teacher, _t_spec, _pixels, list(levels))
    s_values, s_geometry = tapped_forward(_student, _s_spec, _pixels, list(levels))
    out = {}
    for name in levels:
        t_map, s_map = t_values[name], s_values[name]
        if isinstance(t_map, list):  # rpn.objectness: finest FPN level, as probabilities
            t_map, s_map = t_map[0].sigmoid(), s_map[0].sigmoid()
        out[name] = _difference_of(t_geometry.crop(t_map), s_geometry.crop(s_map), fitted)
    return out


def difference(teacher: LoadedModel, student: LoadedModel, picture: Picture, level: str, *,
               fitted: bool = True, box: tuple | None = None) -> dict:
    """Where the student differs from the teacher at ``level``: ``{"heat": (h, w) in [0, 1],
    "residual": float, "fitted": bool}``.

    ``fitted``: through the best 1×1 adapter for this image, ‖t − A(s)‖₂ per position, and the
    relative residual ‖t − A(s)‖ / ‖t‖; otherwise (or where the map has too few positions to fit
    an adapter) the channel-agnostic energy difference, residual NaN and ``fitted`` False.
    """
    group = tuple(n for n in _view_group(teacher, level) if n in student.spec) or (level,)
    box = box if level == "roi.features" else None
    return _differences(teacher.key, student.key, picture.key, group, fitted, box, teacher.model, teacher.spec,
                        student.model, student.spec, picture.pixels)[level]


@st.cache_data(show_spinner=False, max_entries=64)
def _similarity(t_key: str, s_key: str, image_key: str, _teacher, _t_spec, _student, _s_spec, _pixels) -> list[dict]:
    from hkd.viz.similarity import similarity_profile

    levels = [lv.name for lv in _t_spec if lv.name in _s_spec and lv.kind == _s_spec[lv.name].kind and (
        lv.hierarchy in ("backbone", "neck") or lv.name in ("rpn.objectness", "roi.features", "roi.embedding"))]
    return similarity_profile(_teacher, _t_spec, _student, _s_spec, _pixels, levels)


def similarity(teacher: LoadedModel, student: LoadedModel, picture: Picture) -> list[dict]:
    """Linear CKA and cosine per shared level (rows of :func:`hkd.viz.similarity.similarity_profile`)."""
    return _similarity(teacher.key, student.key, picture.key, teacher.model, teacher.spec, student.model,
                       student.spec, picture.pixels)


def third_candidates(entries: list, pair: tuple[LoadedModel, LoadedModel]) -> list:
    """Checkpoints that can be the Detections page's third model: readable HKD checkpoints
    (no preset to pick) other than the pair's own files."""
    from pathlib import Path

    taken = {m.checkpoint.path.resolve() for m in pair}
    return [e for e in entries if not e.error and not e.needs_preset and Path(e.path).resolve() not in taken]


def default_third(candidates: list, student: LoadedModel) -> str | None:
    """The no-KD student (``student_baseline*``) beside an HKD student (``*hkd*``), else None."""
    if "hkd" not in student.name.lower():
        return None
    return next((e.path for e in sorted(candidates, key=lambda e: e.name) if e.name.startswith("student_baseline")),
                None)


def agreement_table(rows: list[dict], a: str, b: str) -> list[dict]:
    """The agreement rows of models ``a`` and ``b`` (``hkd.viz.draw.comparison_rows``) as text:
    scores and IoU to two decimals, a cell with no value empty."""
    def num(value) -> str:
        return "" if value is None else f"{value:.2f}"

    status = {"agreed": "agreed", "teacher_only": f"{a} only", "student_only": f"{b} only"}
    return [{"status": status[r["status"]], f"{a} score": num(r["score_teacher"]), f"{b} score": num(r["score_student"]),
             "IoU": num(r["iou"]), "box (x1, y1, x2, y2) px": ", ".join(f"{v:.0f}" for v in r["box"])} for r in rows]


def detections_json(picture: Picture, found: dict[str, tuple[LoadedModel, Detections]], rows: list[dict],
                    settings: dict, pair: tuple[str, str] = ("teacher", "student")) -> str:
    """The Detections page as JSON; boxes in the original image's pixels (xyxy).

    ``rows`` are :func:`hkd.viz.draw.comparison_rows` rows of the models named ``pair``
    (keys of ``found``); they are written with those names: ``score_<a>``, ``score_<b>``,
    status ``agreed``, ``<a>_only`` or ``<b>_only``.
    """
    import json

    to_original = 1.0 / picture.loaded.scale
    height, width = picture.pixels.shape[:2]
    first, second = pair
    status = {"agreed": "agreed", "teacher_only": f"{first}_only", "student_only": f"{second}_only"}

    def boxes(values) -> list[list[float]]:
        return [[round(float(v) * to_original, 2) for v in box] for box in values]

    report = {
        "image": {"name": picture.name, "size": list(picture.loaded.original_size),
                  "analysed_size": [width, height], "scale": picture.loaded.scale},
        "settings": settings,
        "models": {role: {"checkpoint": m.name, "preset": m.meta.preset, "sha256": m.key.split(":")[0],
                          "inference_seconds": round(dets.seconds, 4),
                          "detections": [{"box_xyxy": b, "score": round(float(s), 4)}
                                         for b, s in zip(boxes(dets.boxes), dets.scores)]}
                   for role, (m, dets) in found.items()},
        "comparison": [{"box": boxes([row["box"]])[0], f"score_{first}": row["score_teacher"],
                        f"score_{second}": row["score_student"], "iou": row["iou"], "status": status[row["status"]]}
                       for row in rows],
    }
    if picture.gt_boxes is not None:
        report["ground_truth"] = boxes(picture.gt_boxes)
    return json.dumps(report, indent=2)


# -- attention ------------------------------------------------------------------
# the first method and CAM_LEVEL are the Attention page's defaults: the ones readable on the shipped
# real photos (docs/DESIGN.md, "CAM defaults"); a gradient method explains one chosen detection
CAM_METHODS = {"EigenCAM": "eigencam", "Grad-CAM": "gradcam", "Grad-CAM++": "gradcam++"}
CAM_LEVEL = "neck.p4"


def cam_problem(heat: np.ndarray, method: str, level: str) -> str | None:
    """Why a CAM ``heat`` (h, w) shows nothing — empty or constant — or None for a map with contrast."""
    if heat.size and float(heat.max() - heat.min()) > 1e-6:
        return None
    what = "empty (zero everywhere)" if not heat.size or float(heat.max()) <= 1e-6 else "constant"
    why = ("no explained score depends on this level through a gradient: the ROI head pools each box from one "
           "FPN level chosen by its size, so small pedestrians never reach the coarse levels, and deep stages can "
           "saturate" if method != "eigencam" else "the level's activations have no spatial variation here")
    return f"The map at {level} is {what}: {why}. Try EigenCAM, or a finer level such as neck.p3."


def map_levels(teacher: LoadedModel, student: LoadedModel) -> list[str]:
    """Backbone and FPN map levels both models have, in computation order."""
    return teacher.spec.shared_with(student.spec, kinds=("map",))  # every map level is a backbone or FPN one


@st.cache_data(show_spinner=False, max_entries=64)
def _cam(model_key: str, image_key: str, method: str, level: str, box_index: int | None, score_thresh: float,
         _model, _spec, _pixels: np.ndarray):
    from hkd.viz.cam import detection_cam

    try:
        return detection_cam(_model, _spec, _pixels, method=method, level=level, box_index=box_index,
                             score_thresh=score_thresh)
    except ValueError as exc:  # nothing to explain, a level without gradient…: cached as a message
        return str(exc)


def cam(m: LoadedModel, picture: Picture, *, method: str, level: str, box_index: int | None,
        score_thresh: float):
    """A :class:`hkd.viz.cam.CamResult`, or the message saying why there is none."""
    return _cam(m.key, picture.key, method, level, box_index, score_thresh, m.model, m.spec, picture.pixels)


def matching_index(box: np.ndarray, dets: Detections, min_iou: float = 0.3) -> int | None:
    """Index of the detection in ``dets`` that overlaps ``box`` most (IoU ≥ ``min_iou``), or None."""
    from torchvision.ops import box_iou

    if not len(dets):
        return None
    iou = box_iou(torch.as_tensor(box, dtype=torch.float32)[None], torch.from_numpy(dets.boxes))[0]
    best = int(iou.argmax())
    return best if float(iou[best]) >= min_iou else None


@st.cache_data(show_spinner=False, max_entries=64)
def _attention(model_key: str, image_key: str, levels: tuple[str, ...], _model, _spec, _pixels: np.ndarray):
    from hkd.viz.cam import attention_maps

    return attention_maps(_model, _spec, _pixels, list(levels))


def attention(m: LoadedModel, picture: Picture, levels: list[str]) -> dict[str, np.ndarray]:
    """Attention-transfer maps (h, w) in [0, 1] per level, from one backbone forward."""
    return _attention(m.key, picture.key, tuple(levels), m.model, m.spec, picture.pixels)
