"""bench/stage_swap.py: feeding one model's proposals to another's ROI head."""
from __future__ import annotations

import pytest
import torch

from tests.bench.scripts import bench_module


@pytest.fixture(scope="module")
def stage_swap():
    return bench_module("stage_swap")


@pytest.fixture(scope="module")
def world(studio_world):
    from hkd.data.datasets import open_dataset
    from hkd.models.checkpoint import load_checkpoint

    models = studio_world["models"]
    return (load_checkpoint(models / "teacher.safetensors", inference=True).model,
            load_checkpoint(models / "student_hkd.safetensors", inference=True).model,
            open_dataset(studio_world["samples"] / "synthped"))


@pytest.mark.slow
def test_own_proposals_reproduce_the_models_forward(stage_swap, world):
    from hkd.models.inference import detect

    teacher, student, data = world
    results = stage_swap.swap(teacher, {"s": student}, data, images=2)
    for key, model in (("teacher", teacher), ("s", student)):
        expected = []
        for i in range(2):
            image, target = data[i]
            (dets,) = detect(model, [image])
            expected += dets.to_coco(int(target["image_id"]))
        assert len(results[key]) == len(expected)
        for got, want in zip(results[key], expected):
            assert got["image_id"] == want["image_id"]
            assert got["score"] == pytest.approx(want["score"], abs=1e-6)
            assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-6)


@pytest.mark.slow
def test_a_model_swapped_with_itself_is_unchanged(stage_swap, world):
    teacher, _, data = world
    results = stage_swap.swap(teacher, {"same": teacher}, data, images=2)
    assert results["teacher"], "the tiny teacher detects something at score ≥ 0.05"
    assert results["same head on teacher proposals"] == results["teacher"]
    assert results["teacher head on same proposals"] == results["teacher"]


@pytest.mark.slow
def test_swapped_proposals_change_the_detections(stage_swap, world):
    teacher, student, data = world
    results = stage_swap.swap(teacher, {"s": student}, data, images=2)
    assert results["s head on teacher proposals"] != results["s"]


def test_map_scales_boxes_between_resized_images(stage_swap):
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    mapped = stage_swap._map(boxes, (100, 200), (50, 400))
    assert mapped.tolist() == [[20.0, 10.0, 60.0, 30.0]]
    assert torch.equal(stage_swap._map(mapped, (50, 400), (100, 200)), boxes)
