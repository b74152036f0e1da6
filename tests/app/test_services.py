"""App services without a browser: path confinement, the fitted adapter, the JSON export, shared models."""
from __future__ import annotations

import json
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.services import compute, settings
from app.services.images import Picture
from hkd.data.images import LoadedImage
from hkd.models.inference import Detections
from tests.app.studio import png_bytes


def test_paths_are_confined_to_the_allowed_roots(studio_env, tmp_path, monkeypatch):
    inside = studio_env["models"] / "teacher.safetensors"
    assert settings.confine(inside) == inside.resolve()
    with pytest.raises(settings.PathNotAllowed, match="HKD_DATA_ROOTS"):
        settings.confine("/etc/passwd")
    escape = studio_env["models"] / "escape"
    escape.symlink_to("/etc")
    try:
        with pytest.raises(settings.PathNotAllowed):
            settings.confine(escape / "passwd")  # a symlink inside a root that points outside
    finally:
        escape.unlink()
    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path))
    assert settings.confine(tmp_path / "x.safetensors") == (tmp_path / "x.safetensors").resolve()


def test_fitted_adapter_recovers_a_linear_map_exactly():
    torch.manual_seed(0)
    student = torch.randn(8, 12, 16)
    weight, bias = torch.randn(20, 8), torch.randn(20)
    teacher = torch.einsum("oc,chw->ohw", weight, student) + bias[:, None, None]
    exact = compute._difference_of(teacher, student, fitted=True)
    assert exact["fitted"] and exact["residual"] < 1e-3
    noisy = compute._difference_of(torch.randn(20, 12, 16), student, fitted=True)
    assert noisy["residual"] > 0.5 and noisy["heat"].shape == (12, 16) and noisy["heat"].max() == pytest.approx(1)
    region = compute._difference_of(torch.randn(256, 7, 7), torch.randn(64, 7, 7), fitted=True)
    assert not region["fitted"]  # 49 cells cannot fit 65 unknowns per channel


def test_json_export_gives_boxes_in_original_pixels():
    loaded = LoadedImage(np.zeros((50, 100, 3), np.uint8), original_size=(200, 100), scale=0.5)
    picture = Picture("upload:x", "street.jpg", loaded, gt_boxes=np.array([[1, 2, 3, 4]], np.float32))
    dets = Detections(np.array([[10, 10, 20, 40]], np.float32), np.array([0.9], np.float32), 0.25)

    class Model:
        name, key = "student.safetensors", "abc:"
        meta = type("Meta", (), {"preset": "hkd_frcnn_lite0.student"})

    rows = [{"box": [10.0, 10.0, 20.0, 40.0], "score_teacher": None, "score_student": 0.9, "iou": None,
             "status": "student_only"}]
    report = json.loads(compute.detections_json(picture, {"student": (Model, dets)}, rows, {"score_thresh": 0.5}))
    assert report["models"]["student"]["detections"] == [{"box_xyxy": [20.0, 20.0, 40.0, 80.0], "score": 0.9}]
    assert report["comparison"][0]["box"] == [20.0, 20.0, 40.0, 80.0]
    assert report["ground_truth"] == [[2.0, 4.0, 6.0, 8.0]]
    assert report["image"]["size"] == [200, 100] and report["models"]["student"]["inference_seconds"] == 0.25


def test_one_cached_model_serves_concurrent_sessions_and_stays_untouched(studio_env):
    """Four 'sessions' at once on the shared cached model get the results they get alone."""
    from app.services import models
    from hkd.data.images import load_image
    from hkd.models.taps import count_hooks
    from hkd.viz.cam import detection_cam
    from hkd.viz.featmaps import level_views

    ref = {"path": str(studio_env["models"] / "student_hkd.safetensors"), "preset": None}
    student = models.load(ref)
    assert models.load(dict(ref)) is student  # one object per checkpoint, shared by every session
    pictures = [load_image(png_bytes(seed=40 + i)) for i in range(4)]

    def session(i: int):
        image = pictures[i]
        views = level_views(student.model, student.spec, image, ["backbone.c3", "neck.p3"])
        # Grad-CAM takes gradients through the shared model: they must not leak between threads
        cam = detection_cam(student.model, student.spec, image, method="gradcam", box_index=0, score_thresh=0.0)
        return views["neck.p3"].energy, cam.boxes, cam.heat

    alone = [session(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(session, range(4)))
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
    assert not student.model.training
    assert count_hooks(student.model) == 0
    assert all(p.grad is None for p in student.model.parameters())


def test_metrics_table_is_text_with_nested_keys_flattened():
    from app.widgets import flat_metrics

    rows = flat_metrics({"mr": {"Reasonable": 28.2811, "Small": 21.0}, "ap50": 0.6884, "dataset": "SynthPed val"})
    assert rows == [("mr/Reasonable", "28.28"), ("mr/Small", "21"), ("ap50", "0.6884"), ("dataset", "SynthPed val")]
    assert all(isinstance(v, str) for _, v in rows)


# -- images: file: keys and the focused box ----------------------------------------
def dataset_image(folder, *, width: int = 320, height: int = 240, seed: int = 0):
    """``folder/images/frame_<seed>.png`` (see ``png_bytes``) with a COCO ``folder/annotations.json`` beside the
    images folder: two pedestrians [10, 20, 40, 100] and [200, 30, 30, 90] (xywh) and one ignore box."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "images" / f"frame_{seed}.png"
    path.write_bytes(png_bytes(width, height, seed=seed))
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 40, 100], "iscrowd": 0, "area": 4000},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [200, 30, 30, 90], "iscrowd": 0, "area": 2700},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20], "iscrowd": 1, "area": 400}]
    (folder / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": path.name, "width": width, "height": height}], "annotations": anns,
        "categories": [{"id": 1, "name": "pedestrian"}]}))
    return path


@pytest.fixture()
def bare_session():
    """``st.session_state`` outside a script run (bare mode), emptied before and after."""
    import streamlit as st

    st.session_state.clear()
    yield st.session_state
    st.session_state.clear()


def test_file_keys_are_confined_image_files_with_their_dataset_ground_truth(studio_env, tmp_path, monkeypatch):
    from app.services import images
    from hkd.data.images import ImageError

    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.setenv("HKD_MAX_IMAGE_SIDE", "160")  # the 320 × 240 file is shown at half size
    path = dataset_image(tmp_path / "data" / "val")
    key = images.file_key(path)
    assert key == "file:" + path.resolve().as_posix()
    assert images.file_key(tmp_path / "data" / "val" / ".." / "val" / "images" / path.name) == key
    picture = images.load(key)
    assert picture.name == path.name and picture.key.startswith(key + "@")
    assert picture.pixels.shape == (120, 160, 3) and picture.loaded.scale == 0.5
    np.testing.assert_allclose(picture.gt_boxes, [[5, 10, 25, 60], [100, 15, 115, 60]])  # xyxy, half size

    loose = tmp_path / "data" / "loose.png"  # not in a dataset's images/ folder: no ground truth
    loose.write_bytes(png_bytes(seed=3))
    assert images.load(images.file_key(loose)).gt_boxes is None
    assert images.ground_truth(studio_env["samples"] / "real" / "street.jpg") is None
    assert len(images.ground_truth(studio_env["samples"] / "synthped" / "images" / "synthped_001.png")) == 3

    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png_bytes(seed=4))
    with pytest.raises(settings.PathNotAllowed, match="HKD_DATA_ROOTS"):
        images.file_key(outside)
    with pytest.raises(settings.PathNotAllowed):  # a key made by hand is checked again on load
        images.load("file:" + outside.as_posix())
    (tmp_path / "data" / "link.png").symlink_to(outside)
    with pytest.raises(settings.PathNotAllowed):
        images.file_key(tmp_path / "data" / "link.png")
    (tmp_path / "data" / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match="not an image file"):
        images.file_key(tmp_path / "data" / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.file_key(tmp_path / "data" / "missing.png")


def test_the_current_file_image_is_offered_only_while_current(studio_env, tmp_path, monkeypatch, bare_session):
    from app.services import images

    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path))
    key = images.file_key(dataset_image(tmp_path / "ds", seed=5))
    bare_session["image_key"] = key
    options = images.choices()
    assert list(options)[0] == key and options[key] == "frame_5.png (dataset image)"
    assert all(label.isascii() for label in options.values())  # no emoji: an empty box without an emoji font
    assert "sample:real/street.jpg" in options
    bare_session["image_key"] = "sample:real/street.jpg"
    assert key not in images.choices()


def test_the_focused_box_applies_to_its_image_in_picture_pixels_once_per_page(bare_session):
    from app.services import images

    picture = Picture("file:/x/a.png@1", "a.png", LoadedImage(np.zeros((50, 100, 3), np.uint8), (200, 100), 0.5))
    bare_session["image_key"] = "file:/x/a.png"
    assert images.focus_for(picture) is None
    focus = {"image_key": "file:/x/a.png", "box": [20, 10, 60, 90], "source": "evaluate"}
    bare_session["focus"] = focus
    found = images.focus_for(picture)
    assert found.box == (10.0, 5.0, 30.0, 45.0) and found.describe() == "box from Evaluate · 10, 5, 30, 45"
    assert images.take_focus("feat") and not images.take_focus("feat")  # once per page …
    assert images.take_focus("att")
    bare_session["focus"] = {**focus, "box": [0, 0, 8, 8]}
    assert images.take_focus("feat")  # … and again for another box
    images.clear_focus()
    assert bare_session["focus"] is None and images.focus_for(picture) is None
    bare_session["focus"] = focus
    assert images.take_focus("feat")  # the same box, sent again after a clear, applies again
    bare_session["image_key"] = "sample:real/street.jpg"
    assert images.focus_for(picture) is None  # a focus for another image
    bare_session["image_key"] = "file:/x/a.png"
    for bad in ([5, 5, 5, 9], [1, 2, 3], "0,0,9,9", [0, 0, float("nan"), 9]):
        bare_session["focus"] = {**focus, "box": bad}
        with pytest.raises(ValueError, match=r"\[x1, y1, x2, y2\]"):
            images.focus_for(picture)
    bare_session["focus"] = ["file:/x/a.png", [0, 0, 9, 9]]
    with pytest.raises(ValueError, match="image_key, box and source"):
        images.focus_for(picture)


def test_loss_series_groups_every_kind_of_loss_key():
    from app.services.finetune import loss_series

    metrics = [{"step": 10, "loss": 3.0, "det/loss_classifier": 1.0, "kd/neck.p3/mse": 0.5,
                "kd/head.cls_logits/focal_kd": 0.1, "aux/neck.p3/kl": 0.2, "teacher/det/loss_classifier": 0.9,
                "lr": 0.01, "images_per_s": 1.5},
               {"step": 10, "eval": {"mr": {"Reasonable": 40.0}}},
               {"step": 10, "teacher_eval": {"mr": {"Reasonable": 30.0}}}]
    groups = loss_series(metrics)
    assert groups == {
        "total": {"loss": [[10], [3.0]]}, "detection": {"det/loss_classifier": [[10], [1.0]]},
        "FPN": {"kd/neck.p3/mse": [[10], [0.5]]}, "dense head": {"kd/head.cls_logits/focal_kd": [[10], [0.1]]},
        "aux heads": {"aux/neck.p3/kl": [[10], [0.2]]},
        "teacher (online)": {"teacher/det/loss_classifier": [[10], [0.9]]}}


def test_a_models_folder_lists_detectors_not_a_teachers_aux_heads(studio_env):
    from safetensors.torch import save_file

    from app.services import models
    from hkd.models.meta import NotADetectorError, read_meta

    aux = studio_env["models"] / "teacher_aux.safetensors"
    save_file({"w": torch.zeros(2)}, str(aux), metadata={"hkd": json.dumps({"kind": "aux_heads", "levels": []})})
    try:
        names = [Path(e.path).name for e in models.scan_folder(studio_env["models"])]
        assert "teacher_aux.safetensors" not in names and "teacher.safetensors" in names
        with pytest.raises(NotADetectorError, match="auxiliary heads"):
            read_meta(aux)
        upload = models.describe_file(aux, "upload")  # offered by hand: named, with the reason
        assert upload.other_kind and "not a detector" in upload.error
    finally:
        aux.unlink()


def test_the_loss_chart_has_one_panel_per_hierarchy_on_a_shared_step_axis_with_its_own_legend():
    from app.services.figures import loss_chart

    steps = [0, 10, 20]
    groups = {"total": {"loss": [steps, [3.0, 2.0, 1.5]]},
              "detection": {"det/loss_classifier": [steps, [1.0, 0.8, 0.7]], "det/loss_box_reg": [steps, [0.5] * 3]},
              "Backbone": {"kd/backbone.c3/at": [steps, [0.1, 0.01, 0.001]]},
              "FPN": {f"kd/neck.p{i}/mse": [steps, [0.5, 0.4, 0.3]] for i in range(3, 7)},
              "RPN": {"kd/rpn.objectness/soft_bce": [steps, [0.2] * 3]},
              "ROI head": {"kd/roi.logits/kd_kl": [steps, [0.3] * 3]},
              "aux heads": {"aux/neck.p3/kl": [steps, [0.2] * 3]},
              "teacher (online)": {"teacher/det/loss_classifier": [steps, [0.9] * 3]}}
    figure = loss_chart(groups)
    titles = [a.text for a in figure.layout.annotations]
    assert titles == ["detection", "backbone", "FPN", "RPN", "ROI head", "aux heads", "teacher (online)"]
    axes = {t.yaxis for t in figure.data}
    assert len(axes) == 7  # one small plot each
    assert all(figure.layout[f"xaxis{i}"].matches == "x7" for i in ("", *range(2, 7)))  # one step axis
    legends = {}
    for trace in figure.data:
        legends.setdefault(trace.legend or "legend", set()).add(trace.yaxis)
    assert len(legends) == 7 and all(len(axes) == 1 for axes in legends.values())  # a legend per panel
    for name, (axis,) in legends.items():  # each legend starts at the top of its own panel
        domain = figure.layout["yaxis" + axis[1:]].domain
        assert domain[0] <= figure.layout[name].y <= domain[1] + 1e-9
    names = {t.name for t in figure.data}
    assert {"total", "loss_classifier", "neck.p3 · mse", "backbone.c3 · at", "det/loss_classifier"} <= names
    assert figure.layout.yaxis2.type == "log" and figure.layout.yaxis.type == "linear"  # a decade or more: log
    assert figure.layout.yaxis2.dtick == "D2"  # two decades: 1-2-5 ticks
    wide = loss_chart({"Backbone": {"kd/backbone.c5/nmse": [steps, [1e-8, 1e-4, 1e-2]]}})
    assert wide.layout.yaxis.dtick == 1  # six decades: one tick per decade, not a pile of labels
    assert figure.layout.height >= 7 * 150


def test_the_validation_chart_is_its_own_readable_plot():
    from app.services.figures import validation_chart

    figure = validation_chart([(20, 41.237), (40, 41.5), (60, 40.9)])
    assert not figure.layout.showlegend  # nothing to sit on the title
    assert figure.layout.title.text.startswith("Validation MR⁻²")
    assert figure.layout.yaxis.tickformat == ".1f" and figure.layout.xaxis.tickformat == "d"
    low, high = figure.layout.yaxis.range
    assert high - low >= 2  # ticks at distinct one-decimal values, not "41 41 41"
    single = validation_chart([(60, 12.79)])
    assert single.layout.yaxis.range[0] < 12.79 < single.layout.yaxis.range[1]
