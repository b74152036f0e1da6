"""Trust in the teacher (issue #17): per-row weights of the soft-target losses by the teacher's quality."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import hkd.distill.distiller as distiller_module
from hkd.distill import ConfigError, Distiller
from hkd.distill.config import DistillConfig, LossTerm, parse_config
from hkd.distill.losses import LOSSES, TRUST_MODES, focal_kd, kd_kl, soft_bce
from hkd.distill.losses.rpn import binary_kl
from hkd.models.presets import get_preset

from .conftest import STUDENT, TEACHER, freeze_batchnorm, make_batch, shrink

TRUSTING = ("soft_bce", "kd_kl", "focal_kd")
MODES = [m for m in TRUST_MODES if m != "none"]


# -- the losses as they were before trust: `trust: none` must be these, bit for bit ------------
def _kd_kl_before(student, teacher, *, temperature=2.0, bg_weight=0.5):
    teacher = teacher.detach()
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1)
    weight = torch.where(teacher.argmax(dim=1) == 0, torch.full_like(kl, bg_weight), torch.ones_like(kl))
    return (weight * kl).sum() / kl.shape[0] * temperature**2


def _soft_bce_before(student, teacher, *, temperature=1.0):
    return binary_kl(student, teacher, temperature).mean() * temperature**2


def _focal_kd_before(student, teacher, *, temperature=1.0, gamma=2.0):
    kl = binary_kl(student, teacher, temperature).sum(dim=-1)
    weight = teacher.detach().sigmoid().amax(dim=-1).pow(gamma)
    return (weight * kl).sum() / weight.sum().clamp(min=1e-6) * temperature**2


BEFORE = {"kd_kl": _kd_kl_before, "soft_bce": _soft_bce_before, "focal_kd": _focal_kd_before}


def _example(name, g):
    """(student, teacher, row_labels, row_iou) shaped as the distiller passes them."""
    if name == "kd_kl":  # 12 proposals, (background, person, cyclist)
        s, t, rows, classes = torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g), (12,), 3
    elif name == "soft_bce":  # 40 anchors
        s, t, rows, classes = torch.randn(40, 1, generator=g), torch.randn(40, 1, generator=g), (40,), 2
    else:  # 2 images x 30 anchors x (background, person)
        s, t, rows, classes = torch.randn(2, 30, 2, generator=g), torch.randn(2, 30, 2, generator=g), (2, 30), 2
    labels = torch.randint(-1, classes, rows, generator=g)
    iou = torch.rand(rows, generator=g)
    return s, t, labels, iou


@pytest.mark.parametrize("name", TRUSTING)
def test_trust_none_is_the_loss_as_it_was_bit_for_bit(name):
    g = torch.Generator().manual_seed(0)
    for temperature in (1.0, 2.0, 4.0):
        s, t, labels, iou = _example(name, g)
        before = BEFORE[name](s, t, temperature=temperature)
        assert torch.equal(LOSSES[name](s, t, temperature=temperature), before)
        # the rows' ground truth is ignored under `none`
        assert torch.equal(LOSSES[name](s, t, temperature=temperature, trust="none", wrong_weight=0.3,
                                        row_labels=labels, row_iou=iou), before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TRUSTING)
def test_every_mode_is_zero_when_the_student_is_the_teacher(name, mode):
    s, _, labels, iou = _example(name, torch.Generator().manual_seed(1))
    loss = LOSSES[name](s, s.clone(), trust=mode, row_labels=labels, row_iou=iou)
    assert loss.dim() == 0 and loss.item() == 0.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TRUSTING)
def test_gradient_reaches_the_student_only(name, mode):
    s, t, labels, iou = _example(name, torch.Generator().manual_seed(2))
    s.requires_grad_(True)
    t.requires_grad_(True)
    iou.requires_grad_(True)  # a weight, never a target
    loss = LOSSES[name](s, t, trust=mode, wrong_weight=0.5, row_labels=labels, row_iou=iou)
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and iou.grad is None


# -- hand-made rows: the teacher right on some, wrong on one -----------------------------------
# per loss: (teacher logits, row labels, row IoU, the row the teacher gets wrong, the teacher's
# probability of each row's label, as the trust module defines it)
def _hand_made(name):
    if name == "kd_kl":
        # softmax over (background, person); labels 1, 0, 1, 0; row 2: person called background
        teacher = torch.tensor([[-2.0, 2.0], [2.0, -2.0], [1.5, -1.0], [3.0, 0.0]])
        labels = torch.tensor([1, 0, 1, 0])
        p_label = teacher.softmax(1)[torch.arange(4), labels]
        return teacher, labels, torch.tensor([0.8, 0.1, 0.6, 0.0]), 2, p_label
    if name == "soft_bce":
        # objectness; labels fg, bg, ignored, bg; row 3: background called an object (σ(1.5) ≈ 0.82)
        teacher = torch.tensor([[2.0], [-3.0], [1.0], [1.5]])
        labels = torch.tensor([1, 0, -1, 0])
        p = teacher[:, 0].sigmoid()
        return teacher, labels, torch.tensor([0.75, 0.2, 0.5, 0.1]), 3, torch.where(labels == 1, p, 1 - p)
    # one image, 4 anchors, sigmoid per (background, person) channel; labels person, bg, person, ignored;
    # row 2: the teacher's best is σ(-1) ≈ 0.27 < 0.5 on a person, so it predicts background
    teacher = torch.tensor([[[-4.0, 2.0], [-4.0, -3.0], [-4.0, -1.0], [-4.0, 3.0]]])
    labels = torch.tensor([[1, 0, 1, -1]])
    p = teacher.sigmoid()
    p_label = torch.where(labels > 0, p[..., 1], 1 - p.amax(-1))
    return teacher, labels, torch.tensor([[0.9, 0.0, 0.55, 0.4]]), 2, p_label


def _row_grads(name, student, teacher, **kwargs):
    """d loss / d student, per row: each row's contribution (normalisers are fixed by the teacher)."""
    student = student.clone().requires_grad_(True)
    loss = LOSSES[name](student, teacher, **kwargs)
    loss.backward()
    return loss.detach(), student.grad


def _contributions(name, student, teacher):
    """Each row's share of the plain loss (its normaliser is that of all rows)."""
    if name == "focal_kd":  # normalised by the sum of the teacher's focal weights over all anchors
        weight = teacher.sigmoid().amax(-1)[0] ** 2
        alone = torch.stack([focal_kd(student[:, k:k + 1], teacher[:, k:k + 1]) for k in range(weight.numel())])
        return weight * alone / weight.sum()
    rows = student.shape[0]
    return torch.stack([LOSSES[name](student[k:k + 1], teacher[k:k + 1]) for k in range(rows)]) / rows


@pytest.mark.parametrize("name", TRUSTING)
def test_label_trust_changes_the_loss_exactly_on_the_wrong_row(name):
    teacher, labels, iou, wrong, p_label = _hand_made(name)
    student = teacher + torch.randn(teacher.shape, generator=torch.Generator().manual_seed(3))
    flat = lambda x: x.reshape(labels.numel(), -1)  # noqa: E731  rows first
    right = torch.ones(labels.numel(), dtype=torch.bool)
    right[wrong] = False
    share = _contributions(name, student, teacher)
    none, g_none = _row_grads(name, student, teacher)
    torch.testing.assert_close(none, share.sum())
    assert share[wrong] > 0 and flat(g_none)[wrong].abs().sum() > 0
    for wrong_weight in (0.0, 0.5):
        label, g_label = _row_grads(name, student, teacher, trust="label", wrong_weight=wrong_weight,
                                    row_labels=labels, row_iou=iou)
        # the rows the teacher gets right keep their share (and gradient), bit for bit; the wrong row is scaled
        torch.testing.assert_close(label, share[right].sum() + wrong_weight * share[wrong])
        assert torch.equal(flat(g_label)[right], flat(g_none)[right])
        assert torch.equal(flat(g_label)[wrong], wrong_weight * flat(g_none)[wrong])
    # confidence and iou: each row scaled by its weight, ignored rows (label -1) by 1
    _, g_conf = _row_grads(name, student, teacher, trust="confidence", row_labels=labels)
    weight = torch.where(labels < 0, torch.ones_like(p_label), p_label).reshape(-1, 1)
    torch.testing.assert_close(flat(g_conf), weight * flat(g_none))
    _, g_iou = _row_grads(name, student, teacher, trust="iou", row_labels=labels, row_iou=iou)
    weight = torch.where(labels < 0, 1.0, torch.where(labels > 0, iou, p_label)).reshape(-1, 1)
    torch.testing.assert_close(flat(g_iou), weight * flat(g_none))


def test_ignored_rows_keep_their_kd_term_under_label_trust():
    teacher = torch.tensor([[2.0], [2.0]])  # both "object"
    student = torch.zeros(2, 1)
    labels = torch.tensor([-1, 0])  # ignored; background (the teacher is wrong)
    plain = soft_bce(student, teacher)
    trusted = soft_bce(student, teacher, trust="label", row_labels=labels)
    torch.testing.assert_close(trusted, plain / 2)  # only the ignored row is left, normalised by both


def test_losses_reject_bad_trust_and_missing_rows():
    s, t = torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"unknown trust 'labels'; choices: none, label, iou, confidence"):
        kd_kl(s, t, trust="labels")
    with pytest.raises(ValueError, match="wrong_weight must be >= 0"):
        kd_kl(s, t, trust="label", wrong_weight=-1.0)
    with pytest.raises(ValueError, match="needs row_labels"):
        kd_kl(s, t, trust="label")
    with pytest.raises(ValueError, match=r"kd_kl: row_labels \(3,\) do not match the \(4,\) rows"):
        kd_kl(s, t, trust="label", row_labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="needs row_iou"):
        focal_kd(s[None], t[None], trust="iou", row_labels=torch.zeros(1, 4, dtype=torch.int64))


def test_registry_asks_for_the_rows_only_when_trust_needs_them():
    spec = LOSSES["kd_kl"]
    assert spec.inputs_for({}) == () and spec.inputs_for({"trust": "none"}) == ()
    assert spec.inputs_for({"trust": "label"}) == spec.inputs_for({"trust": "confidence"}) == ("row_labels",)
    assert spec.inputs_for({"trust": "iou"}) == ("row_labels", "row_iou")
    assert all(LOSSES[name].params["trust"] == "none" and LOSSES[name].params["wrong_weight"] == 0.0
               for name in TRUSTING)
    assert not any("trust" in spec.params for name, spec in LOSSES.items() if name not in TRUSTING)


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("term, match", [
    ({"loss": "kd_kl", "trust": "labels"},
     r"levels.roi.logits.trust: unknown trust 'labels'; choices: none, label, iou, confidence"),
    ({"loss": "kd_kl", "trust": 1}, r"unknown trust 1; choices: none, label, iou, confidence"),
    ({"loss": "kd_kl", "trust": "label", "wrong_weight": -0.5}, r"levels.roi.logits.wrong_weight: must be >= 0"),
    ({"loss": "kd_kl", "wrong_weight": "none"}, r"wrong_weight: must be a number"),
    ({"loss": "bounded_l2", "trust": "label"}, r"loss 'bounded_l2' has no param 'trust'; params: weight, margin"),
])
def test_parse_config_checks_trust(term, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"distill": {"levels": {"roi.logits": term}}})


def test_trust_params_round_trip_through_plain_data():
    config = parse_config({"levels": {"roi.logits": {"loss": "kd_kl", "trust": "iou", "wrong_weight": 1}}})
    assert config.terms[0].params == {"trust": "iou", "wrong_weight": 1.0}
    assert parse_config(config.to_dict()).terms == config.terms


@pytest.fixture(scope="module")
def pair():
    """The default teacher/student pair (random init), shrunk."""
    t_preset, s_preset = get_preset(TEACHER), get_preset(STUDENT)
    torch.manual_seed(0)
    return (shrink(t_preset.build()), t_preset.hierarchy), (shrink(s_preset.build()), s_preset.hierarchy)


def test_build_checks_trust(pair):
    (teacher, t_spec), (student, s_spec) = pair
    with pytest.raises(ConfigError, match=r"levels.rpn.objectness.trust: unknown trust 'always'; choices: none, label"):
        Distiller.build(teacher, t_spec, student, s_spec, {"levels": {"rpn.objectness": {"loss": "soft_bce",
                                                                                          "trust": "always"}}})
    with pytest.raises(ConfigError, match=r"'mse' has no param 'trust'; params: weight"):
        Distiller.build(teacher, t_spec, student, s_spec, {"levels": {"neck.p3": {"loss": "mse", "trust": "label"}}})
    sneaky = DistillConfig((LossTerm("roi.logits", "kd_kl", 1.0, {"trust": "sometimes"}),))  # bypassed parsing
    with pytest.raises(ConfigError, match=r"kd/roi.logits/kd_kl: unknown trust 'sometimes'; choices: none, label"):
        Distiller(teacher, t_spec, student, s_spec, sneaky)


def test_fcos_student_cannot_trust_by_labels():
    preset = get_preset("fcos_resnet50_fpn.coco_person")
    model = shrink(preset.build(), size=64, max_size=80)
    levels = {"head.cls_logits": {"loss": "focal_kd", "trust": "label"}}
    with pytest.raises(ConfigError, match=r"kd/head.cls_logits/focal_kd: .*proposal_matcher.*FCOS.*trust: none"):
        Distiller.build(model, preset.hierarchy, model, preset.hierarchy, {"levels": levels})
    Distiller.build(model, preset.hierarchy, model, preset.hierarchy, {"levels": {"head.cls_logits": "focal_kd"}})


# -- the distiller ---------------------------------------------------------------------------
TRUST_LEVELS = {"rpn.objectness": {"loss": "soft_bce", "trust": "label", "wrong_weight": 0.0},
                "roi.logits": {"loss": "kd_kl", "trust": "label", "wrong_weight": 0.0}}
KEYS = {"kd/rpn.objectness/soft_bce", "kd/roi.logits/kd_kl"}


def _spy_row_truth(monkeypatch):
    seen = []
    original = distiller_module._StepInputs.row_truth

    def spy(self, role, names):
        out = original(self, role, names)
        seen.append((role, names, out))
        return out

    monkeypatch.setattr(distiller_module._StepInputs, "row_truth", spy)
    return seen


def test_distiller_step_with_label_trust(pair, monkeypatch):
    (teacher, t_spec), (student, s_spec) = pair
    plain = Distiller.build(teacher, t_spec, student, s_spec,
                            {"levels": {level: term["loss"] for level, term in TRUST_LEVELS.items()}})
    trusted = Distiller.build(teacher, t_spec, student, s_spec, {"levels": TRUST_LEVELS})
    seen = _spy_row_truth(monkeypatch)
    images, targets = make_batch()
    plain.train()
    torch.manual_seed(5)  # the same proposals sampled in both steps
    before = plain(images, targets)
    assert not seen  # without trust the rows' ground truth is never computed
    trusted.train()
    torch.manual_seed(5)
    out = trusted(images, targets)
    assert {k for k in out if k.startswith("kd/")} == KEYS
    assert all(v.dim() == 0 and math.isfinite(v.item()) for v in out.values())
    for key in KEYS:  # rows dropped, normaliser kept: never more than the plain term
        assert 0 <= out[key].item() <= before[key].item()
    for key in ("det/loss_classifier", "det/loss_objectness"):
        assert torch.equal(out[key], before[key])
    assert {role for role, _, _ in seen} == {"objectness", "class_logits"}
    for role, names, truth in seen:
        assert names == ["row_labels"] and set(truth) == {"row_labels"}
    try:
        sum(out.values()).backward()
        assert all(p.grad is None for p in teacher.parameters())
    finally:
        trusted.zero_grad(set_to_none=True)


def test_rows_ground_truth_agrees_with_torchvision_assignments(pair, monkeypatch):
    (teacher, t_spec), (student, s_spec) = pair
    levels = {level: {**term, "trust": "iou"} for level, term in TRUST_LEVELS.items()}
    distiller = Distiller.build(teacher, t_spec, student, s_spec, {"levels": levels})
    seen = _spy_row_truth(monkeypatch)
    images, targets = make_batch(seed=1)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # no pedestrian
    distiller.train()
    out = distiller(images, targets)
    assert all(math.isfinite(out[key].item()) for key in KEYS)
    truth = {role: got for role, _, got in seen}
    roi, rpn = truth["class_logits"], truth["objectness"]
    # sampled proposals: foreground at IoU >= 0.5 (torchvision's box_fg_iou_thresh), background below
    labels, iou = roi["row_labels"], roi["row_iou"]
    assert labels.dtype == torch.int64 and labels.shape == iou.shape and (labels > 0).any()
    assert (iou[labels > 0] >= 0.5).all() and (iou[labels == 0] < 0.5).all()
    # anchors: background below 0.3, ignored between 0.3 and 0.7; the image without boxes is all background
    labels, iou = rpn["row_labels"], rpn["row_iou"]
    assert set(labels.unique().tolist()) <= {-1, 0, 1} and (labels == 1).any()
    assert (iou[labels == 0] < 0.3).all() and ((iou[labels == -1] >= 0.3) & (iou[labels == -1] < 0.7)).all()
    second = labels.reshape(2, -1)[1]
    assert (second == 0).all() and (iou.reshape(2, -1)[1] == 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_twin_distiller_trust_modes_are_zero(mode):
    preset = get_preset(STUDENT)
    torch.manual_seed(0)
    student = shrink(preset.build())
    teacher = copy.deepcopy(student)
    levels = {level: {**term, "trust": mode} for level, term in TRUST_LEVELS.items()}
    distiller = Distiller.build(teacher, preset.hierarchy, student, preset.hierarchy, {"levels": levels})
    distiller.train()
    freeze_batchnorm(student)
    out = distiller(*make_batch(n=1))
    assert all(out[key].item() == 0.0 for key in KEYS)


def test_single_stage_retinanet_trusts_by_its_own_matcher(monkeypatch):
    preset = get_preset("retinanet_resnet50_fpn.coco_person")
    torch.manual_seed(0)
    student = shrink(preset.build(), size=64, max_size=80)
    teacher = copy.deepcopy(student)
    images, targets = make_batch(n=2)
    images = [F.interpolate(im[None], size=(64, 80))[0] for im in images]
    targets = [{"boxes": t["boxes"] / 2, "labels": t["labels"]} for t in targets]
    seen = _spy_row_truth(monkeypatch)
    levels = {"head.cls_logits": {"loss": "focal_kd", "trust": "iou"}}
    distiller = Distiller.build(teacher, preset.hierarchy, student, preset.hierarchy, {"levels": levels})
    distiller.train()
    freeze_batchnorm(student)
    out = distiller(images, targets)
    assert out["kd/head.cls_logits/focal_kd"].item() == 0.0
    (role, names, truth), = seen
    labels, iou = truth["row_labels"], truth["row_iou"]
    assert role == "dense_logits" and names == ["row_labels", "row_iou"]
    assert labels.shape == iou.shape and labels.shape[0] == 2 and (labels == 1).any()
    # RetinaNet's matcher: foreground from IoU 0.5 (or an object's best anchor), background below 0.4
    assert (iou[labels == 0] < 0.4).all() and ((iou[labels == -1] >= 0.4) & (iou[labels == -1] < 0.5)).all()
    with torch.no_grad():
        for param in student.head.parameters():
            param.add_(0.05 * torch.randn_like(param))
    out = distiller(images, targets)
    assert math.isfinite(out["kd/head.cls_logits/focal_kd"].item()) and out["kd/head.cls_logits/focal_kd"].item() > 0


def test_shipped_trust_config_is_the_full_one_with_label_trust_on_the_soft_targets():
    from pathlib import Path

    from hkd.distill.config import load_config
    from hkd.train.config import load_config as load_run_config

    configs = Path(__file__).resolve().parents[2] / "assets" / "configs"
    specs = get_preset(TEACHER).hierarchy, get_preset(STUDENT).hierarchy
    full = load_config(configs / "distill_full.yaml", *specs)
    trust = load_config(configs / "distill_trust.yaml", *specs)
    assert trust.schedule == full.schedule and trust.adapters == full.adapters
    assert [t.key for t in trust.terms] == [t.key for t in full.terms]
    for before, after in zip(full.terms, trust.terms):
        extra = {"trust": "label", "wrong_weight": 0.0} if after.key in KEYS else {}
        assert after.params == {**before.params, **extra} and after.weight == before.weight, after.key
    run = load_run_config(configs / "student_hkd_trust.yaml")
    assert Path(run.distill) == configs / "distill_trust.yaml"
    base = load_run_config(configs / "student_hkd.yaml")  # the same run otherwise
    assert (run.model, run.data, run.train, run.teacher) == (base.model, base.data, base.train, base.teacher)
