"""Shared fixtures: a tiny HKD Studio world (checkpoints and sample images) for app and e2e tests."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TEACHER = "hkd_frcnn_lite2.teacher"
STUDENT = "hkd_frcnn_lite0.student"
# small input sizes keep random-init models fast on a 2-core CPU
TINY = dict(min_size=96, max_size=128)


@contextlib.contextmanager
def one_torch_thread():
    """One intra-op torch thread inside the block, the previous count after it: on a shared 2-core
    machine, OpenMP workers of several processes oversubscribe the cores and make small forwards
    many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[list[float]]]:
    """A street-ish image with a few dark upright figures; returns pixels and [x, y, w, h] boxes."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = np.linspace(200, 90, height, dtype=np.uint8)[:, None, None]
    boxes = []
    for _ in range(3):
        h = int(rng.integers(height // 4, height // 2))
        w = max(4, h // 3)
        x, y = int(rng.integers(0, width - w)), int(rng.integers(height // 3, height - h))
        pixels[y:y + h, x:x + w] = rng.integers(20, 80, 3)
        boxes.append([float(x), float(y), float(w), float(h)])
    return pixels, boxes


def make_studio_world(root: Path) -> dict[str, Path]:
    """Write ``root/checkpoints`` (tiny random-init teacher + student) and ``root/samples``
    (two SynthPed-style images with annotations, one real-style frame)."""
    import torch

    from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
    from hkd.models.presets import build_detector

    models = root / "checkpoints"
    torch.manual_seed(0)
    for name, preset in (("teacher", TEACHER), ("student_hkd", STUDENT)):
        meta = CheckpointMeta(preset=preset, metrics={"mr_reasonable": 42.0}, train_config={"steps": 0},
                              notes="random init for tests", **TINY)
        save_checkpoint(models / f"{name}.safetensors", build_detector(preset).eval(), meta)

    samples = root / "samples"
    rng = np.random.default_rng(0)
    (samples / "synthped" / "images").mkdir(parents=True)
    (samples / "real").mkdir()
    images, annotations = [], []
    for image_id in (1, 2):
        pixels, boxes = _scene(rng, 160, 120)
        name = f"synthped_{image_id:03d}.png"
        Image.fromarray(pixels).save(samples / "synthped" / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": 160, "height": 120})
        annotations += [{"id": len(annotations) + i + 1, "image_id": image_id, "category_id": 1, "bbox": b,
                         "iscrowd": 0, "area": b[2] * b[3]} for i, b in enumerate(boxes)]
    (samples / "synthped" / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pedestrian"}]}))
    Image.fromarray(_scene(rng, 160, 120)[0]).save(samples / "real" / "street.jpg", quality=90)
    return {"root": root, "models": models, "samples": samples}


@pytest.fixture(scope="session")
def studio_world(tmp_path_factory) -> dict[str, Path]:
    return make_studio_world(tmp_path_factory.mktemp("studio"))


# Whole folders whose tests share expensive fixtures (AppTest runs of the app, the shipped
# checkpoints on SynthPed images, a real browser): slow as a group, so that
# `bash scripts/test.sh -m "not slow"` (the contributors' quick run) never pays for their set-up.
# Single slow tests elsewhere carry @pytest.mark.slow themselves.
SLOW_FOLDERS = ("tests/app/", "tests/analysis/", "tests/e2e/")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)
