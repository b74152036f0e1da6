"""bench/containment.py: suppression applied offline to saved detections, and the threshold rule."""
from __future__ import annotations

import numpy as np
import pytest

from hkd.eval.mr import parse_detections, parse_ground_truth
from tests.bench.scripts import bench_module


@pytest.fixture(scope="module")
def containment():
    return bench_module("containment")


def _world():
    gt = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
          "categories": [{"id": 1, "name": "pedestrian"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 50, 40, 120], "height": 120, "vis_ratio": 1.0},
              {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 120], "height": 120, "vis_ratio": 1.0},
              # a person behind the first of image 2: wholly inside its box
              {"id": 3, "image_id": 2, "category_id": 1, "bbox": [15, 20, 30, 90], "height": 90, "vis_ratio": 1.0},
          ]}
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [100, 50, 40, 120], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [105, 60, 30, 50], "score": 0.6},  # a torso
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 120], "score": 0.95},
        {"image_id": 2, "category_id": 1, "bbox": [15, 20, 30, 90], "score": 0.8},  # the person behind
        {"image_id": 2, "category_id": 1, "bbox": [105, 60, 30, 50], "score": 0.7},  # not inside anything here
    ]
    truth = parse_ground_truth(gt)
    return truth, parse_detections(dets, truth)


def test_suppression_is_per_image(containment):
    truth, found = _world()
    kept = containment.suppress(found, (0.8, 1.0))
    np.testing.assert_array_equal(kept.score, [0.9, 0.95, 0.7])  # the torso and the person behind go
    assert containment.suppress(found, None) is found
    kept = containment.suppress(found, (0.8, 0.5))  # 0.6 ≤ 0.45? no; 0.8 ≤ 0.475? no: both stay
    assert len(kept.score) == 5
    assert containment.parse_threshold("0.8:0.5") == (0.8, 0.5) and containment.parse_threshold("off") is None


def test_measure_and_the_rule(containment):
    truth, found = _world()
    off = containment.measure(truth, found, 0.5)
    on = containment.measure(truth, containment.suppress(found, (0.8, 1.0)), 0.5)
    assert off["fp"]["part_of_person"] == 1 and on["fp"]["part_of_person"] == 0
    assert on["mr"]["Reasonable"] > off["mr"]["Reasonable"], "the person behind is lost"
    results = {"m": {"off": off, "0.8": on}}
    choice, reasons = containment.choose(results, ["off", "0.8"])
    assert choice == "off" and "MR⁻² Reasonable" in reasons[0]
    assert containment.people_at_risk(truth, 0.8) == {"Reasonable": (3, 1), "All": (3, 1)}
