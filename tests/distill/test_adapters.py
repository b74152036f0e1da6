"""Adapters are built from the two hierarchy specs: conv / linear / resize / identity / not comparable."""
import pytest
import torch
from torch import nn

from hkd.distill.adapters import adapter_key, adapter_plan, build_adapters, comparable_levels
from hkd.models.hierarchy import HierarchySpec, Level
from hkd.models.presets import get_preset

from .conftest import STUDENT, TEACHER


@pytest.fixture(scope="module")
def specs():
    return get_preset(TEACHER).hierarchy, get_preset(STUDENT).hierarchy


def test_default_pair_plan_covers_backbone_and_neck(specs):
    rows = {row["level"]: row for row in adapter_plan(*specs)}
    for level in ("backbone.c2", "backbone.c3", "backbone.c4", "backbone.c5",
                  "neck.p3", "neck.p4", "neck.p5", "neck.p6"):
        assert rows[level]["comparable"], level
    assert rows["backbone.c2"]["adapter"] == "—" and rows["backbone.c2"]["params"] == 0  # 24 channels in both
    assert rows["backbone.c3"]["adapter"] == "1×1 conv 40→48"
    assert rows["backbone.c5"]["adapter"] == "1×1 conv 192→352"
    assert rows["neck.p3"]["adapter"] == "1×1 conv 64→256"
    assert rows["neck.p3"]["params"] == 64 * 256 + 256
    assert (rows["neck.p6"]["student_stride"], rows["neck.p6"]["teacher_stride"]) == (64, 64)
    assert rows["roi.features"]["adapter"] == "1×1 conv 64→256"
    assert rows["roi.embedding"]["adapter"] == "linear 128→1024"
    for level in ("rpn.objectness", "rpn.deltas", "roi.logits", "roi.deltas"):
        assert rows[level]["adapter"] == "—" and rows[level]["comparable"], level
    assert list(rows) == specs[1].names  # same levels, in the student's computation order
    assert set(rows[level].keys()) == {"level", "kind", "student_channels", "student_stride", "teacher_channels",
                                       "teacher_stride", "adapter", "comparable", "params"}


def test_adapters_map_student_shapes_to_teacher_shapes(specs):
    teacher_spec, student_spec = specs
    adapters = build_adapters(teacher_spec, student_spec, ["backbone.c2", "neck.p3", "roi.features", "roi.embedding"])
    assert set(adapters.keys()) == {"backbone_c2", "neck_p3", "roi_features", "roi_embedding"}
    assert adapter_key("neck.p3") == "neck_p3"
    x = torch.randn(2, 24, 16, 20)
    assert adapters["backbone_c2"](x, (16, 20)) is x  # identity where the shapes agree
    assert adapters["neck_p3"](torch.randn(2, 64, 16, 20), (16, 20)).shape == (2, 256, 16, 20)
    assert adapters["neck_p3"](torch.randn(2, 64, 16, 20), (16, 20), channels=False).shape == (2, 64, 16, 20)
    assert adapters["roi_features"](torch.randn(5, 64, 7, 7), (7, 7)).shape == (5, 256, 7, 7)
    assert adapters["roi_embedding"](torch.randn(5, 128)).shape == (5, 1024)


def test_adapter_init_preserves_the_signal_scale(specs):
    adapters = build_adapters(*specs, ["neck.p3", "roi.embedding"])
    conv = adapters["neck_p3"].channel
    linear = adapters["roi_embedding"].channel
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    for layer, fan_in in ((conv, 64), (linear, 128)):
        assert layer.weight.std().item() == pytest.approx(fan_in**-0.5, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    x = torch.randn(4, 64, 32, 32)
    assert conv(x).pow(2).mean().item() == pytest.approx(1.0, rel=0.25)


def _spec(levels):
    return HierarchySpec(tuple(levels))


def test_different_strides_resize_to_the_teacher_size():
    teacher = _spec([Level("neck.p3", "a", 32, 8)])
    student = _spec([Level("neck.p3", "a", 16, 16)])
    (row,) = adapter_plan(teacher, student)
    assert row["adapter"] == "1×1 conv 16→32 + bilinear ×2 (stride 16→8)"
    adapter = build_adapters(teacher, student, ["neck.p3"])["neck_p3"]
    assert adapter(torch.randn(1, 16, 8, 10), (16, 20)).shape == (1, 32, 16, 20)
    assert adapter(torch.randn(1, 16, 8, 10), (16, 20), channels=False).shape == (1, 16, 16, 20)


def test_not_comparable_levels_are_reported_and_refused():
    teacher = _spec([Level("rpn.objectness", "rpn.head", 9, None, select=0, kind="maps"),
                     Level("neck.p2", "x", 256, 4), Level("roi.logits", "p", 91, None, select=0, kind="vectors")])
    student = _spec([Level("rpn.objectness", "rpn.head", 6, None, select=0, kind="maps"),
                     Level("roi.logits", "p", 2, None, select=0, kind="vectors")])
    rows = {row["level"]: row for row in adapter_plan(teacher, student)}
    assert rows["rpn.objectness"]["adapter"].startswith("not comparable") and not rows["rpn.objectness"]["comparable"]
    assert "anchors" in rows["rpn.objectness"]["adapter"]
    assert not rows["roi.logits"]["comparable"]
    assert rows["neck.p2"]["adapter"] == "not comparable (only the teacher has it)"
    assert comparable_levels(teacher, student) == []
    with pytest.raises(ValueError, match="rpn.objectness"):
        build_adapters(teacher, student, ["rpn.objectness"])
    with pytest.raises(ValueError, match="neck.p2.*student"):
        build_adapters(teacher, student, ["neck.p2"])


def test_plan_between_presets_of_different_families_of_levels(specs):
    resnet = get_preset("fasterrcnn_resnet50_fpn.coco_person").hierarchy
    rows = {row["level"]: row for row in adapter_plan(resnet, specs[1])}
    assert rows["neck.p2"]["comparable"] is False  # the ResNet FPN has P2, the student does not
    assert rows["backbone.c3"]["adapter"] == "1×1 conv 40→512"
    assert rows["roi.embedding"]["adapter"] == "linear 128→1024"


def test_levels_without_a_loss_say_so():
    retinanet = get_preset("retinanet_resnet50_fpn.coco_person").hierarchy
    rows = {row["level"]: row for row in adapter_plan(retinanet, retinanet)}
    assert rows["head.cls_logits"]["comparable"] and rows["head.cls_logits"]["adapter"] == "—"
    assert rows["head.bbox_deltas"]["adapter"] == "not distilled (no loss applies to this level)"
    assert not rows["head.bbox_deltas"]["comparable"]
    assert rows["neck.p7"]["adapter"] == "—"


def _ls_adapter(cs, ct, *, resize=False, linear=False):
    layer = nn.Linear(cs, ct) if linear else nn.Conv2d(cs, ct, kernel_size=1)
    from hkd.distill.adapters import LevelAdapter
    return LevelAdapter(layer, resize=resize).use_least_squares()


def test_least_squares_fit_recovers_a_linear_map_across_strides():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    student = torch.randn(2, 4, 8, 10, generator=g)
    # the teacher is a linear map of the student, at twice the resolution (a finer stride)
    up = torch.nn.functional.interpolate(student, size=(16, 20), mode="bilinear", align_corners=False)
    teacher = torch.einsum("oc,nchw->nohw", weight, up) + bias[None, :, None, None]
    adapter = _ls_adapter(4, 6, resize=True)
    assert not any(p.requires_grad for p in adapter.parameters())
    before = (adapter(student, (16, 20)) - teacher).pow(2).mean()
    adapter.fit_least_squares(student, teacher, momentum=0.9, ridge=1e-9)
    after = (adapter(student, (16, 20)) - teacher).pow(2).mean()
    assert after < 1e-8 * before
    torch.testing.assert_close(adapter.channel.weight[:, :, 0, 0], weight, atol=1e-4, rtol=1e-4)
    assert int(adapter.fits) == 1


def test_least_squares_moments_decay_with_momentum_and_ridge_shrinks():
    g = torch.Generator().manual_seed(1)
    adapter = _ls_adapter(3, 2, linear=True)
    a_x, b_x = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    a_y, b_y = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    adapter.fit_least_squares(a_x, a_y, momentum=0.75, ridge=1e-9)
    adapter.fit_least_squares(b_x, b_y, momentum=0.75, ridge=1e-9)
    # the weights solve the weighted problem 0.75·(batch a) + 0.25·(batch b)
    x = torch.cat([a_x, b_x]).double()
    x1 = torch.cat([x, torch.ones(100, 1, dtype=torch.float64)], dim=1)
    w = torch.cat([torch.full((50,), 0.75), torch.full((50,), 0.25)]).double()[:, None]
    solution = torch.linalg.solve(x1.T @ (w * x1), x1.T @ (w * torch.cat([a_y, b_y]).double()))
    torch.testing.assert_close(adapter.channel.weight.double(), solution[:-1].T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(adapter.channel.bias.double(), solution[-1], atol=1e-5, rtol=1e-5)
    strong = _ls_adapter(3, 2, linear=True)
    strong.fit_least_squares(a_x, a_y, ridge=100.0)
    first = torch.cat([a_x.double(), torch.ones(50, 1, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(strong.moment_xx, first.T @ first / 50)  # the ridge stays out of the moments
    assert strong.channel.weight.norm() < 0.1 * adapter.channel.weight.norm()
    assert set(adapter.state_dict()) >= {"moment_xx", "moment_xy", "fits"}  # resumable


def test_least_squares_needs_a_switched_conv_adapter():
    from hkd.distill.adapters import LevelAdapter
    with pytest.raises(RuntimeError, match="use_least_squares"):
        LevelAdapter(nn.Conv2d(2, 3, 1)).fit_least_squares(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))
    identity = LevelAdapter(nn.Identity()).use_least_squares()
    assert not identity.learned and not hasattr(identity, "moment_xx")


_RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch import nn
from hkd.distill.adapters import LevelAdapter
rank, world, store, data, out = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
x, y = torch.load(data)
adapter = LevelAdapter(nn.Linear(3, 2)).use_least_squares()
share = slice(0, 30) if rank == 0 else slice(30, 100)  # uneven shares: the row counts must weigh them
adapter.fit_least_squares(x[share], y[share], momentum=0.75, ridge=1e-3)
share = slice(0, 100) if rank == 0 else slice(0, 0)  # a rank with no rows still takes part
adapter.fit_least_squares(x[share] * 2, y[share], momentum=0.75, ridge=1e-3)
torch.save(adapter.state_dict(), out)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_least_squares_moments_are_summed_over_distributed_ranks(tmp_path):
    import subprocess
    import sys

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(100, 3, generator=g), torch.randn(100, 2, generator=g)
    torch.save((x, y), tmp_path / "data.pt")
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path / "store"),
                               str(tmp_path / "data.pt"), str(tmp_path / f"rank{rank}.pt")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in (0, 1)]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
    single = _ls_adapter(3, 2, linear=True)
    single.fit_least_squares(x, y, momentum=0.75, ridge=1e-3)  # one process, the whole batch
    single.fit_least_squares(x * 2, y, momentum=0.75, ridge=1e-3)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in single.state_dict().items():
            # the moments are float32 products summed in float64: the ranks' partial products round
            # apart from the single process's by a float32 ulp (~1e-7 relative, CPU-kernel dependent)
            torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-7, msg=f"rank {rank}: {key}")
    # without the sum, rank 0 would have fitted its own 30 rows only: another adapter
    whole, alone = _ls_adapter(3, 2, linear=True), _ls_adapter(3, 2, linear=True)
    whole.fit_least_squares(x, y, momentum=0.75, ridge=1e-3)
    alone.fit_least_squares(x[:30], y[:30], momentum=0.75, ridge=1e-3)
    assert (alone.channel.weight - whole.channel.weight).abs().max() > 0.01
