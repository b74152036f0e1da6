"""Issue #31: an .onnx whose export record lacks `input` is one sentence, not a KeyError."""
from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

from hkd.cli import main
from hkd.deploy.runtime import EXPORT_FORMAT, EXPORT_KEY
from hkd.models.meta import META_KEY, CheckpointMeta


def _onnx_without_input(path):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, None, None])
    y = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [3, None, None])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["image"], ["boxes"])], "g", [x], [y]))
    meta = CheckpointMeta(preset="hkd_frcnn_lite0.student", min_size=96, max_size=128)
    for key, value in ((META_KEY, meta.to_json()), (EXPORT_KEY, json.dumps({"format": EXPORT_FORMAT, "opset": 17}))):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def test_an_export_record_without_input_is_a_clear_error(tmp_path, capsys):
    path = _onnx_without_input(tmp_path / "odd.onnx")
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no usable 'input'" in err and "hkd export" in err and "Traceback" not in err
    (tmp_path / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (128, 96)).save(tmp_path / "images" / "a.jpg")
    assert main(["predict", "--checkpoint", str(path), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "d.json")]) == 2
    assert "no usable 'input'" in capsys.readouterr().err
