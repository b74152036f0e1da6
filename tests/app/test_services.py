"""App services without a browser: path confinement, the fitted adapter, the JSON export, shared models."""
from __future__ import annotations

import json
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
