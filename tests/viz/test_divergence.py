"""Per-hierarchy teacher/student similarity on the region of each case, aggregated over cases."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import hkd.viz.divergence as divergence
from hkd.models.taps import count_hooks
from hkd.viz.divergence import Case, case_similarities, divergence_chart, divergence_over_cases, summarise

DEFAULT_LEVELS = ["backbone.c2", "backbone.c3", "backbone.c4", "backbone.c5",
                  "neck.p3", "neck.p4", "neck.p5", "neck.p6", "roi.features"]
# tall pedestrian-like boxes inside the 128 × 160 test scene
BOXES = [[10.0, 20.0, 40.0, 100.0], [80.0, 10.0, 120.0, 90.0], [100.0, 60.0, 150.0, 125.0]]


class ForwardCounter:
    """Counts calls of ``model.transform`` and ``model.backbone`` with hooks of its own, removed on exit."""

    def __init__(self, model):
        self.model, self.calls, self.handles = model, {"transform": 0, "backbone": 0}, []

    def __enter__(self):
        for part in self.calls:
            self.handles.append(getattr(self.model, part).register_forward_hook(
                lambda *_, part=part: self.calls.__setitem__(part, self.calls[part] + 1)))
        return self.calls

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("measure", ["cka", "cosine"])
def test_a_model_is_identical_to_itself_at_every_level_and_box(student, student_spec, image, measure):
    sims = case_similarities(student, student_spec, student, student_spec, image, BOXES, measure=measure)
    assert list(sims) == DEFAULT_LEVELS
    for level, values in sims.items():
        assert values.shape == (3,) and values.dtype == np.float64, level
        np.testing.assert_allclose(values, 1.0, atol=1e-6, err_msg=level)
    assert count_hooks(student) == 0 and not student.training


def test_teacher_and_student_differ_and_every_box_gets_its_own_value(teacher, teacher_spec, student, student_spec,
                                                                      image):
    sims = case_similarities(teacher, teacher_spec, student, student_spec, image, BOXES)
    assert list(sims) == DEFAULT_LEVELS
    for level, values in sims.items():
        assert values.shape == (3,) and np.all((values >= 0) & (values <= 1 + 1e-9)), (level, values)
        assert values.min() < 0.999, (level, values)
        assert len(np.unique(np.round(values, 9))) == 3, (level, values)  # three regions, three values
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_k_boxes_of_one_image_cost_one_forward_per_model(teacher, teacher_spec, student, student_spec, image):
    with ForwardCounter(teacher) as t_calls, ForwardCounter(student) as s_calls:
        case_similarities(teacher, teacher_spec, student, student_spec, image, BOXES * 4)  # 12 boxes
    assert t_calls == {"transform": 1, "backbone": 1} and s_calls == {"transform": 1, "backbone": 1}
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_map_levels_are_pooled_where_the_roi_head_pools_the_box(make_detector, make_scene, teacher_spec,
                                                                 student_spec):
    """The image (64 × 80) is not the models' input size (128 × 160): each box must be mapped into the
    transformed image and pooled at its level's stride. Boxes under 112 input pixels are pooled by the
    ROI head from P3 with the same 7×7 grid, so roi.features must equal neck.p3 there, box for box."""
    teacher = make_detector("hkd_frcnn_lite2.teacher", 3)
    student = make_detector("hkd_frcnn_lite0.student", 4)
    small = make_scene(5, 64, 80)
    boxes = [[4.0, 8.0, 20.0, 50.0], [40.0, 5.0, 62.0, 45.0], [50.0, 30.0, 76.0, 62.0]]
    for measure in ("cka", "cosine"):
        sims = case_similarities(teacher, teacher_spec, student, student_spec, small, boxes,
                                 levels=["neck.p3", "neck.p4", "roi.features"], measure=measure)
        np.testing.assert_allclose(sims["roi.features"], sims["neck.p3"], rtol=1e-6, atol=1e-9)
        assert not np.allclose(sims["neck.p4"], sims["neck.p3"], atol=1e-4)


def test_levels_are_returned_in_computation_order_and_no_boxes_run_nothing(student, student_spec, image):
    sims = case_similarities(student, student_spec, student, student_spec, image, BOXES[:1],
                             levels=["roi.features", "neck.p3", "backbone.c3", "neck.p3"])
    assert list(sims) == ["backbone.c3", "neck.p3", "roi.features"]
    with ForwardCounter(student) as calls:
        empty = case_similarities(student, student_spec, student, student_spec, image, [], levels=["neck.p3"])
    assert calls == {"transform": 0, "backbone": 0}
    assert list(empty) == ["neck.p3"] and empty["neck.p3"].shape == (0,)


def test_bad_measure_level_box_or_mode_is_a_clear_error(student, student_spec, image):
    args = (student, student_spec, student, student_spec, image, BOXES)
    with pytest.raises(ValueError, match="unknown measure 'mse'; choose from cka, cosine"):
        case_similarities(*args, measure="mse")
    with pytest.raises(ValueError,
                       match=r"\['neck.p9', 'rpn.objectness'\].*choose from \['backbone.c2'.*'roi.features'\]"):
        case_similarities(*args, levels=["neck.p3", "neck.p9", "rpn.objectness"])
    with pytest.raises(ValueError, match="levels is empty"):
        case_similarities(*args, levels=[])
    with pytest.raises(ValueError, match=r"x2 > x1 and y2 > y1; bad rows \[1\]"):
        case_similarities(*args[:5], [[0, 0, 10, 10], [5, 5, 5, 20]])
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        case_similarities(*args[:5], [[0, 0, 10]])
    with pytest.raises(ValueError, match="unknown measure"):
        divergence_over_cases(*args[:4], [Case("x.png", (0, 0, 9, 9), "failure")], measure="l2")
    with pytest.raises(ValueError, match=r"cases\[1\] \(b.png\).*x2 > x1"):
        divergence_over_cases(*args[:4], [Case("a.png", (0, 0, 9, 9), "failure"),
                                          Case("b.png", (9, 0, 0, 9), "success")],
                              load_image=lambda path: pytest.fail("a bad case must be found before any work"))
    with pytest.raises(TypeError, match="not a Case"):
        divergence_over_cases(*args[:4], [("a.png", (0, 0, 9, 9), "failure")])
    student.train()
    try:
        with pytest.raises(RuntimeError, match="eval mode"):
            case_similarities(*args)
    finally:
        student.eval()
    assert count_hooks(student) == 0


def test_summarise_means_stds_and_counts_per_level_and_group():
    rows = summarise({
        "neck.p3": {"failure": [0.2, 0.4, math.nan], "success": [0.9]},
        "roi.features": {"failure": [math.nan], "success": [0.5, 0.7, 0.9, 0.7]},
    })
    assert [(r["level"], r["hierarchy"], r["group"], r["n"]) for r in rows] == [
        ("neck.p3", "neck", "failure", 2), ("neck.p3", "neck", "success", 1),
        ("roi.features", "roi", "failure", 0), ("roi.features", "roi", "success", 4)]
    assert rows[0]["mean"] == pytest.approx(0.3) and rows[0]["std"] == pytest.approx(0.1)
    assert rows[1]["mean"] == pytest.approx(0.9) and rows[1]["std"] == 0.0
    assert math.isnan(rows[2]["mean"]) and math.isnan(rows[2]["std"])
    assert rows[3]["mean"] == pytest.approx(0.7) and rows[3]["std"] == pytest.approx(math.sqrt(0.02))
    assert set(rows[0]) == {"level", "hierarchy", "group", "mean", "std", "n"}


def test_cases_are_grouped_by_image_and_aggregated_by_group(monkeypatch, teacher_spec, student_spec):
    """Hand-made similarities: each box's value is its x1 / 100 at neck.p3 and y1 / 100 at roi.features."""
    calls, loads, progress = [], [], []

    def fake_similarities(teacher, t_spec, student, s_spec, image, boxes, *, levels, measure):
        calls.append((image[0, 0, 0], [tuple(b) for b in boxes], levels, measure))
        boxes = np.asarray(boxes)
        return {"neck.p3": boxes[:, 0] / 100, "roi.features": boxes[:, 1] / 100}

    def load(path):
        loads.append(path)
        return np.full((4, 4, 3), int(path[-5]), np.uint8)  # "img1.png" → pixel value 1

    monkeypatch.setattr(divergence, "case_similarities", fake_similarities)
    cases = [Case("img1.png", (10, 50, 20, 90), "failure"), Case("img2.png", (30, 70, 40, 90), "success"),
             Case("img1.png", (20, 60, 30, 90), "success"), Case("img3.png", (40, 10, 50, 90), "failure"),
             Case("img1.png", (60, 40, 70, 90), "failure")]
    rows = divergence_over_cases(None, teacher_spec, None, student_spec, cases,
                                 levels=["roi.features", "neck.p3"], measure="cosine", load_image=load,
                                 progress=lambda done, total: progress.append((done, total)))
    assert loads == ["img1.png", "img2.png", "img3.png"] and progress == [(1, 3), (2, 3), (3, 3)]
    assert [(c[0], len(c[1])) for c in calls] == [(1, 3), (2, 1), (3, 1)]  # all boxes of an image at once
    assert calls[0][1] == [(10, 50, 20, 90), (20, 60, 30, 90), (60, 40, 70, 90)]
    assert all(c[2] == ["neck.p3", "roi.features"] and c[3] == "cosine" for c in calls)
    by_key = {(r["level"], r["group"]): r for r in rows}
    assert [(r["level"], r["group"]) for r in rows] == [("neck.p3", "failure"), ("neck.p3", "success"),
                                                        ("roi.features", "failure"), ("roi.features", "success")]
    failure_x = np.array([10, 40, 60]) / 100  # x1 of the failures, in whichever image they lie
    assert by_key["neck.p3", "failure"]["mean"] == pytest.approx(failure_x.mean())
    assert by_key["neck.p3", "failure"]["std"] == pytest.approx(failure_x.std())
    assert by_key["neck.p3", "success"]["mean"] == pytest.approx(0.25) and by_key["neck.p3", "success"]["n"] == 2
    assert by_key["roi.features", "failure"]["mean"] == pytest.approx((0.5 + 0.1 + 0.4) / 3)
    assert by_key["roi.features", "success"]["mean"] == pytest.approx(0.65)
    assert divergence_over_cases(None, teacher_spec, None, student_spec, [], load_image=load) == []


def test_over_image_files_one_forward_per_image_and_self_similarity_one(student, student_spec, make_scene, tmp_path):
    paths = []
    for seed in (1, 2):
        paths.append(str(tmp_path / f"frame{seed}.png"))
        Image.fromarray(make_scene(seed)).save(paths[-1])
    cases = [Case(paths[0], tuple(BOXES[0]), "failure"), Case(paths[1], tuple(BOXES[1]), "failure"),
             Case(paths[0], tuple(BOXES[2]), "success"), Case(paths[1], tuple(BOXES[0]), "success")]
    with ForwardCounter(student) as calls:
        rows = divergence_over_cases(student, student_spec, student, student_spec, cases,
                                     levels=["backbone.c4", "neck.p5", "roi.features"])
    assert calls == {"transform": 4, "backbone": 4}  # 2 images × (the "teacher" and the "student")
    assert [(r["level"], r["group"], r["n"]) for r in rows] == [
        (level, group, 2) for level in ("backbone.c4", "neck.p5", "roi.features") for group in ("failure", "success")]
    for row in rows:
        assert row["mean"] == pytest.approx(1.0, abs=1e-6) and row["std"] == pytest.approx(0.0, abs=1e-6)
    assert count_hooks(student) == 0


def test_chart_has_one_trace_per_group_with_levels_on_x():
    rows = summarise({"neck.p3": {"failure": [0.2, 0.4], "success": [0.9]},
                      "roi.features": {"failure": [0.5], "success": [0.7, 0.9]}})
    figure = divergence_chart(rows, measure="cka")
    assert [trace.name for trace in figure.data] == ["failure", "success"]
    assert list(figure.data[0].x) == ["neck.p3", "roi.features"]
    assert list(figure.data[0].y) == pytest.approx([0.3, 0.5])
    assert list(figure.data[1].error_y.array) == pytest.approx([0.0, 0.1])
    assert [c[0] for c in figure.data[1].customdata] == [1, 2]  # n, shown on hover
    assert "CKA" in figure.layout.yaxis.title.text
    assert "no cases" in divergence_chart([]).layout.annotations[0].text
    with pytest.raises(ValueError, match="missing keys"):
        divergence_chart([{"level": "neck.p3", "cka": 0.5}])
    with pytest.raises(ValueError, match="choose from cka, cosine"):
        divergence_chart(rows, measure="ckaa")
