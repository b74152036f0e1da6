"""Turning a torchvision prediction into pedestrian detections."""
import numpy as np
import pytest
import torch

from hkd.models.inference import Detections, image_tensor


def _pred():
    return {
        "boxes": torch.tensor([[0, 0, 10, 20], [5, 5, 15, 25], [1, 1, 2, 2], [3, 3, 9, 9]], dtype=torch.float32),
        "scores": torch.tensor([0.9, 0.8, 0.04, 0.7]),
        "labels": torch.tensor([1, 2, 1, 1]),
    }


def test_from_prediction_keeps_pedestrians_above_threshold():
    dets = Detections.from_prediction(_pred(), score_thresh=0.05)
    np.testing.assert_allclose(dets.scores, [0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(dets.boxes, [[0, 0, 10, 20], [3, 3, 9, 9]])
    assert dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32


def test_from_prediction_caps_the_count():
    dets = Detections.from_prediction(_pred(), score_thresh=0.0, max_dets=1)
    assert len(dets) == 1 and dets.scores[0] == pytest.approx(0.9)


def test_to_coco_writes_xywh():
    (row, _) = Detections.from_prediction(_pred()).to_coco(7)
    assert row == {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 20.0], "score": 0.9}


def test_image_tensor_scales_to_unit_range():
    t = image_tensor(np.full((4, 5, 3), 255, dtype=np.uint8))
    assert t.shape == (3, 4, 5) and float(t.max()) == 1.0
