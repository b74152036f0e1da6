"""Feature maps, Grad-CAM and attention maps of a single-stage (RetinaNet) detector."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from hkd.models.inference import PEDESTRIAN, detect
from hkd.models.optimize import prepare_for_inference
from hkd.models.presets import get_preset
from hkd.models.taps import count_hooks
from hkd.viz.cam import TapActivationsAndGradients, attention_maps, detection_cam
from hkd.viz.featmaps import level_views
from tests.viz.conftest import H, W

STUDENT = "hkd_retina_lite0.student"


@pytest.fixture(scope="module")
def retina():
    """A small random-init RetinaNet student whose class logits spread around p = 0.5 (the preset's
    prior of 0.01 detects nothing), prepared for inference as the app loads it."""
    torch.manual_seed(0)
    model = dataclasses.replace(get_preset(STUDENT), min_size=H, max_size=W).build().eval()
    logits = model.head.classification_head.cls_logits
    with torch.no_grad():
        logits.weight.normal_(0.0, 0.5)
        logits.bias.zero_()
    return prepare_for_inference(model)


@pytest.fixture(scope="module")
def spec():
    return get_preset(STUDENT).hierarchy


def _untouched(model):
    assert count_hooks(model) == 0 and not model.training
    assert all(p.grad is None for p in model.parameters())


def test_every_map_level_has_a_view(retina, spec, make_scene):
    names = [lv.name for lv in spec if lv.kind == "map"]
    views = level_views(retina, spec, make_scene(0), names, k=2)
    assert list(views) == names
    for name, view in views.items():
        assert view.shape[0] == spec[name].channels and view.stride == spec[name].stride
        assert view.energy.ndim == 2 and view.pca_rgb.shape == (*view.energy.shape, 3) and len(view.topk) == 2
    with pytest.raises(ValueError, match="no spatial map"):
        level_views(retina, spec, make_scene(0), ["head.cls_logits"])
    _untouched(retina)


@pytest.mark.parametrize("level", ["neck.p3", "neck.p6", "backbone.c4"])
def test_gradcam_explains_the_detections_of_the_same_forward(retina, spec, make_scene, level):
    image = make_scene(1)
    (found,) = detect(retina, [image], score_thresh=0.5)
    result = detection_cam(retina, spec, image, level=level)
    assert len(result.boxes) == len(found) > 1
    np.testing.assert_allclose(result.boxes, found.boxes, atol=1e-3)
    assert result.heat.shape == image.shape[:2] and 0.0 <= result.heat.min() <= result.heat.max() <= 1.0
    one = detection_cam(retina, spec, image, level=level, box_index=len(found) - 1)
    assert one.box_index == len(found) - 1
    eigen = detection_cam(retina, spec, image, level=level, method="eigencam")
    assert eigen.heat.max() > 0.5
    _untouched(retina)


def test_a_background_class_detection_on_the_same_anchor_does_not_steal_the_target(retina, spec, make_scene):
    """RetinaNet scores both classes on one anchor box: a class-0 detection can have exactly a
    pedestrian's box. The target must still score the pedestrian (a gradient, not a constant 0)."""
    model = copy.deepcopy(retina)
    model.detections_per_img = 1000  # every NMS survivor: both classes of many anchors
    x = torch.from_numpy(make_scene(1)).permute(2, 0, 1).float().div(255.0)
    with torch.no_grad():
        (out,) = model([x])
    pedestrians = torch.nonzero(out["labels"] == PEDESTRIAN)[:, 0]
    order = pedestrians[torch.argsort(out["scores"][pedestrians], descending=True, stable=True)]
    first = box_iou(out["boxes"][order], out["boxes"]).argmax(dim=1)  # the IoU argmax over every output
    shadowed = torch.nonzero(out["labels"][first] != PEDESTRIAN)[:, 0].tolist()
    assert shadowed, "the scene should have a pedestrian box that a background detection repeats"
    for box_index in shadowed[:3]:
        adapter = TapActivationsAndGradients(model, spec["neck.p3"], uses_gradients=True, score_thresh=0.05,
                                             box_index=box_index)
        adapter(x[None])
        assert adapter.gradients[0].abs().sum() > 0
        adapter.release()
    _untouched(model)


def test_attention_maps_of_every_map_level(retina, spec, make_scene):
    names = [lv.name for lv in spec if lv.kind == "map"]
    maps = attention_maps(retina, spec, make_scene(2), names)
    assert list(maps) == names
    assert all(m.ndim == 2 and 0.0 <= m.min() <= m.max() <= 1.0 for m in maps.values())
    _untouched(retina)
