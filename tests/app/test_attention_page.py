"""Attention page: Grad-CAM / EigenCAM for both models and attention-transfer maps per level."""
from __future__ import annotations

import pytest

import numpy as np
import torch

from tests.app.studio import captions, images, no_exceptions


@pytest.mark.slow
def test_cams_and_attention_transfer_maps_render(open_page):
    at = open_page("attention")
    no_exceptions(at)
    assert not at.error
    # the defaults readable on the shipped real photos (docs/DESIGN.md, "CAM defaults")
    assert at.radio(key="att_method").value == "EigenCAM"
    assert at.selectbox(key="att_level").value == "neck.p4"
    assert at.selectbox(key="att_target").disabled
    assert captions(at).count("EigenCAM at neck.p4 · no target") == 2
    assert sum("attention-transfer" in c.value for c in at.caption) == 1
    assert len(images(at)) >= 2 * 8  # teacher and student rows, one map per level

    at.radio(key="att_method").set_value("Grad-CAM").run()
    at.selectbox(key="att_level").set_value("neck.p3").run()
    no_exceptions(at)
    # every model either shows its CAM or says why there is none (no detection to explain)
    assert len([c for c in at.caption if "Grad-CAM at neck.p3" in c.value]) + len(at.warning) >= 2


def test_an_empty_or_constant_map_is_said(open_page, monkeypatch):
    from app.services import compute
    from hkd.viz.cam import CamResult

    assert compute.cam_problem(np.zeros((4, 4), np.float32), "gradcam", "backbone.c5").startswith(
        "The map at backbone.c5 is empty")
    assert "constant" in compute.cam_problem(np.full((4, 4), 0.5, np.float32), "eigencam", "neck.p4")
    assert compute.cam_problem(np.eye(4, dtype=np.float32), "gradcam", "neck.p3") is None
    blank = CamResult(np.zeros((120, 160), np.float32), np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                      "backbone.c5", "eigencam")
    monkeypatch.setattr(compute, "cam", lambda *args, **kwargs: blank)
    at = open_page("attention")
    no_exceptions(at)
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("Student: The map at") and "is empty" in w for w in warnings), warnings


def test_cam_of_one_chosen_detection(open_page):
    at = open_page("attention")
    at.radio(key="att_method").set_value("Grad-CAM")
    at.selectbox(key="att_level").set_value("neck.p3")
    at.slider(key="att_score").set_value(0.05).run()
    targets = at.selectbox(key="att_target").options
    if len(targets) < 2:
        return  # a random-init teacher found nothing even at 0.05
    at.selectbox(key="att_target").set_value(targets[1]).run()
    no_exceptions(at)
    assert "detection #1 of the" in captions(at)
    assert len(at.warning) + len(at.info) <= 1  # the student may have no matching detection


def test_level_without_a_gradient_path_is_a_warning_not_a_crash(open_page):
    at = open_page("attention")
    at.radio(key="att_method").set_value("Grad-CAM")
    at.selectbox(key="att_level").set_value("neck.p6")
    at.slider(key="att_score").set_value(0.05).run()
    no_exceptions(at)
    assert not at.error


def _teacher_detections(studio_env, path, score: float):
    """The teacher's detections on the image the page shows (the app's own loaders, same cached model)."""
    from app.services import compute, images, models

    teacher = models.load({"path": str(studio_env["models"] / "teacher.safetensors"), "preset": None})
    picture = images.load(images.file_key(path))
    return compute.detections(teacher, picture).filter(score), picture.loaded.scale


@pytest.mark.slow
def test_the_detection_matching_a_box_from_evaluate_is_explained(studio_env, tmp_path, monkeypatch):
    from tests.app.test_features_page import open_focused
    from tests.app.test_services import dataset_image

    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("HKD_MAX_IMAGE_SIDE", "160")
    path = dataset_image(tmp_path / "val", seed=21)
    found, scale = _teacher_detections(studio_env, path, 0.5)  # the page's default score threshold
    assert len(found) >= 4, "the random-init teacher of the studio world should find boxes here"
    # detection #4, nudged by a pixel and given in the original (2× larger) image's pixels
    box = (found.boxes[3] + np.array([1, -1, 1, 1], np.float32)) / scale
    at = open_focused("attention", path, box, monkeypatch)
    no_exceptions(at)
    assert at.selectbox(key="att_target").value == 3
    assert any("box from Evaluate" in i.value and "it is teacher detection #4." in i.value for i in at.info)
    assert "explains detection #4 of the" in captions(at)

    at.selectbox(key="att_target").set_value("all").run()  # the user's choice is not overridden
    no_exceptions(at)
    assert at.selectbox(key="att_target").value == "all"
    at.button(key="att_focus_clear").click().run()
    no_exceptions(at)
    assert at.session_state["focus"] is None and not at.info


def test_a_box_from_evaluate_that_no_teacher_detection_matches_is_said(studio_env, tmp_path, monkeypatch):
    from torchvision.ops import box_iou

    from tests.app.test_features_page import open_focused
    from tests.app.test_services import dataset_image

    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path))
    path = dataset_image(tmp_path / "val", seed=22)
    found, _ = _teacher_detections(studio_env, path, 0.5)
    candidates = torch.tensor([[x, y, x + 3.0, y + 3.0] for x in range(0, 316, 4) for y in range(0, 236, 4)])
    iou = box_iou(candidates, torch.from_numpy(found.boxes)).amax(dim=1) if len(found) else torch.zeros(1)
    box = candidates[int(iou.argmin())]
    assert float(iou.min()) < 0.3
    at = open_focused("attention", path, box.tolist(), monkeypatch)
    no_exceptions(at)
    assert at.selectbox(key="att_target").value == "all"
    assert any("no teacher detection with score ≥ 0.50 overlaps it" in i.value for i in at.info)
