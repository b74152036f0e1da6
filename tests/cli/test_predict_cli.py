"""`hkd predict` writes COCO results that `hkd eval` reads; bad inputs fail clearly."""
import json

import numpy as np
import torch
from PIL import Image

from hkd.cli import main
from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
from hkd.models.presets import build_detector


def _world(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "pedestrian"}]}
    for i, name in enumerate(["b.jpg", "a.png"]):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / name)
        gt["images"].append({"id": 10 + i, "file_name": name, "width": 128, "height": 96})
        gt["annotations"].append({"id": i + 1, "image_id": 10 + i, "category_id": 1, "bbox": [10, 10, 20, 60],
                                  "height": 60, "vis_ratio": 1.0, "ignore": 0, "iscrowd": 0, "area": 1200})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    torch.manual_seed(0)
    model = build_detector("hkd_frcnn_lite0.student", min_size=96, max_size=128).eval()
    # a low score threshold in the model, so that random weights still produce detections
    ckpt = save_checkpoint(tmp_path / "s.safetensors", model,
                           CheckpointMeta(preset="hkd_frcnn_lite0.student", min_size=96, max_size=128))
    return images, ckpt


def test_predict_then_eval(tmp_path, capsys):
    images, ckpt = _world(tmp_path)
    out = tmp_path / "dets.json"
    assert main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--gt", str(tmp_path / "gt.json"),
                 "--out", str(out), "--score-thresh", "0.0"]) == 0
    dets = json.loads(out.read_text())
    assert dets, "random weights with threshold 0 still give detections"
    assert {d["image_id"] for d in dets} <= {10, 11}
    assert all(d["category_id"] == 1 and len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 for d in dets)
    err = capsys.readouterr().err
    assert "img/s" not in err and "%|" not in err, "no progress bar when stderr is not a terminal (logs, scripts)"
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--dets", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["mr"]) == {"Reasonable", "Small", "Heavy", "All"}
    assert 0 <= result["mr"]["Reasonable"] <= 100


def test_predict_bad_inputs(tmp_path, capsys):
    images, ckpt = _world(tmp_path)
    (images / "broken.jpg").write_bytes(b"not really a jpeg")
    assert main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(tmp_path / "d.json")]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.safetensors"), "--images", str(images),
                 "--out", str(tmp_path / "d.json")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(ckpt), "--images", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "d.json")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_predict_device_choices(tmp_path, capsys):
    import torch

    images, ckpt = _world(tmp_path)
    out = tmp_path / "cpu.json"
    assert main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert isinstance(json.loads(out.read_text()), list)
    assert main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
                 "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():  # this machine: a GPU asked for where none exists is a clear error
        assert main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
                     "--device", "cuda"]) == 2
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err
