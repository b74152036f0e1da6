"""The old home of the deploy wing, kept so that ``from hkd.deploy.onnx import …`` keeps working.

Each concern has its own module now: :mod:`hkd.deploy.export` (export and its
graph patches), :mod:`hkd.deploy.runtime` (the onnxruntime backend and the
file's metadata), :mod:`hkd.deploy.quantize` (int8), :mod:`hkd.deploy.agreement`
(do two backends detect the same) and :mod:`hkd.deploy.cache` (the app's export
cache). ``compare_detections`` is the old name of
:func:`hkd.deploy.agreement.backend_agreement`. New code imports from those modules.
"""
from __future__ import annotations

from hkd.deploy.agreement import BOX_TOL_PX, SCORE_TOL, Agreement, backend_agreement, check_backends
from hkd.deploy.cache import backend_latency, cached_export
from hkd.deploy.export import (
    DEFAULT_OPSET,
    OPSET_RANGE,
    ExportResult,
    OnnxCheckError,
    OnnxExportError,
    export_onnx,
    sample_images,
)
from hkd.deploy.quantize import INT8_OPS, INT8_SCOPE, quantize_int8
from hkd.deploy.runtime import (
    EXPORT_FORMAT,
    EXPORT_KEY,
    INPUT_NAME,
    META_KEY,
    ONNX_SUFFIX,
    OUTPUT_NAMES,
    OnnxDetector,
    OnnxInputError,
    OnnxModelError,
    default_providers,
    is_onnx,
    onnx_latency,
    read_onnx_meta,
)

compare_detections = backend_agreement  # the old, misleading name (hkd.viz.draw has another compare)

__all__ = [
    "EXPORT_FORMAT", "META_KEY", "EXPORT_KEY", "DEFAULT_OPSET", "OPSET_RANGE", "ONNX_SUFFIX",
    "OnnxExportError", "OnnxCheckError", "OnnxInputError", "OnnxModelError", "Agreement", "ExportResult",
    "OnnxDetector",
    "is_onnx", "export_onnx", "read_onnx_meta", "compare_detections", "backend_agreement", "check_backends",
    "sample_images", "default_providers", "onnx_latency", "quantize_int8", "cached_export", "backend_latency",
    "BOX_TOL_PX", "SCORE_TOL", "INPUT_NAME", "OUTPUT_NAMES", "INT8_OPS", "INT8_SCOPE",
]
