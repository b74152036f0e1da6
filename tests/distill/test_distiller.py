"""The aligned distiller: zero KD between twins, student-only gradients, shared proposals, schedules."""
import copy
import math
from pathlib import Path

import pytest
import torch

from hkd.distill import ConfigError, Distiller, adapter_plan, detection_losses, detector_family
from hkd.distill.config import DistillConfig, LossTerm
from hkd.models.presets import get_preset
from hkd.models.taps import Tap, count_hooks

from .conftest import STUDENT, TEACHER, every_term, freeze_batchnorm, make_batch, shrink

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"


@pytest.fixture(scope="module")
def twin():
    """A student and a teacher that is its exact copy, distilled at every level with every loss."""
    preset = get_preset(STUDENT)
    torch.manual_seed(0)
    student = shrink(preset.build())
    teacher = copy.deepcopy(student)
    return Distiller.build(teacher, preset.hierarchy, student, preset.hierarchy,
                           {"levels": every_term(preset.hierarchy)})


def _pair(fit: str = "least_squares") -> Distiller:
    t_preset, s_preset = get_preset(TEACHER), get_preset(STUDENT)
    torch.manual_seed(0)
    teacher, student = shrink(t_preset.build()), shrink(s_preset.build())
    return Distiller.build(teacher, t_preset.hierarchy, student, s_preset.hierarchy,
                           {"levels": every_term(s_preset.hierarchy), "adapters": {"fit": fit}})


@pytest.fixture(scope="module")
def pair():
    """The default teacher/student pair (random init), distilled at every level with every loss."""
    return _pair()


def _expected_kd_keys(spec):
    return {f"kd/{level}/{term['loss']}" for level, terms in every_term(spec).items() for term in terms}


def test_every_kd_loss_is_zero_when_the_teacher_is_the_student(twin, batch):
    twin.train()
    freeze_batchnorm(twin.student)  # the teacher runs in eval mode: same BatchNorm statistics
    out = twin(*batch)
    kd = {key: value for key, value in out.items() if key.startswith("kd/")}
    assert set(kd) == _expected_kd_keys(twin.student_spec)  # every level, every applicable loss
    assert {key.split("/")[1].split(".")[0] for key in kd} == {"backbone", "neck", "rpn", "roi"}
    for key, value in kd.items():
        assert value.item() == 0.0, key
    assert sum(p.numel() for p in twin.adapters.parameters()) == 0  # equal shapes: identity adapters


def test_every_kd_loss_responds_when_the_student_differs(twin, batch):
    distiller = copy.deepcopy(twin)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for param in distiller.student.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=g))
    distiller.train()
    freeze_batchnorm(distiller.student)
    out = distiller(*batch)
    for key in _expected_kd_keys(distiller.student_spec):
        assert out[key].item() > 0, key  # masked_mse > 0 also shows the imitation mask is not empty


@pytest.mark.slow
@pytest.mark.parametrize("fit", ["least_squares", "gradient"])
def test_default_pair_forward_backward_reaches_only_student_and_adapters(fit, batch):
    pair = _pair(fit)
    plan = {row["level"]: row for row in adapter_plan(pair.teacher_spec, pair.student_spec)}
    for level in ("backbone.c2", "backbone.c3", "backbone.c4", "backbone.c5",
                  "neck.p3", "neck.p4", "neck.p5", "neck.p6"):
        assert plan[level]["comparable"], level
    pair.train()
    out = pair(*batch)
    assert {k for k in out if k.startswith("det/")} == {
        "det/loss_classifier", "det/loss_box_reg", "det/loss_objectness", "det/loss_rpn_box_reg"}
    assert {k for k in out if k.startswith("kd/")} == _expected_kd_keys(pair.student_spec)
    assert all(v.dim() == 0 and math.isfinite(v.item()) for v in out.values())
    try:
        sum(out.values()).backward()
        assert not pair.teacher.training
        assert not any(m.training for m in pair.teacher.modules())
        for name, param in pair.teacher.named_parameters():
            assert not param.requires_grad and param.grad is None, name
        for name, param in pair.adapters.named_parameters():
            if fit == "gradient":  # trained by the optimiser
                assert param.grad is not None and param.grad.abs().sum() > 0, name
            else:  # set in closed form at each step, never by gradients
                assert not param.requires_grad and param.grad is None, name
        for prefix in ("backbone.body", "backbone.fpn", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"):
            grads = [p.grad for n, p in pair.student.named_parameters() if n.startswith(prefix)]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), prefix
        trainable = {id(p) for p in pair.trainable_parameters()}
        adapters = {id(p) for p in pair.adapters.parameters()} if fit == "gradient" else set()
        assert pair.adapters and trainable == {id(p) for p in pair.student.parameters()} | adapters
        assert not trainable & {id(p) for p in pair.teacher.parameters()}
    finally:
        pair.zero_grad(set_to_none=True)
    assert count_hooks(pair.student) == 0 and count_hooks(pair.teacher) == 0  # taps left nothing behind


def test_teacher_roi_head_sees_the_student_sampled_proposals(pair, batch):
    seen = {}

    def capture(who):
        def hook(_module, args):
            features, proposals, image_sizes = args
            seen[who] = (features, [p.clone() for p in proposals], list(image_sizes))
        return hook

    handles = [pair.student.roi_heads.box_roi_pool.register_forward_pre_hook(capture("student")),
               pair.teacher.roi_heads.box_roi_pool.register_forward_pre_hook(capture("teacher"))]
    pair.train()
    try:
        with Tap(pair.teacher, pair.teacher_spec, ["roi.features", "roi.logits"], detach=True) as tap:
            pair(*batch)
    finally:
        for handle in handles:
            handle.remove()
    s_feats, s_props, s_sizes = seen["student"]
    t_feats, t_props, t_sizes = seen["teacher"]
    assert len(s_props) == len(t_props) == 2
    for s, t in zip(s_props, t_props):
        assert 0 < s.shape[0] <= 32  # the sampled proposals, not all RPN proposals
        assert torch.equal(s, t)
    assert s_sizes == t_sizes
    assert t_feats["p3"].shape[1] == 256 and s_feats["p3"].shape[1] == 64  # each pools its own features …
    assert t_feats["p3"].shape[-2:] == s_feats["p3"].shape[-2:]  # … of the same batch
    with torch.no_grad():
        direct = pair.teacher.roi_heads.box_roi_pool(t_feats, s_props, t_sizes)
    torch.testing.assert_close(tap["roi.features"], direct, rtol=0, atol=0)
    assert tap["roi.logits"].shape == (sum(p.shape[0] for p in s_props), 2)


def test_det_losses_equal_the_student_own_forward(twin, batch):
    twin.train()
    torch.manual_seed(7)  # the same transform choice and proposal sampling in both
    out = twin(*batch)
    torch.manual_seed(7)
    own = detection_losses(twin.student, *batch)
    assert {k for k in out if k.startswith("det/")} == set(own)
    for key, value in own.items():
        torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-6)


def test_schedule_omits_inactive_levels_and_the_teacher_work_they_need(twin, batch):
    config = {"levels": {"backbone.c3": "mse", "rpn.objectness": "soft_bce", "roi.logits": "kd_kl"},
              "schedule": [{"until_step": 5, "hierarchies": ["backbone"]},
                           {"until_step": 10, "hierarchies": "all"},
                           {"hierarchies": []}]}
    distiller = Distiller.build(twin.teacher, twin.teacher_spec, twin.student, twin.student_spec, config)
    calls = {"backbone": 0, "rpn": 0, "roi": 0}
    teacher = distiller.teacher
    modules = {"backbone": teacher.backbone, "rpn": teacher.rpn.head, "roi": teacher.roi_heads.box_predictor}
    handles = [m.register_forward_hook(lambda *_, k=k: calls.__setitem__(k, calls[k] + 1)) for k, m in modules.items()]
    distiller.train()
    try:
        out = distiller(*batch, step=4)
        assert [k for k in out if k.startswith("kd/")] == ["kd/backbone.c3/mse"]
        assert calls == {"backbone": 1, "rpn": 0, "roi": 0}
        out = distiller(*batch, step=5)
        assert [k for k in out if k.startswith("kd/")] == [
            "kd/backbone.c3/mse", "kd/rpn.objectness/soft_bce", "kd/roi.logits/kd_kl"]
        assert calls == {"backbone": 2, "rpn": 1, "roi": 1}
        out = distiller(*batch, step=10)
        assert not [k for k in out if k.startswith("kd/")] and len(out) == 4
        assert calls == {"backbone": 2, "rpn": 1, "roi": 1}  # no KD: the teacher is not run at all
    finally:
        for handle in handles:
            handle.remove()


def test_train_keeps_the_teacher_in_eval_mode(twin):
    twin.train()
    assert twin.student.training and twin.adapters.training
    assert not any(m.training for m in twin.teacher.modules())
    twin.eval()
    assert not twin.student.training and not twin.teacher.training
    with pytest.raises(RuntimeError, match=r"distiller.train\(\)"):
        twin(*make_batch(n=1))
    twin.train()


def test_build_checks_the_wiring(twin):
    student, teacher = twin.student, twin.teacher
    spec = twin.student_spec
    other = copy.deepcopy(teacher)
    other.transform.min_size = (256,)  # sizes may differ: the student's transform resizes for both
    other.transform.image_mean = [0.485, 0.456, 0.406]
    with pytest.raises(ConfigError, match=r"same transformed batch.*image_mean") as err:
        Distiller.build(other, spec, student, spec, {"levels": {"neck.p3": "mse"}})
    assert "min_size" not in str(err.value)
    other.transform.image_mean = list(teacher.transform.image_mean)
    Distiller.build(other, spec, student, spec, {"levels": {"neck.p3": "mse"}})
    other.transform.image_std = [0.229, 0.224, 0.225]
    with pytest.raises(ConfigError, match=r"same transformed batch.*image_std"):
        Distiller.build(other, spec, student, spec, {"levels": {"neck.p3": "mse"}})
    with pytest.raises(ConfigError, match=r"unknown level 'neck.p8'.*levels: backbone.c2"):
        Distiller.build(teacher, spec, student, spec, {"levels": {"neck.p8": "mse"}})
    with pytest.raises(ConfigError, match=r"'attention' does not apply to 'roi.logits'.*losses for it: kd_kl"):
        Distiller.build(teacher, spec, student, spec, {"levels": {"roi.logits": "attention"}})
    # params that bypassed parsing are still checked against the loss signature
    sneaky = DistillConfig((LossTerm("roi.logits", "kd_kl", 1.0, {"tau": 2.0}),))
    with pytest.raises(ConfigError, match=r"kd/roi.logits/kd_kl.*tau.*params: temperature, bg_weight"):
        Distiller(teacher, spec, student, spec, sneaky)
    with pytest.raises(ConfigError, match="neither"):
        detector_family(torch.nn.Linear(2, 2))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_shipped_full_config_builds_for_the_default_pair(pair):
    distiller = Distiller.build(pair.teacher, pair.teacher_spec, pair.student, pair.student_spec,
                                CONFIGS / "distill_full.yaml")
    assert set(distiller.adapters.keys()) == {
        "backbone_c3", "backbone_c4", "backbone_c5", "neck_p3", "neck_p4", "neck_p5", "neck_p6",
        "rpn_objectness", "rpn_deltas", "roi_features", "roi_embedding", "roi_logits", "roi_deltas"}
    assert distiller.config.hierarchies_at(0) == ("backbone", "neck")


def test_single_stage_retinanet_distils_dense_logits(batch):
    preset = get_preset("retinanet_resnet50_fpn.coco_person")
    torch.manual_seed(0)
    student = shrink(preset.build(), size=64, max_size=80)
    teacher = copy.deepcopy(student)
    levels = {"backbone.c3": "mse", "neck.p3": "masked_mse", "head.cls_logits": "focal_kd"}
    distiller = Distiller.build(teacher, preset.hierarchy, student, preset.hierarchy, {"levels": levels})
    distiller.train()
    freeze_batchnorm(student)
    images = [torch.nn.functional.interpolate(im[None], size=(64, 80))[0] for im in batch[0]]
    targets = [{"boxes": t["boxes"] / 2, "labels": t["labels"]} for t in batch[1]]
    out = distiller(images, targets)
    assert set(out) == {"det/classification", "det/bbox_regression",
                        "kd/backbone.c3/mse", "kd/neck.p3/masked_mse", "kd/head.cls_logits/focal_kd"}
    assert all(out[k].item() == 0.0 for k in out if k.startswith("kd/"))
    assert all(math.isfinite(v.item()) for v in out.values())


@pytest.mark.slow
def test_images_without_pedestrians_are_fine(pair):
    images, targets = make_batch(seed=3)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    pair.train()
    out = pair(images, targets)
    try:
        assert {k for k in out if k.startswith("kd/")} == _expected_kd_keys(pair.student_spec)
        assert all(math.isfinite(v.item()) for v in out.values())
        sum(out.values()).backward()
    finally:
        pair.zero_grad(set_to_none=True)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    out = pair(images, empty)
    assert out["kd/neck.p3/masked_mse"].item() == 0.0  # nothing to imitate
    assert out["kd/roi.deltas/bounded_l2"].item() == 0.0  # no positive proposal
    with pytest.raises(ValueError, match="positive width and height"):
        pair(images, [{"boxes": torch.tensor([[10.0, 10.0, 10.0, 50.0]]), "labels": torch.ones(1, dtype=torch.int64)}] * 2)
