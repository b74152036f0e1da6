"""prepare_for_inference: folded frozen norms and channels-last change speed, not results."""
import pytest
import torch
from timm.layers import FrozenBatchNormAct2d
from torchvision.ops import FrozenBatchNorm2d

from hkd.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hkd.models.optimize import count_fusable, fuse_frozen_bn, prepare_for_inference
from hkd.models.presets import build_detector, get_preset
from hkd.models.taps import Tap

STUDENT = "hkd_frcnn_lite0.student"


@torch.no_grad()
def _randomised(name: str) -> torch.nn.Module:
    """A preset whose frozen norms hold non-trivial statistics (fresh ones are identities)."""
    torch.manual_seed(0)
    model = build_detector(name).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNormAct2d, FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            n = m.weight.numel()
            m.weight.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model


def _image(seed=0, h=224, w=288):
    return [torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("name", [STUDENT, "fasterrcnn_mobilenet_v3_large_320_fpn.coco_person"])
def test_prepared_model_gives_the_same_features_and_detections(name):
    model = _randomised(name)
    spec = get_preset(name).hierarchy
    levels = [lv.name for lv in spec if lv.name.startswith(("backbone.", "neck."))]
    before = count_fusable(model)
    assert before > 10
    with torch.no_grad(), Tap(model, spec, levels, detach=True) as tap:
        ref = model(_image())[0]
    ref_levels = {k: tap[k].clone() for k in levels}
    prepare_for_inference(model)
    assert count_fusable(model) == 0
    assert not any(isinstance(m, (FrozenBatchNormAct2d, FrozenBatchNorm2d, torch.nn.BatchNorm2d))
                   for m in model.modules())
    with torch.no_grad(), Tap(model, spec, levels, detach=True) as tap:
        out = model(_image())[0]
    for k in levels:
        scale = float(ref_levels[k].abs().max())  # float rounding grows with depth and magnitude
        torch.testing.assert_close(tap[k], ref_levels[k], rtol=1e-3, atol=1e-4 * scale, msg=k)
    assert out["boxes"].shape == ref["boxes"].shape
    torch.testing.assert_close(out["scores"], ref["scores"], rtol=1e-3, atol=1e-3)


def test_fold_changes_the_weights_when_the_statistics_are_not_trivial():
    model = _randomised(STUDENT)
    stem = model.backbone.body.conv_stem.weight.clone()
    fuse_frozen_bn(model)
    assert not torch.allclose(model.backbone.body.conv_stem.weight, stem)
    assert model.backbone.body.conv_stem.bias is not None


def test_batch_norm_in_training_mode_is_left_alone():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert count_fusable(net) == 0
    fuse_frozen_bn(net)
    assert isinstance(net[1], torch.nn.BatchNorm2d)
    assert count_fusable(net.eval()) == 1


def test_load_checkpoint_inference_prepares_the_model(tmp_path):
    model = _randomised(STUDENT)
    path = save_checkpoint(tmp_path / "s.safetensors", model, CheckpointMeta(preset=STUDENT))
    plain = load_checkpoint(path).model
    fast = load_checkpoint(path, inference=True).model
    assert count_fusable(plain) > 0 and count_fusable(fast) == 0
    assert not fast.training
    with torch.no_grad():
        a, b = plain(_image(3))[0], fast(_image(3))[0]
    torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-4, atol=1e-4)
