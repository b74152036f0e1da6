"""Issue #31: checkpoints that load into nonsense are refused at load, naming the problem."""
from __future__ import annotations

import json

import pytest
import torch

from hkd.cli import main
from hkd.models.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from hkd.models.presets import build_detector

PRESET = "hkd_frcnn_lite0.student"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_detector(PRESET, min_size=96, max_size=128).eval()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, model, value):
    broken = build_detector(PRESET, min_size=96, max_size=128).eval()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(broken.roi_heads.parameters())[0].fill_(value)
    path = save_checkpoint(tmp_path / "nan.safetensors", broken, CheckpointMeta(preset=PRESET, min_size=96, max_size=128))
    with pytest.raises(CheckpointError, match="hold NaN or Inf values .*roi_heads"):
        load_checkpoint(path)


@pytest.mark.parametrize("changes, message", [
    ({"min_size": -5}, "min_size is -5; expected a size in pixels"),
    ({"min_size": "abc"}, "min_size is 'abc'"),
    ({"max_size": 10**9}, "max_size is 1000000000"),
    ({"classes": ["background"]}, "classes is \\['background'\\]"),
    ({"classes": "pedestrian"}, "classes is 'pedestrian'"),
])
def test_impossible_metadata_is_a_clear_error(tmp_path, model, changes, message):
    meta = CheckpointMeta(preset=PRESET, min_size=96, max_size=128)
    for key, value in changes.items():
        setattr(meta, key, value)
    path = save_checkpoint(tmp_path / "odd.safetensors", model, meta)
    with pytest.raises(CheckpointError, match="impossible metadata: " + message):
        read_meta(path)
    with pytest.raises(CheckpointError, match="impossible metadata"):
        load_checkpoint(path)


def _images(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (128, 96), (90, 120, 150)).save(images / "a.jpg")
    return images


def test_predict_refuses_a_checkpoint_whose_class_1_is_not_a_pedestrian(tmp_path, model, capsys):
    path = save_checkpoint(tmp_path / "car.safetensors", model,
                           CheckpointMeta(preset=PRESET, classes=["background", "car"], min_size=96, max_size=128))
    assert main(["predict", "--checkpoint", str(path), "--images", str(_images(tmp_path)),
                 "--out", str(tmp_path / "d.json")]) == 2
    assert "its class 1 is 'car'" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()


def test_eval_refuses_detections_without_the_pedestrian_category(tmp_path, capsys):
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 96}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 60], "height": 60,
                           "vis_ratio": 1.0, "ignore": 0, "iscrowd": 0, "area": 1200}],
          "categories": [{"id": 1, "name": "pedestrian"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = [{"image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 60], "score": 0.9}]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--dets", str(tmp_path / "d.json")]) == 2
    assert "none of the 1 detections has category_id 1" in capsys.readouterr().err
    (tmp_path / "d.json").write_text("[]")  # no detections at all is a valid (bad) result
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--dets", str(tmp_path / "d.json"), "--json"]) == 0
