"""Taps capture exactly the submodule outputs and leave nothing attached."""
import threading

import pytest
import torch

from hkd.models.presets import build_detector, get_preset
from hkd.models.taps import Tap, count_hooks, resolve_module

PRESET = "hkd_frcnn_lite0.student"


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_detector(PRESET).eval()


@pytest.fixture(scope="module")
def spec():
    return get_preset(PRESET).hierarchy


def _image(seed: int, h: int = 192, w: int = 256) -> list[torch.Tensor]:
    return [torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))]


def test_tapped_tensors_equal_direct_outputs(student, spec):
    images = _image(0)
    with torch.no_grad(), Tap(student, spec, detach=True) as tap:
        student(images)
    # recompute the hierarchy directly, module by module
    with torch.no_grad():
        batch, _ = student.transform(images)
        feats = student.backbone.body(batch.tensors)
        pyramid = student.backbone(batch.tensors)
        objectness, deltas = student.rpn.head(list(pyramid.values()))
    for name in ("c2", "c3", "c4", "c5"):
        torch.testing.assert_close(tap[f"backbone.{name}"], feats[name], rtol=0, atol=0)
    for name in ("p3", "p4", "p5", "p6"):
        torch.testing.assert_close(tap[f"neck.{name}"], pyramid[name], rtol=0, atol=0)
    for got, want in zip(tap["rpn.objectness"], objectness):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(tap["rpn.deltas"], deltas):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # ROI levels: features -> embedding -> logits chain through the real submodules
    with torch.no_grad():
        embedding = student.roi_heads.box_head(tap["roi.features"])
        logits, box_deltas = student.roi_heads.box_predictor(embedding)
    torch.testing.assert_close(tap["roi.embedding"], embedding, rtol=0, atol=0)
    torch.testing.assert_close(tap["roi.logits"], logits, rtol=0, atol=0)
    torch.testing.assert_close(tap["roi.deltas"], box_deltas, rtol=0, atol=0)
    assert tap["roi.features"].shape[1:] == (64, 7, 7)


def test_spec_channels_and_strides_match_the_model(student, spec):
    h, w = 192, 256
    with torch.no_grad(), Tap(student, spec, detach=True) as tap:
        student(_image(1, h, w))
    batch_h, batch_w = student.transform(_image(1, h, w))[0].tensors.shape[-2:]
    for level in spec:
        value = tap[level.name]
        first = value[0] if level.kind == "maps" else value
        if level.kind in ("map", "maps", "regions"):
            assert first.shape[1] == level.channels, level.name
        if level.kind == "vectors":
            assert value.shape[-1] == level.channels, level.name
        if level.stride:
            assert first.shape[-1] == -(-batch_w // level.stride), level.name
            assert first.shape[-2] == -(-batch_h // level.stride), level.name


@pytest.mark.slow
def test_no_hooks_remain_after_exit_even_on_error(student, spec):
    before = count_hooks(student)
    with pytest.raises(RuntimeError, match="boom"):
        with Tap(student, spec):
            assert count_hooks(student) == before + len(spec.levels)
            raise RuntimeError("boom")
    assert count_hooks(student) == before
    for _ in range(20):  # leak loop
        with torch.no_grad(), Tap(student, spec, ["neck.p3"]):
            student(_image(2, 64, 64))
    assert count_hooks(student) == before


def test_forward_outside_tap_is_not_captured(student, spec):
    with Tap(student, spec, ["neck.p3"]) as tap:
        pass
    with torch.no_grad():
        student(_image(3, 64, 64))
    assert "neck.p3" not in tap
    with pytest.raises(KeyError, match="not computed"):
        tap["neck.p3"]


def test_unknown_level_and_wrong_model_give_clear_errors(student, spec):
    with pytest.raises(KeyError, match="unknown level 'neck.p9'"):
        Tap(student, spec, ["neck.p9"])
    teacher_spec = get_preset("fasterrcnn_resnet50_fpn.coco_person").hierarchy
    with pytest.raises(KeyError, match="does not have"):
        with Tap(student, teacher_spec, ["backbone.c3"]):
            pass
    assert count_hooks(student) == 0


def test_two_threads_tapping_one_model_get_their_own_tensors(student, spec):
    sizes = {0: (160, 224), 1: (224, 160)}
    expected = {}
    for i, (h, w) in sizes.items():
        with torch.no_grad(), Tap(student, spec, ["neck.p3", "roi.logits"], detach=True) as tap:
            student(_image(10 + i, h, w))
        expected[i] = tap["neck.p3"].clone()
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def work(i):
        try:
            h, w = sizes[i]
            barrier.wait()
            for _ in range(3):
                with torch.no_grad(), Tap(student, spec, ["neck.p3", "roi.logits"], detach=True) as tap:
                    student(_image(10 + i, h, w))
                assert len(tap.calls("neck.p3")) == 1
                results.setdefault(i, []).append(tap["neck.p3"])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in sizes:
        for got in results[i]:
            torch.testing.assert_close(got, expected[i])
    assert count_hooks(student) == 0


def test_resolve_module_sees_through_a_wrapper(student):
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    wrapped = Wrapper(student)
    assert resolve_module(wrapped, "backbone.fpn") is student.backbone.fpn
