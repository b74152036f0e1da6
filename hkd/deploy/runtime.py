"""An exported HKD detector run by onnxruntime, with the PyTorch path's contract, and the file's metadata.

Running::

    detector = OnnxDetector("student.onnx", threads=2)   # onnxruntime, CUDA when present
    (dets,) = detector.detect([image], score_thresh=0.05)  # hkd.models.inference.Detections

An :class:`OnnxDetector` is called like an eval-mode torchvision detector
(``detector([tensor]) -> [{"boxes", "labels", "scores"}]``), so
:func:`hkd.models.profile.cpu_latency` times it unchanged, and its
:meth:`~OnnxDetector.detect` applies :func:`hkd.models.inference.detect`'s
conversion and pedestrian filter. An ONNX file is parsed as data (protobuf) and run by
onnxruntime: nothing in it is executed as Python.

The file format: the checkpoint's metadata (:class:`~hkd.models.meta.CheckpointMeta`)
is stored in the model's ``metadata_props`` under ``hkd``, in the same JSON as a
safetensors header; how the file was made (opset, input size, source checkpoint,
the equality check's result, a quantisation) under ``hkd_export``.
:func:`write_onnx_meta` writes both (export, quantisation), :func:`read_onnx_meta`
reads them back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from hkd.models.meta import META_KEY, CheckpointError, CheckpointMeta, file_sha256

__all__ = [
    "EXPORT_FORMAT", "META_KEY", "EXPORT_KEY", "ONNX_SUFFIX", "INPUT_NAME", "OUTPUT_NAMES",
    "OnnxModelError", "OnnxInputError", "OnnxDetector",
    "is_onnx", "existing_onnx", "read_onnx_meta", "write_onnx_meta", "load_proto", "save_proto", "default_providers", "onnx_latency",
]

EXPORT_FORMAT = "hkd-onnx/1"
EXPORT_KEY = "hkd_export"  # how the file was made: opset, input size, source, check
ONNX_SUFFIX = ".onnx"
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "scores", "labels")


class OnnxModelError(CheckpointError):
    """An ONNX file could not be used (missing, not ONNX, no HKD metadata, rejected by onnxruntime)."""


class OnnxInputError(ValueError):
    """An image the ONNX graph cannot take (wrong layout, or not the size of a fixed-size export)."""


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ONNX model (by its ``.onnx`` suffix)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


# ---------------------------------------------------------------------------
# The file: protobuf in and out, HKD metadata written and read
# ---------------------------------------------------------------------------
def load_proto(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def save_proto(proto, path: Path) -> None:
    import onnx

    onnx.save(proto, str(path))


def write_onnx_meta(proto, meta: CheckpointMeta, export_info: dict) -> None:
    """Store ``meta`` and ``export_info`` in ``proto``'s ``metadata_props`` (what :func:`read_onnx_meta` reads)."""
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


def existing_onnx(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is an existing ``.onnx`` file; else :class:`OnnxModelError` saying which."""
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
    path = existing_onnx(path)
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



# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------
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

        self.path = existing_onnx(path)
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
    def detect(self, images: Sequence, *, score_thresh: float = 0.05, max_dets: int = 100,
               suppress_contained: float | None = None, zoom_out: float | None = None,
               zoom_min_height: float | None = None) -> list:
        """Pedestrian :class:`~hkd.models.inference.Detections` per image (uint8 HWC arrays or float CHW tensors).

        :func:`hkd.models.inference.detect`'s contract: the same conversion
        (``image_tensor``), the same pedestrian filter and options (``detect_one``),
        ``seconds`` timing the graph alone. ``zoom_out`` needs an export for any size
        (``--dynamic``): its second pass is larger than the image.
        """
        from hkd.models.inference import ZOOM_MIN_HEIGHT, check_options, detect_one, image_tensor

        check_options(suppress_contained, zoom_out)
        return [detect_one(lambda t: self([t])[0], image_tensor(image), score_thresh=score_thresh,
                           max_dets=max_dets, suppress_contained=suppress_contained, zoom_out=zoom_out,
                           zoom_min_height=ZOOM_MIN_HEIGHT if zoom_min_height is None else zoom_min_height)
                for image in images]

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

