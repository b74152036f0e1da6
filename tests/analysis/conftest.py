"""A few SynthPed images and the shipped demo checkpoints, for the diagnosis tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CHECKPOINTS = Path(__file__).resolve().parents[2] / "assets" / "checkpoints"


@pytest.fixture(scope="session")
def synth_split(tmp_path_factory) -> dict:
    """Six SynthPed val-style images (seed 1000): ``{"root", "images", "gt_path", "gt"}``."""
    from hkd.data.synth.dataset import generate

    root = tmp_path_factory.mktemp("synthped") / "val"
    generate(root, 6, seed=1000, workers=1, progress=False)
    gt_path = root / "annotations.json"
    return {"root": root, "images": root / "images", "gt_path": gt_path, "gt": json.loads(gt_path.read_text())}


@pytest.fixture(scope="session")
def shipped_student():
    from hkd.models.checkpoint import load_checkpoint

    return load_checkpoint(CHECKPOINTS / "student_hkd.safetensors", inference=True).model


@pytest.fixture(scope="session")
def loader(synth_split):
    from hkd.data.images import load_image

    return lambda record: load_image(synth_split["images"] / record["file_name"])
