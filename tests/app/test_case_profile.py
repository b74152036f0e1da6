"""Features opened from an Evaluate case (issue #28, item 4): the case's box on every level, its
per-level percentile profile against the successes, roi.features at the box's aspect ratio."""
from __future__ import annotations

import json

import numpy as np
import pytest

from app.services import case_profile
from tests.app.studio import captions, images, no_exceptions
from tests.app.test_features_page import open_focused

CASE = [40, 20, 120, 200]  # original pixels of a 320 × 240 frame shown at half size: (20, 10, 60, 100)


@pytest.fixture()
def focused(studio_env, tmp_path, monkeypatch):
    from tests.app.test_services import dataset_image

    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("HKD_MAX_IMAGE_SIDE", "160")
    path = dataset_image(tmp_path / "val", seed=11)
    return lambda: open_focused("features", path, CASE, monkeypatch)


def profile_chart(at):
    return next((c for c in at.get("plotly_chart") if c.proto.id and "feat_case_profile" in c.proto.id), None)


def test_the_case_profile_is_measured_against_the_boxes_both_models_find(focused, monkeypatch):
    from app.services import compute
    from hkd.models.inference import Detections

    # both models "find" the case itself and four others (random-init models agree on nothing)
    boxes = np.array([[20, 10, 60, 100], [70, 10, 100, 80], [100, 30, 130, 110], [5, 60, 25, 110],
                      [120, 5, 150, 60], [60, 60, 80, 70]], dtype=np.float32)
    found = Detections(boxes, np.array([0.9, 0.9, 0.8, 0.8, 0.7, 0.2], dtype=np.float32), 0.0)
    monkeypatch.setattr(compute, "detections", lambda m, picture, **k: found)
    measured = []
    real = case_profile.success_boxes
    monkeypatch.setattr(case_profile, "success_boxes", lambda *a: measured.append(real(*a)) or measured[-1])
    at = focused()
    no_exceptions(at)
    assert not at.error
    assert any(h.value == "This case against the norm" for h in at.header)
    np.testing.assert_array_equal(measured[0], boxes[1:5])  # the case and the low score left out
    assert profile_chart(at) is not None
    text = captions(at)
    assert "the 4 box(es) both models find on this image" in text and "A high bar" in text

    found = Detections(boxes[:2], found.scores[:2], 0.0)  # now the case and one other only (the lambda reads it)
    at.selectbox(key="feat_level").set_value("neck.p3").run()
    no_exceptions(at)
    assert len(measured[-1]) == 1 and profile_chart(at) is None
    assert "Only 1 success(es) to compare with" in captions(at) and "too few to place the case" in captions(at)


def test_a_success_distribution_handed_over_is_used(focused, monkeypatch):
    norm = {level: np.linspace(0.0, 2.0, 21) for level in
            ("backbone.c2", "backbone.c3", "backbone.c4", "backbone.c5", "neck.p3", "neck.p4", "neck.p5",
             "neck.p6", "rpn.objectness", "roi.features")}
    monkeypatch.setattr(case_profile, "given_norm",
                        lambda t, s: {"distances": norm, "label": "21 successes of the test split"})
    monkeypatch.setattr(case_profile, "success_boxes", lambda *a: pytest.fail("measured successes anyway"))
    at = focused()
    no_exceptions(at)
    chart = profile_chart(at)
    assert chart is not None
    figure = json.loads(chart.proto.spec)
    bars = figure["data"][0]
    assert bars["type"] == "bar" and bars["x"][0] == "backbone.c2" and bars["x"][-1] == "roi.features"
    assert all(0 <= y <= 100 for y in bars["y"])
    assert any(s.get("y0") == 50 for s in figure["layout"]["shapes"])  # the line of a typical success
    text = captions(at)
    assert "21 successes of the test split" in text and "A high bar" in text

    # roi.features of the case at its own aspect ratio: 40 × 90 px → 142 px wide, 320 tall
    assert at.selectbox(key="feat_level").value == "roi.features"
    assert case_profile.region_width((20, 10, 60, 100)) == 142
    assert len(images(at)) == 3


def test_the_case_box_is_outlined_on_the_other_levels(focused, monkeypatch):
    drawn = []
    real = case_profile.marked
    monkeypatch.setattr(case_profile, "marked", lambda pixels, box: drawn.append(box) or real(pixels, box))
    at = focused()
    at.selectbox(key="feat_level").set_value("neck.p3").run()
    no_exceptions(at)
    assert drawn[-1] == (20.0, 10.0, 60.0, 100.0)
    assert any("with the box outlined" in i.value for i in at.info)


def test_marked_and_region_width():
    pixels = np.zeros((100, 120, 3), dtype=np.uint8)
    out = case_profile.marked(pixels, (20, 10, 60, 90))
    assert out.shape == pixels.shape and (out[10, 20:60] == 255).all(axis=-1).any() and not pixels.any()
    assert case_profile.marked(pixels, None) is pixels
    assert case_profile.region_width(None) == "stretch"
    assert case_profile.region_width((0, 0, 14, 62)) == case_profile.REGION_MIN_WIDTH  # a thin person
    assert case_profile.region_width((0, 0, 400, 100)) == case_profile.REGION_MAX_WIDTH
