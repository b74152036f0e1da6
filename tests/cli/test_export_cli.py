"""`hkd export`, then `hkd predict` / `hkd info --bench` on the .onnx file: same JSON as the PyTorch path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hkd.cli import main
from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
from hkd.models.presets import build_detector

STUDENT = "hkd_frcnn_lite0.student"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_cli")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "pedestrian"}]}
    for i, (name, (w, h)) in enumerate([("a.png", (128, 96)), ("b.jpg", (200, 150)), ("c.png", (96, 140))]):
        pixels = np.empty((h, w, 3), np.uint8)
        pixels[:] = np.linspace(200, 90, h, dtype=np.uint8)[:, None, None]
        pixels[h // 3: h // 3 + h // 2, w // 4: w // 4 + w // 8] = rng.integers(20, 80, 3)
        Image.fromarray(pixels).save(images / name)
        gt["images"].append({"id": 20 + i, "file_name": name, "width": w, "height": h})
        gt["annotations"].append({"id": i + 1, "image_id": 20 + i, "category_id": 1,
                                  "bbox": [w // 4, h // 3, w // 8, h // 2], "iscrowd": 0, "area": 1.0})
    (root / "gt.json").write_text(json.dumps(gt))
    torch.manual_seed(1)
    ckpt = save_checkpoint(root / "student.safetensors", build_detector(STUDENT, min_size=96, max_size=128).eval(),
                           CheckpointMeta(preset=STUDENT, min_size=96, max_size=128, metrics={"ap50": 0.5}))
    return {"root": root, "images": images, "gt": root / "gt.json", "ckpt": ckpt}


@pytest.fixture(scope="module")
def exported(world):
    out = world["root"] / "student.onnx"
    assert main(["export", "--checkpoint", str(world["ckpt"]), "--out", str(out), "--dynamic"]) == 0
    return out


@pytest.mark.slow
def test_export_prints_the_check(world, capsys):
    out = world["root"] / "fixed.onnx"
    assert main(["export", "--checkpoint", str(world["ckpt"]), "--out", str(out), "--size", "128", "96",
                 "--opset", "18", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["meta"]["preset"] == STUDENT and record["meta"]["metrics"] == {"ap50": 0.5}
    assert record["export"]["opset"] == 18 and record["export"]["input"]["shape"] == [3, 96, 128]
    assert record["export"]["check"]["ok"] is True
    with pytest.raises(SystemExit):  # argparse: --size and --dynamic exclude each other
        main(["export", "--checkpoint", str(world["ckpt"]), "--out", str(out), "--size", "128", "96", "--dynamic"])


@pytest.mark.slow
def test_predict_through_onnxruntime_writes_the_pytorch_results(world, exported, capsys):
    outs = {}
    for name, model in (("pytorch", world["ckpt"]), ("onnxruntime", exported)):
        outs[name] = world["root"] / f"dets_{name}.json"
        assert main(["predict", "--checkpoint", str(model), "--images", str(world["images"]), "--gt",
                     str(world["gt"]), "--out", str(outs[name]), "--threads", "1"]) == 0
    capsys.readouterr()
    a, b = (json.loads(outs[n].read_text()) for n in ("pytorch", "onnxruntime"))
    assert a and len(a) == len(b)
    assert {d["image_id"] for d in b} <= {20, 21, 22}
    for x, y in zip(a, b):
        assert x["image_id"] == y["image_id"] and x["category_id"] == y["category_id"] == 1
        assert np.abs(np.array(x["bbox"]) - np.array(y["bbox"])).max() <= 1.0
        assert abs(x["score"] - y["score"]) <= 1e-3
    assert main(["eval", "--gt", str(world["gt"]), "--dets", str(outs["onnxruntime"]), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["mr"]) == {"Reasonable", "Small", "Heavy", "All"}


@pytest.mark.slow
def test_predict_with_a_fixed_size_model_names_the_odd_image(world, capsys):
    fixed = world["root"] / "fixed_for_predict.onnx"
    assert main(["export", "--checkpoint", str(world["ckpt"]), "--out", str(fixed), "--size", "128", "96"]) == 0
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(fixed), "--images", str(world["images"]),
                 "--out", str(world["root"] / "d.json")])
    err = capsys.readouterr().err
    assert code == 2 and "b.jpg" in err and "exported for 128x96 images only" in err


@pytest.mark.slow
def test_info_on_onnx_has_the_pytorch_keys(world, exported, capsys):
    assert main(["info", str(world["ckpt"]), "--json", "--size", "128x96"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["info", str(exported), "--json", "--bench", "--size", "128x96", "--threads", "1"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    assert set(plain) - {"latency"} <= set(onnx)
    assert plain["backend"] == "pytorch" and onnx["backend"] == "onnxruntime"
    assert onnx["meta"] == plain["meta"] and onnx["role"] == "student" and onnx["levels"] == plain["levels"]
    assert onnx["latency"]["median_s"] > 0 and onnx["latency"]["threads"] == 1
    assert onnx["latency"]["provider"] == "CPUExecutionProvider" and onnx["latency_size"] == [128, 96]
    assert main(["info", str(exported), "--bench", "--size", "128x96", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "onnx         opset 17, any image size" in text and "check against PyTorch passed" in text
    assert "ms median at 128x96 (onnxruntime" in text


@pytest.mark.slow
def test_mismatch_exits_1_with_the_report(world, monkeypatch, capsys):
    from hkd.deploy.runtime import OnnxDetector

    real_call = OnnxDetector.__call__

    def rescored(self, images):
        preds = real_call(self, images)
        for pred in preds:
            pred["scores"] = pred["scores"] * 0.99
        return preds

    monkeypatch.setattr(OnnxDetector, "__call__", rescored)
    out = world["root"] / "bad.onnx"
    assert main(["export", "--checkpoint", str(world["ckpt"]), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime does not reproduce PyTorch" in err and "max score difference" in err
    assert not out.exists()


def test_bad_inputs_fail_clearly(world, tmp_path, capsys):
    ckpt = str(world["ckpt"])
    assert main(["export", "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "nope.safetensors: no such checkpoint file" in capsys.readouterr().err
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "m.onnx"), "--opset", "30"]) == 2
    assert "opset 30 is not supported" in capsys.readouterr().err
    assert main(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "m.onnx"), "--size", "128", "96",
                 "--check-images", str(world["images"])]) == 2
    assert "b.jpg is 200x150, but the export is for 128x96 images" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not onnx at all")
    assert main(["predict", "--checkpoint", str(junk), "--images", str(world["images"]),
                 "--out", str(tmp_path / "d.json")]) == 2
    assert "junk.onnx: not a readable ONNX model" in capsys.readouterr().err
    assert main(["info", str(junk)]) == 2
    assert "junk.onnx: not a readable ONNX model" in capsys.readouterr().err
