"""Features page: maps side by side in every display mode, ROI features, difference, similarity, caching."""
from __future__ import annotations

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
