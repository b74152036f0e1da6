"""Feature-map views: tapped values are the model's own, views are well-formed, nothing is left behind."""
import numpy as np
import pytest
import torch
from torch import nn

from hkd.models.inference import image_tensor
from hkd.models.presets import DEFAULT_STUDENT
from hkd.models.taps import count_hooks
from hkd.viz.featmaps import (
    LevelView,
    adapter_difference,
    capture_levels,
    level_views,
    overlay,
    roi_features_for_box,
)


def test_captured_levels_equal_direct_module_outputs(student, student_spec, image):
    levels = ["backbone.c3", "neck.p3", "neck.p6", "rpn.objectness"]
    got = capture_levels(student, student_spec, image, levels)
    with torch.no_grad():
        batch, _ = student.transform([image_tensor(image)])
        body = student.backbone.body(batch.tensors)
        pyramid = student.backbone(batch.tensors)
        objectness, _ = student.rpn.head(list(pyramid.values()))
    torch.testing.assert_close(got["backbone.c3"], body["c3"][0], rtol=0, atol=0)
    torch.testing.assert_close(got["neck.p3"], pyramid["p3"][0], rtol=0, atol=0)
    torch.testing.assert_close(got["neck.p6"], pyramid["p6"][0], rtol=0, atol=0)
    assert len(got["rpn.objectness"]) == len(objectness)
    for mine, theirs in zip(got["rpn.objectness"], objectness):
        torch.testing.assert_close(mine, theirs[0], rtol=0, atol=0)
    assert not got["neck.p3"].requires_grad


def test_level_views_shapes_ranges_and_padding_crop(student, student_spec, make_scene):
    # 100 x 160 is padded to 128 x 160 by the model: 13 of the 16 rows of P3 cover the image
    image = make_scene(3, 100, 160)
    views = level_views(student, student_spec, image, ["backbone.c2", "neck.p3", "rpn.objectness"], k=3)
    assert list(views) == ["backbone.c2", "neck.p3", "rpn.objectness"]
    expected = {"backbone.c2": ((25, 40), 4, 24), "neck.p3": ((13, 20), 8, 64), "rpn.objectness": ((13, 20), 8, 6)}
    for name, view in views.items():
        hw, stride, channels = expected[name]
        assert isinstance(view, LevelView) and view.level == name
        assert view.shape[0] == channels and view.shape[1] >= hw[0], name  # raw shape keeps the padding rows
        assert view.stride == stride, name
        assert view.energy.shape == hw and view.energy.dtype == np.float32, name
        assert 0.0 <= view.energy.min() and view.energy.max() <= 1.0, name
        assert view.pca_rgb.shape == (*hw, 3) and view.pca_rgb.dtype == np.uint8, name
        assert len(view.topk) == 3, name
        channels_shown = [c for c, _ in view.topk]
        assert len(set(channels_shown)) == 3 and all(0 <= c < channels for c in channels_shown), name
        for _, single in view.topk:
            assert single.shape == hw and 0.0 <= single.min() and single.max() <= 1.0, name
    # energy is min-max normalised for feature maps; objectness stays a probability
    assert views["neck.p3"].energy.min() == 0.0 and views["neck.p3"].energy.max() == pytest.approx(1.0)
    raw = capture_levels(student, student_spec, image, ["rpn.objectness"])["rpn.objectness"][0][:, :13]
    np.testing.assert_allclose(views["rpn.objectness"].energy, raw.sigmoid().amax(0).numpy(), rtol=1e-6)
    # top-k channels are ordered by energy
    p3 = capture_levels(student, student_spec, image, ["neck.p3"])["neck.p3"][:, :13]
    energy = p3.pow(2).mean(dim=(1, 2))
    assert [c for c, _ in views["neck.p3"].topk] == torch.argsort(energy, descending=True)[:3].tolist()
    assert count_hooks(student) == 0 and not student.training


def test_roi_features_for_box_pool_the_box_in_model_coordinates(student, student_spec, image):
    box = [20.0, 10.0, 70.0, 120.0]
    got = roi_features_for_box(student, image, box)
    assert got.shape == (student_spec["roi.features"].channels, 7, 7)
    with torch.no_grad():
        batch, _ = student.transform([image_tensor(image)])
        features = student.backbone(batch.tensors)
        want = student.roi_heads.box_roi_pool(features, [torch.tensor([box])], batch.image_sizes)[0]
    torch.testing.assert_close(got, want)  # the transform keeps 128 x 160: model coords = image coords
    other = roi_features_for_box(student, image, [90.0, 10.0, 150.0, 120.0], spec=student_spec)
    assert not torch.allclose(got, other)
    view = level_views(student, student_spec, image, ["roi.features"], box_xyxy=box)["roi.features"]
    assert view.energy.shape == (7, 7) and view.stride is None
    with pytest.raises(ValueError, match="box_xyxy"):
        level_views(student, student_spec, image, ["roi.features"])
    with pytest.raises(ValueError, match="x2 > x1"):
        roi_features_for_box(student, image, [50, 10, 20, 40])
    with pytest.raises(ValueError, match="no spatial map"):
        level_views(student, student_spec, image, ["roi.logits"])
    assert count_hooks(student) == 0


def test_roi_box_is_scaled_like_the_models_proposals(make_detector, make_scene):
    model = make_detector(DEFAULT_STUDENT, 0, min_size=256, max_size=320)  # image upscaled 2x
    image = make_scene(4)
    box = [20.0, 10.0, 70.0, 120.0]
    got = roi_features_for_box(model, image, box)
    with torch.no_grad():
        batch, _ = model.transform([image_tensor(image)])
        assert batch.image_sizes[0] == (256, 320)
        features = model.backbone(batch.tensors)
        want = model.roi_heads.box_roi_pool(features, [torch.tensor([box]) * 2], batch.image_sizes)[0]
    torch.testing.assert_close(got, want)


def test_overlay(image):
    heat = np.linspace(0, 1, 20 * 16, dtype=np.float32).reshape(16, 20)
    out = overlay(image, heat, 0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, heat, 0.0), image)
    cold = overlay(image, np.zeros((4, 5), np.float32), 1.0, colormap="jet")
    assert tuple(cold[0, 0]) == (0, 0, 128)  # jet's bottom colour, in RGB
    assert not np.array_equal(overlay(image, heat, 0.5, "viridis"), out)
    with pytest.raises(ValueError, match="unknown colormap"):
        overlay(image, heat, 0.5, "nope")
    with pytest.raises(ValueError, match="opacity"):
        overlay(image, heat, 1.5)


def test_adapter_difference_with_and_without_adapter():
    torch.manual_seed(0)
    teacher_map = torch.randn(8, 6, 10)
    adapter = nn.Conv2d(4, 8, 1)
    student_map = torch.randn(4, 6, 10)
    with torch.no_grad():
        matching_teacher = adapter(student_map[None])[0]
    same = adapter_difference(matching_teacher, student_map, adapter)
    assert same.shape == (6, 10) and same.dtype == np.float32
    np.testing.assert_allclose(same, 0.0, atol=1e-5)
    diff = adapter_difference(teacher_map, student_map, adapter)
    want = (teacher_map - matching_teacher).pow(2).sum(0).sqrt().numpy()
    np.testing.assert_allclose(diff, want, rtol=1e-5)
    # a student map at half the resolution is resized to the teacher's
    assert adapter_difference(teacher_map, torch.randn(4, 3, 5), adapter).shape == (6, 10)
    # no adapter: normalised energy maps, channel-agnostic (a scaled copy with other channels is "equal")
    energy_twin = torch.cat([teacher_map, teacher_map]) * 3.0
    np.testing.assert_allclose(adapter_difference(teacher_map, energy_twin, None), 0.0, atol=1e-6)
    free = adapter_difference(teacher_map, torch.randn(3, 3, 5), None)
    assert free.shape == (6, 10) and 0.0 <= free.min() and free.max() <= 1.0 and free.max() > 0
    with pytest.raises(ValueError, match="channels"):
        adapter_difference(teacher_map[:5], student_map, adapter)


def test_adapter_difference_with_the_distillation_adapters(teacher_spec, student_spec):
    from hkd.distill import adapters as adapters_module

    adapters = adapters_module.build_adapters(teacher_spec, student_spec, ["neck.p3"])
    adapter = adapters["neck_p3"]
    teacher_map = torch.randn(teacher_spec["neck.p3"].channels, 6, 10)
    student_map = torch.randn(student_spec["neck.p3"].channels, 6, 10)
    out = adapter_difference(teacher_map, student_map, adapter)
    assert out.shape == (6, 10) and np.isfinite(out).all()


def test_two_threads_get_the_same_views_as_sequential(student, student_spec, make_scene, in_two_threads):
    images = {0: make_scene(10), 1: make_scene(11, 96, 160)}
    levels = ["neck.p3", "rpn.objectness"]
    sequential = {i: level_views(student, student_spec, img, levels) for i, img in images.items()}
    results = in_two_threads(lambda i: [level_views(student, student_spec, images[i], levels) for _ in range(2)])
    for i in images:
        for views in results[i]:
            for name in levels:
                np.testing.assert_allclose(views[name].energy, sequential[i][name].energy, rtol=1e-5, atol=1e-6)
                np.testing.assert_array_equal(views[name].pca_rgb, sequential[i][name].pca_rgb)
                assert [c for c, _ in views[name].topk] == [c for c, _ in sequential[i][name].topk]
    assert count_hooks(student) == 0 and not student.training


def test_fit_adapter_recovers_a_linear_map_and_leaves_no_residual():
    from hkd.viz.featmaps import adapter_difference, fit_adapter

    gen = torch.Generator().manual_seed(0)
    student_map = torch.randn(8, 12, 16, generator=gen)
    mix = torch.randn(5, 8, generator=gen)
    teacher_map = torch.einsum("ts,shw->thw", mix, student_map) + 0.5
    adapter = fit_adapter(teacher_map, student_map)
    residual = adapter_difference(teacher_map, student_map, adapter)
    assert residual.shape == (12, 16)
    assert float(residual.max()) < 1e-3
    # an unrelated teacher leaves a clear residual
    other = torch.randn(5, 12, 16, generator=gen)
    assert float(adapter_difference(other, student_map, fit_adapter(other, student_map)).mean()) > 0.1
