"""bootstrap_intervals: the weighted resampling equals literally duplicating images and re-evaluating.

The slow reference builds each resampled set — the drawn images in ascending
original order, renumbered 0..N-1, every copy with its own annotations and
detections — and calls evaluate_mr / evaluate_ap on it. Copies keep their GT
ids (built as parsed arrays, where a duplicate id is allowed), so a copy of
the id-0 GT keeps the official quirk, as the weighted tables do.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from hkd.eval import evaluate_ap, evaluate_mr
from hkd.eval import bootstrap
from hkd.eval.bootstrap import AP50, bootstrap_intervals, resample_indices
from hkd.eval.matching import SETUP_NAMES, get_setup
from hkd.eval.mr import Detections, GroundTruth, parse_detections, parse_ground_truth

P = 1
NUM_IMAGES = 12  # 1/12 > FPPI 0.01 ... 0.0562: the official -1 index is reachable


def _random_set(seed: int = 3) -> tuple[dict, dict[str, list[dict]]]:
    """12 images of pedestrians (some small, occluded or ignored), three models, hand-placed quirks."""
    rng = np.random.default_rng(seed)
    annotations = []
    for image in range(1, NUM_IMAGES + 1):
        if image == 7:
            continue  # an image without annotations still counts for FPPI
        for _ in range(int(rng.integers(1, 5))):
            h = float(rng.uniform(30, 200))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image, "category_id": P,
                "bbox": [float(rng.uniform(0, 600)), float(rng.uniform(0, 200)), 0.41 * h, h], "height": h,
                "vis_ratio": float(rng.choice([0.3, 0.8, 1.0])), "ignore": int(rng.random() < 0.15),
            })
    annotations[0]["id"] = 0  # the GT-id-0 quirk: a match on it counts as a false positive
    annotations[0].update(ignore=0, vis_ratio=1.0, height=120.0)
    annotations[0]["bbox"][3] = 120.0
    gt = {"images": [{"id": i} for i in range(1, NUM_IMAGES + 1)], "categories": [{"id": P}],
          "annotations": annotations}

    dets: dict[str, list[dict]] = {}
    for m, name in enumerate(("teacher", "student", "other")):
        out = []
        for ann in annotations:
            if rng.random() < 0.75:
                box = np.asarray(ann["bbox"]) + rng.normal(0, 0.08, 4) * ann["bbox"][3]
                box[2:] = np.abs(box[2:])
                out.append({"image_id": ann["image_id"], "category_id": P, "bbox": box.tolist(),
                            "score": float(rng.uniform(0.2, 0.95))})
        for _ in range(25):  # clutter
            h = float(rng.uniform(40, 200))
            out.append({"image_id": int(rng.integers(1, NUM_IMAGES + 1)), "category_id": P,
                        "bbox": [float(rng.uniform(0, 600)), float(rng.uniform(0, 200)), 0.41 * h, h],
                        "score": float(rng.uniform(0.1, 0.9))})
        if m == 0:  # the teacher's best-scoring detection is a false positive on image 5
            out.append({"image_id": 5, "category_id": P, "bbox": [900.0, 900.0, 41.0, 100.0], "score": 0.99})
        # a score tie across images (ties within an image are the one documented difference)
        out.append({"image_id": 2, "category_id": P, "bbox": [950.0, 0.0, 41.0, 100.0], "score": 0.5})
        out.append({"image_id": 9, "category_id": P, "bbox": [950.0, 0.0, 41.0, 100.0], "score": 0.5})
        dets[name] = out
    return gt, dets


GT, DETS = _random_set()


def _resampled(truth: GroundTruth, found: Detections, sample: np.ndarray) -> tuple[GroundTruth, Detections]:
    """The drawn images as a set of their own: copies in ascending original order, ids 0..N-1."""
    gt_rows, gt_image, det_rows, det_image = [], [], [], []
    for new, original in enumerate(np.sort(sample)):
        rows = np.flatnonzero(truth.ann_image == original)
        gt_rows.append(rows)
        gt_image.append(np.full(len(rows), new))
        rows = np.flatnonzero(found.image == original)
        det_rows.append(rows)
        det_image.append(np.full(len(rows), new))
    g, d = np.concatenate(gt_rows), np.concatenate(det_rows)
    truth_copy = GroundTruth(
        image_ids=np.arange(len(sample)), category_ids=truth.category_ids, ann_id=truth.ann_id[g],
        ann_image=np.concatenate(gt_image), ann_category=truth.ann_category[g], bbox=truth.bbox[g],
        height=truth.height[g], visibility=truth.visibility[g], ignore=truth.ignore[g], iscrowd=truth.iscrowd[g])
    found_copy = Detections(image=np.concatenate(det_image), category=found.category[d], bbox=found.bbox[d],
                            score=found.score[d])
    return truth_copy, found_copy


def _reference_samples(gt: dict, dets: list[dict], resamples: int, seed: int) -> np.ndarray:
    truth = parse_ground_truth(gt)
    found = parse_detections(dets, truth)
    out = []
    for sample in resample_indices(len(truth.image_ids), resamples, seed):
        truth_copy, found_copy = _resampled(truth, found, sample)
        mr = evaluate_mr(truth_copy, found_copy).mr
        ap50 = evaluate_ap(truth_copy, found_copy)["ap50"]
        row = [np.nan if mr[s] == -100.0 else mr[s] for s in SETUP_NAMES]
        out.append(row + [np.nan if ap50 == -1.0 else ap50])
    return np.array(out)


def _percentiles(values: np.ndarray) -> tuple[float, float] | None:
    kept = values[~np.isnan(values)]
    return None if len(kept) == 0 else tuple(np.percentile(kept, [2.5, 97.5]))


@pytest.fixture(params=["default", "one_row_chunks_few_fps"])
def chunking(request, monkeypatch):
    """Also with one resample per chunk and MR⁻² reading only 12 FPs before its fallback."""
    if request.param == "one_row_chunks_few_fps":
        monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(bootstrap, "_FP_FACTOR", 1)
        monkeypatch.setattr(bootstrap, "_FP_SLACK", 0)
    return request.param


@pytest.mark.slow
def test_weighted_resamples_equal_re_evaluating_duplicated_images(chunking):
    report = bootstrap_intervals(GT, DETS, resamples=50, seed=7)
    assert report.metrics == (*SETUP_NAMES, AP50) and report.num_images == NUM_IMAGES
    for name, dets in DETS.items():
        expected = _reference_samples(GT, dets, 50, 7)
        np.testing.assert_allclose(report.samples[name], expected, rtol=1e-12, atol=1e-12, equal_nan=True)
        for m, metric in enumerate(report.metrics):
            interval = report.models[name][metric]
            want = _percentiles(expected[:, m])
            got = None if interval.low is None else (interval.low, interval.high)
            assert got == (None if want is None else pytest.approx(want, rel=1e-12, abs=1e-12)), (name, metric)
    # a paired difference is the difference of the same resamples
    teacher, student = _reference_samples(GT, DETS["teacher"], 50, 7), _reference_samples(GT, DETS["student"], 50, 7)
    low, high = _percentiles(teacher[:, 0] - student[:, 0])
    diff = report.differences[("teacher", "student")]["Reasonable"]
    assert (diff.low, diff.high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    # Heavy has no non-ignored GT in some resamples (or all); those are skipped for every model
    counts = {m: int(np.isnan(teacher[:, k]).sum()) for k, m in enumerate(report.metrics)}
    assert report.skipped == counts


def test_the_few_fps_read_first_suffice_in_some_resamples_and_not_in_others():
    truth = parse_ground_truth(GT)
    found = parse_detections(DETS["teacher"], truth)
    (table,) = bootstrap._model_tables(truth, found, [get_setup("Reasonable")])[:1]
    assert len(table.fp_image) > NUM_IMAGES
    draws = resample_indices(NUM_IMAGES, 50, 7)
    counts = np.stack([np.bincount(d, minlength=NUM_IMAGES) for d in draws])
    weight_of_first = counts[:, table.fp_image[:NUM_IMAGES]].sum(axis=1)  # the fixture's 1 x budget 12
    assert (weight_of_first > NUM_IMAGES).any() and (weight_of_first <= NUM_IMAGES).any()


def test_the_official_minus_one_index_and_the_id_0_quirk_are_exercised():
    """The teacher's top detection is an FP on image 5: drawn, the first FPPI points read the last recall."""
    truth = parse_ground_truth(GT)
    found = parse_detections(DETS["teacher"], truth)
    draws = resample_indices(NUM_IMAGES, 50, 7)
    image_5 = int(np.flatnonzero(truth.image_ids == 5)[0])
    with_5 = [s for s in draws if image_5 in s]
    without_5 = [s for s in draws if image_5 not in s]
    assert with_5 and without_5
    curve = evaluate_mr(*_resampled(truth, found, with_5[0]), setups=["Reasonable"]).setups["Reasonable"]
    assert curve.curve.fppi[0] > 0.0562  # the first point is an FP beyond four reference FPPIs
    assert curve.reference_miss_rate[0] == curve.curve.miss_rate[-1]  # ... and reads the last recall
    # the id-0 GT is found by some model's detection, which then counts as a false positive
    zero = int(np.flatnonzero(truth.ann_id == 0)[0])
    assert truth.ignore[zero] == 0
    report = bootstrap_intervals(GT, DETS, resamples=50, seed=7)
    with_0 = _reference_samples(GT, DETS["student"], 50, 7)
    np.testing.assert_allclose(report.samples["student"], with_0, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_point_estimates_are_evaluate_mr_and_evaluate_ap():
    report = bootstrap_intervals(GT, DETS, resamples=5, seed=0)
    for name, dets in DETS.items():
        mr = evaluate_mr(GT, dets).mr
        ap50 = evaluate_ap(GT, dets)["ap50"]
        for setup in SETUP_NAMES:
            point = report.models[name][setup].point
            assert point == (None if mr[setup] == -100.0 else mr[setup])
        assert report.models[name][AP50].point == ap50
    diff = report.differences[("teacher", "other")]["All"]
    assert diff.point == pytest.approx(evaluate_mr(GT, DETS["teacher"]).mr["All"]
                                       - evaluate_mr(GT, DETS["other"]).mr["All"])


def test_all_images_once_gives_the_point_estimate():
    truth = parse_ground_truth(GT)
    found = parse_detections(DETS["teacher"], truth)
    tables = bootstrap._model_tables(truth, found, [get_setup(s) for s in SETUP_NAMES])
    values = bootstrap._resampled_values(tables, np.arange(NUM_IMAGES)[None, :], NUM_IMAGES)
    points = [t.point for t in tables]
    assert values[0] == pytest.approx(np.where(np.array(points) < -50, np.nan, points), nan_ok=True, rel=1e-12)


def test_a_model_against_itself_is_exactly_zero_and_within_noise():
    report = bootstrap_intervals(GT, {"a": DETS["teacher"], "b": DETS["teacher"]}, resamples=30, seed=1)
    for metric, interval in report.differences[("a", "b")].items():
        if interval.low is None:
            continue
        assert (interval.point, interval.low, interval.high) == (0.0, 0.0, 0.0), metric
        assert interval.within_noise is True


def test_same_seed_same_intervals_other_seed_other_draws():
    a = bootstrap_intervals(GT, DETS, resamples=20, seed=11).to_dict()
    b = bootstrap_intervals(GT, DETS, resamples=20, seed=11).to_dict()
    c = bootstrap_intervals(GT, DETS, resamples=20, seed=12).to_dict()
    assert a == b and a != c
    assert json.loads(json.dumps(a, allow_nan=False)) == a


def test_report_dict_shape():
    data = bootstrap_intervals(GT, DETS, resamples=10, seed=0, setups=["Reasonable"], level=0.9).to_dict()
    assert list(data) == ["num_images", "resamples", "seed", "level", "metrics", "skipped", "models", "differences"]
    assert (data["num_images"], data["resamples"], data["seed"], data["level"]) == (NUM_IMAGES, 10, 0, 0.9)
    assert data["metrics"] == ["Reasonable", "ap50"]
    assert list(data["models"]) == ["teacher", "student", "other"]
    assert set(data["models"]["teacher"]["ap50"]) == {"point", "low", "high"}
    assert [(d["a"], d["b"]) for d in data["differences"]] == [("teacher", "student"), ("teacher", "other"),
                                                               ("student", "other")]
    cell = data["differences"][0]["metrics"]["Reasonable"]
    assert set(cell) == {"point", "low", "high", "within_noise"}
    assert cell["within_noise"] == (cell["low"] <= 0 <= cell["high"])


def test_a_setup_without_ground_truth_has_no_interval():
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": P}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": P, "bbox": [0, 0, 41, 100], "height": 100,
                           "vis_ratio": 1.0}]}
    dets = {"a": [{"image_id": 1, "category_id": P, "bbox": [0, 0, 41, 100], "score": 0.9}]}
    report = bootstrap_intervals(gt, dets, resamples=40, seed=0, setups=["Reasonable", "Heavy"])
    assert report.skipped["Heavy"] == 40
    assert report.models["a"]["Heavy"] == type(report.models["a"]["Heavy"])(None, None, None)
    # resamples that draw image 2 twice have no person: skipped for Reasonable and AP50 alike
    assert 0 < report.skipped["Reasonable"] == report.skipped[AP50] < 40
    assert report.models["a"]["Reasonable"].point == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dets": {}}, "dets must map at least one model name"),
        ({"dets": {"": []}}, "model name ''; expected a non-empty string"),
        ({"resamples": 0}, "resamples must be a positive integer, got 0"),
        ({"resamples": 2.5}, "resamples must be a positive integer, got 2.5"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"level": 1.0}, r"level must be a number in \(0, 1\)"),
        ({"level": float("nan")}, r"level must be a number in \(0, 1\)"),
        ({"setups": "Reasonable"}, "setups must be a sequence of setup names"),
        ({"setups": ["Tiny"]}, "unknown evaluation setup 'Tiny'"),
        ({"setups": ["All", "All"]}, "setups has a repeated name"),
        ({"dets": {"a": [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]}},
         r"detections of 'a': detection \[0\] has image_id=99"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"dets": DETS, **kwargs}
    with pytest.raises(ValueError, match=message):
        bootstrap_intervals(GT, **args)


def test_a_gt_without_images_is_refused():
    with pytest.raises(ValueError, match="GT has no images"):
        bootstrap_intervals({"images": [], "categories": [], "annotations": []}, {"a": []})
