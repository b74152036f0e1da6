"""Stage attribution: each broken stage of a detector is the stage its new misses are blamed on."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from hkd.analysis.diagnose import (
    DENSE_HEAD, FOUND, LOCALIZATION, NMS, ROI_SCORE, RPN, DiagnosisInputError, ImageStages, describe, diagnose,
    stages_over_dataset,
)
from hkd.analysis.stages import SINGLE_STAGE, TWO_STAGE, StagedOutput

SCORE = 0.5  # a fixed operating score, so a broken model is judged where the intact one was


def _silence_rpn_level(model, level: int):
    """A copy whose RPN hands the ROI head no proposal from FPN ``level``: objectness -1e4 and
    box sizes shrunk to nothing (removed by the RPN's own small-box filter)."""
    broken = copy.deepcopy(model)

    def hook(_module, _inputs, output):
        logits, deltas = list(output[0]), list(output[1])
        logits[level] = torch.full_like(logits[level], -1e4)
        d = deltas[level].clone()
        d = d.view(d.shape[0], -1, 4, *d.shape[2:])
        d[:, :, 2:] = -20.0
        deltas[level] = d.view_as(deltas[level])
        return logits, deltas

    broken.rpn.head.register_forward_hook(hook)
    return broken


def _biased_to_background(model):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.roi_heads.box_predictor.cls_score.bias[0] += 12.0
    return broken


def _greedy_nms(model):
    broken = copy.deepcopy(model)
    broken.roi_heads.nms_thresh = 0.02
    return broken


@pytest.fixture(scope="module")
def diagnosis(shipped_student, synth_split, loader):
    gt = synth_split["gt"]
    runs = {
        "intact": stages_over_dataset(shipped_student, gt, loader),
        "p3_silenced": stages_over_dataset(_silence_rpn_level(shipped_student, 0), gt, loader),
        "biased": stages_over_dataset(_biased_to_background(shipped_student), gt, loader),
        "greedy_nms": stages_over_dataset(_greedy_nms(shipped_student), gt, loader),
    }
    return diagnose(gt, runs, score=SCORE, setup="All")


def _pair(result, model):
    return next(p for p in result["pairs"] if p["reference"] == "intact" and p["model"] == model)


@pytest.mark.slow
def test_the_intact_student_finds_most_pedestrians(diagnosis):
    summary = diagnosis["summary"]["intact"]
    assert summary["cases"] > 20 and summary["found"] > summary["cases"] / 2


def test_a_silenced_rpn_level_loses_its_scales_at_the_rpn(diagnosis):
    pair = _pair(diagnosis, "p3_silenced")
    assert pair["count"] >= 3
    assert pair["stages"][RPN]["count"] / pair["count"] >= 0.75
    lost = [c for c in diagnosis["cases"]["p3_silenced"] if c["stage"] == RPN]
    found = {(c["image_id"], c["annotation_id"]) for c in diagnosis["cases"]["intact"] if c["stage"] == FOUND}
    extra = [c for c in lost if (c["image_id"], c["annotation_id"]) in found]
    # P3's anchors are 16-24 px at aspect ratios up to 3: only small pedestrians depend on it alone
    assert extra and all(c["height"] < 50 for c in extra)


def test_a_classifier_biased_to_background_loses_them_at_the_roi_score(diagnosis):
    pair = _pair(diagnosis, "biased")
    assert pair["count"] == diagnosis["summary"]["intact"]["found"]
    assert pair["stages"][ROI_SCORE]["count"] == pair["count"]
    case = next(c for c in diagnosis["cases"]["biased"] if c["stage"] == ROI_SCORE)
    assert case["best_proposal"]["iou"] >= 0.5 and case["best_proposal"]["best_head_score"] < SCORE


def test_a_greedy_nms_loses_neighbours_at_nms_and_names_the_suppressor(diagnosis):
    pair = _pair(diagnosis, "greedy_nms")
    assert pair["count"] >= 2 and pair["stages"][NMS]["count"] == pair["count"]
    lost = [c for c in diagnosis["cases"]["greedy_nms"] if c["stage"] == NMS]
    assert all(c["suppressor"] is not None and c["suppressor"]["score"] >= c["best_score_before_nms"]
               for c in lost)
    assert any(c["suppressor"]["matched_other"] for c in lost)
    assert "nms" in describe(pair)


def test_json_shape_and_operating_points(diagnosis):
    assert set(diagnosis) == {"setup", "operating_point", "cases", "summary", "pairs"}
    assert diagnosis["operating_point"]["intact"]["score"] == SCORE
    assert len(diagnosis["pairs"]) == 4 * 3
    json.dumps(diagnosis)  # JSON-able


# --- hand-made stage records: every rule on its own -------------------------------------------------


def _stages(*, proposals=(), objectness=(), head=(), regressed=(), candidates=(), scores=(), kept=(),
            suppressor=(), family=TWO_STAGE) -> StagedOutput:
    cand = np.asarray(candidates, np.float32).reshape(-1, 4)
    cs = np.asarray(scores, np.float32)
    kept = np.asarray(kept, bool)
    return StagedOutput(
        family=family, proposals=np.asarray(proposals, np.float32).reshape(-1, 4),
        objectness=np.asarray(objectness, np.float32), proposal_score=np.asarray(head, np.float32),
        proposal_box=np.asarray(regressed, np.float32).reshape(-1, 4), candidates=cand, candidate_score=cs,
        candidate_proposal=np.full(len(cs), -1), kept=kept, suppressor=np.asarray(suppressor, np.int64),
        nms_iou=0.5, boxes=cand[kept], scores=cs[kept])


GT = {"images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 200}],
      "categories": [{"id": 1, "name": "pedestrian"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 90], "height": 90,
                       "vis_ratio": 1.0, "ignore": 0},
                      {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 10, 30, 90], "height": 90,
                       "vis_ratio": 1.0, "ignore": 0}]}
FIRST, SECOND = [10, 10, 40, 100], [30, 10, 60, 100]
FAR = [150, 100, 180, 190]


def _stage_of(stages: StagedOutput, annotation: int = 1) -> dict:
    result = diagnose(GT, {"m": [ImageStages(1, "a.png", stages)]}, score=SCORE, setup="Reasonable")
    return next(c for c in result["cases"]["m"] if c["annotation_id"] == annotation)


def test_rule_rpn_no_good_proposal():
    case = _stage_of(_stages(proposals=[FAR], objectness=[0.9], head=[0.9], regressed=[FAR],
                             candidates=[FAR], scores=[0.9], kept=[True], suppressor=[-1]))
    assert case["stage"] == RPN and case["best_proposal"]["iou"] == 0.0


def test_rule_roi_score_good_proposal_scored_low():
    case = _stage_of(_stages(proposals=[FIRST], objectness=[0.9], head=[0.2], regressed=[FIRST],
                             candidates=[FIRST], scores=[0.2], kept=[True], suppressor=[-1]))
    assert case["stage"] == ROI_SCORE and case["best_score_before_nms"] == pytest.approx(0.2)


def test_rule_nms_names_a_suppressor_that_matched_the_neighbour():
    # the neighbour's box (0.9) overlaps the first pedestrian's box (0.8) by IoU 0.5+: removed
    wide = [20, 10, 50, 100]
    case = _stage_of(_stages(proposals=[FIRST, SECOND], objectness=[0.9, 0.9], head=[0.8, 0.9],
                             regressed=[wide, SECOND], candidates=[SECOND, wide], scores=[0.9, 0.8],
                             kept=[True, False], suppressor=[-1, 0]))
    assert case["stage"] == NMS
    assert case["suppressor"]["score"] == pytest.approx(0.9) and case["suppressor"]["matched_other"] is True


def test_rule_localization_well_scored_but_regressed_away():
    off = [10, 45, 40, 135]  # IoU < 0.5 with the first pedestrian
    case = _stage_of(_stages(proposals=[FIRST], objectness=[0.9], head=[0.9], regressed=[off],
                             candidates=[off], scores=[0.9], kept=[True], suppressor=[-1]))
    assert case["stage"] == LOCALIZATION
    assert case["nearby"]["why"].startswith("IoU")


def test_rule_found():
    case = _stage_of(_stages(proposals=[FIRST], objectness=[0.9], head=[0.9], regressed=[FIRST],
                             candidates=[FIRST], scores=[0.9], kept=[True], suppressor=[-1]))
    assert case["stage"] == FOUND and case["detection"]["score"] == pytest.approx(0.9)


def test_single_stage_rules():
    none = _stages(family=SINGLE_STAGE, candidates=[FAR], scores=[0.9], kept=[True], suppressor=[-1])
    assert _stage_of(none)["stage"] == DENSE_HEAD
    near = _stages(family=SINGLE_STAGE, candidates=[[10, 50, 40, 140]], scores=[0.9], kept=[True],
                   suppressor=[-1])
    assert _stage_of(near)["stage"] == LOCALIZATION


def test_bad_inputs_are_named():
    stages = _stages(candidates=[FAR], scores=[0.9], kept=[True], suppressor=[-1])
    with pytest.raises(DiagnosisInputError, match="image id 7"):
        diagnose(GT, {"m": [ImageStages(7, "x.png", stages)]})
    no_pedestrian = {**GT, "categories": [{"id": 2, "name": "car"}]}
    with pytest.raises(DiagnosisInputError, match="pedestrian"):
        diagnose(no_pedestrian, {"m": [ImageStages(1, "a.png", stages)]})
