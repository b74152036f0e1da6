"""Online distillation: teacher and student learn together in one `hkd distill` run."""
import json

import pytest
import torch
import yaml

from hkd.cli import main
from hkd.distill.distiller import Distiller
from hkd.models.checkpoint import load_checkpoint
from hkd.models.presets import build_detector, get_preset
from hkd.train.config import ConfigError, config_from_dict
from hkd.train.run_folder import RunFolder

TEACHER, STUDENT = "hkd_frcnn_lite2.teacher", "hkd_frcnn_lite0.student"
DISTILL = {"levels": {"neck.p3": "mse", "rpn.objectness": "soft_bce", "roi.logits": "kd_kl"}}


def _online_config(data, **online):
    from tests.train.conftest import make_tiny_config

    cfg = make_tiny_config(data, steps=4, checkpoint_every=2)
    cfg["data"]["val"] = None
    cfg["online"] = {"teacher_preset": TEACHER, "pretrained_backbone": False, "kd_after": 2, **online}
    cfg["distill"] = DISTILL
    return cfg


def _tiny(model):
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 16
    for mode in ("training", "testing"):
        model.rpn._pre_nms_top_n[mode], model.rpn._post_nms_top_n[mode] = 60, 30
    return model


def test_online_step_trains_the_teacher_on_its_own_losses_only():
    from tests.distill.conftest import make_batch

    torch.manual_seed(0)
    teacher = _tiny(build_detector(TEACHER, min_size=96, max_size=128))
    student = _tiny(build_detector(STUDENT, min_size=96, max_size=128))
    distiller = Distiller.build(teacher, get_preset(TEACHER).hierarchy, student, get_preset(STUDENT).hierarchy,
                                DISTILL, online=True, kd_after=1).train()
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    images, targets = make_batch(h=96, w=128)
    warm = distiller(images, targets, step=0)
    assert {k for k in warm if k.startswith("teacher/det/")} == {
        "teacher/det/loss_classifier", "teacher/det/loss_box_reg", "teacher/det/loss_objectness",
        "teacher/det/loss_rpn_box_reg"}
    assert not any(k.startswith("kd/") for k in warm)  # the teacher's warm-up: no KD yet
    losses = distiller(images, targets, step=1)
    kd = [k for k in losses if k.startswith("kd/")]
    assert sorted(kd) == ["kd/neck.p3/mse", "kd/roi.logits/kd_kl", "kd/rpn.objectness/soft_bce"]
    # KD sends no gradient to the teacher; the teacher's own losses send none to the student
    sum(losses[k] for k in kd).backward(retain_graph=True)
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())
    student.zero_grad(set_to_none=True)
    sum(v for k, v in losses.items() if k.startswith("teacher/")).backward()
    assert all(p.grad is None for p in student.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.parameters())
    assert {"student", "teacher"} == set(distiller.parameter_groups())


def test_kd_after_is_only_for_online():
    teacher = build_detector(TEACHER, min_size=96, max_size=128)
    student = build_detector(STUDENT, min_size=96, max_size=128)
    with pytest.raises(Exception, match="kd_after"):
        Distiller.build(teacher, get_preset(TEACHER).hierarchy, student, get_preset(STUDENT).hierarchy, DISTILL,
                        kd_after=3)


@pytest.mark.slow
def test_online_run_writes_both_checkpoints_and_resumes_exactly(tiny_dataset, tmp_path, capsys):
    path = tmp_path / "online.yaml"
    path.write_text(yaml.safe_dump(_online_config(tiny_dataset)))
    full = tmp_path / "full"
    assert main(["distill", "--config", str(path), "--out", str(full), "--no-progress"]) == 0, capsys.readouterr().err
    run = RunFolder(full)
    status = run.read_status()
    assert status["state"] == "succeeded" and status["mode"] == "online"
    records = [m for m in run.read_metrics() if "loss" in m]
    assert all("teacher/det/loss_classifier" in m for m in records)
    assert not any(k.startswith("kd/") for k in records[1]) and any(k.startswith("kd/") for k in records[2])
    teacher = load_checkpoint(run.checkpoint("teacher_final"))
    student = load_checkpoint(run.checkpoint("final"))
    assert teacher.meta.preset == TEACHER and student.meta.preset == STUDENT
    assert "online" in student.meta.notes
    # the teacher learned: its weights moved from the seed-0 init it started from
    torch.manual_seed(0)
    fresh = build_detector(TEACHER, min_size=96, max_size=128)
    moved = fresh.roi_heads.box_predictor.cls_score.weight - teacher.model.roi_heads.box_predictor.cls_score.weight
    assert moved.abs().max() > 0

    # the same run, interrupted after its step-2 checkpoint and resumed: identical losses and weights
    import hkd.train.engine as engine
    from hkd.train.config import load_config

    class Stop(Exception):
        pass

    real_save = engine._save

    def save_then_stop(run, name, *args, **kwargs):
        real_save(run, name, *args, **kwargs)
        if name == "last" and args[3] == 2:  # the step argument
            raise Stop()

    half = tmp_path / "half"
    engine._save = save_then_stop
    try:
        with pytest.raises(Stop):
            engine.train(load_config(path), half, progress=False)
    finally:
        engine._save = real_save
    assert RunFolder(half).checkpoint("teacher_last").exists()
    assert main(["distill", "--config", str(path), "--out", str(half), "--no-progress", "--resume"]) == 0, \
        capsys.readouterr().err
    again = [m for m in RunFolder(half).read_metrics() if "loss" in m]
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    assert [m["loss"] for m in again] == pytest.approx([m["loss"] for m in records], rel=1e-6)
    resumed = load_checkpoint(RunFolder(half).checkpoint("teacher_final")).model.state_dict()
    for key, value in teacher.model.state_dict().items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def test_online_config_errors_name_the_problem(tiny_dataset, tmp_path):
    cfg = _online_config(tiny_dataset)
    cfg["teacher"] = str(tmp_path / "t.safetensors")
    with pytest.raises(ConfigError, match="must not be set too"):
        config_from_dict(cfg)
    for online, match in [({"kd_after": 4}, "online.kd_after"), ({"lr_scale": 0}, "lr_scale"),
                          ({"teacher_preset": "nope"}, "online.teacher_preset"),
                          ({"warmup": 3}, "unknown key 'warmup'"),
                          ({"teacher_preset": "retinanet_resnet50_fpn.coco_person"}, "one family")]:
        with pytest.raises(ConfigError, match=match):
            config_from_dict(_online_config(tiny_dataset, **online))
    assert config_from_dict(_online_config(tiny_dataset, teacher_preset="")).online.teacher_preset == TEACHER
