"""The Evaluate page and `hkd compare --data` share one result store: the same GT file and the same
prediction entries for a dataset found under HKD_DATA_ROOTS; a prediction an `hkd compare` process
is making shows as running, without a queue job."""
from __future__ import annotations

import json
import os

from PIL import Image

from app.services import datasets, evaluation
from hkd.evaluation import workflow
from hkd.jobs.process import identify
from hkd.models.meta import file_sha256
from hkd.results import ResultStore


def _dataset(folder):
    (folder / "images").mkdir(parents=True)
    images = []
    for image_id in (1, 2, 3):
        Image.new("RGB", (160, 120), (90, 90, 90)).save(folder / "images" / f"im{image_id}.png")
        images.append({"id": image_id, "file_name": f"im{image_id}.png", "width": 160, "height": 120})
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 80], "iscrowd": 0, "area": 2400}
                   for i in (1, 2, 3)]
    (folder / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pedestrian"}]}))
    return folder


def test_the_page_and_the_command_share_the_gt_and_the_prediction_entries(studio_world, tmp_path, monkeypatch):
    monkeypatch.setenv("HKD_MODELS_DIR", str(studio_world["models"]))
    monkeypatch.setenv("HKD_SAMPLES_DIR", str(studio_world["samples"]))
    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.setenv("HKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HKD_JOBS_DIR", str(tmp_path / "jobs"))
    folder = _dataset(tmp_path / "data" / "city")
    choice = next(c for c in datasets.choices() if c.path == str(folder.resolve()))
    prepared = evaluation.prepare(choice, 2)
    gt = workflow.ground_truth(folder, 2)
    assert (gt.gt_path, gt.images, gt.digest, gt.key) == (prepared.gt_path, prepared.digest, prepared.gt_hash,
                                                          prepared.key)

    teacher = studio_world["models"] / "teacher.safetensors"
    ck = workflow.checkpoint("teacher", teacher)
    entry = workflow.prediction_entry(ResultStore(), ck.sha256, gt)
    assert entry.path == evaluation.predictions_path(file_sha256(teacher), prepared)
    candidate = evaluation.Candidate("teacher", {"path": str(teacher), "preset": None}, "models folder")
    assert evaluation.prediction_state(candidate, prepared).state == "missing"

    entry.record(identify(os.getpid()))  # `hkd compare --data` is making it
    state = evaluation.prediction_state(candidate, prepared)
    assert state.state == "running" and state.pending and state.job_id is None
    assert evaluation.launch(state, prepared) == state  # nothing is started beside it
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())

    entry.path.write_text("[]")
    entry.marker.unlink()
    state = evaluation.prediction_state(candidate, prepared)
    assert state.state == "ready" and state.path == entry.path
