"""Detection CAMs through pytorch-grad-cam on our taps, and attention maps."""
import numpy as np
import pytest
import torch

from hkd.distill.losses.feature import attention_map
from hkd.models.inference import detect
from hkd.models.presets import DEFAULT_STUDENT
from hkd.models.taps import count_hooks
from hkd.viz.cam import METHODS, CamResult, attention_maps, detection_cam
from hkd.viz.featmaps import capture_levels


def _untouched(model):
    assert count_hooks(model) == 0
    assert not model.training
    assert all(p.grad is None for p in model.parameters())  # no .grad written into a shared model


@pytest.mark.parametrize("method", METHODS)
def test_cam_is_a_heat_map_of_the_image(student, student_spec, image, method):
    result = detection_cam(student, student_spec, image, method=method)
    assert isinstance(result, CamResult) and result.method == method and result.level == "neck.p3"
    assert result.heat.shape == image.shape[:2] and result.heat.dtype == np.float32
    assert 0.0 <= result.heat.min() and result.heat.max() <= 1.0 and result.heat.max() > 0.5
    assert len(result.boxes) == len(result.scores) > 0 and (result.scores >= 0.5).all()
    assert (np.diff(result.scores) <= 0).all()
    _untouched(student)


def test_boxes_are_those_of_detect_and_box_index_chooses_one(student, student_spec, image):
    (dets,) = detect(student, [image], score_thresh=0.5)
    everything = detection_cam(student, student_spec, image, level="backbone.c4")
    np.testing.assert_allclose(everything.boxes, dets.boxes, atol=1e-3)
    np.testing.assert_allclose(everything.scores, dets.scores, atol=1e-5)
    one = detection_cam(student, student_spec, image, level="backbone.c4", box_index=len(dets) - 1)
    assert one.box_index == len(dets) - 1
    assert not np.allclose(one.heat, everything.heat)
    with pytest.raises(ValueError, match="out of range"):
        detection_cam(student, student_spec, image, box_index=len(dets))
    with pytest.raises(ValueError, match="out of range"):
        detection_cam(student, student_spec, image, box_index=-1)
    with pytest.raises(ValueError, match="no pedestrian detection"):
        detection_cam(student, student_spec, image, score_thresh=1.01)
    _untouched(student)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_gradient_through_the_explained_proposals_only_is_the_full_forwards(which, method, request, image):
    """The fast path (ROI head re-run on the explained detections' proposals) gives the CAM of
    the plain ``model(images)`` forward, for all detections and for one."""
    model = request.getfixturevalue(which)
    spec = request.getfixturevalue(f"{which}_spec")
    everything = detection_cam(model, spec, image, method=method, score_thresh=0.3)
    assert len(everything.boxes) >= 2  # else "all" and "one" would not differ
    for box_index in (None, len(everything.boxes) - 1):
        fast = detection_cam(model, spec, image, method=method, box_index=box_index, score_thresh=0.3)
        full = detection_cam(model, spec, image, method=method, box_index=box_index, score_thresh=0.3,
                             restrict_proposals=False)
        np.testing.assert_array_equal(fast.boxes, full.boxes)
        assert fast.heat.max() > 0.5
        np.testing.assert_allclose(fast.heat, full.heat, atol=1e-4)
    _untouched(model)


def test_bad_arguments_give_clear_errors(student, student_spec, image, make_detector):
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'"):
        detection_cam(student, student_spec, image, method="scorecam")
    with pytest.raises(ValueError, match="one of"):
        detection_cam(student, student_spec, image, level="roi.logits")
    with pytest.raises(ValueError, match="one of"):
        detection_cam(student, student_spec, image, level="neck.p9")
    # P6 feeds only the RPN, whose proposals carry no gradient: say so rather than show a blank map
    with pytest.raises(ValueError, match="eigencam"):
        detection_cam(student, student_spec, image, level="neck.p6")
    assert detection_cam(student, student_spec, image, level="neck.p6", method="eigencam").heat.max() > 0
    training = make_detector(DEFAULT_STUDENT, 0).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        detection_cam(training, student_spec, image)
    assert training.training
    _untouched(student)


def test_no_leak_over_repeated_calls(student, student_spec, make_scene):
    image = make_scene(5, 96, 128)
    heats = []
    for i in range(10):
        method = ("gradcam", "eigencam")[i % 2]
        heats.append(detection_cam(student, student_spec, image, method=method, level="neck.p4").heat)
        _untouched(student)
    np.testing.assert_allclose(heats[0], heats[8], atol=1e-5)  # deterministic, nothing accumulates


def test_two_threads_get_their_own_cams(student, student_spec, make_scene, in_two_threads):
    images = {0: make_scene(20), 1: make_scene(21, 96, 160)}
    sequential = {i: detection_cam(student, student_spec, img).heat for i, img in images.items()}
    results = in_two_threads(lambda i: detection_cam(student, student_spec, images[i]).heat)
    for i in images:
        np.testing.assert_allclose(results[i], sequential[i], atol=1e-4)
    _untouched(student)


def test_attention_maps_are_the_losss_attention_maps(student, student_spec, image):
    maps = attention_maps(student, student_spec, image, ["backbone.c3", "neck.p4"])
    raw = capture_levels(student, student_spec, image, ["neck.p4"])["neck.p4"]
    want = attention_map(raw[None]).reshape(raw.shape[-2:])
    want = (want - want.min()) / (want.max() - want.min())
    np.testing.assert_allclose(maps["neck.p4"], want.numpy(), atol=1e-6)  # 128 x 160: no padding to crop
    assert maps["backbone.c3"].shape == (16, 20)
    for att in maps.values():
        assert att.dtype == np.float32 and att.min() == 0.0 and att.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not feature maps"):
        attention_maps(student, student_spec, image, ["roi.features"])
    _untouched(student)


def test_eigencam_projection_is_the_librarys_sign_corrected_one():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

    from hkd.viz.cam import _cam_classes

    activations = np.random.default_rng(0).normal(size=(2, 16, 9, 11)).astype(np.float32)
    activations[1, :, 2:5, 3:7] += 4.0  # one strong blob
    cam = _cam_classes()["eigencam"].get_cam_image(None, None, None, None, activations, None, False)
    want = get_2d_projection_with_sign_correction(activations)
    assert cam.shape == want.shape == (2, 9, 11) and cam.dtype == np.float32
    np.testing.assert_allclose(cam, want, rtol=1e-4, atol=1e-4)


def test_no_viz_call_switches_a_models_mode(student, student_spec, image, monkeypatch):
    from hkd.viz.featmaps import level_views
    from hkd.viz.similarity import similarity_profile

    def refuse(self, mode=True):
        raise AssertionError(f"{type(self).__name__}.train({mode}) called on a shared model")

    monkeypatch.setattr(torch.nn.Module, "train", refuse)  # eval() is train(False)
    detection_cam(student, student_spec, image, method="gradcam")
    detection_cam(student, student_spec, image, method="eigencam")
    attention_maps(student, student_spec, image, ["neck.p3"])
    level_views(student, student_spec, image, ["neck.p3"])
    similarity_profile(student, student_spec, student, student_spec, image, levels=["neck.p3", "roi.features"])
