"""Detections page: both models' boxes, the agreement view, ground truth, uploads and bad images."""
from __future__ import annotations

import io
import re

from PIL import Image

from tests.app.studio import captions, images, no_exceptions, png_bytes


def test_sample_image_shows_both_models_agreement_and_ground_truth(open_page):
    at = open_page("detections")
    no_exceptions(at)
    assert not at.error
    assert at.selectbox(key="det_image").value.startswith("sample:synthped/")
    assert len(images(at)) == 3  # teacher, student, combined
    assert len(re.findall(r"inference \*\*\d+ ms\*\*", captions(at))) == 2
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Agreed", "Teacher only", "Student only", "Ground truth"}
    assert metrics["Ground truth"] == "3"
    assert at.toggle(key="det_gt").value is True
    assert at.get("download_button")
    rows = at.dataframe[0].value
    assert set(rows["status"]) <= {"agreed", "teacher only", "student only"}

    at.slider(key="det_score").set_value(0.05)
    at.slider(key="det_nms").set_value(0.3)
    at.slider(key="det_match").set_value(0.3).run()
    no_exceptions(at)
    assert len(images(at)) == 3


def test_uploaded_images_become_selectable_and_current(open_page):
    at = open_page("detections")
    at.file_uploader(key="det_upload").set_value([("first.png", png_bytes(seed=11), "image/png"),
                                                  ("second.webp", _webp(), "image/webp")]).run()
    no_exceptions(at)
    assert not at.error
    options = at.selectbox(key="det_image").options
    assert any("first.png" in o for o in options) and any("second.webp" in o for o in options)
    assert "Image **second.webp**" in captions(at) or "Image **first.png**" in captions(at)
    assert len(images(at)) == 3
    assert "—" in [m.value for m in at.metric if m.label == "Ground truth"]  # uploads have no ground truth


def test_not_an_image_is_a_clear_error_and_the_page_keeps_working(open_page):
    at = open_page("detections")
    at.file_uploader(key="det_upload").upload("notes.png", b"this is not an image", "image/png").run()
    no_exceptions(at)
    assert any("notes.png" in e.value and "not a readable image" in e.value for e in at.error)
    assert len(images(at)) == 3  # the current sample is still analysed


def test_huge_image_is_downscaled_and_says_so(open_page):
    at = open_page("detections")
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 2000), (120, 130, 140)).save(buffer, format="PNG")
    at.file_uploader(key="det_upload").upload("huge.png", buffer.getvalue(), "image/png").run()
    no_exceptions(at)
    assert "downscaled from 3000×2000" in captions(at)
    assert len(images(at)) == 3


def test_decompression_bomb_is_refused(open_page):
    at = open_page("detections")
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 MP, a few kB on disk
    at.file_uploader(key="det_upload").upload("bomb.png", buffer.getvalue(), "image/png").run()
    no_exceptions(at)
    assert any("bomb.png" in e.value and "decompression bomb" in e.value for e in at.error)
    assert len(images(at)) == 3


def _webp() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(seed=12))).save(buffer, format="WEBP")
    return buffer.getvalue()
