"""Detections page: the models' boxes, the agreement view, ground truth, uploads and bad images."""
from __future__ import annotations

import io
import json
import re
import shutil

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.app.studio import APP, TIMEOUT, captions, copy_models, images, no_exceptions, png_bytes


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


def test_without_a_no_kd_student_the_third_model_is_none(open_page):
    at = open_page("detections")
    assert at.selectbox(key="det_third").value == "none"
    assert at.selectbox(key="det_pair").options == ["teacher (teacher.safetensors) with student (student_hkd.safetensors)"]
    assert at.session_state["third_ref"] == {"path": None, "preset": None}


@pytest.fixture()
def three_models(studio_world, monkeypatch, tmp_path):
    """A models folder with a no-KD student beside the HKD one; the page opened on it."""
    folder = copy_models(studio_world, tmp_path / "models")
    shutil.copy(folder / "student_hkd.safetensors", folder / "student_baseline.safetensors")
    monkeypatch.setenv("HKD_MODELS_DIR", str(folder))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    return at.switch_page("app_pages/detections.py").run()


def test_the_no_kd_student_is_the_default_third_model(three_models):
    at = three_models
    no_exceptions(at)
    assert not at.error
    assert at.selectbox(key="det_third").value.endswith("student_baseline.safetensors")
    assert at.session_state["third_ref"]["path"].endswith("student_baseline.safetensors")
    assert len(images(at)) == 4  # teacher, student, third, combined
    assert len(re.findall(r"inference \*\*\d+ ms\*\*", captions(at))) == 3
    # short headings that fit a third of the page, the full file name on hover
    assert [h.value for h in at.subheader] == ["Teacher · teacher", "Student · student_hkd", "Third · student_baseline"]
    assert [h.proto.help for h in at.subheader] == ["teacher.safetensors", "student_hkd.safetensors",
                                                    "student_baseline.safetensors"]
    assert at.selectbox(key="det_pair").options == [
        "teacher (teacher.safetensors) with student (student_hkd.safetensors)",
        "teacher (teacher.safetensors) with third (student_baseline.safetensors)",
        "student (student_hkd.safetensors) with third (student_baseline.safetensors)"]
    assert {m.label for m in at.metric} == {"Agreed", "Teacher only", "Student only", "Ground truth"}


def test_any_two_shown_models_can_be_compared(three_models):
    at = three_models
    at.slider(key="det_score").set_value(0.05).run()
    at.selectbox(key="det_pair").set_value("student|third").run()
    no_exceptions(at)
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Agreed", "Student only", "Third only", "Ground truth"}
    # the third model is a copy of the student: every box agrees
    assert metrics["Student only"] == "0" and metrics["Third only"] == "0"
    rows = at.dataframe[0].value
    assert list(rows.columns[:3]) == ["status", "student score", "third score"]
    assert set(rows["status"]) <= {"agreed"}
    assert (rows["student score"] == rows["third score"]).all()
    assert at.get("download_button")

    at.selectbox(key="det_pair").set_value("teacher|third").run()
    no_exceptions(at)
    assert {m.label for m in at.metric} == {"Agreed", "Teacher only", "Third only", "Ground truth"}
    assert set(at.dataframe[0].value["status"]) <= {"agreed", "teacher only", "third only"}


def test_the_third_model_can_be_switched_off_and_stays_off(three_models):
    at = three_models
    at.selectbox(key="det_third").set_value("none").run()
    no_exceptions(at)
    assert len(images(at)) == 3
    assert at.session_state["third_ref"] == {"path": None, "preset": None}
    assert len(at.selectbox(key="det_pair").options) == 1
    at.switch_page("app_pages/models.py").run()
    at.switch_page("app_pages/detections.py").run()
    no_exceptions(at)
    assert at.selectbox(key="det_third").value == "none"  # the choice outlives the page
    assert len(images(at)) == 3


def test_detections_json_names_the_compared_pair():
    from types import SimpleNamespace

    import numpy as np

    from app.services import compute
    from hkd.data.images import LoadedImage
    from app.services.images import Picture
    from hkd.models.inference import Detections

    picture = Picture("upload:x", "street.jpg", LoadedImage(np.zeros((50, 100, 3), np.uint8), (100, 50), 1.0), None)
    dets = Detections(np.array([[10, 10, 20, 40]], np.float32), np.array([0.9], np.float32), 0.25)
    model = SimpleNamespace(name="student_baseline.safetensors", key="abc:", meta=SimpleNamespace(preset="p"))
    rows = [{"box": [10.0, 10.0, 20.0, 40.0], "score_teacher": 0.8, "score_student": None, "iou": None,
             "status": "teacher_only"}]
    report = json.loads(compute.detections_json(picture, {"third": (model, dets)}, rows, {}, pair=("student", "third")))
    assert report["comparison"] == [{"box": [10.0, 10.0, 20.0, 40.0], "score_student": 0.8, "score_third": None,
                                     "iou": None, "status": "student_only"}]


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


@pytest.mark.slow
def test_the_student_can_run_through_onnxruntime(open_page):
    at = open_page("detections")
    at.slider(key="det_score").set_value(0.05).run()
    pytorch = [c for c in captions(at).splitlines() if "(PyTorch)" in c]
    at.toggle(key="det_onnx").set_value(True).run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    lines = captions(at).splitlines()
    onnx = [c for c in lines if "(onnxruntime)" in c]
    assert len(onnx) == 1 and len([c for c in lines if "(PyTorch)" in c]) == len(pytorch) - 1
    # the same number of pedestrians through either runtime (captions: teacher first, then the student)
    assert len(pytorch) == 2
    assert onnx[0].split(" with ")[0] == pytorch[1].split(" with ")[0]


def test_one_model_at_a_time_at_full_width_and_an_agreement_table_without_none(three_models):
    at = three_models
    assert not at.tabs  # side by side first
    at.slider(key="det_score").set_value(0.05).run()
    at.selectbox(key="det_pair").set_value("teacher|third").run()
    table = at.dataframe[0].value
    assert list(table.columns) == ["status", "teacher score", "third score", "IoU", "box (x1, y1, x2, y2) px"]
    cells = [str(v) for column in table.columns for v in table[column]]
    assert "None" not in cells and "nan" not in cells
    only = table[table["status"] != "agreed"]
    assert (only["IoU"] == "").all()  # a box found by one model only has no IoU: an empty cell
    at.radio(key="det_layout").set_value("one at a time, full width").run()
    no_exceptions(at)
    assert [t.label for t in at.tabs] == ["Teacher · teacher", "Student · student_hkd", "Third · student_baseline"]
    assert len(images(at)) == 4  # each model's image in its own tab, and the comparison
    assert all(len(tab.get("image")) == 1 for tab in at.tabs)


def test_long_checkpoint_names_are_shortened_in_the_middle():
    from app.services.models import short_name

    assert short_name("student_hkd.safetensors") == "student_hkd"
    assert short_name("job my-ft (j1)") == "job my-ft (j1)"
    long = short_name("student_wide_hkd_trust_1600_steps_seed3.safetensors")
    assert long == "student_wide_hk…ps_seed3" and len(long) == 24


def _pedestrians(at) -> list[int]:
    return [int(n) for n in re.findall(r"\*\*(\d+) pedestrians\*\*", captions(at))]


def test_boxes_inside_a_bigger_one_are_suppressed_by_default_and_can_be_kept(open_page):
    at = open_page("detections")
    assert at.selectbox(key="det_contained").value == "suppress if ≥ 90 % inside"  # the measured default
    at.slider(key="det_score").set_value(0.05).run()
    counts = {}
    for choice in ("keep them all", "suppress if ≥ 90 % inside", "suppress if ≥ 80 % inside"):
        at.selectbox(key="det_contained").set_value(choice).run()
        no_exceptions(at)
        counts[choice] = _pedestrians(at)
    keep, at_90, at_80 = counts.values()
    assert len(keep) == 2
    assert all(k >= a >= b for k, a, b in zip(keep, at_90, at_80))
    assert sum(keep) > sum(at_80), counts  # the tiny models' clutter at score 0.05 holds contained boxes


def test_the_controls_keep_their_values_across_pages(open_page):
    at = open_page("detections")
    at.slider(key="det_score").set_value(0.3).run()
    at.selectbox(key="det_contained").set_value("keep them all").run()
    at.radio(key="det_layout").set_value("one at a time, full width").run()
    at.switch_page("app_pages/models.py").run()
    at.switch_page("app_pages/detections.py").run()
    no_exceptions(at)
    assert at.slider(key="det_score").value == 0.3
    assert at.selectbox(key="det_contained").value == "keep them all"
    assert at.radio(key="det_layout").value == "one at a time, full width"
    assert "with score ≥ 0.30" in captions(at)


def test_the_zoomed_out_second_look_is_on_by_default_can_be_turned_off_and_is_kept(open_page, monkeypatch):
    import streamlit as st

    import hkd.models.inference as inference

    st.cache_data.clear()  # detections computed by other tests are cached under the same keys
    sizes, real = [], inference.merge_zoomed
    monkeypatch.setattr(inference, "merge_zoomed", lambda *a, **k: sizes.append(a[2:4]) or real(*a, **k))
    at = open_page("detections")
    no_exceptions(at)
    assert at.toggle(key="det_zoom").value is True  # the measured display default
    assert len(sizes) == 2, "teacher and student each take the second look"
    assert len(set(sizes)) == 1 and len(_pedestrians(at)) == 2
    assert captions(at).count("in two looks") == 2
    at.toggle(key="det_zoom").set_value(False).run()
    no_exceptions(at)
    assert not at.error and len(sizes) == 2, "one look only: nothing merged"
    assert "in two looks" not in captions(at)
    at.switch_page("app_pages/models.py").run()
    at.switch_page("app_pages/detections.py").run()
    assert at.toggle(key="det_zoom").value is False
    at.toggle(key="det_zoom").set_value(True).run()
    assert len(sizes) == 2, "cached: the second look is not run again"
