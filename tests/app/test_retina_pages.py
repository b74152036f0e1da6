"""The Features and Attention pages on the single-stage pair (tiny random-init RetinaNet checkpoints)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.studio import APP, TIMEOUT, captions, images, no_exceptions, write_retina_pair

MAP_LEVELS = ["backbone.c3", "backbone.c4", "backbone.c5", "neck.p3", "neck.p4", "neck.p5", "neck.p6"]


@pytest.fixture(scope="module")
def retina_models(tmp_path_factory):
    """``teacher.safetensors`` / ``student_hkd.safetensors``: the RetinaNet pair, random init."""
    return write_retina_pair(tmp_path_factory.mktemp("retina") / "checkpoints")


@pytest.fixture()
def open_retina_page(studio_env, retina_models, monkeypatch):
    """``open_retina_page("features")``: the app on that page with the RetinaNet pair as teacher and student."""
    monkeypatch.setenv("HKD_MODELS_DIR", str(retina_models))

    def open_(name: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
        return at.switch_page(f"app_pages/{name}.py").run()

    return open_


@pytest.mark.slow
def test_features_page_shows_every_map_level_of_both_models(open_retina_page):
    at = open_retina_page("features")
    no_exceptions(at)
    assert not at.error
    levels = [o.split(" — ")[0] for o in at.selectbox(key="feat_level").options]
    assert levels == MAP_LEVELS  # no RPN or ROI level in a single-stage detector
    assert at.selectbox(key="feat_level").value == "backbone.c3"
    assert len(images(at)) == 3  # teacher, student, difference
    assert captions(at).count("tensor ") == 2
    assert "tensor 48 ×" in captions(at) and "tensor 40 ×" in captions(at)  # Lite2's and Lite0's c3
    assert at.get("plotly_chart")  # similarity profile over the shared levels

    at.selectbox(key="feat_level").set_value("neck.p6").run()
    no_exceptions(at)
    assert "tensor 256 ×" in captions(at) and "tensor 64 ×" in captions(at)
    at.radio(key="feat_view").set_value("Top-k channels").run()
    no_exceptions(at)
    assert len(images(at)) == 4 + 4 + 1


@pytest.mark.slow
def test_attention_page_explains_retinanet_detections(open_retina_page):
    at = open_retina_page("attention")
    no_exceptions(at)
    assert not at.error
    assert [o.split(" — ")[0] for o in at.selectbox(key="att_level").options] == MAP_LEVELS
    assert at.selectbox(key="att_level").value == "neck.p4"  # the default: EigenCAM at neck.p4
    assert captions(at).count("EigenCAM at neck.p4 · no target") == 2
    at.radio(key="att_method").set_value("Grad-CAM")
    at.selectbox(key="att_level").set_value("neck.p3").run()
    no_exceptions(at)
    assert not at.warning, [w.value for w in at.warning]  # both models have detections to explain
    assert len([c for c in at.caption if "Grad-CAM at neck.p3" in c.value]) == 2
    assert len(images(at)) == 2 + 2 * len(MAP_LEVELS)  # CAMs, then one attention map per level and model

    targets = at.selectbox(key="att_target").options
    assert len(targets) > 2
    at.selectbox(key="att_target").set_value(targets[2]).run()
    no_exceptions(at)
    assert "explains detection #2 of the" in captions(at)

    at.radio(key="att_method").set_value("EigenCAM")
    at.selectbox(key="att_level").set_value("neck.p6").run()
    no_exceptions(at)
    assert captions(at).count("EigenCAM at neck.p6 · no target") == 2
