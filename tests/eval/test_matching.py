"""Per-image matching (failure analysis) and the FPPI–miss-rate curve."""
from __future__ import annotations

import numpy as np
import pytest

import hkd.eval.mr as mr_module
from hkd.eval import evaluate_mr, fppi_miss_rate_curve, match_image
from hkd.eval.matching import MAX_DETS, box_overlaps, match_pair


def test_statuses_indices_and_ious():
    gt = [[0, 0, 40, 100], [200, 0, 240, 100], [400, 0, 600, 200]]  # last: ignore region
    dets = [
        [0, 0, 40, 100],  # TP on GT 0, IoU 1
        [200, 0, 240, 80],  # TP on GT 1, IoU 0.8
        [410, 10, 450, 110],  # inside the region: IoU 0.1 but IoA 1 -> ignored
        [700, 0, 740, 100],  # nothing there -> FP
        [0, 0, 40, 30],  # height 30 < 50 / 1.25 -> out of range in Reasonable
        [0, 0, 40, 99],  # GT 0 is taken -> FP, though its IoU is 0.99
    ]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    m = match_image(gt, dets, scores, gt_ignore=[0, 0, 1])
    assert m.det_status.tolist() == ["tp", "tp", "ignored", "fp", "out_of_range", "fp"]
    assert m.det_gt_index.tolist() == [0, 1, 2, -1, -1, -1]
    np.testing.assert_allclose(m.det_iou, [1.0, 0.8, 1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(m.det_max_iou, [1.0, 0.8, 0.0, 0.0, 0.0, 0.99])
    assert m.gt_ignored.tolist() == [False, False, True]
    assert m.gt_det_index.tolist() == [0, 1, -1]
    assert (m.num_tp, m.num_fp, m.num_fn) == (2, 2, 0)


def test_missed_gt_and_setup_ranges():
    gt = [[0, 0, 40, 100], [200, 0, 240, 60]]
    m = match_image(gt, [[0, 0, 40, 100]], [0.9], gt_visibility=[1.0, 0.4], setup="Heavy")
    # Heavy keeps visibility in [0.2, 0.65]: GT 0 is ignored, so its detection
    # is absorbed (IoA 1); GT 1 (height 60, visibility 0.4) is missed.
    assert m.gt_ignored.tolist() == [True, False]
    assert m.det_status.tolist() == ["ignored"]
    assert m.gt_missed.tolist() == [False, True]
    assert m.num_fn == 1
    # gt_heights override the box height: 30 px is outside Reasonable
    m = match_image(gt, [], [], gt_heights=[30, 60])
    assert m.gt_ignored.tolist() == [True, False]


def test_equal_iou_prefers_the_later_gt():
    gt = [[90, 0, 140, 100], [110, 0, 160, 100]]
    m = match_image(gt, [[100, 0, 150, 100]], [1.0])
    # IoU 2/3 with both; the official loop replaces on equality -> GT 1
    assert m.det_gt_index.tolist() == [1]
    assert m.det_iou[0] == pytest.approx(2 / 3)


def test_regular_gt_beats_ignore_region_and_first_region_wins():
    region_small, region_big = [0, 0, 60, 120], [-50, -50, 300, 300]
    person = [200, 0, 240, 100]
    # det A overlaps the person at IoU 0.8 and lies fully inside the big region
    det_a = [200, 0, 240, 80]
    # det B: IoA 0.75 with the small region, 1.0 with the big one; the first
    # qualifying region in GT order wins (the official loop breaks after it)
    det_b = [30, 10, 70, 110]
    m = match_image([region_small, person, region_big], [det_a, det_b], [0.9, 0.8], gt_ignore=[1, 0, 1])
    assert m.det_status.tolist() == ["tp", "ignored"]
    assert m.det_gt_index.tolist() == [1, 0]
    # a region that qualifies later in GT order loses to the first qualifying one
    det_c = [100, 100, 140, 200]  # outside the small region, inside the big one
    m = match_image([region_small, person, region_big], [det_c], [0.9], gt_ignore=[1, 0, 1])
    assert m.det_gt_index.tolist() == [2]


def test_only_the_best_max_dets_take_part():
    boxes = np.tile([[0.0, 0.0, 40.0, 100.0]], (MAX_DETS + 1, 1))
    scores = np.linspace(1.0, 0.5, MAX_DETS + 1)
    m = match_image([[0, 0, 40, 100]], boxes, scores)
    assert m.det_status[0] == "tp" and m.det_status[-1] == "out_of_range"
    assert np.count_nonzero(m.det_status == "fp") == MAX_DETS - 1


def test_accepts_torch_tensors():
    import torch  # a dependency of hkd: its absence is a broken install, not a reason to skip
    m = match_image(torch.tensor([[0.0, 0.0, 40.0, 100.0]]), torch.tensor([[0.0, 0.0, 40.0, 100.0]]),
                    torch.tensor([0.5]))
    assert m.det_status.tolist() == ["tp"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gt_boxes": [[0, 0, 1]]}, r"gt_boxes must have shape \(N, 4\)"),
        ({"det_scores": [0.5, 0.4]}, "det_scores has 2 entries for 1 det_boxes"),
        ({"det_boxes": [[10, 0, 5, 10]]}, "x2 >= x1"),
        ({"gt_ignore": [0, 1]}, "gt_ignore has 2 entries for 1 gt_boxes"),
        ({"det_scores": [float("nan")]}, "NaN"),
        ({"setup": "Tiny"}, "unknown evaluation setup 'Tiny'"),
    ],
)
def test_match_image_validation(kwargs, message):
    args = {"gt_boxes": [[0, 0, 40, 100]], "det_boxes": [[0, 0, 40, 100]], "det_scores": [0.5], **kwargs}
    with pytest.raises(ValueError, match=message):
        match_image(**args)


def test_overlaps_use_detection_area_for_regions():
    det = np.array([[0.0, 0.0, 10.0, 10.0]])
    gt = np.array([[5.0, 0.0, 105.0, 10.0], [10.0, 0.0, 20.0, 10.0]])  # 2nd touches: width 0
    ious = box_overlaps(det, np.array([100.0]), gt, np.array([1000.0, 100.0]), np.array([False, False]))
    np.testing.assert_allclose(ious, [[50 / 1050, 0.0]])
    ioas = box_overlaps(det, np.array([100.0]), gt, np.array([1000.0, 100.0]), np.array([True, True]))
    np.testing.assert_allclose(ioas, [[0.5, 0.0]])


def test_evaluate_mr_matches_through_match_image_arrays(monkeypatch):
    calls = []
    real = mr_module.match_image_arrays

    def spy(**kwargs):
        calls.append(kwargs["setup"].name)
        return real(**kwargs)

    monkeypatch.setattr(mr_module, "match_image_arrays", spy)
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 100]}]}
    evaluate_mr(gt, [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 100], "score": 0.5}])
    # one call per image with content, per setup: the same code path as match_image
    assert calls == [s for s in ("Reasonable", "Small", "Heavy", "All") for _ in range(2)]


def test_per_image_counts_agree_with_evaluate_mr():
    rng = np.random.default_rng(3)
    for _ in range(20):
        g = np.column_stack([rng.uniform(0, 200, 6), rng.uniform(0, 50, 6),
                             rng.uniform(15, 40, 6), rng.uniform(30, 120, 6)])  # x, y, w, h
        d = np.concatenate([g + rng.normal(0, 6, g.shape), g[:3] + rng.normal(0, 20, (3, 4))])
        d[:, 2:] = np.abs(d[:, 2:]) + 1
        scores = rng.uniform(0, 1, len(d))
        ignore = rng.random(len(g)) < 0.2
        gt = {"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b.tolist(), "ignore": int(ig)}
            for k, (b, ig) in enumerate(zip(g, ignore))]}
        dets = [{"image_id": 1, "category_id": 1, "bbox": b.tolist(), "score": float(s)} for b, s in zip(d, scores)]
        result = evaluate_mr(gt, dets, setups=["All"]).setups["All"]
        m = match_image(np.concatenate([g[:, :2], g[:, :2] + g[:, 2:]], 1),
                        np.concatenate([d[:, :2], d[:, :2] + d[:, 2:]], 1), scores,
                        gt_ignore=ignore, gt_heights=g[:, 3], setup="All")
        if not result.valid:
            assert m.gt_ignored.all()
            continue
        curve = result.curve
        n_fp = round(curve.fppi[-1]) if len(curve.fppi) else 0
        n_tp = round(curve.recall[-1] * curve.num_positives) if len(curve.recall) else 0
        assert (m.num_tp, m.num_fp) == (n_tp, n_fp)
        assert m.num_tp + m.num_fn == curve.num_positives


def test_fppi_miss_rate_curve_sorts_stably_by_score():
    curve = fppi_miss_rate_curve(
        np.array([0.5, 0.9, 0.7, 0.7]), np.array([True, False, True, False]), num_images=2, num_positives=4
    )
    # order: 0.9 FP, 0.7 TP, 0.7 FP (tie keeps input order), 0.5 TP
    np.testing.assert_allclose(curve.scores, [0.9, 0.7, 0.7, 0.5])
    np.testing.assert_allclose(curve.fppi, [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curve.recall, [0.0, 0.25, 0.25, 0.5])
    np.testing.assert_allclose(curve.miss_rate, [1.0, 0.75, 0.75, 0.5])


def test_fppi_miss_rate_curve_needs_positives():
    with pytest.raises(ValueError, match="num_positives must be positive"):
        fppi_miss_rate_curve(np.zeros(0), np.zeros(0, bool), num_images=1, num_positives=0)


# -- match_pair: two models' detections, by the same overlap and greedy code ----------------
def test_match_pair_greedy_by_score_of_a():
    a = [[0, 0, 40, 100], [1, 0, 41, 100], [300, 0, 340, 100]]
    b = [[0, 0, 40, 100], [500, 0, 540, 100]]
    pair = match_pair(a, [0.5, 0.9, 0.8], b, [0.7, 0.6])
    # A's 0.9 box is visited first and takes B's only overlapping box
    assert pair.a_to_b.tolist() == [-1, 0, -1]
    assert pair.b_to_a.tolist() == [1, -1]
    assert pair.iou[1] == pytest.approx(39 * 100 / (2 * 4000 - 39 * 100))
    assert pair.iou[[0, 2]].tolist() == [0.0, 0.0]
    assert pair.a_only.tolist() == [True, False, True] and pair.b_only.tolist() == [False, True]


def test_match_pair_threshold_and_equal_iou_goes_to_the_higher_b_score():
    a = [[100, 0, 150, 100]]
    b = [[90, 0, 140, 100], [110, 0, 160, 100]]  # IoU 2/3 with both
    assert match_pair(a, [1.0], b, [0.3, 0.8]).a_to_b.tolist() == [1]
    assert match_pair(a, [1.0], b, [0.8, 0.3]).a_to_b.tolist() == [0]
    assert match_pair(a, [1.0], b, [0.8, 0.3], iou_threshold=0.7).a_to_b.tolist() == [-1]


def test_match_pair_follows_the_protocol_matching():
    """With B as regular ground truth (no height filter), match_pair pairs like match_image."""
    from hkd.eval.matching import Setup

    everything = Setup("Everything", (0.0, 1e10), (0.0, 1e10))
    rng = np.random.default_rng(5)
    for _ in range(20):
        b = rng.uniform(0, 200, (8, 2))
        b = np.concatenate([b, b + rng.uniform(20, 80, (8, 2))], axis=1)
        a = np.concatenate([b[:6] + rng.normal(0, 8, (6, 4)), rng.uniform(0, 250, (3, 4))])
        a[:, 2:] = np.maximum(a[:, 2:], a[:, :2] + 5)
        scores_a, scores_b = rng.uniform(0, 1, len(a)), rng.uniform(0, 1, len(b))
        pair = match_pair(a, scores_a, b, scores_b)
        m = match_image(b, a, scores_a, setup=everything)
        assert pair.a_to_b.tolist() == m.det_gt_index.tolist()
        np.testing.assert_allclose(pair.iou, m.det_iou)


def test_match_pair_empty_and_validation():
    box = [[0, 0, 10, 20]]
    assert match_pair(np.zeros((0, 4)), [], box, [0.5]).b_to_a.tolist() == [-1]
    assert match_pair(box, [0.5], [], []).a_to_b.tolist() == [-1]
    with pytest.raises(ValueError, match="scores_a has 2 entries for 1 boxes_a"):
        match_pair(box, [0.5, 0.4], box, [0.5])
    with pytest.raises(ValueError, match="boxes_b must be x1, y1, x2, y2"):
        match_pair(box, [0.5], [[10, 0, 5, 20]], [0.5])
