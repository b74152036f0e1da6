"""Suppressing boxes mostly contained in a higher-scoring one (hkd.models.inference.suppress_contained)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from hkd.cli import main
from hkd.models.inference import Detections, detect, suppress_contained

PERSON = [100, 50, 140, 170]  # 40 x 120 full body
TORSO = [105, 60, 135, 110]  # wholly inside the person: IoA 1, IoU 1500 / 4800 = 0.31
LEGS = [108, 110, 134, 172]  # mostly inside (IoA 60 / 62 = 0.97)
NEIGHBOUR = [150, 52, 188, 168]  # a second person beside the first, no overlap


def _keep(boxes, scores, **kw):
    return suppress_contained(np.array(boxes, dtype=np.float32), np.array(scores, dtype=np.float32), **kw).tolist()


def test_a_torso_box_inside_a_person_box_is_removed():
    assert _keep([PERSON, TORSO], [0.9, 0.6]) == [0]
    assert _keep([TORSO, PERSON, LEGS], [0.6, 0.9, 0.5]) == [1], "order of the input does not matter"


def test_two_people_side_by_side_are_both_kept():
    assert _keep([PERSON, NEIGHBOUR], [0.9, 0.8]) == [0, 1]
    # overlapping, but each with less than 0.8 of its area inside the other
    half = [120, 50, 160, 170]  # IoA 0.5 with PERSON
    assert _keep([PERSON, half], [0.9, 0.8]) == [0, 1]
    assert _keep([PERSON, half], [0.9, 0.8], containment=0.5) == [0]


def test_a_higher_scoring_small_box_is_never_removed_by_a_lower_scoring_big_one():
    assert _keep([TORSO, PERSON], [0.9, 0.6]) == [0, 1]
    assert _keep([PERSON, TORSO], [0.6, 0.9]) == [1, 0], "indices by descending score"


def test_containment_threshold_and_score_ratio():
    # LEGS has 0.97 of its area in PERSON
    assert _keep([PERSON, LEGS], [0.9, 0.5], containment=0.98) == [0, 1]
    assert _keep([PERSON, LEGS], [0.9, 0.5], containment=0.9) == [0]
    # score_ratio 0.5: removed only when scoring at most half the container's score
    assert _keep([PERSON, LEGS], [0.9, 0.5], score_ratio=0.5) == [0, 1]
    assert _keep([PERSON, LEGS], [0.9, 0.4], score_ratio=0.5) == [0]


def test_a_removed_box_removes_nothing():
    a = [0, 0, 100, 100]
    b = [60, 0, 140, 100]  # half of its area in a
    c = [90, 10, 130, 90]  # wholly inside b, a quarter in a
    assert _keep([a, b, c], [0.9, 0.8, 0.7], containment=0.5) == [0, 2], "b is removed by a; c, inside b only, stays"


def test_ties_and_degenerate_inputs():
    assert _keep([PERSON, PERSON], [0.7, 0.7]) == [0], "an exact duplicate: the first of a tie is the container"
    assert _keep([], []) == []
    assert _keep([[5, 5, 5, 20], PERSON], [0.3, 0.9]) == [1, 0], "a zero-area box is contained in nothing"
    assert suppress_contained(torch.tensor([PERSON, TORSO], dtype=torch.float32), torch.tensor([0.9, 0.6])).dtype \
        == np.int64
    for kw in ({"containment": 0.0}, {"containment": 1.5}, {"score_ratio": 0.0}, {"score_ratio": float("nan")}):
        with pytest.raises(ValueError):
            _keep([PERSON], [0.9], **kw)
    with pytest.raises(ValueError, match="shape"):
        _keep([PERSON, TORSO], [0.9])
    with pytest.raises(ValueError, match="shape"):
        suppress_contained(np.zeros((2, 5)), np.zeros(2))


def test_detections_method_keeps_order_dtype_and_time():
    dets = Detections(np.array([PERSON, NEIGHBOUR, TORSO], dtype=np.float32),
                      np.array([0.9, 0.8, 0.6], dtype=np.float32), seconds=0.25)
    kept = dets.suppress_contained(0.8)
    np.testing.assert_array_equal(kept.boxes, np.array([PERSON, NEIGHBOUR], dtype=np.float32))
    assert kept.boxes.dtype == np.float32 and kept.scores.dtype == np.float32 and kept.seconds == 0.25
    assert len(dets) == 3, "the input is not changed"


class _FixedModel(nn.Module):
    """Returns the same torchvision-style prediction for any image."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return [{"boxes": torch.tensor([PERSON, NEIGHBOUR, TORSO, LEGS], dtype=torch.float32),
                 "scores": torch.tensor([0.95, 0.9, 0.7, 0.3]),
                 "labels": torch.tensor([1, 1, 1, 1])} for _ in images]


def test_detect_default_off_is_identical_and_the_option_suppresses():
    model = _FixedModel().eval()
    image = np.zeros((200, 200, 3), dtype=np.uint8)
    (plain,) = detect(model, [image])
    (explicit_off,) = detect(model, [image], suppress_contained=None)
    reference = Detections.from_prediction(model([image])[0])
    for dets in (plain, explicit_off):
        np.testing.assert_array_equal(dets.boxes, reference.boxes)
        np.testing.assert_array_equal(dets.scores, reference.scores)
    assert len(plain) == 4
    (suppressed,) = detect(model, [image], suppress_contained=0.8)
    np.testing.assert_array_equal(suppressed.boxes, np.array([PERSON, NEIGHBOUR], dtype=np.float32))
    with pytest.raises(ValueError, match="suppress_contained"):
        detect(model, [image], suppress_contained=2.0)


def test_predict_suppress_contained_option(predict_world, tmp_path, capsys):
    common = predict_world.common
    assert main([*common, "--out", str(tmp_path / "plain.json")]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "sup.json"), "--suppress-contained", "0.5"]) == 0
    message = capsys.readouterr().out
    plain = json.loads((tmp_path / "plain.json").read_text())
    sup = json.loads((tmp_path / "sup.json").read_text())
    removed = len(plain) - len(sup)
    assert f"{removed} contained boxes suppressed at --suppress-contained 0.5" in message
    assert all(d in plain for d in sup), "suppression only removes detections"
    for image_id in {d["image_id"] for d in plain}:  # the same as applying it to the saved detections
        rows = [d for d in plain if d["image_id"] == image_id]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in rows)])
        keep = suppress_contained(boxes, np.array([d["score"] for d in rows]), containment=0.5)
        assert sorted(json.dumps(rows[k]) for k in keep) == sorted(
            json.dumps(d) for d in sup if d["image_id"] == image_id)
    for bad in ("0", "1.5", "nan"):
        assert main([*common, "--out", str(tmp_path / "x.json"), "--suppress-contained", bad]) == 2
        assert "--suppress-contained must be a share in (0, 1]" in capsys.readouterr().err
