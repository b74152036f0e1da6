"""COCO AP through pycocotools, with CityPersons ignore flags treated as crowd regions."""
from __future__ import annotations

import pytest

from hkd.eval import evaluate_ap

P1, P2 = [0, 0, 40, 100], [200, 0, 40, 100]
R1, R2 = [400, 0, 200, 200], [700, 0, 100, 100]  # ignore regions


def make_gt(annotations, num_images=1):
    anns = [
        {"id": k, "image_id": 1, "category_id": 1, "bbox": box, "height": box[3], "vis_ratio": 1.0, "ignore": ig}
        for k, (box, ig) in enumerate(annotations, start=1)
    ]
    return {"images": [{"id": i} for i in range(1, num_images + 1)], "categories": [{"id": 1}],
            "annotations": anns}


def det(box, score, category_id=1):
    return {"image_id": 1, "category_id": category_id, "bbox": box, "score": score}


def test_perfect_detections_score_one_and_print_nothing(capsys):
    result = evaluate_ap(make_gt([(P1, 0), (P2, 0)]), [det(P1, 0.9), det(P2, 0.8)])
    assert result == {"ap50": pytest.approx(1.0), "ap": pytest.approx(1.0)}
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are silenced


def test_ignore_flags_behave_as_crowd_regions():
    gt = make_gt([(P1, 0), (P2, 0), (R1, 1), (R2, 1)])
    # The highest-scored detection lies in ignore region R1: as a crowd region
    # it absorbs it (neither TP nor FP); R2 has no detection and is not a miss.
    # Stock COCOeval (ignore overwritten by iscrowd=0) would count R1 and R2 as
    # people: recall 3/4 and AP50 < 1.
    result = evaluate_ap(gt, [det([410, 10, 40, 100], 0.95), det(P1, 0.9), det(P2, 0.8)])
    assert result["ap50"] == pytest.approx(1.0)


def test_false_positive_lowers_ap():
    result = evaluate_ap(make_gt([(P1, 0), (P2, 0)]), [det([500, 0, 40, 100], 0.95), det(P1, 0.9), det(P2, 0.8)])
    # precision 1/2 at recall 1/2, 2/3 at recall 1; the interpolated (max to the
    # right) precision is 2/3 at all 101 recall points -> AP50 = 2/3
    assert result["ap50"] == pytest.approx(2 / 3, abs=1e-9)


def test_empty_detections_score_zero():
    assert evaluate_ap(make_gt([(P1, 0)]), []) == {"ap50": 0.0, "ap": 0.0}


def test_gt_id_zero_is_an_ordinary_gt():
    gt = make_gt([(P1, 0)])
    gt["annotations"][0]["id"] = 0  # COCOeval would turn this TP into a FP
    assert evaluate_ap(gt, [det(P1, 0.9)])["ap50"] == pytest.approx(1.0)


def test_only_pedestrians_are_scored():
    gt = make_gt([(P1, 0)])
    assert evaluate_ap(gt, [det(P2, 0.95, category_id=2), det(P1, 0.9)])["ap50"] == pytest.approx(1.0)


def test_no_gt_to_score_gives_minus_one():
    assert evaluate_ap(make_gt([(P1, 1)]), [det(P1, 0.9)]) == {"ap50": -1.0, "ap": -1.0}


def test_invalid_detection_raises():
    with pytest.raises(ValueError, match="has no 'score'"):
        evaluate_ap(make_gt([(P1, 0)]), [{"image_id": 1, "category_id": 1, "bbox": P1}])
