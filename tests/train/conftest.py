import json

import numpy as np
import pytest
from PIL import Image


def write_tiny_dataset(root, n=6, size=(128, 96), seed=0):
    """A COCO-style pedestrian folder: noise images with 1–2 dark upright boxes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    w, h = size
    images, anns = [], []
    for i in range(n):
        img = rng.integers(90, 200, (h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            bh = int(rng.integers(30, 70))
            bw = max(8, bh // 3)
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = rng.integers(0, 40, 3, dtype=np.uint8)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, bw, bh],
                         "height": bh, "vis_ratio": 1.0, "ignore": 0, "iscrowd": 0, "area": bw * bh})
        name = f"{i:03d}.jpg"
        Image.fromarray(img).save(root / "images" / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    (root / "annotations.json").write_text(json.dumps({
        "images": images, "annotations": anns, "categories": [{"id": 1, "name": "pedestrian"}]}))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_config():
    return make_tiny_config


def make_tiny_config(data, **train):
    return {
        "model": {"preset": "hkd_frcnn_lite0.student", "pretrained_backbone": False, "min_size": 96, "max_size": 128},
        "data": {"train": str(data), "val": str(data), "val_images": 4},
        "train": {"steps": 4, "batch_size": 2, "lr": 0.01, "warmup_steps": 2, "log_every": 1,
                  "checkpoint_every": 2, "eval_every": 0, "threads": 1, **train},
    }
