"""False positives by error type: hand-made boxes of each type, MR⁻² if fixed, and compare_models' errors.

The hand-made set: six images, people 41x100 px (Reasonable); the model finds
A, B, D at 0.95 and C at 0.75 (E is never found, so MR⁻² > 0), and makes one
false positive per image at the score in brackets:

    image  people                      false positive [x, y, w, h]      type
    1      A [0, 0, 41, 100]           [2, 2, 41, 100] (0.80)           duplicate: IoU 0.92 with A, found by 0.95
    2      B [0, 0, 41, 100]           [10, 30, 41, 100] (0.70)         localization: IoU 0.36
    3      C [0, 0, 41, 100]           [5, 50, 30, 50] (0.60)           part_of_person: inside C, 37 % of its area
    4      D [0, 0, 41, 100],          [0, 0, 86, 100] (0.50)           crowd: covers D and E, IoU 0.48 with each
           E [45, 0, 41, 100]
    5      -                           [500, 500, 41, 100] (0.40)       background
    6      F [0, 0, 41, 100] ignore    -
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from hkd.eval import evaluate_mr
from hkd.eval.compare import compare_models
from hkd.eval.errors import (
    ERROR_TYPES,
    PART_INSIDE,
    classify_false_positives,
    false_positive_errors,
)
from hkd.eval.mr import parse_detections, parse_ground_truth

P = 1


def _ann(i, image, bbox, ignore=0):
    return {"id": i, "image_id": image, "category_id": P, "bbox": bbox, "height": bbox[3], "vis_ratio": 1.0,
            "ignore": ignore}


def _det(image, bbox, score):
    return {"image_id": image, "category_id": P, "bbox": bbox, "score": score}


PEOPLE = {"A": (1, [0, 0, 41, 100]), "B": (2, [0, 0, 41, 100]), "C": (3, [0, 0, 41, 100]),
          "D": (4, [0, 0, 41, 100]), "E": (4, [45, 0, 41, 100])}
GT = {
    "images": [{"id": i, "file_name": f"img_{i}.png"} for i in range(1, 7)],
    "categories": [{"id": P}],
    "annotations": [_ann(k + 1, image, box) for k, (image, box) in enumerate(PEOPLE.values())]
    + [_ann(6, 6, [0, 0, 41, 100], ignore=1)],
}
FOUND = [_det(*PEOPLE[name], 0.95) for name in "ABD"] + [_det(*PEOPLE["C"], 0.75)]
FALSE_POSITIVES = {
    "duplicate": _det(1, [2, 2, 41, 100], 0.80),
    "localization": _det(2, [10, 30, 41, 100], 0.70),
    "part_of_person": _det(3, [5, 50, 30, 50], 0.60),
    "crowd": _det(4, [0, 0, 86, 100], 0.50),
    "background": _det(5, [500, 500, 41, 100], 0.40),
}
DETS = FOUND + list(FALSE_POSITIVES.values())


def _errors(dets, score=0.0):
    truth = parse_ground_truth(GT)
    return false_positive_errors(truth, parse_detections(dets, truth), score=score)


def test_each_hand_made_false_positive_gets_its_type():
    errors = _errors(DETS)
    assert errors.counts == {name: 1 for name in ERROR_TYPES}
    assert {r["type"]: r["image_id"] for r in errors.records} == {
        "duplicate": 1, "localization": 2, "part_of_person": 3, "crowd": 4, "background": 5}
    assert [r["score"] for r in errors.records] == [0.80, 0.70, 0.60, 0.50, 0.40]  # by descending score
    crowd = next(r for r in errors.records if r["type"] == "crowd")
    assert crowd["box"] == [0.0, 0.0, 86.0, 100.0] and crowd["iou"] == pytest.approx(4100 / 8600)


def test_classify_boxes_directly_and_the_priority_order():
    people = np.array([[0, 0, 41, 100], [45, 0, 86, 100]], dtype=float)
    boxes = np.array([
        [0, 0, 41, 100],  # IoU 1: duplicate (the protocol only calls it false when the person is taken)
        [0, 0, 86, 100],  # both people inside, IoU 0.48 with each: crowd before localization
        [5, 50, 35, 100],  # a leg, IoU 0.37: part_of_person before localization
        [10, 30, 51, 130],  # IoU 0.36, half outside: localization
        [40, 95, 46, 105],  # IoU < 0.1, mostly outside: background
        [5, 5, 5, 5],  # zero area: background
    ], dtype=float)
    assert classify_false_positives(boxes, people).tolist() == [
        "duplicate", "crowd", "part_of_person", "localization", "background", "background"]
    # a piece that is only partly inside is not a part (threshold PART_INSIDE of the box's area)
    half_out = np.array([[30, 50, 50, 100]])  # 11 of 20 px wide inside the first person
    assert 11 / 20 < PART_INSIDE
    assert classify_false_positives(half_out, people[:1]).tolist() == ["localization"]
    assert classify_false_positives(boxes, np.zeros((0, 4))).tolist() == ["background"] * 6
    assert classify_false_positives(np.zeros((0, 4)), people).tolist() == []
    with pytest.raises(ValueError, match=r"fp_xyxy must have shape \(N, 4\)"):
        classify_false_positives(np.zeros((2, 3)), people)
    with pytest.raises(ValueError, match="people_xyxy must be x1, y1, x2, y2"):
        classify_false_positives(boxes, np.array([[10, 0, 0, 10]]))


def test_mr_if_fixed_removes_the_type_at_any_score():
    errors = _errors(DETS, score=0.65)
    # at the operating point 0.65 only the duplicate (0.80) and localization (0.70) errors count ...
    assert errors.counts == {"duplicate": 1, "crowd": 0, "part_of_person": 0, "localization": 1, "background": 0}
    assert errors.counts_any_score == {name: 1 for name in ERROR_TYPES}
    assert errors.mr == evaluate_mr(GT, DETS).mr["Reasonable"]
    # ... but fixing a type removes its false positives at any score
    for name, fp in FALSE_POSITIVES.items():
        without = [d for d in DETS if d is not fp]
        assert errors.mr_if_fixed[name] == evaluate_mr(GT, without).mr["Reasonable"], name
        assert errors.mr_if_fixed[name] <= errors.mr
    # the duplicate (0.80) is the only FP above C (0.75): without it C is found at FPPI 0 already
    assert errors.mr_if_fixed["duplicate"] < errors.mr
    assert all(errors.mr_if_fixed[name] == errors.mr for name in ERROR_TYPES if name != "duplicate")


def test_a_type_without_false_positives_keeps_the_model_mr():
    dets = [d for d in DETS if d is not FALSE_POSITIVES["crowd"]]
    errors = _errors(dets)
    assert errors.counts["crowd"] == errors.counts_any_score["crowd"] == 0
    assert errors.mr_if_fixed["crowd"] == errors.mr == evaluate_mr(GT, dets).mr["Reasonable"]
    none = _errors(FOUND)
    assert none.counts == {name: 0 for name in ERROR_TYPES} and none.records == []
    assert none.mr_if_fixed == {name: none.mr for name in ERROR_TYPES}


def test_detections_in_ignore_regions_are_not_false_positives():
    errors = _errors(DETS + [_det(6, [0, 0, 41, 100], 0.99)])  # F is ignore-flagged: absorbed
    assert sum(errors.counts.values()) == 5


def test_bad_arguments():
    truth = parse_ground_truth(GT)
    found = parse_detections(DETS, truth)
    with pytest.raises(ValueError, match="score must be a finite number, got nan"):
        false_positive_errors(truth, found, score=float("nan"))
    with pytest.raises(ValueError, match="unknown evaluation setup 'Tiny'"):
        false_positive_errors(truth, found, score=0.5, setup="Tiny")


def test_compare_models_reports_errors_per_model():
    report = compare_models(GT, {"model": DETS, "clean": FOUND}, score=0.45)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    errors = data["errors"]
    assert list(errors) == ["model", "clean"]
    assert list(errors["model"]) == ["counts", "counts_any_score", "mr_if_fixed", "thresholds", "false_positives"]
    assert errors["model"]["counts"] == {"duplicate": 1, "crowd": 1, "part_of_person": 1, "localization": 1,
                                         "background": 0}  # the 0.40 background FP is below 0.45
    assert list(errors["model"]["mr_if_fixed"]) == list(ERROR_TYPES)
    assert errors["model"]["thresholds"]["part_inside"] == PART_INSIDE
    assert errors["clean"]["mr_if_fixed"] == {name: data["models"]["clean"]["mr"]["Reasonable"]
                                              for name in ERROR_TYPES}
    first = errors["model"]["false_positives"][0]
    assert first == {"image_id": 1, "file_name": "img_1.png", "box": [2.0, 2.0, 43.0, 102.0], "score": 0.8,
                     "type": "duplicate", "iou": pytest.approx(first["iou"])}
    assert [(r["model"], r["type"]) for r in report.false_positives] == [
        ("model", "duplicate"), ("model", "localization"), ("model", "part_of_person"), ("model", "crowd")]
