"""Attention page: Grad-CAM / EigenCAM for both models and attention-transfer maps per level."""
from __future__ import annotations

from tests.app.studio import captions, images, no_exceptions


def test_cams_and_attention_transfer_maps_render(open_page):
    at = open_page("attention")
    no_exceptions(at)
    assert not at.error
    assert at.radio(key="att_method").value == "Grad-CAM"
    assert at.selectbox(key="att_level").value == "neck.p3"
    # every model either shows its CAM or says why there is none (no detection to explain)
    assert len([c for c in at.caption if "Grad-CAM at neck.p3" in c.value]) + len(at.warning) == 2
    assert sum("attention-transfer" in c.value for c in at.caption) == 1
    assert len(images(at)) >= 2 * 8  # teacher and student rows, one map per level

    at.radio(key="att_method").set_value("EigenCAM").run()
    no_exceptions(at)
    assert at.selectbox(key="att_target").disabled
    assert captions(at).count("EigenCAM at neck.p3 · no target") == 2


def test_cam_of_one_chosen_detection(open_page):
    at = open_page("attention")
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
    at.selectbox(key="att_level").set_value("neck.p6")
    at.slider(key="att_score").set_value(0.05).run()
    no_exceptions(at)
    assert not at.error
