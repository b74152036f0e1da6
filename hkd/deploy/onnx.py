"""The whole detector as one ONNX graph, and an onnxruntime backend with the PyTorch path's contract.

Export (``hkd export``)::

    result = export_onnx("student_hkd.safetensors", "student.onnx")          # any image size
    result = export_onnx("student_hkd.safetensors", "s640.onnx", size=(640, 480))  # one fixed size
    print(result.check.summary())

The graph holds torchvision's transform (resize, normalise, pad), the backbone,
FPN, RPN, ROI head and the post-processing (box decoding, NMS, rescaling to
the input image): it takes ``image`` (3, H, W) float32 in [0, 1] and returns
``boxes`` (K, 4) xyxy in the image's pixels, ``scores`` (K,) and ``labels``
(K,) int64, sorted by score. The exported model is the *prepared* one (frozen
norms folded into their convs, :func:`hkd.models.optimize.prepare_for_inference`):
the same numbers as ``load_checkpoint(..., inference=True)`` and fewer nodes.

The checkpoint's metadata (:class:`~hkd.models.meta.CheckpointMeta`: preset,
classes, input size, training config, metrics, parent) is stored in the
model's ``metadata_props`` under ``hkd``, in the same JSON as a safetensors
header; how the file was made (opset, input size, source checkpoint and the
equality check's result) under ``hkd_export``.

After export, onnxruntime's detections are compared with PyTorch's on sample
images (:func:`compare_detections`); the file is written only if they agree.

Running::

    detector = OnnxDetector("student.onnx", threads=2)   # onnxruntime, CUDA when present
    (dets,) = detector.detect([image], score_thresh=0.05)  # hkd.models.inference.Detections

An :class:`OnnxDetector` is called like an eval-mode torchvision detector
(``detector([tensor]) -> [{"boxes", "labels", "scores"}]``), so
:func:`hkd.models.profile.cpu_latency` times it unchanged, and its
:meth:`~OnnxDetector.detect` applies :func:`hkd.models.inference.detect`'s
conversion and pedestrian filter. An ONNX file is parsed as data (protobuf) and run by
onnxruntime: nothing in it is executed as Python.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hkd.models.meta import CheckpointError, CheckpointMeta, atomic_write, file_sha256

__all__ = [
    "EXPORT_FORMAT", "META_KEY", "EXPORT_KEY", "DEFAULT_OPSET", "OPSET_RANGE", "ONNX_SUFFIX",
    "OnnxExportError", "OnnxCheckError", "OnnxInputError", "OnnxModelError", "Agreement", "ExportResult",
    "OnnxDetector",
    "is_onnx", "export_onnx", "read_onnx_meta", "compare_detections", "check_backends",
    "sample_images", "default_providers", "onnx_latency", "quantize_int8", "cached_export", "backend_latency",
]

EXPORT_FORMAT = "hkd-onnx/1"
META_KEY = "hkd"  # CheckpointMeta JSON, as in the safetensors header
EXPORT_KEY = "hkd_export"  # how the file was made: opset, input size, source, check
ONNX_SUFFIX = ".onnx"
# torch's TorchScript exporter (the one torchvision's detectors export with) goes up to opset 20;
# below 11 there is no dynamic Resize / NonMaxSuppression
OPSET_RANGE = (11, 20)
DEFAULT_OPSET = 17
BOX_TOL_PX = 1.0
SCORE_TOL = 1e-3
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")


class OnnxExportError(ValueError):
    """A checkpoint could not be exported, or the export does not match PyTorch; the message says why."""


class OnnxCheckError(OnnxExportError):
    """onnxruntime's detections do not match PyTorch's within tolerance; ``agreement`` has the numbers."""

    def __init__(self, message: str, agreement: "Agreement") -> None:
        super().__init__(message)
        self.agreement = agreement


class OnnxModelError(CheckpointError):
    """An ONNX file could not be used (missing, not ONNX, no HKD metadata, rejected by onnxruntime)."""


class OnnxInputError(ValueError):
    """An image the ONNX graph cannot take (wrong layout, or not the size of a fixed-size export)."""


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX model (by its ``.onnx`` suffix)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


# ---------------------------------------------------------------------------
# Agreement between two backends
# ---------------------------------------------------------------------------
@dataclass
class Agreement:
    """How closely a candidate backend's detections follow the reference's, over a set of images.

    Detections are paired per image by :func:`hkd.eval.matching.match_pair` (IoU ≥ 0.5).
    ``max_box_diff_px`` is the largest coordinate difference of a pair, ``max_score_diff``
    the largest score difference. An unpaired detection is *borderline* when its
    score is within ``score_tol`` of the score threshold, or of the lowest score of
    the other side when that side hit ``max_dets``: tiny float differences decide
    whether such a box is kept at all. Anything else unpaired is a real difference.
    """

    images: int = 0
    reference: int = 0
    candidate: int = 0
    matched: int = 0
    max_box_diff_px: float = 0.0
    max_score_diff: float = 0.0
    borderline: int = 0
    unmatched: list[dict] = field(default_factory=list)  # {"image", "side", "score", "box"} of real differences
    box_tol_px: float = BOX_TOL_PX
    score_tol: float = SCORE_TOL
    names: tuple[str, str] = ("pytorch", "onnxruntime")

    @property
    def ok(self) -> bool:
        return (self.max_box_diff_px <= self.box_tol_px and self.max_score_diff <= self.score_tol
                and not self.unmatched)

    def summary(self) -> str:
        ref, cand = self.names
        head = (f"{self.matched} of {self.reference} {ref} / {self.candidate} {cand} detections paired on "
                f"{self.images} images; max box difference {self.max_box_diff_px:.4f} px "
                f"(tolerance {self.box_tol_px:g}), max score difference {self.max_score_diff:.2e} "
                f"(tolerance {self.score_tol:g})")
        if self.borderline:
            head += f"; {self.borderline} unpaired at the score threshold / max_dets cut"
        if self.unmatched:
            worst = max(self.unmatched, key=lambda u: u["score"])
            head += (f"; {len(self.unmatched)} detections found by one backend only "
                     f"(e.g. image {worst['image']}: {worst['side']} score {worst['score']:.3f} "
                     f"at {[round(v, 1) for v in worst['box']]})")
        return ("OK: " if self.ok else "MISMATCH: ") + head

    def to_dict(self) -> dict:
        out = asdict(self)
        out["names"] = list(self.names)
        out["ok"] = self.ok
        return out


def compare_detections(
    reference: Sequence, candidate: Sequence, *, score_thresh: float = 0.05, max_dets: int = 100,
    box_tol_px: float = BOX_TOL_PX, score_tol: float = SCORE_TOL, names: tuple[str, str] = ("pytorch", "onnxruntime"),
) -> Agreement:
    """Compare two backends' :class:`~hkd.models.inference.Detections`, image by image.

    ``score_thresh``/``max_dets`` are the filter both lists went through (they
    decide which unpaired boxes are borderline).
    """
    from hkd.eval.matching import match_pair

    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate images")
    report = Agreement(images=len(reference), box_tol_px=box_tol_px, score_tol=score_tol, names=names)
    for index, (ref, cand) in enumerate(zip(reference, candidate)):
        report.reference += len(ref)
        report.candidate += len(cand)
        pair = match_pair(ref.boxes, ref.scores, cand.boxes, cand.scores, iou_threshold=0.5)
        hit = pair.a_to_b >= 0
        report.matched += int(hit.sum())
        if hit.any():
            mate = pair.a_to_b[hit]
            box_diff = np.abs(ref.boxes[hit].astype(np.float64) - cand.boxes[mate]).max()
            score_diff = np.abs(ref.scores[hit].astype(np.float64) - cand.scores[mate]).max()
            report.max_box_diff_px = max(report.max_box_diff_px, float(box_diff))
            report.max_score_diff = max(report.max_score_diff, float(score_diff))
        for side, dets, other, alone in ((names[0], ref, cand, pair.a_only), (names[1], cand, ref, pair.b_only)):
            floor = score_thresh
            if len(other) >= max_dets:
                floor = max(floor, float(other.scores.min()))
            for k in np.flatnonzero(alone):
                score = float(dets.scores[k])
                if score <= floor + score_tol:
                    report.borderline += 1
                else:
                    report.unmatched.append({"image": index, "side": side, "score": score,
                                             "box": [float(v) for v in dets.boxes[k]]})
    return report


def check_backends(model, detector, images: Sequence, *, score_thresh: float = 0.05, max_dets: int = 100,
                   box_tol_px: float = BOX_TOL_PX, score_tol: float = SCORE_TOL) -> tuple[Agreement, list, list]:
    """Run ``model`` (PyTorch, eval mode) and ``detector`` on ``images``; returns (agreement, reference, candidate).

    ``images``: uint8 (H, W, 3) arrays or float (3, H, W) tensors.
    """
    from hkd.models.inference import detect

    reference = [detect(model, [im], score_thresh=score_thresh, max_dets=max_dets)[0] for im in images]
    candidate = [detector.detect([im], score_thresh=score_thresh, max_dets=max_dets)[0] for im in images]
    agreement = compare_detections(reference, candidate, score_thresh=score_thresh, max_dets=max_dets,
                                   box_tol_px=box_tol_px, score_tol=score_tol)
    return agreement, reference, candidate


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    meta: CheckpointMeta
    export: dict  # what is stored under hkd_export
    check: Agreement | None


def sample_images(size: tuple[int, int] | None, meta: CheckpointMeta) -> list[np.ndarray]:
    """Images for the equality check: SynthPed scenes (uint8 (H, W, 3)) rendered by the library itself.

    A fixed-size export is checked at its size; a dynamic one on a landscape
    image at the checkpoint's training size and on a portrait one, so the
    graph's resize is exercised both ways.
    """
    from hkd.data.synth.config import SynthConfig
    from hkd.data.synth.dataset import render_image

    if size is not None:
        sizes = [tuple(size)]
    else:
        w, h = meta.max_size, meta.min_size
        sizes = [(w, h), (h, w)]
    images = []
    for index, (w, h) in enumerate(sizes):
        # seed 7 is no dataset split's seed; SynthPed renders at least 96 px a side, smaller sizes are crops
        scene = render_image(7, index, SynthConfig(width=max(int(w), 96), height=max(int(h), 96)))
        images.append(np.ascontiguousarray(scene.image[:h, :w]))
    return images


def _export_wrapper(model):
    """A torchvision detector in eval mode as one image in, three tensors out: what the ONNX graph computes."""
    from torch import nn

    class ExportedDetector(nn.Module):
        def __init__(self, detector: nn.Module) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, image):
            """image: (3, H, W) float in [0, 1] → boxes (K, 4), scores (K,), labels (K,)."""
            (pred,) = self.detector([image])
            return pred["boxes"], pred["scores"], pred["labels"]

    return ExportedDetector(model).eval()


def _fixed_same_padding(model) -> int:
    """Replace timm's dynamic TF-"SAME" padding (``Conv2dSame``) by a constant pad, in place; returns how many.

    ``Conv2dSame`` computes its padding from the input's size at run time,
    which in the graph is Shape → arithmetic → Pad, with layout reorders around
    every Pad. The transform pads every batch to a multiple of
    ``size_divisible`` (32), so a conv whose input stride times its own stride
    divides that multiple always sees an input divisible by its stride, and its
    SAME padding is the same constant for every image: exact, and then folded
    into the conv itself (:func:`_fold_pads_into_convs`). A conv for which that
    does not hold is left alone.
    """
    import torch
    import torch.nn.functional as F
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg
    from torch import nn

    class FixedPadConv(nn.Module):
        def __init__(self, conv: nn.Conv2d, pads: list[int]) -> None:
            super().__init__()
            self.conv, self.pads = conv, tuple(int(v) for v in pads)

        def forward(self, x):
            c = self.conv
            return F.conv2d(F.pad(x, self.pads), c.weight, c.bias, c.stride, 0, c.dilation, c.groups)

    body = model.backbone.body if hasattr(model.backbone, "body") else model.backbone
    divisible = int(getattr(model.transform, "size_divisible", 1))
    convs = {name: m for name, m in body.named_modules() if isinstance(m, Conv2dSame)}
    if not convs or divisible <= 1:
        return 0
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
             for name, m in convs.items()]
    try:
        with torch.no_grad():
            body(torch.zeros(1, 3, divisible, divisible))
    finally:
        for hook in hooks:
            hook.remove()
    replaced = 0
    for name, conv in convs.items():
        ih, iw = sizes[name]
        if ih % conv.stride[0] or iw % conv.stride[1]:
            continue  # this conv's padding depends on the image size: keep it dynamic
        pads = pad_same_arg([int(ih), int(iw)], conv.weight.shape[-2:], conv.stride, conv.dilation)
        parent_name, _, child = name.rpartition(".")
        setattr(body.get_submodule(parent_name) if parent_name else body, child, FixedPadConv(conv, pads))
        replaced += 1
    return replaced


def _merge_levels_by_gather(levels, unmerged_results):
    """torchvision's ``_onnx_merge_levels`` without the (R, C, 7, 7) ``ScatterElements`` per level.

    Every region belongs to exactly one level, so the regions' positions in
    level order are a permutation: the per-level results are concatenated and
    put back in region order with one ``Gather``, whose inverse permutation is
    a scatter of R integers. The same tensor, in a fraction of the time.
    """
    import torch

    positions = torch.cat([torch.where(levels == level)[0] for level in range(len(unmerged_results))])
    ranks = torch.ones_like(positions).cumsum(0) - 1
    inverse = torch.zeros_like(positions).scatter(0, positions, ranks)
    return torch.cat(unmerged_results, 0).index_select(0, inverse)


def _multiclass_nms_function():
    """An autograd Function that traces to one ONNX ``NonMaxSuppression`` with a class axis.

    Input: boxes (1, N, 4) xyxy, class scores (1, C, N) with -1 where a box is not of that
    class. Output: (K, 3) int64 rows (batch, class, box index), as the ONNX op defines them.
    Run eagerly (while tracing) it computes the same with torchvision's ``nms`` per class.
    """
    import torch
    from torchvision.ops import nms

    class MultiClassNMS(torch.autograd.Function):
        @staticmethod
        def forward(ctx, boxes, class_scores, iou_threshold: float):
            rows = []
            for c in range(class_scores.shape[1]):
                scores = class_scores[0, c]
                member = torch.where(scores > _NOT_THIS_CLASS / 2)[0]
                keep = member[nms(boxes[0, member], scores[member], iou_threshold)]
                rows.append(torch.stack([torch.zeros_like(keep), torch.full_like(keep, c), keep], 1))
            return torch.cat(rows)

        @staticmethod
        def symbolic(g, boxes, class_scores, iou_threshold: float):
            max_out = g.op("Constant", value_t=torch.tensor([2 ** 62], dtype=torch.int64))
            iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32))
            floor = g.op("Constant", value_t=torch.tensor([_NOT_THIS_CLASS / 2], dtype=torch.float32))
            return g.op("NonMaxSuppression", boxes, class_scores, max_out, iou, floor)

    return MultiClassNMS


_NOT_THIS_CLASS = -1.0  # the class score of a box of another class; real scores are probabilities


@contextmanager
def _onnx_friendly_nms(num_classes: int):
    """While tracing, ``batched_nms`` runs as one class-axis ``NonMaxSuppression`` over ``num_classes`` classes.

    torchvision traces ``batched_nms`` as one NMS over all boxes, offset per
    class so that classes never overlap (its "coordinate trick"): for the
    RPN that is one greedy NMS over ~3,500 boxes of four levels. Eager
    PyTorch on the CPU takes its other path for that many boxes, one NMS per
    class, then sorts the kept boxes by score: this is that path, as a graph.
    ``num_classes`` must cover every index the calls will see (the RPN's
    levels, the ROI head's labels); an unused class costs nothing.
    """
    import torch
    from torchvision.ops import boxes as box_ops

    function = _multiclass_nms_function()
    original = box_ops.batched_nms

    def batched_nms(boxes, scores, idxs, iou_threshold):
        classes = torch.arange(num_classes, dtype=idxs.dtype, device=idxs.device)
        class_scores = torch.where(idxs[None, :] == classes[:, None], scores[None, :],
                                   torch.full_like(scores, _NOT_THIS_CLASS)[None, :])
        selected = function.apply(boxes[None], class_scores[None], float(iou_threshold))
        keep = selected[:, 2]
        return keep[scores[keep].sort(descending=True)[1]]

    box_ops.batched_nms = batched_nms
    try:
        yield
    finally:
        box_ops.batched_nms = original


@contextmanager
def _onnx_friendly_pooling():
    """While tracing, ``MultiScaleRoIAlign`` merges its levels by :func:`_merge_levels_by_gather`.

    torchvision calls its module-level ``_onnx_merge_levels`` only when tracing,
    so eager inference elsewhere in the process is unaffected; the original is
    put back on exit.
    """
    from torchvision.ops import poolers

    original = poolers._onnx_merge_levels
    poolers._onnx_merge_levels = _merge_levels_by_gather
    try:
        yield
    finally:
        poolers._onnx_merge_levels = original


def _nms_classes(model) -> int:
    """How many class indices ``batched_nms`` sees in ``model``: the RPN's feature levels and the ROI head's labels."""
    levels = len(model.rpn.anchor_generator.sizes)
    labels = model.roi_heads.box_predictor.cls_score.out_features
    return max(levels, labels)


def _exportable(checkpoint: str | os.PathLike, preset: str | None) -> None:
    """Refuse a checkpoint whose architecture the export does not cover, before any weights load."""
    from hkd.models.meta import SAFE_SUFFIXES, existing, preset_or_error, read_meta
    from hkd.models.presets import PRESETS

    path = existing(checkpoint)
    if preset is None and path.suffix.lower() not in SAFE_SUFFIXES:
        return  # load_checkpoint says that such a file needs a preset
    name = preset or read_meta(path).preset
    family = preset_or_error(name, path).family
    if family != "two_stage":
        two_stage = sorted(n for n, p in PRESETS.items() if p.family == "two_stage")
        raise OnnxExportError(
            f"{path}: preset {name!r} ({family.replace('_', '-')} detector) cannot be exported to ONNX: "
            f"the export covers two-stage torchvision detectors (transform → backbone → RPN → ROI head → "
            f"post-processing); exportable presets: {', '.join(two_stage)}"
        )


def _check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise OnnxExportError(f"opset {opset!r} is not supported; choose one from {OPSET_RANGE[0]} to {OPSET_RANGE[1]}")
    return opset


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise OnnxExportError(f"size must be (width, height), got {size!r}") from None
    if not (32 <= w <= 8192 and 32 <= h <= 8192):
        raise OnnxExportError(f"size {w}x{h}: width and height must be between 32 and 8192")
    return w, h


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str | None = None,
    opset: int = DEFAULT_OPSET,
    size: tuple[int, int] | None = None,
    check: bool = True,
    check_images: Sequence[np.ndarray] | None = None,
    box_tol_px: float = BOX_TOL_PX,
    score_tol: float = SCORE_TOL,
    rewrite: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` (HKD .safetensors, or foreign weights with ``preset``) to ``out`` (.onnx).

    Args:
        size: ``(width, height)`` for a graph with a fixed input shape; ``None``
            (default) for any image size (dynamic height and width).
        rewrite: make timm's TF-SAME paddings constant and fold them into the convs, and merge
            the ROI levels by one Gather (exact; faster in onnxruntime). ``False``: the plain
            TorchScript export of the prepared model, for comparison.
        check: compare onnxruntime with PyTorch on ``check_images`` (default
            :func:`sample_images`); on a mismatch nothing is written and
            :class:`OnnxCheckError` carries the report (``.agreement``).

    Raises:
        CheckpointError: the checkpoint cannot be read.
        OnnxExportError: the preset, opset or size cannot be exported, or tracing failed.
        OnnxCheckError: onnxruntime does not reproduce PyTorch within the tolerances.
    """
    import torch

    from hkd.models.checkpoint import load_checkpoint

    opset = _check_opset(opset)
    size = _check_size(size)
    out = Path(out)
    if out.suffix.lower() != ONNX_SUFFIX:
        raise OnnxExportError(f"{out}: an ONNX model's file name must end in {ONNX_SUFFIX}")
    _exportable(checkpoint, preset)
    loaded = load_checkpoint(checkpoint, preset=preset, inference=True)
    # contiguous weights: ONNX initializers are plain row-major tensors anyway
    model = loaded.model.to(memory_format=torch.contiguous_format)
    graph_model = copy.deepcopy(model)  # what is traced; ``model`` stays the reference of the check
    fixed_pads = _fixed_same_padding(graph_model) if rewrite else 0
    images = list(check_images) if check_images is not None else sample_images(size, loaded.meta)
    if size is not None:
        wrong = [im.shape[:2] for im in images if tuple(im.shape[:2]) != (size[1], size[0])]
        if wrong:
            raise OnnxExportError(f"check images must be {size[0]}x{size[1]} for a fixed-size export, "
                                  f"got height x width {wrong[0]}")
    from hkd.models.inference import image_tensor

    trace_input = image_tensor(images[0])
    export_info = {
        "format": EXPORT_FORMAT,
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": [3, "height", "width"] if size is None else [3, size[1], size[0]],
                  "dtype": "float32", "range": [0, 1], "dynamic": size is None},
        "outputs": list(OUTPUT_NAMES),
        "source": {"file": loaded.path.name, "sha256": loaded.sha256},
        "prepared": "frozen norms folded into their convs"
                    + ("; ROI levels merged by one Gather; NMS per class" if rewrite else "")
                    + (f"; {fixed_pads} TF-SAME paddings made constant" if fixed_pads else ""),
        "exporter": f"torch {torch.__version__} (TorchScript)",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    dynamic_axes = {name: {0: "detections"} for name in OUTPUT_NAMES}
    if size is None:
        dynamic_axes[INPUT_NAME] = {1: "height", 2: "width"}
    with tempfile.TemporaryDirectory(prefix="hkd-export-") as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            with (warnings.catch_warnings(), _onnx_friendly_pooling() if rewrite else nullcontext(),
                  _onnx_friendly_nms(_nms_classes(graph_model)) if rewrite else nullcontext()):
                # the tracer warns about every Python number taken from a tensor in torchvision's
                # code; those paths are written to be traced (torch.onnx.is_in_onnx_export)
                warnings.simplefilter("ignore")
                torch.onnx.export(_export_wrapper(graph_model), (trace_input,), str(raw), dynamo=False,
                                  opset_version=opset, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                  dynamic_axes=dynamic_axes, do_constant_folding=True)
        except Exception as exc:  # the exporter raises many types; all mean "this model did not export"
            raise OnnxExportError(f"{loaded.path}: ONNX export failed at opset {opset}: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        proto = _load_proto(raw)
        folded = _fold_pads_into_convs(proto) if rewrite else 0
        if folded:
            export_info["prepared"] += f"; {folded} Pad ops folded into their convs"
        _set_metadata(proto, loaded.meta, export_info)
        _save_proto(proto, raw)
        agreement = None
        if check:
            detector = OnnxDetector(raw, providers=["CPUExecutionProvider"])
            agreement, _, _ = check_backends(model, detector, images, box_tol_px=box_tol_px, score_tol=score_tol)
            export_info["check"] = {"images": [list(im.shape[1::-1]) for im in images], **agreement.to_dict()}
            if not agreement.ok:
                raise OnnxCheckError(f"{loaded.path}: onnxruntime does not reproduce PyTorch, so {out} was not "
                                     f"written — {agreement.summary()}", agreement)
            _set_metadata(proto, loaded.meta, export_info)
        atomic_write(out, lambda path: _save_proto(proto, Path(path)))
    return ExportResult(out, loaded.meta, export_info, agreement)


def _load_proto(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _save_proto(proto, path: Path) -> None:
    import onnx

    onnx.save(proto, str(path))


def _constant_value(proto, name: str, producers: dict, initializers: dict):
    """The value of tensor ``name`` if it depends on constants only (else ``None``), by onnx's reference evaluator."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    nodes, used, stack = {}, set(), [name]
    while stack:
        tensor = stack.pop()
        if tensor in initializers:
            used.add(tensor)
            continue
        node = producers.get(tensor)
        if node is None:
            return None  # a graph input: data, not a constant
        if id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(i for i in node.input if i)
    order = [n for n in proto.graph.node if id(n) in nodes]  # graph order is topological
    graph = helper.make_graph(order, "constant", [], [helper.make_tensor_value_info(name, 0, None)],
                              initializer=[initializers[i] for i in sorted(used)])
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return ReferenceEvaluator(model).run(None, {})[0]


def _fold_pads_into_convs(proto) -> int:
    """Fold every constant zero ``Pad`` that feeds a single ``Conv`` into the conv's own (asymmetric) ``pads``.

    Equal outputs, one op and two layout reorders fewer per conv (the ``Pad``
    itself has no blocked-layout kernel in onnxruntime). Returns how many were folded.
    """
    from onnx import helper

    graph = proto.graph
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or len(pad.input) < 2 or pad.output[0] in outputs:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        users = consumers.get(pad.output[0], [])
        if attrs.get("mode", b"constant") != b"constant" or len(users) != 1 or users[0].op_type != "Conv":
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = _constant_value(proto, pad.input[2], producers, initializers)
            if value is None or np.any(value != 0):
                continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # axes given: not the plain all-axes form the exporter writes
        pads = _constant_value(proto, pad.input[1], producers, initializers)
        conv = users[0]
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if pads is None or pads.size != 8 or np.any(pads < 0) or np.any(pads[[0, 1, 4, 5]] != 0):
            continue
        if conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b""):
            continue
        own = list(conv_attrs.get("pads", [0, 0, 0, 0]))
        new = [int(pads[2]) + own[0], int(pads[3]) + own[1], int(pads[6]) + own[2], int(pads[7]) + own[3]]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    return len(folded)


def _set_metadata(proto, meta: CheckpointMeta, export_info: dict) -> None:
    values = {META_KEY: meta.to_json(), EXPORT_KEY: json.dumps(export_info, sort_keys=True)}
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "hkd"
    proto.doc_string = (f"HKD Studio detector {meta.preset}: image (3, H, W) float32 in [0, 1] -> "
                        "boxes (K, 4) xyxy px, scores (K,), labels (K,) int64; 1 = pedestrian")


# ---------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------
# what is quantised: the backbone and FPN, where the convolutions are; the ReLU6 clips, residual adds,
# P6 max-pool and top-down resizes between them too, so activations stay int8 from conv to conv.
# The RPN and ROI heads, box decoding and NMS stay float.
INT8_OPS = ("Conv", "Clip", "Add", "MaxPool", "Resize")
INT8_SCOPE = "/detector/backbone/"


def _materialize_shared_initializers(proto) -> int:
    """Give every ``Identity(initializer)`` output its own initializer; returns how many.

    The exporter stores equal tensors once (e.g. the zero biases of a fresh
    model) and aliases them with ``Identity`` nodes; the quantiser needs each
    conv's bias as an initializer of its own.
    """
    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    aliases = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers]
    for node in aliases:
        copy_ = graph.initializer.add()
        copy_.CopyFrom(initializers[node.input[0]])
        copy_.name = node.output[0]
        graph.node.remove(node)
    return len(aliases)


@contextmanager
def _quiet_onnxruntime(ort):
    """onnxruntime's graph warnings (unused initializers) and the quantiser's advice, off for a while."""
    import logging

    root = logging.getLogger()
    level = root.level
    ort.set_default_logger_severity(3)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)
        root.setLevel(level)


def quantize_int8(model_path: str | os.PathLike, out: str | os.PathLike, calibration_images: Sequence,
                  *, per_channel: bool = True) -> Path:
    """Static int8 quantisation (onnxruntime, QOperator format) of an exported model's backbone and FPN.

    Activation ranges are calibrated (min/max) by running ``calibration_images``
    (uint8 (H, W, 3) arrays, e.g. SynthPed train images) through the float
    model; weights are int8 per output channel, activations uint8. The HKD
    metadata is carried over, with the quantisation recorded under
    ``hkd_export.quantization``. Detections change slightly: measure MR⁻²
    (``bench/onnx_latency.py --int8``) before shipping one.

    Raises:
        OnnxModelError: ``model_path`` is not an HKD ONNX export.
        ValueError: no calibration images.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static

    from hkd.models.inference import image_tensor

    source = _existing_onnx(model_path)
    meta, export_info = read_onnx_meta(source)
    if export_info.get("quantization"):
        raise OnnxModelError(f"{source}: already quantised ({export_info['quantization']['weights']})")
    images = list(calibration_images)
    if not images:
        raise ValueError("int8 calibration needs at least one image")
    out = Path(out)
    proto = _load_proto(source)
    nodes = [n.name for n in proto.graph.node if n.name.startswith(INT8_SCOPE) and n.op_type in INT8_OPS]
    if not nodes:
        raise OnnxModelError(f"{source}: no backbone nodes ({INT8_SCOPE}*) to quantise")

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self._images = iter(images)

        def get_next(self):
            image = next(self._images, None)
            return None if image is None else {INPUT_NAME: image_tensor(image).numpy()}

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hkd-int8-") as tmp, _quiet_onnxruntime(ort):
        float_model, raw = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        _materialize_shared_initializers(proto)
        _save_proto(proto, float_model)
        quantize_static(str(float_model), str(raw), Calibration(), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=list(INT8_OPS), nodes_to_quantize=nodes, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        quantized = _load_proto(raw)
    export_info = {**export_info, "quantization": {
        "weights": "int8 per channel" if per_channel else "int8 per tensor", "activations": "uint8",
        "format": "QOperator", "calibration": f"min/max over {len(images)} images", "scope": "backbone and FPN",
        "nodes": len(nodes), "source": {"file": source.name, "sha256": file_sha256(source)},
    }}
    export_info.pop("check", None)  # the float model's check does not describe this one
    _set_metadata(quantized, meta, export_info)
    atomic_write(out, lambda path: _save_proto(quantized, Path(path)))
    return out


# ---------------------------------------------------------------------------
# Reading and running
# ---------------------------------------------------------------------------
def _existing_onnx(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: no such ONNX file")
    if not is_onnx(path):
        raise OnnxModelError(f"{path}: not an ONNX file (expected the {ONNX_SUFFIX} suffix)")
    return path


def _metadata_map(path: Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, parsed as protobuf data (weights in the file are not executed)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise OnnxModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node:
        raise OnnxModelError(f"{path}: not a readable ONNX model (no graph)")
    return {p.key: p.value for p in proto.metadata_props}


def read_onnx_meta(path: str | os.PathLike) -> tuple[CheckpointMeta, dict]:
    """(checkpoint metadata, export record) of an ONNX file written by :func:`export_onnx`.

    Raises:
        OnnxModelError: the file is missing, not ONNX, or has no HKD metadata.
    """
    path = _existing_onnx(path)
    props = _metadata_map(path)
    if META_KEY not in props or EXPORT_KEY not in props:
        raise OnnxModelError(
            f"{path}: ONNX model without HKD metadata (metadata_props has "
            f"{sorted(props) or 'no entries'}; expected {META_KEY!r} and {EXPORT_KEY!r}); "
            "export HKD checkpoints with `hkd export --checkpoint CKPT --out MODEL.onnx`"
        )
    meta = CheckpointMeta.from_json(props[META_KEY], source=str(path))
    try:
        export_info = json.loads(props[EXPORT_KEY])
    except json.JSONDecodeError as exc:
        raise OnnxModelError(f"{path}: {EXPORT_KEY!r} metadata is not valid JSON ({exc})") from None
    if not isinstance(export_info, dict) or export_info.get("format") != EXPORT_FORMAT:
        raise OnnxModelError(f"{path}: {EXPORT_KEY!r} metadata is not in format {EXPORT_FORMAT!r}")
    given = export_info.get("input")
    shape = given.get("shape") if isinstance(given, dict) else None
    if not isinstance(given, dict) or not isinstance(given.get("dynamic"), bool) \
            or not isinstance(shape, list) or len(shape) != 3:
        raise OnnxModelError(f"{path}: its {EXPORT_KEY!r} record has no usable 'input' (found {repr(given)[:120]}; "
                             "expected {'name', 'shape': [3, H, W], 'dynamic'}); export the checkpoint again with "
                             "`hkd export`")
    return meta, export_info


def default_providers() -> list[str]:
    """onnxruntime's CUDA execution provider when this onnxruntime build has it, else the CPU one."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


class OnnxDetector:
    """An exported HKD detector run by onnxruntime, with the PyTorch path's contract.

    ``detector(images)`` takes a list of (3, H, W) float tensors in [0, 1] and
    returns ``[{"boxes", "labels", "scores"}]`` tensors like an eval-mode
    torchvision detector; :meth:`detect` returns
    :class:`~hkd.models.inference.Detections`. The session is not mutated by
    running, so one detector can serve several threads (app sessions).

    Args:
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default, one per core).
        providers: execution providers (default :func:`default_providers`).
    """

    training = False

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = _existing_onnx(path)
        self.meta, self.export = read_onnx_meta(self.path)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be a positive number, got {threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers are noise to a user
        if threads:
            options.intra_op_num_threads = threads
        self.threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=list(providers or default_providers()))
        except Exception as exc:  # onnxruntime's pybind errors share no useful base class
            raise OnnxModelError(f"{self.path}: onnxruntime cannot load this model "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        inputs = self.session.get_inputs()
        names = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or names[:3] != list(OUTPUT_NAMES):
            raise OnnxModelError(f"{self.path}: expected one input and outputs {list(OUTPUT_NAMES)}, "
                                 f"got inputs {[i.name for i in inputs]} and outputs {names}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.input_size = (shape[2], shape[1]) if all(isinstance(v, int) for v in shape[1:]) else None
        self._sha256: str | None = None

    # -- torchvision's eval-mode contract ------------------------------------------------------------
    def eval(self) -> "OnnxDetector":
        return self

    def train(self, mode: bool = True) -> "OnnxDetector":
        if mode:
            raise RuntimeError(f"{self.path}: an ONNX model runs inference only; it cannot be put in train mode")
        return self

    def __call__(self, images: Sequence) -> list[dict]:
        """``images``: (3, H, W) float32 tensors or arrays in [0, 1] → one prediction dict each."""
        import torch

        out = []
        for image in images:
            array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
            array = np.ascontiguousarray(array, dtype=np.float32)
            if array.ndim != 3 or array.shape[0] != 3:
                raise OnnxInputError(f"{self.path.name}: expected an image of shape (3, H, W), got {array.shape}")
            if self.input_size is not None and (array.shape[2], array.shape[1]) != self.input_size:
                w, h = self.input_size
                raise OnnxInputError(f"{self.path.name} was exported for {w}x{h} images only, got a "
                                 f"{array.shape[2]}x{array.shape[1]} image; export with --dynamic for any size")
            boxes, scores, labels = self.session.run(list(OUTPUT_NAMES), {self.input_name: array})[:3]
            out.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                        "labels": torch.from_numpy(labels)})
        return out

    # -- the library's contract --------------------------------------------------------------------
    def detect(self, images: Sequence, *, score_thresh: float = 0.05, max_dets: int = 100) -> list:
        """Pedestrian :class:`~hkd.models.inference.Detections` per image (uint8 HWC arrays or float CHW tensors).

        :func:`hkd.models.inference.detect`'s contract: the same conversion
        (``image_tensor``), the same pedestrian filter (``Detections.from_prediction``),
        ``seconds`` timing the graph alone.
        """
        from hkd.models.inference import Detections, image_tensor

        out = []
        for image in images:
            tensor = image_tensor(image)
            start = time.perf_counter()
            (pred,) = self([tensor])
            seconds = time.perf_counter() - start
            out.append(Detections.from_prediction(pred, score_thresh=score_thresh, max_dets=max_dets,
                                                  seconds=seconds))
        return out

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def __repr__(self) -> str:
        size = "any size" if self.input_size is None else f"{self.input_size[0]}x{self.input_size[1]}"
        return f"OnnxDetector({self.path.name}, {self.meta.preset}, {size}, {self.providers[0]})"


def onnx_latency(detector: OnnxDetector, width: int = 640, height: int = 480, *, warmup: int = 2,
                 runs: int = 7) -> dict[str, float]:
    """Median / min wall time (s) of one image through onnxruntime: :func:`hkd.models.profile.cpu_latency`'s
    protocol (same random image, warm-up and runs), so the two backends' numbers compare."""
    from hkd.models.profile import cpu_latency

    result = cpu_latency(detector, width, height, threads=None, warmup=warmup, runs=runs)
    result["threads"] = detector.threads or os.cpu_count()
    result["backend"] = "onnxruntime"
    result["provider"] = detector.providers[0]
    return result


# ---------------------------------------------------------------------------
# For the app: one export per checkpoint, both backends timed the same way
# ---------------------------------------------------------------------------
def cached_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike, *,
                  size: tuple[int, int] | None = None) -> Path:
    """The ONNX export of ``checkpoint`` in ``cache_dir``, exported (and checked) the first time only.

    The file is named by the checkpoint's SHA-256, so a retrained checkpoint
    under the same name gets a new export; an export whose recorded source does
    not match is redone. Safe to call from several sessions at once (the write
    is atomic; at worst two export the same file).
    """
    from hkd.models.meta import existing

    path = existing(checkpoint)
    digest = file_sha256(path)
    shape = "any" if size is None else f"{size[0]}x{size[1]}"
    target = Path(cache_dir) / f"{path.stem}.{digest[:16]}.{shape}.onnx"
    if target.is_file():
        try:
            _, export_info = read_onnx_meta(target)
            if export_info["source"]["sha256"] == digest:
                return target
        except (OnnxModelError, KeyError, TypeError):
            pass  # a damaged or foreign file under our name: export again
    return export_onnx(path, target, size=size).path


def backend_latency(checkpoint: str | os.PathLike, *, cache_dir: str | os.PathLike, model=None,
                    detector: OnnxDetector | None = None, width: int = 640, height: int = 480,
                    threads: int = 2, warmup: int = 2, runs: int = 7) -> dict:
    """PyTorch and onnxruntime latency of one checkpoint, measured back to back by the same protocol.

    ``model``: the PyTorch model as the app runs it (prepared for inference; loaded
    from ``checkpoint`` when omitted; not mutated). ``detector``: its ONNX backend
    (``OnnxDetector(cached_export(checkpoint, cache_dir), threads=threads)`` when omitted).
    Returns ``{"pytorch": {median_s, min_s, runs, threads}, "onnxruntime": {...,
    provider}, "speedup": pytorch median / onnxruntime median, "size": [w, h]}``.
    """
    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.profile import cpu_latency

    if model is None:
        model = load_checkpoint(checkpoint, inference=True).model
    if detector is None:
        detector = OnnxDetector(cached_export(checkpoint, cache_dir), threads=threads)
    torch_lat = cpu_latency(model, width, height, threads=threads, warmup=warmup, runs=runs)
    onnx_lat = onnx_latency(detector, width, height, warmup=warmup, runs=runs)
    return {"pytorch": torch_lat, "onnxruntime": onnx_lat,
            "speedup": torch_lat["median_s"] / onnx_lat["median_s"], "size": [width, height]}
