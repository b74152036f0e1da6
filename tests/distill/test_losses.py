"""Distillation losses: zero at equality, gradients only into the student, the formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from hkd.distill.losses import (
    INPUTS,
    LOSSES,
    attention,
    attention_map,
    bounded_l2,
    class_deltas,
    focal_kd,
    imitation_mask,
    kd_kl,
    masked_mse,
    mse,
    box_area_mask,
    decoupled_nmse,
    pearson,
    register,
    soft_bce,
)

CELL = torch.tensor([[-8.0, -8.0, 8.0, 8.0], [-6.0, -12.0, 6.0, 12.0]])  # one square, one tall anchor
BOXES = [torch.tensor([[16.0, 8.0, 40.0, 56.0]]), torch.zeros(0, 4)]


def _example(name: str, g: torch.Generator):
    """(student, teacher, inputs) of the shapes the distiller passes to loss ``name``."""
    if name in ("mse", "nmse", "attention", "pearson"):
        return torch.randn(2, 8, 6, 5, generator=g), torch.randn(2, 8, 6, 5, generator=g), {}
    if name in ("masked_mse", "masked_nmse"):
        inputs = {"gt_boxes": BOXES, "cell_anchors": CELL, "stride": (8, 8)}
        return torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 8, 8, generator=g), inputs
    if name == "decoupled_nmse":
        inputs = {"gt_boxes": BOXES, "stride": (8, 8)}
        return torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 8, 8, generator=g), inputs
    if name == "soft_bce":
        return torch.randn(50, 1, generator=g), torch.randn(50, 1, generator=g), {}
    if name == "bounded_l2":
        return torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g), {"target": torch.randn(7, 4, generator=g), "num_samples": 20}
    if name == "kd_kl":
        return torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g), {}
    if name == "focal_kd":
        return torch.randn(2, 30, 2, generator=g), torch.randn(2, 30, 2, generator=g), {}
    raise AssertionError(f"no example for loss {name!r}: add one")


@pytest.mark.parametrize("name", list(LOSSES))
def test_zero_when_student_equals_teacher(name):
    student, _, inputs = _example(name, torch.Generator().manual_seed(0))
    loss = LOSSES[name](student, student.clone(), **inputs)
    assert loss.dim() == 0
    assert loss.item() == 0.0


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_reaches_the_student_only(name):
    student, teacher, inputs = _example(name, torch.Generator().manual_seed(1))
    if name == "bounded_l2":  # make the student worse than the teacher so the bound is active
        teacher = inputs["target"].clone()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss = LOSSES[name](student, teacher, **inputs)
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_registry_params_come_from_signatures():
    assert LOSSES["kd_kl"].params == {"temperature": 2.0, "bg_weight": 0.5, "trust": "none", "wrong_weight": 0.0}
    assert LOSSES["kd_kl"].inputs == () and LOSSES["kd_kl"].optional_inputs == ("row_labels", "row_iou")
    assert LOSSES["masked_mse"].params == {"psi": 0.5}
    assert set(LOSSES["masked_mse"].inputs) == {"gt_boxes", "cell_anchors", "stride"}
    assert LOSSES["bounded_l2"].inputs == ("target", "num_samples")
    assert LOSSES["mse"].params == {} and LOSSES["attention"].adapt == "spatial"
    assert all(set(spec.inputs) <= set(INPUTS) for spec in LOSSES.values())


def test_register_rejects_bad_losses():
    with pytest.raises(ValueError, match="twice"):
        register("mse", mse, ("feature",))

    def needs_unknown(student, teacher, *, proposals):
        return student.sum()

    with pytest.raises(ValueError, match="proposals"):
        register("needs_unknown", needs_unknown, ("feature",))
    with pytest.raises(ValueError, match="roles"):
        register("bad_role", mse, ("nowhere",))
    assert "needs_unknown" not in LOSSES and "bad_role" not in LOSSES


# -- feature -------------------------------------------------------------------
def test_mse_is_the_mean_squared_difference():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(mse(s, t), ((s - t) ** 2).mean())
    with pytest.raises(ValueError, match="adapter"):
        mse(s, torch.randn(2, 5, 4, 4))


def test_imitation_mask_marks_locations_near_boxes():
    # an 8x8 map at stride 8; a 16x16 box centred on cell (y=3, x=2) matches the square anchor there exactly
    box = torch.tensor([[8.0, 16.0, 24.0, 32.0]])
    mask = imitation_mask([box, torch.zeros(0, 4)], CELL, (8, 8), 8, psi=0.5)
    assert mask.shape == (2, 8, 8)
    assert mask[0, 3, 2] == 1  # the best anchor's cell
    assert mask[0, 7, 7] == 0 and mask[0, 0, 7] == 0  # far away
    assert mask[1].sum() == 0  # no boxes, nothing to imitate
    strict = imitation_mask([box], CELL, (8, 8), 8, psi=1.0)
    assert strict.sum() == 0  # IoU > 1·max is impossible
    loose = imitation_mask([box], CELL, (8, 8), 8, psi=0.1)
    assert loose.sum() > mask[0].sum()  # a lower psi imitates more locations


def test_masked_mse_only_counts_masked_locations():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    inputs = {"gt_boxes": BOXES, "cell_anchors": CELL, "stride": (8, 8)}
    mask = imitation_mask(BOXES, CELL, (8, 8), 8)
    assert 0 < mask.sum() < mask.numel()
    expected = (((s - t) ** 2) * mask[:, None]).sum() / (mask.sum() * 4)
    torch.testing.assert_close(masked_mse(s, t, **inputs), expected)
    t_far = t.clone()
    t_far[mask[:, None].expand_as(t) == 0] += 100.0  # change the teacher only where nothing is imitated
    torch.testing.assert_close(masked_mse(s, t_far, **inputs), expected)
    empty = {"gt_boxes": [torch.zeros(0, 4)] * 2, "cell_anchors": CELL, "stride": (8, 8)}
    assert masked_mse(s, t, **empty).item() == 0.0


def test_attention_map_is_normalised_and_channel_free():
    f = torch.randn(3, 16, 5, 7)
    att = attention_map(f)
    assert att.shape == (3, 35)
    torch.testing.assert_close(att.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(att, F.normalize(f.pow(2).mean(1).flatten(1), dim=1))
    # channel count does not matter: the same map repeated has the same attention
    assert attention(f.repeat(1, 3, 1, 1), f).item() == pytest.approx(0.0, abs=1e-12)
    assert attention(f, torch.randn(3, 16, 5, 7)).item() > 0


# -- RPN -----------------------------------------------------------------------
def test_soft_bce_is_the_binary_kl_times_t_squared():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(40, 1, generator=g), torch.randn(40, 1, generator=g)
    for temp in (1.0, 3.0):
        ps, pt = torch.sigmoid(s / temp), torch.sigmoid(t / temp)
        kl = pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()
        torch.testing.assert_close(soft_bce(s, t, temperature=temp), kl.mean() * temp**2)
    assert soft_bce(s, t).item() > 0


def test_bounded_l2_pulls_only_while_the_student_is_worse():
    target = torch.zeros(3, 4)
    teacher = torch.full((3, 4), 0.5)  # teacher error 1.0 per row
    worse = torch.full((3, 4), 1.0)    # student error 4.0 per row
    better = torch.full((3, 4), 0.25)  # student error 0.25 per row
    assert bounded_l2(worse, teacher, target=target, num_samples=3).item() == pytest.approx(4.0)
    assert bounded_l2(better, teacher, target=target, num_samples=3).item() == 0.0
    # a margin keeps pulling a student that is better by less than the margin
    assert bounded_l2(better, teacher, target=target, num_samples=3, margin=1.0).item() == pytest.approx(0.25)
    mixed = torch.cat([worse[:1], better[1:]])
    assert bounded_l2(mixed, teacher, target=target, num_samples=3).item() == pytest.approx(4.0 / 3)
    # normalised like torchvision's box losses: by every sampled row, not by the positives
    assert bounded_l2(worse, teacher, target=target, num_samples=12).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_samples"):
        bounded_l2(worse, teacher, target=target, num_samples=2)
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = bounded_l2(empty, torch.zeros(0, 4), target=torch.zeros(0, 4), num_samples=8)
    loss.backward()
    assert loss.item() == 0.0


# -- ROI -----------------------------------------------------------------------
def test_kd_kl_matches_the_formula_and_downweights_background():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(10, 3, generator=g), torch.randn(10, 3, generator=g)
    temp, bg = 2.0, 0.5
    ps, pt = F.softmax(s / temp, 1), F.softmax(t / temp, 1)
    kl = (pt * (pt.log() - ps.log())).sum(1)
    w = torch.where(t.argmax(1) == 0, torch.tensor(bg), torch.tensor(1.0))
    torch.testing.assert_close(kd_kl(s, t, temperature=temp, bg_weight=bg), (w * kl).mean() * temp**2)
    background = t.clone()
    background[:, 0] = 10.0  # the teacher calls every proposal background
    assert kd_kl(s, background, bg_weight=0.0).item() == 0.0
    assert kd_kl(s, background, bg_weight=1.0).item() > 0


def test_class_deltas_picks_the_block_of_each_label():
    deltas = torch.arange(3 * 12, dtype=torch.float32).reshape(3, 12)  # 3 classes
    picked = class_deltas(deltas, torch.tensor([0, 2, 1]))
    torch.testing.assert_close(picked, torch.stack([deltas[0, 0:4], deltas[1, 8:12], deltas[2, 4:8]]))
    assert class_deltas(torch.zeros(0, 12), torch.zeros(0, dtype=torch.int64)).shape == (0, 4)


# -- single-stage --------------------------------------------------------------
def test_focal_kd_weights_anchors_by_teacher_confidence():
    # anchor 0: teacher confident (p≈0.95); anchor 1: teacher unsure of background (p≈0.05)
    teacher = torch.tensor([[[3.0, -3.0], [-3.0, -3.0]]])
    student = teacher.clone()
    student[0, 0, 0] -= 1.0  # a small mistake where the teacher is confident
    student[0, 1, 0] += 4.0  # a large one where it sees nothing

    def kl(s, t):
        ps, pt = torch.sigmoid(s), torch.sigmoid(t)
        return (pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()).sum(-1)

    per_anchor = kl(student, teacher)[0]
    w = torch.sigmoid(teacher).amax(-1)[0] ** 2
    torch.testing.assert_close(focal_kd(student, teacher, gamma=2.0), (w * per_anchor).sum() / w.sum())
    torch.testing.assert_close(focal_kd(student, teacher, gamma=0.0), per_anchor.mean())
    # the confident anchor dominates: the focal loss is close to its KL, far from the other's
    assert per_anchor[1] > 3 * per_anchor[0]
    focal = focal_kd(student, teacher, gamma=2.0).item()
    assert abs(focal - per_anchor[0].item()) < 0.05 * abs(per_anchor[0].item() - per_anchor[1].item())
    t3 = focal_kd(student, teacher, temperature=3.0).item()
    assert math.isfinite(t3) and t3 > 0


def test_normalised_hint_losses_are_scale_free():
    from hkd.distill.losses.feature import masked_mse, masked_nmse, mse, nmse

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 8, 8, generator=g)
    inputs = {"gt_boxes": BOXES, "cell_anchors": CELL, "stride": (8, 8)}
    # an all-zero student scores exactly 1, whatever the teacher's scale
    for scale in (0.01, 1.0, 100.0):
        torch.testing.assert_close(nmse(torch.zeros_like(t), scale * t), torch.tensor(1.0))
        torch.testing.assert_close(masked_nmse(torch.zeros_like(t), scale * t, **inputs), torch.tensor(1.0))
    # and scaling both maps leaves the normalised losses unchanged, unlike the plain ones
    torch.testing.assert_close(nmse(10 * s, 10 * t), nmse(s, t))
    torch.testing.assert_close(masked_nmse(10 * s, 10 * t, **inputs), masked_nmse(s, t, **inputs))
    assert float(mse(10 * s, 10 * t)) > 50 * float(mse(s, t))
    assert float(masked_mse(10 * s, 10 * t, **inputs)) > 50 * float(masked_mse(s, t, **inputs))


def test_pearson_is_one_minus_the_correlation_and_blind_to_scale_and_offset():
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(2, 4, 6, 5, generator=g)
    scale = torch.rand(1, 4, 1, 1, generator=g) + 0.5
    offset = torch.randn(1, 4, 1, 1, generator=g)
    assert pearson(teacher * scale + offset, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert pearson(-teacher, teacher).item() == pytest.approx(2.0, rel=1e-5)  # anti-correlated: the worst
    student = torch.randn(2, 4, 6, 5, generator=g)
    s, t = student.flatten(2), teacher.flatten(2)
    r = torch.stack([torch.corrcoef(torch.stack([s[n, c], t[n, c]]))[0, 1] for n in range(2) for c in range(4)])
    assert pearson(student, teacher).item() == pytest.approx((1 - r).mean().item(), rel=1e-4)
    assert torch.isfinite(pearson(torch.zeros(1, 2, 3, 3), torch.randn(1, 2, 3, 3)))  # a flat channel
    with pytest.raises(ValueError, match="N, C, H, W"):
        pearson(torch.randn(3, 4), torch.randn(3, 4))


def test_box_area_mask_weights_each_box_by_its_area():
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 0.0, 64.0, 64.0]]), torch.zeros(0, 4)]
    mask = box_area_mask(boxes, (8, 8), 8)
    assert mask.shape == (2, 8, 8)
    assert mask[0, :2, :2].eq(1 / 4).all()  # a 2×2-cell box: each cell 1/4
    assert mask[0, :, 4:].eq(1 / 32).all()  # a 4×8-cell box: each cell 1/32
    assert mask[0].sum().item() == pytest.approx(2.0)  # every box sums to 1: small people count as much
    assert mask[1].eq(0).all()


def test_decoupled_nmse_keeps_foreground_and_background_apart():
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(1, 3, 8, 8, generator=g)
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]  # the top-left 2×2 cells
    fg_only, bg_only = teacher.clone(), teacher.clone()
    fg_only[..., :2, :2] = 0.0  # wrong in the box only
    bg_only[..., 4:, 4:] = 0.0  # wrong outside it only
    inputs = {"gt_boxes": boxes, "stride": (8, 8)}
    # an all-zero student in a part scores 1 there (relative to the teacher's energy): fg 1, bg the zeroed share
    assert decoupled_nmse(fg_only, teacher, **inputs, fg_weight=1.0, bg_weight=0.0).item() == pytest.approx(1.0)
    assert decoupled_nmse(fg_only, teacher, **inputs, fg_weight=0.0, bg_weight=1.0).item() == 0.0
    assert decoupled_nmse(bg_only, teacher, **inputs, fg_weight=1.0, bg_weight=0.0).item() == 0.0
    share = teacher[..., 4:, 4:].pow(2).sum() / (teacher.pow(2).sum() - teacher[..., :2, :2].pow(2).sum())
    assert decoupled_nmse(bg_only, teacher, **inputs, fg_weight=0.0, bg_weight=1.0).item() == pytest.approx(share.item(), rel=1e-5)
    # no boxes: only the background part
    assert decoupled_nmse(fg_only, teacher, gt_boxes=[torch.zeros(0, 4)], stride=(8, 8)).item() == pytest.approx(
        0.5 * (teacher[..., :2, :2].pow(2).sum() / teacher.pow(2).sum()).item(), rel=1e-5)
    with pytest.raises(ValueError, match="fg_weight"):
        decoupled_nmse(teacher, teacher, **inputs, fg_weight=-1.0)
    with pytest.raises(ValueError, match="2 sets of boxes for 1 images"):
        decoupled_nmse(teacher, teacher, gt_boxes=boxes * 2, stride=(8, 8))
