"""Deploying a detector: ONNX export and an onnxruntime backend with the PyTorch path's contract.

:mod:`hkd.deploy.onnx` holds the export (:func:`export_onnx`), the metadata
reader (:func:`read_onnx_meta`), the backend (:class:`OnnxDetector`, which
returns the same :class:`~hkd.models.inference.Detections` as
:func:`hkd.models.inference.detect`), the equality check between the two
backends (:func:`compare_detections`), static int8 quantisation
(:func:`quantize_int8`) and what the app needs (:func:`cached_export`,
:func:`backend_latency`). Importing this package imports neither torch nor
onnxruntime; they load when a function needs them.
"""
from __future__ import annotations

from hkd.deploy.onnx import (
    DEFAULT_OPSET,
    Agreement,
    ExportResult,
    OnnxCheckError,
    OnnxDetector,
    OnnxExportError,
    OnnxInputError,
    OnnxModelError,
    backend_latency,
    cached_export,
    check_backends,
    compare_detections,
    default_providers,
    export_onnx,
    is_onnx,
    onnx_latency,
    quantize_int8,
    read_onnx_meta,
    sample_images,
)

__all__ = [
    "DEFAULT_OPSET", "Agreement", "ExportResult", "OnnxCheckError", "OnnxDetector", "OnnxExportError",
    "OnnxInputError", "OnnxModelError", "backend_latency", "cached_export", "check_backends", "compare_detections",
    "default_providers", "export_onnx", "is_onnx", "onnx_latency", "quantize_int8", "read_onnx_meta",
    "sample_images",
]
