"""The whole detector as one ONNX graph, checked against PyTorch before it is written.

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
With ``rewrite`` (the default) the graph is patched while tracing and after it,
each patch exact (TF-SAME paddings made constant and folded into their convs,
ROI levels merged by one Gather, NMS per class as one ``NonMaxSuppression``).

The checkpoint's metadata and the export record are stored in the file
(:func:`hkd.deploy.runtime.write_onnx_meta`). After export, onnxruntime's
detections are compared with PyTorch's on sample images
(:func:`hkd.deploy.agreement.backend_agreement`); the file is written only if they agree.
"""
from __future__ import annotations

import copy
import datetime as _dt
import os
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hkd.deploy.agreement import BOX_TOL_PX, SCORE_TOL, Agreement, check_backends
from hkd.deploy.runtime import (
    EXPORT_FORMAT,
    INPUT_NAME,
    ONNX_SUFFIX,
    OUTPUT_NAMES,
    OnnxDetector,
    load_proto,
    save_proto,
    write_onnx_meta,
)
from hkd.models.meta import CheckpointMeta, atomic_write

__all__ = [
    "DEFAULT_OPSET", "OPSET_RANGE", "OnnxExportError", "OnnxCheckError", "ExportResult", "export_onnx",
    "sample_images",
]

# torch's TorchScript exporter (the one torchvision's detectors export with) goes up to opset 20;
# below 11 there is no dynamic Resize / NonMaxSuppression
OPSET_RANGE = (11, 20)
DEFAULT_OPSET = 17


class OnnxExportError(ValueError):
    """A checkpoint could not be exported, or the export does not match PyTorch; the message says why."""


class OnnxCheckError(OnnxExportError):
    """onnxruntime's detections do not match PyTorch's within tolerance; ``agreement`` has the numbers."""

    def __init__(self, message: str, agreement: Agreement) -> None:
        super().__init__(message)
        self.agreement = agreement


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
        proto = load_proto(raw)
        folded = _fold_pads_into_convs(proto) if rewrite else 0
        if folded:
            export_info["prepared"] += f"; {folded} Pad ops folded into their convs"
        write_onnx_meta(proto, loaded.meta, export_info)
        save_proto(proto, raw)
        agreement = None
        if check:
            detector = OnnxDetector(raw, providers=["CPUExecutionProvider"])
            agreement, _, _ = check_backends(model, detector, images, box_tol_px=box_tol_px, score_tol=score_tol)
            export_info["check"] = {"images": [list(im.shape[1::-1]) for im in images], **agreement.to_dict()}
            if not agreement.ok:
                raise OnnxCheckError(f"{loaded.path}: onnxruntime does not reproduce PyTorch, so {out} was not "
                                     f"written — {agreement.summary()}", agreement)
            write_onnx_meta(proto, loaded.meta, export_info)
        atomic_write(out, lambda path: save_proto(proto, Path(path)))
    return ExportResult(out, loaded.meta, export_info, agreement)


# ---------------------------------------------------------------------------
# Graph surgery on the exported proto
# ---------------------------------------------------------------------------
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
