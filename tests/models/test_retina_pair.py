"""The single-stage pair (EfficientNet-Lite RetinaNet): budget, levels, checkpoints, output contract."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection import RetinaNet

from hkd.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hkd.models.inference import detect
from hkd.models.optimize import count_fusable
from hkd.models.presets import ANCHOR_RATIOS, ANCHOR_SIZES, build_detector, get_preset
from hkd.models.profile import params_by_hierarchy
from hkd.models.taps import Tap, count_hooks
from tests.conftest import one_torch_thread

TEACHER = "hkd_retina_lite2.teacher"
STUDENT = "hkd_retina_lite0.student"
TINY = dict(min_size=96, max_size=128)


def lively(model: RetinaNet, seed: int = 0) -> RetinaNet:
    """Random class logits around p = 0.5: a random-init RetinaNet (prior 0.01) detects nothing."""
    logits = model.head.classification_head.cls_logits
    with torch.no_grad():
        logits.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed))
        logits.bias.zero_()
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return lively(build_detector(STUDENT, **TINY)).eval()


def test_registered_as_a_single_stage_teacher_student_pair():
    teacher, student = get_preset(TEACHER), get_preset(STUDENT)
    assert (teacher.family, teacher.role) == ("single_stage", "teacher")
    assert (student.family, student.role) == ("single_stage", "student")
    assert "tf_efficientnet_lite2" in teacher.backbone_weights and "tf_efficientnet_lite0" in student.backbone_weights
    for preset in (teacher, student):
        assert preset.hierarchy.names == ["backbone.c3", "backbone.c4", "backbone.c5", "neck.p3", "neck.p4",
                                          "neck.p5", "neck.p6", "head.cls_logits", "head.bbox_deltas"]


def test_student_has_at_least_6x_fewer_parameters_than_the_teacher():
    t = params_by_hierarchy(build_detector(TEACHER))
    s = params_by_hierarchy(build_detector(STUDENT))
    assert t["total"] / s["total"] >= 6.0, (t, s)
    assert t["total"] == sum(v for k, v in t.items() if k != "total")  # every parameter in a hierarchy


def test_anchors_transform_and_frozen_backbone(student):
    assert isinstance(student, RetinaNet)
    assert student.anchor_generator.sizes == ANCHOR_SIZES
    assert student.anchor_generator.aspect_ratios == (ANCHOR_RATIOS,) * len(ANCHOR_SIZES)
    per_location = len(ANCHOR_SIZES[0]) * len(ANCHOR_RATIOS)
    assert student.head.classification_head.num_anchors == per_location
    assert student.head.classification_head.num_classes == 2
    assert list(student.transform.image_mean) == [0.5] * 3 and list(student.transform.image_std) == [0.5] * 3
    assert (student.transform.min_size, student.transform.max_size) == ((96,), 128)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in student.backbone.body.modules())
    assert count_fusable(student) > 0  # the frozen norms inference folds


@pytest.mark.parametrize("name", [TEACHER, STUDENT])
def test_taps_capture_every_level_with_its_declared_channels_and_stride(name):
    torch.manual_seed(0)
    model = build_detector(name, **TINY).eval()
    spec = get_preset(name).hierarchy
    with torch.no_grad(), Tap(model, spec) as tap:
        batch, _ = model.transform([torch.rand(3, 96, 128)])
        features = model.backbone(batch.tensors)
        outputs = model.head(list(features.values()))
    assert count_hooks(model) == 0
    height = batch.tensors.shape[-2]
    for level in spec:
        value = tap[level.name]
        if level.kind == "map":
            assert value.shape[1] == level.channels, level.name
            assert value.shape[-2] == math.ceil(height / level.stride), level.name  # P6: 3 cells pooled to 2
        else:
            anchors = sum(f.shape[-2] * f.shape[-1] for f in features.values()) * model.anchor_generator.num_anchors_per_location()[0]
            assert value.shape == (1, anchors, level.channels), level.name
    # a tapped output is the module's output
    assert torch.equal(tap["neck.p6"], features["p6"]) and torch.equal(tap["neck.p3"], features["p3"])
    assert torch.equal(tap["head.cls_logits"], outputs["cls_logits"])
    assert torch.equal(tap["head.bbox_deltas"], outputs["bbox_regression"])


def test_eval_output_contract_and_train_losses(student):
    with torch.no_grad():
        (out,) = student([torch.rand(3, 96, 128)])
    assert set(out) == {"boxes", "labels", "scores"}
    assert out["boxes"].dtype == torch.float32 and out["boxes"].shape[1] == 4 and len(out["boxes"]) > 0
    assert out["labels"].dtype == torch.int64 and out["scores"].shape == out["labels"].shape
    assert len(out["scores"]) <= 100
    (found,) = detect(student, [torch.rand(3, 96, 128)])
    assert len(found) and (found.scores[:-1] >= found.scores[1:]).all()

    model = build_detector(STUDENT, **TINY).train()
    target = {"boxes": torch.tensor([[20.0, 10.0, 50.0, 90.0]]), "labels": torch.tensor([1])}
    losses = model([torch.rand(3, 96, 128)], [target])
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", [TEACHER, STUDENT])
def test_checkpoint_round_trip_also_prepared_for_inference(name, tmp_path):
    torch.manual_seed(1)
    model = lively(build_detector(name, **TINY), seed=1).eval()
    path = save_checkpoint(tmp_path / "retina.safetensors", model, CheckpointMeta(preset=name, notes="t", **TINY))
    image = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        (expected,) = model([image])
    plain = load_checkpoint(path)
    fast = load_checkpoint(path, inference=True)
    assert plain.meta.preset == name and (plain.meta.min_size, plain.meta.max_size) == (96, 128)
    assert count_fusable(fast.model) == 0 and count_fusable(plain.model) > 0
    with torch.no_grad():
        (same,) = plain.model([image])
        (prepared,) = fast.model([image])
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(same[key], expected[key]), key
    # folding the frozen norms changes rounding only
    assert torch.equal(prepared["labels"], expected["labels"])
    torch.testing.assert_close(prepared["boxes"], expected["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(prepared["scores"], expected["scores"], atol=1e-4, rtol=1e-4)


def test_the_single_stage_teacher_starts_from_the_two_stage_teachers_backbone(tmp_path):
    from hkd.models.checkpoint import CheckpointError, load_backbone_weights

    torch.manual_seed(0)
    two_stage = build_detector("hkd_frcnn_lite2.teacher", pretrained_backbone=False, **TINY)
    with torch.no_grad():  # weights no fresh build has
        for p in two_stage.backbone.parameters():
            p.add_(0.5)
    path = save_checkpoint(tmp_path / "frcnn.safetensors", two_stage, CheckpointMeta(preset="hkd_frcnn_lite2.teacher"))
    retina = build_detector(TEACHER, pretrained_backbone=False, **TINY)
    head_before = {k: v.clone() for k, v in retina.head.state_dict().items()}
    copied = load_backbone_weights(retina, path)
    src, dst = two_stage.backbone.state_dict(), retina.backbone.state_dict()
    assert copied == len(dst) > 100
    assert all(torch.equal(dst[k], src[k].to(dst[k].dtype)) for k in dst)
    assert all(torch.equal(v, head_before[k]) for k, v in retina.head.state_dict().items())  # heads untouched
    # the student's narrower body cannot take the teacher's backbone: named, nothing half-loaded silently
    student = build_detector(STUDENT, pretrained_backbone=False, **TINY)
    with pytest.raises(CheckpointError, match=r"backbone does not fit this model: \d+ shape mismatches"):
        load_backbone_weights(student, path)
    # as a run config's model.init_backbone: the model the run trains, or an error naming the key
    from hkd.train.config import ConfigError, config_from_dict
    from hkd.train.engine import build_student

    raw = {"model": {"preset": TEACHER, "pretrained_backbone": False, "init_backbone": str(path), **TINY},
           "data": {"train": str(tmp_path)}}
    model, _ = build_student(config_from_dict(raw))
    assert all(torch.equal(v, src[k].to(v.dtype)) for k, v in model.backbone.state_dict().items())
    raw["model"]["preset"] = STUDENT
    with pytest.raises(ConfigError, match="model.init_backbone: .*backbone does not fit"):
        build_student(config_from_dict(raw))


def test_init_backbone_is_a_config_key_and_excludes_init(tmp_path):
    from hkd.train.config import ConfigError, load_config

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: {preset: hkd_retina_lite2.teacher, init_backbone: ckpt/teacher.safetensors}\n"
                        "data: {train: data}\n")
    cfg = load_config(cfg_file)
    assert cfg.model.init_backbone == str((tmp_path / "ckpt" / "teacher.safetensors").resolve())
    cfg_file.write_text("model: {preset: hkd_retina_lite2.teacher, init: a.safetensors, init_backbone: b.safetensors}\n"
                        "data: {train: data}\n")
    with pytest.raises(ConfigError, match="model.init and model.init_backbone are both set"):
        load_config(cfg_file)
