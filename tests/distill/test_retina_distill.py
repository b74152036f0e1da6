"""Distilling the single-stage pair: focal KD on dense logits, FPN hints, pair validation, run configs."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from hkd.distill.config import ConfigError
from hkd.distill.distiller import Distiller
from hkd.distill.pairs import check_pair, detector_kind
from hkd.models.presets import build_detector, get_preset
from hkd.train.config import load_config as load_run_config
from tests.distill.conftest import make_batch, shrink

TEACHER = "hkd_retina_lite2.teacher"
STUDENT = "hkd_retina_lite0.student"
CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"
FOCAL = CONFIGS / "distill_retina_focal.yaml"
TINY = dict(min_size=96, max_size=128)
AFTER_WARMUP = 100  # distill_retina_focal.yaml distils the head from this step on


def tiny(name: str, seed: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_detector(name, **TINY, **overrides)


def tiny_batch():
    images, targets = make_batch(n=2, h=96, w=128)
    targets = [{"boxes": t["boxes"] * 0.75, "labels": t["labels"]} for t in targets]
    return images, targets


@pytest.fixture(scope="module")
def pair():
    return tiny(TEACHER, 0), tiny(STUDENT, 1)


@pytest.mark.slow
def test_a_few_steps_give_finite_detection_and_kd_losses(pair):
    teacher, student = copy.deepcopy(pair[0]), copy.deepcopy(pair[1])
    distiller = Distiller.build(teacher, get_preset(TEACHER).hierarchy, student, get_preset(STUDENT).hierarchy,
                                FOCAL)
    distiller.train()
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=1e-3, momentum=0.9)
    images, targets = tiny_batch()
    hints = {f"kd/neck.p{i}/{loss}" for i in (3, 4, 5, 6) for loss in ("masked_nmse", "attention")}
    keys = {"det/classification", "det/bbox_regression", "kd/head.cls_logits/focal_kd", *hints}
    assert set(distiller(images, targets, step=0)) == keys - {"kd/head.cls_logits/focal_kd"}  # features first
    for step in range(AFTER_WARMUP, AFTER_WARMUP + 3):
        out = distiller(images, targets, step=step)
        assert set(out) == keys
        assert all(math.isfinite(v.item()) for v in out.values()), out
        assert out["kd/head.cls_logits/focal_kd"].item() > 0  # two random models disagree
        optimizer.zero_grad()
        sum(out.values()).backward()
        optimizer.step()
    # the teacher gets no gradient and stays in eval mode
    assert not distiller.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
    assert any(p.grad is not None for p in distiller.student.parameters())


def test_kd_losses_are_zero_when_the_student_is_the_teacher(pair):
    teacher = pair[0]  # the student is a copy of the teacher (its architecture, its weights)
    student = copy.deepcopy(teacher)
    spec = get_preset(TEACHER).hierarchy
    levels = {"backbone.c4": "nmse", "neck.*": ["mse", "attention"], "head.cls_logits": "focal_kd"}
    distiller = Distiller.build(teacher, spec, student, spec, {"levels": levels})
    distiller.train()
    out = distiller(*tiny_batch())
    kd = {k: v for k, v in out.items() if k.startswith("kd/")}
    assert "kd/head.cls_logits/focal_kd" in kd and "kd/neck.p6/attention" in kd and len(kd) == 2 + 2 * 4
    assert all(v.item() == 0.0 for v in kd.values()), kd
    assert math.isfinite(out["det/classification"].item())


def test_a_retinanet_teacher_and_an_fcos_student_fail_at_build(pair):
    fcos = shrink(get_preset("fcos_resnet50_fpn.coco_person").build(), size=96, max_size=128)
    fcos.transform.image_mean, fcos.transform.image_std = [0.5] * 3, [0.5] * 3  # only the heads differ
    levels = {"neck.p3": "mse", "head.cls_logits": "focal_kd"}
    with pytest.raises(ConfigError) as error:
        Distiller.build(pair[0], get_preset(TEACHER).hierarchy, fcos,
                        get_preset("fcos_resnet50_fpn.coco_person").hierarchy, {"levels": levels})
    message = str(error.value)
    assert "teacher (RetinaNet) and student (FCOS) cannot be distilled head to head" in message
    assert "different detectors (teacher RetinaNet, student FCOS)" in message
    assert "different anchors per location (teacher 6, student 1)" in message
    assert "different FPN levels under the head (teacher 4, student 5)" in message


def test_check_pair_names_anchors_levels_and_classes(pair):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    teacher, student = pair
    check_pair(teacher, student)  # the preset pair matches
    assert detector_kind(student) == "RetinaNet"

    other = tiny(STUDENT, 2)
    other.anchor_generator = AnchorGenerator(((16,), (32,), (64,)), ((1.0, 2.0),) * 3)
    with pytest.raises(ConfigError, match=r"different anchors per location \(teacher 6, student \[2, 2, 2\]\); "
                                          r"different FPN levels under the head \(teacher 4, student 3\)"):
        check_pair(teacher, other)
    with pytest.raises(ConfigError, match=r"different classes \(teacher 2, student 3\)"):
        check_pair(teacher, tiny(STUDENT, 0, num_classes=3))


def test_two_stage_pairs_are_checked_for_classes():
    two_stage = "hkd_frcnn_lite0.student"
    check_pair(tiny(two_stage, 0), tiny(two_stage, 1))
    with pytest.raises(ConfigError, match=r"different classes \(teacher 3, student 2\)"):
        check_pair(tiny(two_stage, 0, num_classes=3), tiny(two_stage, 1))


@pytest.mark.parametrize("name, preset, kd", [
    ("retina_teacher.yaml", TEACHER, False),
    ("retina_student_baseline.yaml", STUDENT, False),
    ("retina_student_kd.yaml", STUDENT, True),
])
def test_run_configs_load_and_build(name, preset, kd, pair):
    cfg = load_run_config(CONFIGS / name)
    assert cfg.model.preset == preset and cfg.data.train.endswith("data/synthped/train")
    assert (cfg.teacher is not None) == kd and (cfg.distill is not None) == kd
    if not kd:
        return
    assert cfg.teacher == str((CONFIGS.parent / "checkpoints" / "retina_teacher.safetensors").resolve())
    assert Path(cfg.distill) == FOCAL.resolve()
    teacher_preset = load_run_config(CONFIGS / "retina_teacher.yaml").model.preset  # what that checkpoint holds
    distiller = Distiller.build(pair[0], get_preset(teacher_preset).hierarchy, copy.deepcopy(pair[1]),
                                get_preset(cfg.model.preset).hierarchy, cfg.distill)
    assert {(t.level, t.loss) for t in distiller.config.terms} == {
        ("head.cls_logits", "focal_kd"),
        *((f"neck.p{i}", loss) for i in (3, 4, 5, 6) for loss in ("masked_nmse", "attention")),
    }
