"""Features page: maps side by side in every display mode, ROI features, difference, similarity, caching."""
from __future__ import annotations

import pytest

import hkd.viz.featmaps as featmaps
from tests.app.studio import captions, images, no_exceptions, png_bytes


def test_levels_views_difference_and_similarity_render(open_page):
    at = open_page("features")
    no_exceptions(at)
    assert not at.error
    levels = {o.split(" — ")[0] for o in at.selectbox(key="feat_level").options}
    assert {"backbone.c2", "backbone.c5", "neck.p3", "neck.p6", "rpn.objectness", "roi.features"} <= set(levels)
    assert len(images(at)) == 3  # teacher, student, difference
    assert captions(at).count("tensor ") == 2
    assert "relative residual" in captions(at)
    assert at.get("plotly_chart")  # similarity profile

    at.radio(key="feat_view").set_value("Top-k channels").run()
    no_exceptions(at)
    assert len(images(at)) == 4 + 4 + 1
    at.radio(key="feat_view").set_value("PCA → RGB")
    at.radio(key="feat_diff").set_value("channel energy only")
    at.slider(key="feat_opacity").set_value(0.2).run()
    no_exceptions(at)
    assert len(images(at)) == 3 and "|teacher energy − student energy|" in captions(at)


@pytest.mark.slow
def test_rpn_objectness_and_roi_features_of_a_detection(open_page):
    at = open_page("features")
    at.selectbox(key="feat_level").set_value("rpn.objectness").run()
    no_exceptions(at)
    assert "max objectness probability" in captions(at)
    at.selectbox(key="feat_level").set_value("roi.features").run()
    no_exceptions(at)
    if at.info:  # a random-init teacher may find nothing: then the page says so
        assert "finds no pedestrian" in at.info[0].value
        return
    assert at.selectbox(key="feat_box").options
    assert "7×7 pooled cells" in captions(at)
    assert len(images(at)) == 3


def test_switching_back_to_a_level_is_served_from_the_cache(open_page, monkeypatch):
    calls = []
    real = featmaps.level_views
    monkeypatch.setattr(featmaps, "level_views", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    at = open_page("features")
    at.file_uploader(key="feat_upload").upload("cache_probe.png", png_bytes(seed=99), "image/png").run()
    no_exceptions(at)
    assert len(calls) == 2  # teacher and student: every backbone/FPN level in one forward each
    at.selectbox(key="feat_level").set_value("neck.p4").run()
    at.selectbox(key="feat_level").set_value("backbone.c2").run()
    no_exceptions(at)
    assert len(calls) == 2


def open_focused(page: str, path, box, monkeypatch, *, image_key=None):
    """The app on ``page`` after the Evaluate page's drill-down: the current image is the ``file:`` key of
    ``path`` and the focus is ``box`` (original pixels) on ``image_key`` (default: that image)."""
    from streamlit.testing.v1 import AppTest

    from app.services import images
    from tests.app.studio import APP, TIMEOUT

    key = images.file_key(path)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.session_state["image_key"] = key
    at.session_state["focus"] = {"image_key": image_key or key, "box": list(box), "source": "evaluate"}
    return at.switch_page(f"app_pages/{page}.py").run()


@pytest.mark.slow
def test_a_box_from_evaluate_is_the_preselected_roi_region(studio_env, tmp_path, monkeypatch):
    from tests.app.test_services import dataset_image

    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("HKD_MAX_IMAGE_SIDE", "160")  # 320 × 240 shown at half size: the box is scaled
    path = dataset_image(tmp_path / "val", seed=11)
    boxes = []
    real = featmaps.level_views
    monkeypatch.setattr(featmaps, "level_views", lambda *a, **k: boxes.append(k.get("box_xyxy")) or real(*a, **k))
    at = open_focused("features", path, [40, 20, 120, 200], monkeypatch)
    no_exceptions(at)
    assert not at.error
    assert at.selectbox(key="feat_level").value == "roi.features"
    assert at.selectbox(key="feat_box").value == "focus"
    assert at.selectbox(key="feat_box").options[0] == "box from Evaluate · 20, 10, 60, 100"
    assert any("Looking at the box from Evaluate · 20, 10, 60, 100" in i.value for i in at.info)
    assert boxes == [(20.0, 10.0, 60.0, 100.0)] * 2  # teacher and student, on the focused region
    assert "7×7 pooled cells" in captions(at) and "ground truth from its dataset's annotations" in captions(at)
    assert at.sidebar.selectbox(key="feat_image").value == f"file:{path.resolve().as_posix()}"

    at.selectbox(key="feat_level").set_value("neck.p3").run()  # the user's choice is not overridden
    no_exceptions(at)
    assert at.selectbox(key="feat_level").value == "neck.p3"
    at.selectbox(key="feat_level").set_value("roi.features").run()
    assert at.selectbox(key="feat_box").value == "focus"

    at.button(key="feat_focus_clear").click().run()
    no_exceptions(at)
    assert at.session_state["focus"] is None and not any("box from Evaluate" in i.value for i in at.info)
    assert "focus" not in at.selectbox(key="feat_box").options[0] and at.selectbox(key="feat_box").value == 0


def test_a_focus_on_another_image_changes_nothing(studio_env, tmp_path, monkeypatch):
    from tests.app.test_services import dataset_image

    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path))
    path = dataset_image(tmp_path / "val", seed=12)
    at = open_focused("features", path, [40, 20, 120, 200], monkeypatch, image_key="sample:real/street.jpg")
    no_exceptions(at)
    assert at.selectbox(key="feat_level").value == "backbone.c2"
    assert not at.info
