"""Deploying a detector: ONNX export and an onnxruntime backend with the PyTorch path's contract.

- :mod:`hkd.deploy.export`: the export (:func:`export_onnx`) with its graph patches.
- :mod:`hkd.deploy.runtime`: the backend (:class:`OnnxDetector`, which returns the same
  :class:`~hkd.models.inference.Detections` as :func:`hkd.models.inference.detect`) and the
  file's metadata (:func:`read_onnx_meta`).
- :mod:`hkd.deploy.agreement`: do two backends detect the same (:func:`backend_agreement`).
- :mod:`hkd.deploy.quantize`: static int8 quantisation (:func:`quantize_int8`).
- :mod:`hkd.deploy.cache`: what the app needs (:func:`cached_export`, :func:`backend_latency`).

Importing this package imports neither torch nor onnxruntime; they load when a function needs them.
"""
from __future__ import annotations

from hkd.deploy.agreement import Agreement, backend_agreement, check_backends
from hkd.deploy.cache import backend_latency, cached_export
from hkd.deploy.export import DEFAULT_OPSET, ExportResult, OnnxCheckError, OnnxExportError, export_onnx, sample_images
from hkd.deploy.quantize import quantize_int8
from hkd.deploy.runtime import (
    OnnxDetector,
    OnnxInputError,
    OnnxModelError,
    default_providers,
    is_onnx,
    onnx_latency,
    read_onnx_meta,
)

compare_detections = backend_agreement  # the old name, kept for callers of hkd.deploy.compare_detections

__all__ = [
    "DEFAULT_OPSET", "Agreement", "ExportResult", "OnnxCheckError", "OnnxDetector", "OnnxExportError",
    "OnnxInputError", "OnnxModelError", "backend_agreement", "backend_latency", "cached_export", "check_backends",
    "compare_detections", "default_providers", "export_onnx", "is_onnx", "onnx_latency", "quantize_int8",
    "read_onnx_meta", "sample_images",
]
