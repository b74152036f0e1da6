"""Shared set-up of the `hkd predict` option tests."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture()
def predict_world(tmp_path):
    """Two random 128×96 images and a tiny random-init student checkpoint, with the `hkd predict`
    arguments every option test shares (all boxes, one thread, the CPU); ``model`` is the saved one."""
    from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
    from hkd.models.presets import build_detector

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(images / name)
    torch.manual_seed(0)
    model = build_detector("hkd_frcnn_lite0.student", min_size=96, max_size=128).eval()
    ckpt = save_checkpoint(tmp_path / "s.safetensors", model,
                           CheckpointMeta(preset="hkd_frcnn_lite0.student", min_size=96, max_size=128))
    common = ["predict", "--checkpoint", str(ckpt), "--images", str(images), "--score-thresh", "0.0",
              "--threads", "1", "--device", "cpu"]
    return SimpleNamespace(model=model, images=images, common=common)
