"""A torchvision checkpoint, imported, as the teacher of `hkd distill` (the shipped
distill_torchvision_teacher.yaml) and as a model's starting weights (model.init)."""
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from hkd.cli import main
from hkd.models.checkpoint import load_checkpoint
from hkd.train.run_folder import RunFolder
from tests.train.conftest import write_tiny_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"
TINY = ["model.min_size=96", "model.max_size=128", "model.train_min_sizes=[80, 96]", "model.pretrained_backbone=false",
        "data.val=null", "train.steps=3", "train.warmup_steps=1", "train.checkpoint_every=0", "train.threads=1",
        "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n=4)


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """torchvision's Faster R-CNN R50-FPN saved as torchvision saves it: COCO's 91 classes, and 2."""
    root = tmp_path_factory.mktemp("tv")
    files = {}
    for classes in (91, 2):
        torch.manual_seed(classes)
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=classes)
        files[classes] = root / f"fasterrcnn_resnet50_fpn_{classes}.pth"
        torch.save(model.state_dict(), files[classes])
    return files


@pytest.fixture(scope="module")
def imported_teacher(torchvision_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "torchvision_teacher.safetensors"
    assert main(["import", str(torchvision_files[91]), "--preset", "hkd_frcnn_r50.teacher", "--coco-person",
                 "--out", str(out)]) == 0
    return out


def _kd_keys(run: Path) -> set[str]:
    return {k for m in RunFolder(run).read_metrics() if "loss" in m for k in m if k.startswith("kd/")}


def test_shipped_config_distills_the_wide_student_from_an_imported_torchvision_teacher(
        imported_teacher, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["distill", "--config", str(CONFIGS / "distill_torchvision_teacher.yaml"), "--out", str(run),
            "--no-progress", "--set", f"teacher={imported_teacher}", "--set", f"data.train={tiny_data}",
            "--set", "distill.schedule=null"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    keys = _kd_keys(run)
    # adapters where the channels differ (c3 40→512 … roi.embedding 256→1024), every hierarchy but the RPN
    assert {"kd/backbone.c3/nmse", "kd/neck.p3/masked_nmse", "kd/neck.p6/attention", "kd/roi.features/nmse",
            "kd/roi.embedding/nmse", "kd/roi.logits/kd_kl", "kd/roi.deltas/bounded_l2"} <= keys
    assert not any(k.startswith("kd/rpn.") for k in keys)
    final = load_checkpoint(RunFolder(run).checkpoint("final"))
    assert final.meta.preset == "hkd_frcnn_lite0.student_wide"
    assert final.meta.parent == "torchvision_teacher.safetensors"


def test_the_seed_pair_distills_every_hierarchy_with_the_full_config(imported_teacher, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["distill", "--config", str(CONFIGS / "distill_torchvision_teacher.yaml"), "--out", str(run),
            "--no-progress", "--set", f"teacher={imported_teacher}", "--set", f"data.train={tiny_data}",
            "--set", "model.preset=hkd_frcnn_r18.student", "--set", f"distill={CONFIGS / 'distill_full.yaml'}",
            *[a for item in TINY[:-1] for a in ("--set", item)], "--set", "train.steps=2"]
    assert main(args) == 0, capsys.readouterr().err
    keys = _kd_keys(run)
    assert {"kd/backbone.c3/nmse", "kd/neck.p3/masked_nmse"} <= keys  # features first (distill_full's schedule)


def test_a_torchvision_pth_is_a_model_init_and_a_teacher_pth_asks_for_hkd_import(
        torchvision_files, imported_teacher, tiny_data, tmp_path, capsys):
    run = tmp_path / "teacher_run"
    args = ["train", "--config", str(CONFIGS / "distill_torchvision_teacher.yaml"), "--out", str(run),
            "--no-progress", "--set", "teacher=null", "--set", "distill=null", "--set", f"data.train={tiny_data}",
            "--set", "model.preset=hkd_frcnn_r50.teacher", "--set", f"model.init={torchvision_files[2]}",
            *[a for item in TINY for a in ("--set", item)], "--set", "train.steps=1"]
    assert main(args) == 0, capsys.readouterr().err
    assert load_checkpoint(RunFolder(run).checkpoint("final")).meta.parent == torchvision_files[2].name

    args = ["distill", "--config", str(CONFIGS / "distill_torchvision_teacher.yaml"), "--out", str(tmp_path / "r"),
            "--set", f"teacher={torchvision_files[91]}", "--set", f"data.train={tiny_data}"]
    assert main(args) == 2
    assert "hkd import" in capsys.readouterr().err
