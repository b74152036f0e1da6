"""bench/one_box.py: group boxes and fragments (resolve_nested), applied offline per image, and the choice rule."""
import numpy as np
import pytest
import torch

from hkd.eval.mr import parse_detections, parse_ground_truth
from tests.bench.scripts import bench_module

one_box = bench_module("one_box")
resolve_nested = one_box.resolve_nested

PERSON = [100, 50, 140, 170]  # 40 x 120 full body
TORSO = [105, 60, 135, 110]  # wholly inside the person, 50 of its 120 px of height
LEGS = [108, 110, 134, 172]  # 0.97 of its area inside the person, 62 px tall
NEIGHBOUR = [150, 52, 188, 168]  # a second person beside the first, no overlap
GROUP = [95, 45, 192, 175]  # one box over PERSON and NEIGHBOUR


def _run(boxes, scores, **kw):
    keep, new = resolve_nested(np.array(boxes, dtype=np.float32), np.array(scores, dtype=np.float32), **kw)
    return keep.tolist(), np.round(new, 4).tolist()


def test_a_fragment_scoring_higher_than_its_person_is_removed_and_its_score_goes_to_the_person():
    # suppress_contained cannot do this: the torso outscores the body around it
    assert _run([TORSO, PERSON], [0.99, 0.7]) == ([1], [0.99])
    assert _run([PERSON, LEGS], [0.7, 0.6]) == ([0], [0.7]), "a lower-scoring fragment leaves the score as it was"
    assert _run([TORSO, PERSON], [0.99, 0.7], transfer=False) == ([1], [0.7])


def test_a_fragment_of_an_unsure_container_is_kept():
    assert _run([TORSO, PERSON], [0.99, 0.4]) == ([0, 1], [0.99, 0.4])
    assert _run([TORSO, PERSON], [0.99, 0.4], min_score=0.3) == ([1], [0.99])


def test_fragments_pass_their_score_up_a_chain_and_to_the_best_container():
    upper_legs = [106, 100, 136, 172]  # LEGS (62 px) is not at most 0.75 of its 72 px: not its fragment
    keep, new = _run([LEGS, upper_legs, PERSON], [0.95, 0.6, 0.8])
    assert keep == [2] and new == [0.95]
    wide = [90, 40, 150, 180]  # PERSON lies inside it, but is more than 0.75 of its height: a box, not a part
    keep, new = _run([TORSO, PERSON, wide], [0.97, 0.8, 0.6])
    assert keep == [1, 2] and new == [0.97, 0.6], "the torso goes to PERSON, the best-scoring container"


def test_a_group_box_over_two_people_with_boxes_of_their_own_is_removed():
    assert _run([GROUP, PERSON, NEIGHBOUR], [0.98, 0.8, 0.7]) == ([1, 2], [0.8, 0.7])
    # a member below min_score does not make a group
    assert _run([GROUP, PERSON, NEIGHBOUR], [0.98, 0.8, 0.3])[0] == [0, 1, 2]
    assert _run([GROUP, PERSON, NEIGHBOUR], [0.98, 0.8, 0.7], groups=False)[0] == [0, 1, 2]


def test_a_person_with_two_fragments_is_not_a_group():
    # torso and legs are pieces (shorter than part_height of the person), and they stand one above the other
    assert _run([PERSON, TORSO, LEGS], [0.8, 0.9, 0.7]) == ([0], [0.9])
    # two narrow full-height boxes one over the other (horizontal overlap > half) are not side by side
    left, shifted = [100, 50, 125, 170], [110, 50, 135, 170]
    assert _run([PERSON, left, shifted], [0.9, 0.8, 0.7], parts=False)[0] == [0, 1, 2]


def test_people_side_by_side_and_separate_steps():
    assert _run([PERSON, NEIGHBOUR], [0.9, 0.8]) == ([0, 1], [0.9, 0.8])
    assert _run([TORSO, PERSON], [0.99, 0.7], parts=False) == ([0, 1], [0.99, 0.7])
    # the inside threshold: LEGS has 0.97 of its area inside PERSON
    assert _run([PERSON, LEGS], [0.7, 0.9], inside=0.98)[0] == [1, 0]
    assert _run([PERSON, LEGS], [0.7, 0.9], inside=0.9)[0] == [0]


def test_degenerate_inputs_and_bad_options():
    assert _run([], []) == ([], [])
    assert _run([[5, 5, 5, 20], PERSON], [0.3, 0.9]) == ([1, 0], [0.9, 0.3]), "a zero-area box is kept as it is"
    keep, new = resolve_nested(torch.tensor([TORSO, PERSON], dtype=torch.float32), torch.tensor([0.99, 0.7]))
    assert keep.dtype == np.int64 and keep.tolist() == [1]
    for kw, word in [({"inside": 0}, "inside"), ({"part_height": 1.5}, "part_height"), ({"min_score": -0.1}, "min_score"),
                     ({"min_score": True}, "min_score")]:
        with pytest.raises(ValueError, match=word):
            resolve_nested(np.array([PERSON]), np.array([0.9]), **kw)
    with pytest.raises(ValueError, match="scores must have shape"):
        resolve_nested(np.array([PERSON]), np.array([0.9, 0.8]))


def test_variants_are_applied_image_by_image_and_bad_ones_are_named():
    gt = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
          "categories": [{"id": 1, "name": "pedestrian"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 50, 40, 120], "height": 120,
                           "vis_ratio": 1.0}]}
    xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
    dets = [{"image_id": 1, "category_id": 1, "bbox": xywh(TORSO), "score": 0.99},
            {"image_id": 1, "category_id": 1, "bbox": xywh(PERSON), "score": 0.7},
            {"image_id": 2, "category_id": 1, "bbox": xywh(PERSON), "score": 0.6}]  # image 2: nothing to contain it
    truth = parse_ground_truth(gt)
    found = parse_detections(dets, truth)
    assert one_box.apply(found, "off") is found
    out = one_box.apply(found, "n0.8/0.75/0.5")
    assert sorted(out.score.tolist()) == [0.6, 0.99] and len(out.bbox) == 2, "the torso's score went to the person"
    assert sorted(one_box.apply(found, "q0.8/0.75/0.5").score.tolist()) == [0.6, 0.7]
    assert sorted(one_box.apply(found, "c0.9").score.tolist()) == [0.6, 0.7, 0.99], "the torso outscores the body"
    for bad in ["x0.8", "n0.8/0.75", "c0.9/1/2", "nabc"]:
        with pytest.raises(SystemExit, match="bad variant"):
            one_box.parse_variant(bad)


def test_the_choice_halves_part_and_crowd_and_bounds_the_mr_loss():
    def r(mr, part, crowd):
        return {"mr": {"Reasonable": mr}, "fp": {"part_of_person": part, "crowd": crowd}}
    results = {"a": {"off": r(10, 4, 4), "v1": r(10.5, 2, 1), "v2": r(12, 0, 0), "v3": r(10, 3, 3)},
               "b": {"off": r(20, 2, 2), "v1": r(20.5, 1, 1), "v2": r(20, 0, 0), "v3": r(19, 2, 2)}}
    choice, reasons = one_box.choose(results, ["off", "v1", "v2", "v3"])
    assert choice == "v1"
    assert any(line.startswith("v2:") and "a: MR⁻² Reasonable +2.00" in line for line in reasons)
    assert any(line.startswith("v3:") and "part + crowd 12 → 10" in line for line in reasons)
    results["a"]["v1"] = r(11.5, 2, 1)
    assert one_box.choose(results, ["off", "v1", "v2", "v3"])[0] == "off"
