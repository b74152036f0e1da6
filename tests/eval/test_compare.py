"""compare_models: MR-2 as `hkd eval`, operating points, miss rate per bin, disagreements, bad input.

The hand-made set: 10 images (so FPPI 0.1 is one false positive), six counted
people, one ignore region and one 15 px person that does not count.

    id  image  box [x, y, w, h]     height  vis   teacher        student
    g1  1      [0, 0, 40, 100]       100    1.0   0.95           0.90
    g2  1      [100, 0, 10, 25]       25    1.0   0.90           0.12 (below any operating score)
    g3  1      [200, 0, 16, 40]       40    0.5   -              0.75
    g4  2      [0, 0, 30, 60]         60    0.7   0.85           -
    g5  2      [100, 0, 60, 150]     150    0.1   -              0.68
    g6  2      [300, 0, 20, 50]       ignore region: teacher 0.90 inside
    g7  3      [0, 0, 8, 15]          15 px: not counted; teacher 0.90 on it
    g8  3      [100, 0, 40, 100]     100    0.95  0.80           0.30 at [120, 0, 40, 100] (IoU 1/3)
    FPs: teacher 0.72 on image 4 (its own), teacher 0.60 + student 0.65 on image 5 (the same box),
         student 0.55 on image 6 (its own)
"""
from __future__ import annotations

import json
import math

import pytest

from hkd.cli import main
from hkd.eval import evaluate_mr
from hkd.eval.compare import ComparisonInputError, compare_models

P = 1  # pedestrian category


def _ann(i, image, bbox, vis=1.0, ignore=0):
    return {"id": i, "image_id": image, "category_id": P, "bbox": bbox, "height": bbox[3], "vis_ratio": vis,
            "ignore": ignore}


def _det(image, bbox, score, category=P):
    return {"image_id": image, "category_id": category, "bbox": bbox, "score": score}


GT = {
    "images": [{"id": i, "file_name": f"img_{i:02d}.png"} for i in range(1, 11)],
    "categories": [{"id": P, "name": "pedestrian"}],
    "annotations": [
        _ann(1, 1, [0, 0, 40, 100]),
        _ann(2, 1, [100, 0, 10, 25]),
        _ann(3, 1, [200, 0, 16, 40], vis=0.5),
        _ann(4, 2, [0, 0, 30, 60], vis=0.7),
        _ann(5, 2, [100, 0, 60, 150], vis=0.1),
        _ann(6, 2, [300, 0, 20, 50], ignore=1),
        _ann(7, 3, [0, 0, 8, 15]),
        _ann(8, 3, [100, 0, 40, 100], vis=0.95),
    ],
}
TEACHER = [
    _det(1, [0, 0, 40, 100], 0.95), _det(1, [100, 0, 10, 25], 0.90), _det(2, [0, 0, 30, 60], 0.85),
    _det(2, [300, 0, 20, 50], 0.90), _det(3, [0, 0, 8, 15], 0.90), _det(3, [100, 0, 40, 100], 0.80),
    _det(4, [50, 50, 40, 100], 0.72), _det(5, [0, 0, 40, 100], 0.60),
]
STUDENT = [
    _det(1, [0, 0, 40, 100], 0.90), _det(1, [100, 0, 10, 25], 0.12), _det(1, [200, 0, 16, 40], 0.75),
    _det(2, [100, 0, 60, 150], 0.68), _det(3, [120, 0, 40, 100], 0.30), _det(5, [0, 0, 40, 100], 0.65),
    _det(6, [10, 10, 40, 100], 0.55),
]
DETS = {"teacher": TEACHER, "student": STUDENT}


def _bins(report, model, axis):
    return {r["bin"]: (r["gt"], r["missed"]) for r in report.breakdown[model][axis]}


def _cases(report, a, kind):
    return [(r["image_id"], r["box"]) for r in report.disagreements if r["a"] == a and r["kind"] == kind]


def test_mr_and_ap_are_what_hkd_eval_prints(tmp_path, capsys):
    report = compare_models(GT, DETS, score=0.5)
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(GT))
    for name, dets in DETS.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(dets))
        assert main(["eval", "--gt", str(gt_path), "--dets", str(path), "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert report.models[name]["mr"] == printed["mr"]
        assert report.models[name]["ap50"] == printed["ap50"]
    assert report.models["teacher"]["num_detections"] == 8 and report.models["student"]["num_detections"] == 7


def test_miss_rate_per_height_and_visibility_bin():
    report = compare_models(GT, DETS, score=0.5)
    # teacher misses g3 (40 px, vis 0.5) and g5 (150 px, vis 0.1); g6 (ignored) and g7 (15 px) never count
    assert _bins(report, "teacher", "height") == {"20-30": (1, 0), "30-50": (1, 1), "50-80": (1, 0),
                                                  "80-120": (2, 0), "120+": (1, 1)}
    assert _bins(report, "teacher", "visibility") == {"<0.2": (1, 1), "0.2-0.65": (1, 1), "0.65-0.9": (1, 0),
                                                      "0.9+": (3, 0)}
    # student misses g2 (its 0.12 is below 0.5), g4 (nothing) and g8 (its box is off: IoU 1/3)
    assert _bins(report, "student", "height") == {"20-30": (1, 1), "30-50": (1, 0), "50-80": (1, 1),
                                                  "80-120": (2, 1), "120+": (1, 0)}
    assert _bins(report, "student", "visibility") == {"<0.2": (1, 0), "0.2-0.65": (1, 0), "0.65-0.9": (1, 1),
                                                      "0.9+": (3, 2)}
    rows = report.breakdown["student"]["height"]
    assert rows[3] == {"bin": "80-120", "low": 80.0, "high": 120.0, "gt": 2, "missed": 1, "miss_rate": 0.5}
    assert rows[4]["high"] is None and rows[1]["miss_rate"] == 0.0
    assert report.breakdown["student"]["counted"] == {"gt": 6, "missed": 3, "miss_rate": 0.5}
    assert report.breakdown["teacher"]["score"] == 0.5


def test_custom_bins_and_an_empty_bin():
    report = compare_models(GT, DETS, score=0.5, height_bins=[(50, math.inf), (10, 50)],
                            visibility_bins=[(0, 0.5), (0.5, 2)])
    # bins come out sorted; the lowest bin (10 px) now counts g7 (15 px), which the teacher finds
    assert _bins(report, "teacher", "height") == {"10-50": (3, 1), "50+": (4, 1)}
    assert _bins(report, "teacher", "visibility") == {"<0.5": (1, 1), "0.5-2": (6, 1)}
    empty = compare_models(GT, DETS, score=0.5, height_bins=[(20, 30), (500, 600)])
    assert empty.breakdown["teacher"]["height"][1] == {"bin": "500-600", "low": 500.0, "high": 600.0, "gt": 0,
                                                       "missed": 0, "miss_rate": None}


def test_disagreements_in_both_directions_with_scores_ious_and_order():
    report = compare_models(GT, DETS, score=0.5)
    assert _cases(report, "teacher", "found_by_a_missed_by_b") == [
        (2, [0.0, 0.0, 30.0, 60.0]), (3, [100.0, 0.0, 140.0, 100.0]), (1, [100.0, 0.0, 110.0, 25.0])]
    assert _cases(report, "student", "found_by_a_missed_by_b") == [
        (1, [200.0, 0.0, 216.0, 40.0]), (2, [100.0, 0.0, 160.0, 150.0])]
    # the FP both make on image 5 is nobody's own
    assert _cases(report, "teacher", "fp_of_a_only") == [(4, [50.0, 50.0, 90.0, 150.0])]
    assert _cases(report, "student", "fp_of_a_only") == [(6, [10.0, 10.0, 50.0, 110.0])]
    assert report.models["teacher"]["versus"] == {"student": {"found_by_a_missed_by_b": 3, "fp_of_a_only": 1}}
    assert report.models["student"]["versus"] == {"teacher": {"found_by_a_missed_by_b": 2, "fp_of_a_only": 1}}

    severity = [r["severity"] for r in report.disagreements]
    assert severity == sorted(severity, reverse=True)
    assert severity == pytest.approx([0.85, 0.80, 0.78, 0.75, 0.72, 0.68, 0.55])
    by_box = {(r["a"], tuple(r["box"])): r for r in report.disagreements}
    near_miss = by_box[("teacher", (100.0, 0.0, 140.0, 100.0))]  # g8: the student's box is off
    assert near_miss == {
        "a": "teacher", "b": "student", "kind": "found_by_a_missed_by_b", "image_id": 3, "file_name": "img_03.png",
        "box": [100.0, 0.0, 140.0, 100.0], "score_a": 0.80, "score_b": 0.0, "iou_a": 1.0,
        "iou_b": pytest.approx(1 / 3), "height": 100.0, "visibility": 0.95, "severity": pytest.approx(0.80)}
    low_score = by_box[("teacher", (100.0, 0.0, 110.0, 25.0))]  # g2: the student saw it at 0.12
    assert (low_score["score_b"], low_score["iou_b"], low_score["severity"]) == (0.12, 1.0, pytest.approx(0.78))
    fp = by_box[("teacher", (50.0, 50.0, 90.0, 150.0))]
    assert (fp["kind"], fp["score_a"], fp["score_b"], fp["iou_a"], fp["height"], fp["visibility"]) == (
        "fp_of_a_only", 0.72, 0.0, 0.0, None, None)


def test_max_disagreements_keeps_the_worst_per_pair_and_kind():
    report = compare_models(GT, DETS, score=0.5, max_disagreements=1)
    kept = [(r["a"], r["kind"], r["severity"]) for r in report.disagreements]
    assert sorted(kept) == sorted([("teacher", "found_by_a_missed_by_b", pytest.approx(0.85)),
                                   ("teacher", "fp_of_a_only", pytest.approx(0.72)),
                                   ("student", "found_by_a_missed_by_b", pytest.approx(0.75)),
                                   ("student", "fp_of_a_only", pytest.approx(0.55))])
    assert report.models["teacher"]["versus"]["student"]["found_by_a_missed_by_b"] == 3  # the full count
    assert compare_models(GT, DETS, score=0.5, max_disagreements=0).disagreements == []


def test_operating_point_at_fppi_0_1_on_reasonable():
    report = compare_models(GT, DETS)
    # Reasonable counts g1, g4, g8. Teacher: TPs 0.95, 0.85, 0.80, then its FPs 0.72 (FPPI 0.1) and 0.60 (0.2).
    assert report.models["teacher"]["operating_point"] == {
        "score": 0.72, "rule": "fppi=0.1", "setup": "Reasonable", "fppi": pytest.approx(0.1), "miss_rate": 0.0}
    # Student: TP 0.90, FP 0.65 (FPPI 0.1), FP 0.55, the off box 0.30; g3/g5 boxes fall in ignored GTs
    assert report.models["student"]["operating_point"] == {
        "score": 0.65, "rule": "fppi=0.1", "setup": "Reasonable", "fppi": pytest.approx(0.1),
        "miss_rate": pytest.approx(2 / 3)}
    # at 0.72 the teacher still finds g1, g2, g4, g8 and its FP on image 4 counts; the one on image 5 does not
    assert _cases(report, "teacher", "fp_of_a_only") == [(4, [50.0, 50.0, 90.0, 150.0])]
    assert report.breakdown["teacher"]["score"] == 0.72
    # so the student's FP on image 5 (0.65) is its own now: the teacher's 0.60 there is below 0.72
    (shared,) = [r for r in report.disagreements if r["a"] == "student" and r["kind"] == "fp_of_a_only"]
    assert (shared["image_id"], shared["score_a"], shared["score_b"], shared["iou_b"]) == (5, 0.65, 0.60, 1.0)
    # the curves behind it are evaluate_mr's
    curve = evaluate_mr(GT, TEACHER).setups["Reasonable"].curve
    assert report.curves["teacher"] == {"fppi": curve.fppi.tolist(), "miss_rate": curve.miss_rate.tolist()}
    assert report.setup == "Reasonable"


def test_operating_point_with_a_given_score_and_on_another_setup():
    report = compare_models(GT, DETS, score=0.5)
    assert report.models["teacher"]["operating_point"] == {
        "score": 0.5, "rule": "given", "setup": "Reasonable", "fppi": pytest.approx(0.2), "miss_rate": 0.0}
    assert report.models["student"]["operating_point"]["fppi"] == pytest.approx(0.2)
    loose = compare_models(GT, DETS, fppi=0.25, setup="All")
    # All (20 px+, vis >= 0.2): the student's FPs 0.65 and 0.55 fit in FPPI 0.25, its off box (0.30) does not
    assert loose.models["student"]["operating_point"]["score"] == 0.55
    assert loose.models["student"]["operating_point"]["setup"] == "All"
    assert loose.models["student"]["operating_point"]["rule"] == "fppi=0.25"


def test_tied_false_positives_above_the_budget_keep_no_detection():
    noisy = [_det(7, [0, 0, 40, 100], 0.99), _det(8, [0, 0, 40, 100], 0.99), _det(1, [0, 0, 40, 100], 0.5)]
    report = compare_models(GT, {"noisy": noisy, "teacher": TEACHER})
    op = report.models["noisy"]["operating_point"]
    # two FPs tie at the top score: FPPI 0.2 at once, so the threshold sits just above 0.99
    assert 0.99 < op["score"] < 0.99 + 1e-9
    assert (op["fppi"], op["miss_rate"]) == (0.0, 1.0)
    assert report.breakdown["noisy"]["counted"]["missed"] == 6


def test_report_is_json_with_exactly_four_keys_and_skips_other_categories():
    dets = {"teacher": TEACHER + [_det(1, [0, 0, 40, 100], 0.9, category=2)], "student": STUDENT}
    report = compare_models(GT, dets, score=0.5)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert list(data) == ["models", "breakdown", "disagreements", "errors"]
    assert list(data["models"]) == ["teacher", "student"]
    assert report.skipped == ["teacher: 1 detection(s) of a category other than 1 (pedestrian) not evaluated"]
    assert report.models["teacher"]["num_detections"] == 8  # category 2 not counted
    assert compare_models(GT, DETS, score=0.5).to_dict() == {**report.to_dict()}  # and nothing else changes


def test_a_single_model_has_no_disagreements():
    report = compare_models(GT, {"teacher": TEACHER}, score=0.5)
    assert report.disagreements == [] and report.models["teacher"]["versus"] == {}


@pytest.mark.parametrize(
    ("gt", "dets", "source", "message"),
    [
        (GT, {"teacher": TEACHER, "student": [_det(99, [0, 0, 10, 20], 0.5)]}, "student",
         r"detections of 'student': detection \[0\] has image_id=99, which is not in GT images"),
        (GT, {"teacher": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10], "score": 0.5}]}, "teacher",
         r"detection \[0\] has bbox=\[0, 0, 10\]; expected 4 finite numbers"),
        (GT, {"teacher": "not a list"}, "teacher", "detections must be a list of objects"),
        ({**GT, "annotations": [_ann(1, 1, [0, 0, -5, 20])]}, DETS, "gt",
         r"ground truth: GT annotations\[0\] has bbox=\[0, 0, -5, 20\]; width and height must be >= 0"),
        ({"images": []}, DETS, "gt", "GT has no 'categories' list"),
    ],
)
def test_bad_input_names_the_source_and_the_entry(gt, dets, source, message):
    with pytest.raises(ComparisonInputError, match=message) as info:
        compare_models(gt, dets, score=0.5)
    assert info.value.source == source
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dets": {}}, "at least one model"),
        ({"setup": "Tiny"}, "unknown evaluation setup 'Tiny'"),
        ({"fppi": 0}, "fppi must be a positive number"),
        ({"score": float("nan")}, "score must be a finite number"),
        ({"iou": 1.5}, r"iou must be in \(0, 1\]"),
        ({"max_disagreements": -1}, "max_disagreements must be a non-negative integer"),
        ({"height_bins": [(30, 20)]}, r"height_bins has bin \(30, 20\); expected 0 <= low < high"),
        ({"visibility_bins": []}, "visibility_bins must have at least one"),
        ({"height_bins": [20, 30]}, "height_bins must be a sequence of \\(low, high\\) pairs"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"dets": DETS, **kwargs}
    with pytest.raises(ValueError, match=message):
        compare_models(GT, **args)


def test_a_setup_without_ground_truth_needs_a_score():
    # Heavy (50 px+, visibility 0.2-0.65): g3 is 40 px, g5 is 10 % visible, so nobody counts
    with pytest.raises(ValueError, match="setup 'Heavy' has no non-ignored ground truth.*give a score"):
        compare_models(GT, DETS, setup="Heavy")
    report = compare_models(GT, DETS, setup="Heavy", score=0.5)
    assert report.models["teacher"]["operating_point"] == {
        "score": 0.5, "rule": "given", "setup": "Heavy", "fppi": None, "miss_rate": None}
    assert report.curves["teacher"] == {"fppi": [], "miss_rate": []}
