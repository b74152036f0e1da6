"""``hkd train-aux`` on a tiny generated dataset: writes a self-describing aux-heads checkpoint; clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hkd.cli import main
from hkd.models.checkpoint import CheckpointMeta, file_sha256, save_checkpoint
from hkd.models.presets import build_detector

TEACHER = "hkd_frcnn_lite2.teacher"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A SynthPed folder of 4 small images and a random-init teacher checkpoint."""
    from hkd.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("train_aux")
    cfg = SynthConfig.from_dict({"real_fraction": 0.0, "background_mix": [1.0, 0.0, 1.0], "width": 128, "height": 96})
    generate(root / "data", 4, 0, cfg, workers=1, progress=False)
    torch.manual_seed(0)
    teacher = save_checkpoint(root / "teacher.safetensors", build_detector(TEACHER, min_size=96, max_size=128),
                              CheckpointMeta(preset=TEACHER, min_size=96, max_size=128, step=12))
    (root / "empty").mkdir()
    return root, teacher


def _args(root, teacher, *extra):
    return ["train-aux", "--teacher", str(teacher), "--data", str(root / "data"), "--out", str(root / "aux.safetensors"),
            "--steps", "2", "--crop", "32", "--boxes", "1", "--batch-size", "2", "--threads", "1", *extra]


def test_train_aux_writes_the_checkpoint(world, capsys):
    from hkd.distill.aux import load_aux_heads

    root, teacher = world
    assert main(_args(root, teacher, "--levels", "backbone.c4", "neck.p3", "--hidden", "16")) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "step 2/2" in out and "aux.safetensors" in out and "neck.p3" in out
    loaded = load_aux_heads(root / "aux.safetensors")
    meta = loaded.meta
    assert meta.kind == "aux_heads" and meta.levels == {"backbone.c4": 120, "neck.p3": 256} and meta.crop == 32
    assert meta.teacher == {"file": "teacher.safetensors", "sha256": file_sha256(teacher), "preset": TEACHER,
                            "step": 12}
    assert meta.train["steps"] == 2 and meta.train["seed"] == 0 and meta.train["images"] == 4
    assert set(meta.metrics["levels"]) == {"backbone.c4", "neck.p3"} and 0 <= meta.metrics["accuracy"] <= 1
    assert set(loaded.probe) == {"backbone.c4", "neck.p3"} and loaded.heads.hidden == 16


@pytest.mark.parametrize("extra, message", [
    (["--levels", "neck.p9"], "--levels: 'neck.p9' is not a feature level of the teacher; feature levels: "
                              "backbone.c2, backbone.c3"),
    (["--levels", "roi.logits"], "'roi.logits' is not a feature level"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_bad_arguments_exit_non_zero_with_the_message(world, extra, message, capsys):
    root, teacher = world
    assert main(_args(root, teacher, *extra)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_missing_or_corrupt_teacher_and_empty_dataset(world, tmp_path, capsys):
    root, teacher = world
    assert main(_args(root, tmp_path / "nope.safetensors")) == 2
    assert "nope.safetensors: no such checkpoint file" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    assert main(_args(root, corrupt)) == 2
    assert "corrupt.safetensors" in capsys.readouterr().err
    args = _args(root, teacher)
    args[args.index("--data") + 1] = str(root / "empty")
    assert main(args) == 2
    assert "--data: no readable images" in capsys.readouterr().err  # the dataset layer's message
    (root / "empty" / "images").mkdir()
    (root / "empty" / "annotations.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "pedestrian"}]}))
    assert main(args) == 2
    assert "the dataset has no images" in capsys.readouterr().err
    (root / "unlabelled").mkdir()
    Image.new("RGB", (128, 96)).save(root / "unlabelled" / "a.jpg")
    args[args.index("--data") + 1] = str(root / "unlabelled")
    assert main(args) == 2
    assert "no pedestrian boxes" in capsys.readouterr().err
