"""The old home of the deploy wing, kept so that ``from hkd.deploy.onnx import …`` keeps working.

Each concern has its own module now: :mod:`hkd.deploy.export` (export and its
graph patches), :mod:`hkd.deploy.runtime` (the onnxruntime backend and the
file's metadata), :mod:`hkd.deploy.quantize` (int8), :mod:`hkd.deploy.agreement`
(do two backends detect the same) and :mod:`hkd.deploy.cache` (the app's export
cache). ``compare_detections`` is the old name of
:func:`hkd.deploy.agreement.backend_agreement`. New code imports from those modules.
"""
from __future__ import annotations

from hkd.deploy import *  # noqa: F401,F403  (the wing's public names, compare_detections included)
from hkd.deploy import __all__ as _PUBLIC
from hkd.deploy.agreement import BOX_TOL_PX, SCORE_TOL  # noqa: F401
from hkd.deploy.export import OPSET_RANGE  # noqa: F401
from hkd.deploy.quantize import INT8_OPS, INT8_SCOPE  # noqa: F401
from hkd.deploy.runtime import EXPORT_FORMAT, EXPORT_KEY, INPUT_NAME, META_KEY, ONNX_SUFFIX, OUTPUT_NAMES  # noqa: F401

__all__ = [*_PUBLIC, "EXPORT_FORMAT", "META_KEY", "EXPORT_KEY", "OPSET_RANGE", "ONNX_SUFFIX", "BOX_TOL_PX",
           "SCORE_TOL", "INPUT_NAME", "OUTPUT_NAMES", "INT8_OPS", "INT8_SCOPE"]
