"""Presets build offline; the default pair meets its budget; pretrained backbones are real."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hkd.cli import main
from hkd.models.backbones import efficientnet_lite
from hkd.models.presets import PRESETS, WIDE_STUDENT, build_detector, default_pair, get_preset
from hkd.models.profile import params_by_hierarchy

DATA = Path(__file__).resolve().parents[1] / "data"
FOX_SQUIRREL = 335  # ImageNet class index


def test_default_pair_parameter_ratio_is_at_least_6():
    teacher, student = default_pair()
    t = params_by_hierarchy(build_detector(teacher))["total"]
    s = params_by_hierarchy(build_detector(student))["total"]
    assert t / s >= 6.0, (t, s)


def test_wide_student_spends_the_budget_on_the_box_head():
    teacher, student = default_pair()
    t = params_by_hierarchy(build_detector(teacher))["total"]
    base = build_detector(student)
    wide = build_detector(WIDE_STUDENT)
    assert t / params_by_hierarchy(wide)["total"] >= 6.0
    # same backbone, FPN and RPN; only the box head (and its predictor) is wider
    for part in ("backbone", "rpn"):
        shapes = [{k: v.shape for k, v in getattr(m, part).state_dict().items()} for m in (base, wide)]
        assert shapes[0] == shapes[1], part
    assert wide.roi_heads.box_head.fc7.out_features == 256 == 2 * base.roi_heads.box_head.fc7.out_features
    assert {lvl.name: lvl.channels for lvl in get_preset(WIDE_STUDENT).hierarchy}["roi.embedding"] == 256


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_pretrained_backbone_classifies_a_real_photo(arch):
    model = efficientnet_lite(arch, pretrained=True).eval()
    image = Image.open(DATA / "squirrel.jpg").convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    x = (x - 0.5) / 0.5  # [-1, 1], as tf_efficientnet_lite expects
    with torch.no_grad():
        probs = model(x[None]).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert FOX_SQUIRREL in top5, top5
    assert probs[FOX_SQUIRREL] > 0.2


def test_random_init_differs_from_pretrained():
    a = efficientnet_lite("tf_efficientnet_lite0", pretrained=True)
    b = efficientnet_lite("tf_efficientnet_lite0", pretrained=False)
    assert not torch.equal(a.conv_stem.weight, b.conv_stem.weight)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_detects_in_eval_mode(name):
    model = build_detector(name).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 160)])
    assert set(out[0]) >= {"boxes", "labels", "scores"}
    # every declared level's module exists
    for level in get_preset(name).hierarchy:
        model.get_submodule(level.module)


def test_train_mode_returns_a_loss_dict():
    model = build_detector("hkd_frcnn_lite0.student").train()
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 100.0]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 128, 160)], [target])
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_unknown_preset_names_the_choices():
    with pytest.raises(KeyError, match="hkd_frcnn_lite0.student"):
        get_preset("hkd_frcnn_lite9.student")


@pytest.mark.slow
def test_presets_cli_json(capsys):
    assert main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    pair = data["default_pair"]
    assert pair["param_ratio"] >= 6
    roles = {r["name"]: r["role"] for r in data["presets"]}
    assert roles[pair["teacher"]] == "teacher" and roles[pair["student"]] == "student"
