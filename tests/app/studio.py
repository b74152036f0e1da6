"""Helpers for the AppTest tests: the app's entry script, a timeout, element queries, test images."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
TIMEOUT = 120  # model loading and a first forward on a busy 2-core CPU


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, "\n".join(e.message + "\n" + "\n".join(e.stack_trace or []) for e in at.exception)


def copy_models(studio_world, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for path in Path(studio_world["models"]).iterdir():
        shutil.copy(path, dest / path.name)
    return dest


def png_bytes(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
    """A PNG with a couple of dark upright figures (unique per seed, so caches start cold)."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), int(rng.integers(120, 220)), np.uint8)
    for _ in range(2):
        x, y = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height // 2))
        pixels[y:y + height // 2, x:x + max(4, width // 10)] = rng.integers(0, 80, 3)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def images(at: AppTest) -> list:
    return list(at.get("image"))


def captions(at: AppTest) -> str:
    """Every caption on the page: st.caption and the captions under images."""
    under_images = [text for image in images(at) for text in image.captions]
    return "\n".join([c.value for c in at.caption] + under_images)


RETINA_TEACHER, RETINA_STUDENT = "hkd_retina_lite2.teacher", "hkd_retina_lite0.student"


def write_retina_pair(folder: Path, names: tuple[str, str] = ("teacher", "student_hkd")) -> Path:
    """The RetinaNet pair as ``<names[0]>.safetensors`` / ``<names[1]>.safetensors`` in ``folder``:
    tiny random-init models whose class logits spread around p = 0.5 (the preset's prior of 0.01
    would detect nothing to explain)."""
    import torch

    from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
    from hkd.models.presets import build_detector
    from tests.conftest import TINY

    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, preset) in enumerate(zip(names, (RETINA_TEACHER, RETINA_STUDENT))):
        torch.manual_seed(seed)
        model = build_detector(preset, **TINY).eval()
        logits = model.head.classification_head.cls_logits
        with torch.no_grad():
            logits.weight.normal_(0.0, 0.5)
            logits.bias.zero_()
        meta = CheckpointMeta(preset=preset, notes="random init for tests", **TINY)
        save_checkpoint(folder / f"{name}.safetensors", model, meta)
    return folder
