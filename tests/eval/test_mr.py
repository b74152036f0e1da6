"""MR⁻² of the CityPersons protocol: hand-derived cases, validation, and a randomized
comparison with an independent loop-based reference written from the protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hkd.eval import SETUP_NAMES, evaluate_mr
from hkd.eval.mr import FPPI_REFERENCE

# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------


def make_gt(annotations, num_images=1, categories=(1,)):
    """GT with images 1..num_images; annotation ids must be given explicitly."""
    return {
        "images": [{"id": i} for i in range(1, num_images + 1)],
        "categories": [{"id": c} for c in categories],
        "annotations": annotations,
    }


def person(ann_id, box, image_id=1, vis=1.0, ignore=0, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": list(box),
            "height": box[3], "vis_ratio": vis, "ignore": ignore, **extra}


def det(box, score, image_id=1, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


# Three people of height 100 (Reasonable) far apart on image 1 of 10 images.
P1, P2, P3 = (0, 0, 41, 100), (200, 0, 41, 100), (400, 0, 41, 100)
ELSEWHERE = (700, 0, 41, 100)  # overlaps nothing

# With 10 images, 3 positives and the counted detections [TP, TP]:
#   fppi = [0, 0], recall = [1/3, 2/3]; every reference FPPI samples 2/3,
#   miss rate 1/3 at all 9 points -> MR = 100/3.
MR_TP_TP = 100 / 3
# ... and with [TP, FP, TP]: fppi = [0, .1, .1], recall = [1/3, 1/3, 2/3].
#   FPPI refs .01 .0178 .0316 .0562 -> last point with fppi <= ref is index 0
#   (recall 1/3, miss 2/3); refs .1 ... 1 -> index 2 (recall 2/3, miss 1/3):
#   MR = exp((4 ln 2/3 + 5 ln 1/3) / 9).
MR_TP_FP_TP = 100 * math.exp((4 * math.log(2 / 3) + 5 * math.log(1 / 3)) / 9)


def three_people_case(middle_box, extra_annotations=()):
    """TP (0.9), a middle detection (0.8), TP (0.7) on three people over 10 images."""
    gt = make_gt([person(1, P1), person(2, P2), person(3, P3), *extra_annotations], num_images=10)
    dets = [det(P1, 0.9), det(middle_box, 0.8), det(P2, 0.7)]
    return gt, dets


# ---------------------------------------------------------------------------
# hand-derived cases
# ---------------------------------------------------------------------------


def test_perfect_detector_is_zero_and_out_of_range_setups_are_invalid():
    gt = make_gt([person(1, P1), person(2, P2)])
    result = evaluate_mr(gt, [det(P1, 0.9), det(P2, 0.8)])
    # Two TPs, no FP: fppi = [0, 0], recall reaches 1 at every reference,
    # a miss rate of 0 makes log -inf and the log-average 0.
    assert result.mr["Reasonable"] == 0.0
    assert result.mr["All"] == 0.0
    # heights 100 > 75 (Small) and visibility 1 > 0.65 (Heavy): every GT is
    # ignored, no miss rate exists and the official script prints -100.
    for name in ("Small", "Heavy"):
        assert result.mr[name] == -100.0
        assert not result.setups[name].valid
        assert result.setups[name].curve is None
    assert list(result.mr) == list(SETUP_NAMES)


def test_no_detections_is_hundred():
    gt = make_gt([person(1, P1)], num_images=3)
    result = evaluate_mr(gt, [])
    # no point on the curve: recall 0 at every reference -> miss rate 1 -> MR 100
    assert result.mr["Reasonable"] == 100.0
    assert np.array_equal(result.setups["Reasonable"].reference_miss_rate, np.ones(9))


def test_false_positive_before_any_reference_fppi_reads_last_recall():
    gt = make_gt([person(1, P1), person(2, P2), person(3, P3)], num_images=10)
    dets = [det(ELSEWHERE, 0.9), det(P1, 0.8), det(P2, 0.7)]
    result = evaluate_mr(gt, dets)
    # Counted: [FP, TP, TP] -> fppi = [.1, .1, .1], recall = [0, 1/3, 2/3].
    # Refs .01-.0562 lie before fppi[0]: searchsorted - 1 = -1, and the official
    # recall[-1] reads the LAST recall, 2/3 (a sane curve would read 0).
    # Refs >= .1 read index 2, also 2/3. Miss rate 1/3 everywhere -> 100/3
    # (without the quirk: 100 * (1/3) ** (5/9) = 54.3).
    assert result.mr["Reasonable"] == pytest.approx(100 / 3, abs=1e-9)
    curve = result.setups["Reasonable"].curve
    np.testing.assert_allclose(curve.fppi, [0.1, 0.1, 0.1])
    np.testing.assert_allclose(curve.miss_rate, [1, 2 / 3, 1 / 3])
    assert curve.num_images == 10  # FPPI divides by all images, 9 of them empty


def test_fppi_counts_every_image_of_the_gt_file():
    gt, dets = three_people_case(ELSEWHERE)
    assert evaluate_mr(gt, dets).mr["Reasonable"] == pytest.approx(MR_TP_FP_TP, abs=1e-9)
    # With 20 images the FP is at fppi .05: refs .01-.0316 read recall 1/3,
    # .0562 and up read 2/3: MR = exp((3 ln 2/3 + 6 ln 1/3) / 9).
    gt["images"] += [{"id": i} for i in range(11, 21)]
    expected = 100 * math.exp((3 * math.log(2 / 3) + 6 * math.log(1 / 3)) / 9)
    assert evaluate_mr(gt, dets).mr["Reasonable"] == pytest.approx(expected, abs=1e-9)


def test_ignore_region_absorbs_detections_by_intersection_over_detection_area():
    region = {"id": 4, "image_id": 1, "category_id": 1, "bbox": [600, 0, 200, 200],
              "height": 200, "vis_ratio": 1.0, "ignore": 1}
    inside = (610, 10, 40, 100)  # IoU with the region 0.1, IoA 1.0
    gt, dets = three_people_case(inside, [region])
    # absorbed: counted [TP, TP] -> MR 100/3; scored by IoU it would be a FP
    assert evaluate_mr(gt, dets).mr["Reasonable"] == pytest.approx(MR_TP_TP, abs=1e-9)
    # the region absorbs any number of detections
    dets += [det((620, 20, 40, 100), 0.85), det((630, 30, 40, 100), 0.6)]
    assert evaluate_mr(gt, dets).mr["Reasonable"] == pytest.approx(MR_TP_TP, abs=1e-9)
    # ignore flag off: the same box is a person that the detection misses (IoU 0.1)
    region["ignore"] = 0
    result = evaluate_mr(gt, dets[:3])
    # positives 4, counted [TP, FP, TP]: recall 1/4 then 2/4 -> refs < .1 miss 3/4, others 1/2
    expected = 100 * math.exp((4 * math.log(3 / 4) + 5 * math.log(1 / 2)) / 9)
    assert result.mr["Reasonable"] == pytest.approx(expected, abs=1e-9)


def test_gt_out_of_setup_range_becomes_an_ignore_region():
    short = person(4, (600, 0, 40, 30))  # height 30 < 50: ignored in Reasonable
    gt, dets = three_people_case((600, 0, 40, 30), [short])
    # Reasonable: the middle det (height 30 < 40) is filtered anyway -> 100/3.
    assert evaluate_mr(gt, dets).mr["Reasonable"] == pytest.approx(MR_TP_TP, abs=1e-9)
    # All (height >= 20): the short person counts; the middle det is a TP.
    # positives 4, [TP, TP, TP] at fppi 0 -> recall 3/4 everywhere -> MR 25.
    assert evaluate_mr(gt, dets).mr["All"] == pytest.approx(25.0, abs=1e-9)


def test_equal_iou_goes_to_the_later_gt():
    # det A has IoU 2/3 with both people (overlap 40 x 100 each); det B
    # overlaps only the first person (IoU 2/3; 0.25 with the second).
    first, second = (90, 0, 50, 100), (110, 0, 50, 100)
    det_a, det_b = (100, 0, 50, 100), (80, 0, 50, 100)
    gt = make_gt([person(1, first), person(2, second)])
    result = evaluate_mr(gt, [det(det_a, 0.9), det(det_b, 0.8)])
    # Official loop replaces the best on equal IoU: A takes the second person,
    # B the first -> two TPs -> MR 0. (First-wins would leave B a FP: MR 50.)
    assert result.mr["Reasonable"] == 0.0


@pytest.mark.parametrize(
    ("setup", "height", "counted"),
    [
        ("Reasonable", 40.0, True),  # 50 / 1.25 = 40 is kept (>=)
        ("Reasonable", 39.99, False),
        ("Small", 93.74, True),
        ("Small", 93.75, False),  # 75 * 1.25 = 93.75 is dropped (<)
    ],
)
def test_detection_height_filter(setup, height, counted):
    middle = (700, 0, 20, height)
    gt, dets = three_people_case(middle)
    if setup == "Small":  # make the people Small-sized (height 60)
        for ann in gt["annotations"]:
            ann["bbox"][3] = ann["height"] = 60
        for d in dets:
            d["bbox"][3] = 60 if d["bbox"][3] == 100 else d["bbox"][3]
    expected = MR_TP_FP_TP if counted else MR_TP_TP
    assert evaluate_mr(gt, dets, setups=[setup]).mr[setup] == pytest.approx(expected, abs=1e-9)


def test_detection_height_is_its_box_height():
    gt, dets = three_people_case((700, 0, 20, 39.99))
    dets[1]["height"] = 100  # ignored: the official loadRes overwrites it with bbox[3]
    assert evaluate_mr(gt, dets).mr["Reasonable"] == pytest.approx(MR_TP_TP, abs=1e-9)


def test_gt_id_zero_match_counts_as_false_positive():
    gt = make_gt([person(0, P1), person(1, P2)])
    result = evaluate_mr(gt, [det(P1, 0.9), det(P2, 0.8), det(P1, 0.7)])
    # det 1 matches GT id 0; the official code tests the stored GT id for
    # truth, so it is a FP, and GT 0 stays taken: det 3 is a FP too.
    # Counted [FP, TP, FP], 1 image: fppi [1, 1, 2], recall [0, .5, .5].
    # Refs < 1 -> index -1 -> last recall .5; ref 1 -> index 1 -> .5. MR 50.
    assert result.mr["Reasonable"] == pytest.approx(50.0, abs=1e-9)
    gt["annotations"][0]["id"] = 7
    assert evaluate_mr(gt, [det(P1, 0.9), det(P2, 0.8)]).mr["Reasonable"] == 0.0


def test_setups_without_positives_are_invalid():
    flagged = make_gt([person(1, P1, ignore=1)])
    result = evaluate_mr(flagged, [det(P1, 0.9)])
    assert result.mr == {name: -100.0 for name in SETUP_NAMES}
    assert not any(r.valid for r in result.setups.values())
    # the official accumulation reads category 1 only, and only if listed
    unlisted = make_gt([person(1, P1)], categories=(2,))
    assert evaluate_mr(unlisted, [det(P1, 0.9)]).mr["Reasonable"] == -100.0


def test_only_category_one_is_evaluated():
    gt = make_gt([person(1, P1), {**person(2, P2), "category_id": 2}], categories=(1, 2))
    # the category-2 detection is neither a FP nor a match for the category-2 GT
    dets = [det(P2, 0.95, category_id=2), det(P1, 0.9)]
    assert evaluate_mr(gt, dets).mr["Reasonable"] == 0.0


def test_missing_height_and_visibility_default_to_box_height_and_visible():
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 60]}
    result = evaluate_mr(make_gt([ann]), [])
    # height 60, visibility 1.0: positive in Reasonable and Small, not Heavy
    assert [result.setups[n].num_positives for n in SETUP_NAMES] == [1, 1, 0, 1]


def test_reference_points_and_result_shape():
    gt, dets = three_people_case(ELSEWHERE)
    setup = evaluate_mr(gt, dets, setups=["Reasonable"]).setups["Reasonable"]
    assert setup.reference_miss_rate.shape == FPPI_REFERENCE.shape
    np.testing.assert_allclose(setup.reference_miss_rate, [2 / 3] * 4 + [1 / 3] * 5)
    assert setup.num_positives == 3 and setup.num_images == 10


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda gt, d: d[0].update(image_id=99), "image_id=99, which is not in GT images"),
        (lambda gt, d: d[0].update(bbox=[1, 2, 3]), "expected 4 finite numbers"),
        (lambda gt, d: d[0].update(bbox=[1, 2, -3, 4]), "width and height must be >= 0"),
        (lambda gt, d: d[0].pop("score"), "has no 'score'"),
        (lambda gt, d: d[0].update(score=float("nan")), "expected a finite number"),
        (lambda gt, d: d[0].pop("category_id"), "has no 'category_id'"),
        (lambda gt, d: gt["annotations"].append(person(1, P2)), "duplicate id 1"),
        (lambda gt, d: gt["images"].append({"id": 1}), "duplicate id 1"),
        (lambda gt, d: gt["annotations"][0].update(image_id=5), "not in GT images"),
        (lambda gt, d: gt["annotations"][0].update(ignore=0.5), "expected 0 or 1"),
        (lambda gt, d: gt["annotations"][0].update(vis_ratio="high"), "vis_ratio='high'"),
        (lambda gt, d: gt.pop("categories"), "no 'categories' list"),
    ],
)
def test_invalid_inputs_raise_clear_errors(mutate, message):
    gt, dets = make_gt([person(1, P1)]), [det(P1, 0.9)]
    mutate(gt, dets)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        evaluate_mr(gt, dets)


def test_unknown_setup_names_the_choices():
    with pytest.raises(ValueError, match="Reasonable, Small, Heavy, All"):
        evaluate_mr(make_gt([]), [], setups=["Occluded"])


# ---------------------------------------------------------------------------
# randomized comparison with an independent reference
# ---------------------------------------------------------------------------

RANGES = {  # name: (h_min, h_max, vis_min, vis_max), inclusive
    "Reasonable": (50, 1e10, 0.65, 1e10),
    "Small": (50, 75, 0.65, 1e10),
    "Heavy": (50, 1e10, 0.2, 0.65),
    "All": (20, 1e10, 0.2, 1e10),
}


def _overlap(d, g, region):
    """IoU of two [x, y, w, h] boxes, or intersection over d's area for a region."""
    iw = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    ih = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (d[2] * d[3] if region else d[2] * d[3] + g[2] * g[3] - inter)


def reference_mr(gt, dets):
    """Plain-loop reference of the CityPersons protocol, independent of hkd.eval."""
    if not any(c["id"] == 1 for c in gt["categories"]):
        return {name: -100.0 for name in RANGES}
    image_ids = sorted({im["id"] for im in gt["images"]})
    out = {}
    for name, (h_lo, h_hi, v_lo, v_hi) in RANGES.items():
        evaluated = []  # (score, is_tp): image by image, best score first
        positives = 0
        for img in image_ids:
            regular, regions = [], []
            for a in gt["annotations"]:
                if a["image_id"] != img or a["category_id"] != 1:
                    continue
                h, v = a.get("height", a["bbox"][3]), a.get("vis_ratio", 1.0)
                if a.get("ignore", 0) or not (h_lo <= h <= h_hi and v_lo <= v <= v_hi):
                    regions.append(a)
                else:
                    regular.append(a)
            positives += len(regular)
            mine = [d for d in dets if d["image_id"] == img and d["category_id"] == 1]
            ranked = sorted(mine, key=lambda d: -d["score"])[:1000]  # sorted() is stable
            ranked = [d for d in ranked if h_lo / 1.25 <= d["bbox"][3] < h_hi * 1.25]
            taken = set()
            for d in ranked:
                best, best_iou = None, 0.5
                for j, a in enumerate(regular):
                    iou = _overlap(d["bbox"], a["bbox"], region=False)
                    if j not in taken and iou >= best_iou:  # later GT wins a tie
                        best, best_iou = j, iou
                if best is not None:
                    taken.add(best)
                    evaluated.append((d["score"], regular[best]["id"] != 0))
                elif not any(_overlap(d["bbox"], a["bbox"], region=True) >= 0.5 for a in regions):
                    evaluated.append((d["score"], False))
        if positives == 0:
            out[name] = -100.0
            continue
        evaluated.sort(key=lambda e: -e[0])
        fppi, recall, tp, fp = [], [], 0, 0
        for _, is_tp in evaluated:
            tp, fp = tp + is_tp, fp + (not is_tp)
            fppi.append(fp / len(image_ids))
            recall.append(tp / positives)
        misses = []
        for ref in FPPI_REFERENCE:
            upto = [i for i, f in enumerate(fppi) if f <= ref]
            if not recall:
                r = 0.0
            else:
                r = recall[upto[-1]] if upto else recall[-1]  # official recall[-1] quirk
            misses.append(1 - r)
        if min(misses) == 0:
            out[name] = 0.0
        else:
            out[name] = 100 * math.exp(sum(math.log(m) for m in misses) / len(misses))
    return out


def random_case(rng):
    """A small GT/det set with ties, ignores, id 0, integer boxes, other categories."""
    image_ids = rng.permutation(60)[: int(rng.integers(1, 12))].tolist()
    categories = [{"id": 1}] if rng.random() < 0.9 else [{"id": 1}, {"id": 2}]
    if rng.random() < 0.03:
        categories = [{"id": 2}]
    integer = rng.random() < 0.3
    annotations, dets = [], []
    next_id = int(rng.integers(0, 2))
    for img in image_ids:
        for _ in range(int(rng.poisson(3))):
            h = float(rng.choice([rng.uniform(10, 160), rng.choice([20.0, 40.0, 50.0, 75.0, 93.75])]))
            box = [float(rng.uniform(0, 300)), float(rng.uniform(0, 100)), h * float(rng.uniform(0.3, 0.6)), h]
            if integer:
                box = [int(round(v)) for v in box]
            if annotations and rng.random() < 0.1:
                box = list(annotations[-1]["bbox"])  # duplicate box: equal-IoU ties
            ann = {"id": next_id, "image_id": img, "category_id": 1 if rng.random() < 0.9 else 2, "bbox": box}
            if rng.random() < 0.9:
                ann["height"] = box[3] if rng.random() < 0.8 else float(rng.uniform(10, 160))
            if rng.random() < 0.9:
                ann["vis_ratio"] = float(rng.choice([rng.uniform(0, 1), 0.65, 0.2]))
            if rng.random() < 0.9:
                ann["ignore"] = int(rng.random() < 0.15)
            annotations.append(ann)
            next_id += 1
            for _ in range(int(rng.poisson(1.5))):
                j = rng.normal(0, 0.08 * box[3], 4)
                dbox = [box[0] + j[0], box[1] + j[1], max(1.0, box[2] + j[2]), max(1.0, box[3] + j[3])]
                dbox = [int(round(v)) for v in dbox] if integer else [float(v) for v in dbox]
                dets.append({"image_id": img, "category_id": 1, "bbox": dbox})
        for _ in range(int(rng.poisson(2))):
            h = float(rng.uniform(10, 160))
            dets.append({"image_id": img, "category_id": 1 if rng.random() < 0.95 else 2,
                         "bbox": [float(rng.uniform(0, 300)), float(rng.uniform(0, 100)), 0.4 * h, h]})
    dets = [dets[i] for i in rng.permutation(len(dets))]
    for d in dets:  # coarse scores tie within and across images
        d["score"] = float(np.round(rng.uniform(0, 1), 1 if rng.random() < 0.5 else 6))
    gt = {"images": [{"id": i} for i in image_ids], "categories": categories, "annotations": annotations}
    return gt, dets


def test_matches_independent_reference_on_random_sets():
    rng = np.random.default_rng(20240601)
    outcomes = set()
    for case in range(200):
        gt, dets = random_case(rng)
        expected = reference_mr(gt, dets)
        got = evaluate_mr(gt, dets).mr
        for name in SETUP_NAMES:
            assert got[name] == pytest.approx(expected[name], abs=1e-6), (case, name)
            outcomes.add("invalid" if expected[name] == -100 else "zero" if expected[name] == 0 else "mr")
    assert outcomes == {"invalid", "zero", "mr"}  # the generator reaches every branch
