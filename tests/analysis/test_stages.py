"""The staged forward pass gives the model's own detections and honest NMS bookkeeping."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from hkd.analysis.stages import SINGLE_STAGE, TWO_STAGE, detector_family, staged_forward
from hkd.models.inference import image_tensor
from hkd.models.presets import get_preset


def _model_output(model, image):
    with torch.inference_mode():
        (pred,) = model([image_tensor(image)])
    keep = pred["labels"] == 1
    return pred["boxes"][keep].numpy(), pred["scores"][keep].numpy()


def test_final_detections_equal_the_models_own_on_the_shipped_student(shipped_student, synth_split, loader):
    for record in synth_split["gt"]["images"][:2]:
        image = loader(record)
        staged = staged_forward(shipped_student, image)
        boxes, scores = _model_output(shipped_student, image)
        assert staged.family == TWO_STAGE
        assert len(staged.boxes) == len(boxes) > 0
        np.testing.assert_allclose(staged.boxes, boxes, atol=1e-3)
        np.testing.assert_allclose(staged.scores, scores, atol=1e-6)
        # proposals come ranked by objectness, one head score and one regressed box each
        assert len(staged.proposals) == len(staged.objectness) == len(staged.proposal_score) > 0
        assert np.all(np.diff(staged.objectness) <= 1e-6)


def test_every_removed_candidate_names_a_kept_higher_scoring_suppressor(shipped_student, synth_split, loader):
    staged = staged_forward(shipped_student, loader(synth_split["gt"]["images"][0]))
    removed = np.flatnonzero(~staged.kept)
    assert len(removed) > 0
    for j in removed:
        sup = staged.suppressor[j]
        assert sup >= 0 and staged.kept[sup] and sup < j
        assert staged.candidate_score[sup] >= staged.candidate_score[j]
        iou = box_iou(torch.from_numpy(staged.candidates[[sup]]), torch.from_numpy(staged.candidates[[j]]))
        assert float(iou) > staged.nms_iou
        # and no kept box scoring higher than the suppressor overlaps it that much
        earlier = [k for k in np.flatnonzero(staged.kept) if k < sup]
        if earlier:
            ious = box_iou(torch.from_numpy(staged.candidates[earlier]), torch.from_numpy(staged.candidates[[j]]))
            assert float(ious.max()) <= staged.nms_iou


@pytest.mark.parametrize("preset", ["hkd_retina_lite0.student"])
def test_single_stage_final_detections_equal_the_models_own(preset, make_scene=None):
    torch.manual_seed(0)
    spec = dataclasses.replace(get_preset(preset), min_size=128, max_size=160)
    model = spec.build().eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (128, 160, 3), dtype=np.uint8)
    staged = staged_forward(model, image)
    boxes, scores = _model_output(model, image)
    assert staged.family == SINGLE_STAGE and detector_family(model) == SINGLE_STAGE
    assert len(staged.proposals) == 0
    assert len(staged.boxes) == len(boxes)
    np.testing.assert_allclose(staged.boxes, boxes, atol=1e-3)
    np.testing.assert_allclose(staged.scores, scores, atol=1e-6)


def test_other_detectors_and_train_mode_are_refused(shipped_student):
    with pytest.raises(TypeError, match="FasterRCNN and RetinaNet"):
        detector_family(torch.nn.Linear(2, 2))
    model = dataclasses.replace(get_preset("hkd_frcnn_lite0.student"), min_size=96, max_size=128).build()
    with pytest.raises(RuntimeError, match="eval mode"):
        staged_forward(model.train(), np.zeros((96, 128, 3), np.uint8))
