"""Drawing boxes and comparing the teacher's detections with the student's."""
import numpy as np
import pytest

from hkd.eval.matching import match_pair
from hkd.viz.draw import COLORS, comparison_rows, draw_boxes, draw_comparison


def _blank(h=120, w=160):
    return np.zeros((h, w, 3), np.uint8)


def test_comparison_rows_classifies_hand_made_boxes():
    teacher = np.array([[10, 10, 50, 90], [100, 20, 130, 100], [60, 60, 80, 110]], np.float32)
    t_scores = np.array([0.9, 0.8, 0.7], np.float32)
    student = np.array([[12, 12, 52, 92], [140, 10, 155, 60], [60, 80, 80, 130]], np.float32)
    s_scores = np.array([0.6, 0.95, 0.55], np.float32)
    rows = comparison_rows(teacher, t_scores, student, s_scores, iou_thresh=0.5)
    status = [(r["status"], r["score_teacher"], r["score_student"]) for r in rows]
    assert status == [
        ("agreed", pytest.approx(0.9), pytest.approx(0.6)),
        ("teacher_only", pytest.approx(0.8), None),
        ("teacher_only", pytest.approx(0.7), None),  # IoU with [60,80,80,130] is 30/70 < 0.5
        ("student_only", None, pytest.approx(0.95)),
        ("student_only", None, pytest.approx(0.55)),
    ]
    agreed = rows[0]
    assert agreed["box"] == [10.0, 10.0, 50.0, 90.0]
    assert agreed["iou"] == pytest.approx((38 * 78) / (40 * 80 * 2 - 38 * 78))
    assert all(r["iou"] is None for r in rows[1:])
    # a looser threshold lets the third pair agree
    loose = comparison_rows(teacher, t_scores, student, s_scores, iou_thresh=0.4)
    assert [r["status"] for r in loose].count("agreed") == 2


def test_greedy_matching_serves_the_highest_teacher_score_first():
    teacher = np.array([[0, 0, 10, 20], [1, 0, 11, 20]], np.float32)
    student = np.array([[0, 0, 10, 20]], np.float32)
    rows = comparison_rows(teacher, np.array([0.5, 0.9]), student, np.array([0.7]))
    assert rows[0]["status"] == "agreed" and rows[0]["score_teacher"] == pytest.approx(0.9)
    assert rows[0]["box"] == [1.0, 0.0, 11.0, 20.0]
    assert rows[1]["status"] == "teacher_only" and rows[1]["score_teacher"] == pytest.approx(0.5)


def test_agreement_is_the_eval_matcher():
    """comparison_rows classes boxes by hkd.eval.matching.match_pair, the matcher of MR-2."""
    rng = np.random.default_rng(2)
    for _ in range(10):
        teacher = rng.uniform(0, 150, (7, 2))
        teacher = np.concatenate([teacher, teacher + rng.uniform(15, 60, (7, 2))], axis=1)
        student = np.concatenate([teacher[:5] + rng.normal(0, 6, (5, 4)), rng.uniform(0, 200, (2, 4))])
        student[:, 2:] = np.maximum(student[:, 2:], student[:, :2] + 4)
        t_scores, s_scores = rng.uniform(0, 1, 7), rng.uniform(0, 1, 7)
        rows = comparison_rows(teacher, t_scores, student, s_scores, iou_thresh=0.5)
        pair = match_pair(teacher.astype(np.float32), t_scores, student.astype(np.float32), s_scores, 0.5)
        agreed = sorted((r["score_teacher"], r["score_student"], r["iou"]) for r in rows if r["status"] == "agreed")
        expected = sorted((t_scores[t], s_scores[s], pair.iou[t]) for t, s in enumerate(pair.a_to_b) if s >= 0)
        assert len(agreed) == len(expected) > 0
        np.testing.assert_allclose(agreed, expected, rtol=1e-6)
        assert sum(r["status"] == "teacher_only" for r in rows) == int(pair.a_only.sum())
        assert sum(r["status"] == "student_only" for r in rows) == int(pair.b_only.sum())


def test_equal_iou_goes_to_the_higher_scoring_student_box():
    teacher = np.array([[100, 0, 150, 100]], np.float32)
    student = np.array([[90, 0, 140, 100], [110, 0, 160, 100]], np.float32)  # IoU 2/3 with both
    rows = comparison_rows(teacher, [0.9], student, [0.3, 0.8])
    assert rows[0]["status"] == "agreed" and rows[0]["score_student"] == pytest.approx(0.8)
    assert rows[1] == {"box": [90.0, 0.0, 140.0, 100.0], "score_teacher": None, "score_student": pytest.approx(0.3),
                       "iou": None, "status": "student_only"}


def test_compare_with_no_detections_on_one_side():
    boxes = np.array([[0, 0, 10, 20]], np.float32)
    assert [r["status"] for r in comparison_rows(boxes, [0.8], np.zeros((0, 4)), [])] == ["teacher_only"]
    assert [r["status"] for r in comparison_rows(np.zeros((0, 4)), [], boxes, [0.8])] == ["student_only"]
    assert comparison_rows(np.zeros((0, 4)), [], np.zeros((0, 4)), []) == []
    with pytest.raises(ValueError, match="one score"):
        comparison_rows(boxes, [0.8, 0.1], boxes, [0.8])


def test_draw_boxes_draws_on_a_copy():
    image = _blank()
    out = draw_boxes(image, [[20, 30, 60, 100]], scores=[0.87], labels=["pedestrian"], color=(255, 0, 0))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert image.max() == 0  # input untouched
    assert tuple(out[65, 20]) == (255, 0, 0)  # left edge, mid-height, in the given RGB colour
    assert out[10:30, 20:120].any()  # the caption tab above the box
    assert np.array_equal(draw_boxes(image, np.zeros((0, 4))), image)
    with pytest.raises(ValueError, match="labels"):
        draw_boxes(image, [[0, 0, 5, 5]], labels=["a", "b"])
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        draw_boxes(image, [[0, 0, 5]])


def test_draw_comparison_uses_the_legend_colours_and_dashes_ground_truth():
    rows = [
        {"box": [10, 20, 40, 100], "score_teacher": 0.9, "score_student": 0.8, "iou": 0.9, "status": "agreed"},
        {"box": [60, 20, 90, 100], "score_teacher": 0.7, "score_student": None, "iou": None, "status": "teacher_only"},
        {"box": [110, 20, 140, 100], "score_teacher": None, "score_student": 0.6, "iou": None,
         "status": "student_only"},
    ]
    out = draw_comparison(_blank(), rows, gt_boxes=[[5, 110, 150, 118]])
    for row in rows:
        x1, y1, x2, y2 = row["box"]
        assert tuple(out[(y1 + y2) // 2, x1]) == COLORS[row["status"]], row["status"]
    gt_edge = out[110, 5:150]
    lit = (gt_edge > 0).any(axis=1)
    assert 0.3 < lit.mean() < 0.9  # dashed: partly drawn
    assert set(COLORS) >= {"agreed", "teacher_only", "student_only", "ground_truth"}
    with pytest.raises(ValueError, match="unknown status"):
        draw_comparison(_blank(), [{**rows[0], "status": "maybe"}])
    with pytest.raises(ValueError, match="unknown status"):
        draw_comparison(_blank(), [{**rows[0], "status": "ground_truth"}])


def test_draw_comparison_takes_each_models_colour_and_caption_prefix():
    rows = [{"box": [10, 20, 40, 100], "score_teacher": 0.9, "score_student": None, "iou": None,
             "status": "teacher_only"},
            {"box": [60, 20, 90, 100], "score_teacher": None, "score_student": 0.6, "iou": None,
             "status": "student_only"}]
    purple, red = (170, 80, 220), (250, 10, 10)
    out = draw_comparison(_blank(), rows, colors={"teacher_only": purple, "student_only": red}, labels=("S", "3rd"))
    assert tuple(out[60, 10]) == purple and tuple(out[60, 60]) == red
    default = draw_comparison(_blank(), rows)
    assert tuple(default[60, 10]) == COLORS["teacher_only"]
    # a longer prefix makes a wider caption tab
    assert (out[:20, 60:120] > 0).sum() > (default[:20, 60:120] > 0).sum()
