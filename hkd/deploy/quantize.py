"""Static int8 quantisation (onnxruntime) of an exported detector's backbone and FPN."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from hkd.deploy.runtime import (
    INPUT_NAME,
    OnnxModelError,
    existing_onnx,
    load_proto,
    read_onnx_meta,
    save_proto,
    write_onnx_meta,
)
from hkd.models.meta import atomic_write, file_sha256

__all__ = ["INT8_OPS", "INT8_SCOPE", "quantize_int8"]

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

    source = existing_onnx(model_path)
    meta, export_info = read_onnx_meta(source)
    if export_info.get("quantization"):
        raise OnnxModelError(f"{source}: already quantised ({export_info['quantization']['weights']})")
    images = list(calibration_images)
    if not images:
        raise ValueError("int8 calibration needs at least one image")
    out = Path(out)
    proto = load_proto(source)
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
        save_proto(proto, float_model)
        quantize_static(str(float_model), str(raw), Calibration(), quant_format=QuantFormat.QOperator,
                        op_types_to_quantize=list(INT8_OPS), nodes_to_quantize=nodes, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        quantized = load_proto(raw)
    export_info = {**export_info, "quantization": {
        "weights": "int8 per channel" if per_channel else "int8 per tensor", "activations": "uint8",
        "format": "QOperator", "calibration": f"min/max over {len(images)} images", "scope": "backbone and FPN",
        "nodes": len(nodes), "source": {"file": source.name, "sha256": file_sha256(source)},
    }}
    export_info.pop("check", None)  # the float model's check does not describe this one
    write_onnx_meta(quantized, meta, export_info)
    atomic_write(out, lambda path: save_proto(quantized, Path(path)))
    return out
