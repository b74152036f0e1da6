"""RepGT on the box head (hkd.train.repulsion): the loss, its gradient, the training forward and the config."""
import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from hkd.models.presets import build_detector
from hkd.train.config import ConfigError, config_from_dict
from hkd.train.engine import train
from hkd.train.repulsion import RepulsionTraining, rep_gt_loss, smooth_ln
from hkd.train.run_folder import RunFolder

CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))  # torchvision's box head weights
LEFT = [0.0, 0.0, 40.0, 100.0]
RIGHT = [30.0, 0.0, 70.0, 100.0]  # a quarter of its area overlaps LEFT


def test_smooth_ln_is_minus_log_then_linear_and_continuous():
    x = torch.tensor([0.0, 0.3, 0.5, 0.8, 1.0])
    y = smooth_ln(x, 0.5)
    assert y[0] == 0
    assert y[1].item() == pytest.approx(-math.log(0.7))
    assert y[2].item() == pytest.approx(-math.log(0.5))
    assert y[3].item() == pytest.approx(0.3 / 0.5 - math.log(0.5))
    assert torch.isfinite(y).all(), "a box wholly over the other person has a finite loss"
    with pytest.raises(ValueError, match="sigma"):
        smooth_ln(x, 1.0)


def _loss(proposal, deltas, gt, matched=0, label=1):
    props = [torch.tensor([proposal])]
    regression = torch.zeros(1, 8)
    regression[0, 4 * label:4 * label + 4] = deltas
    regression.requires_grad_(True)
    loss = rep_gt_loss(props, [torch.tensor([matched])], [torch.tensor([label])], regression,
                       [torch.tensor(gt)], CODER, sigma=0.5)
    return loss, regression


def test_a_box_over_its_neighbour_is_penalised_by_the_share_of_the_neighbour_it_covers():
    # a proposal on LEFT, matched to LEFT, decoded as itself (zero deltas): it covers 10 × 100 of RIGHT's 4000
    loss, _ = _loss(LEFT, torch.zeros(4), [LEFT, RIGHT])
    assert loss.item() == pytest.approx(-math.log(1 - 0.25))
    # the same box with nobody beside it, or matched to the other one (then LEFT is the neighbour: IoG 0.25 too)
    assert _loss(LEFT, torch.zeros(4), [LEFT, [200.0, 0.0, 240.0, 100.0]])[0].item() == 0
    assert _loss(LEFT, torch.zeros(4), [LEFT])[0].item() == 0
    assert _loss(RIGHT, torch.zeros(4), [LEFT, RIGHT], matched=1)[0].item() == pytest.approx(-math.log(0.75))
    # a negative proposal takes no part
    assert _loss(LEFT, torch.zeros(4), [LEFT, RIGHT], label=0)[0].item() == 0


def test_the_gradient_pushes_the_box_away_from_the_neighbour():
    loss, regression = _loss(LEFT, torch.zeros(4), [LEFT, RIGHT])
    loss.backward()
    dx = regression.grad[0, 4]  # the x-centre delta of class 1
    assert dx > 0, "descending the loss moves the box's centre left, away from RIGHT"
    assert regression.grad[0, :4].abs().sum() == 0, "the background class's deltas are not used"


def test_averaged_over_every_positive_of_the_batch():
    props = [torch.tensor([LEFT, [200.0, 0.0, 240.0, 100.0]]), torch.tensor([LEFT])]
    matched = [torch.tensor([0, 2]), torch.tensor([0])]
    labels = [torch.tensor([1, 1]), torch.tensor([1])]
    gt = [torch.tensor([LEFT, RIGHT, [200.0, 0.0, 240.0, 100.0]]), torch.tensor([LEFT, RIGHT])]
    loss = rep_gt_loss(props, matched, labels, torch.zeros(3, 8), gt, CODER, sigma=0.5)
    assert loss.item() == pytest.approx(2 * -math.log(0.75) / 3)


def test_the_training_forward_adds_the_weighted_term_to_the_detectors_own_losses():
    torch.manual_seed(0)
    model = build_detector("hkd_frcnn_lite0.student", pretrained_backbone=False, min_size=96, max_size=128).train()
    images = [torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[20.0, 10.0, 50.0, 90.0], [40.0, 12.0, 70.0, 92.0]]),
                "labels": torch.tensor([1, 1])}]
    torch.manual_seed(1)
    own = model(images, targets)
    torch.manual_seed(1)
    losses = RepulsionTraining(model, 0.5)(images, targets)
    assert set(losses) == set(own) | {"loss_rep_gt"}
    for key in own:  # the written-out forward is torchvision's own
        torch.testing.assert_close(losses[key], own[key])
    assert losses["loss_rep_gt"] > 0, "the two people overlap: proposals on one cover the other"
    assert sorted(n for n, _ in RepulsionTraining(model, 0.5).named_parameters()) == \
        sorted(f"model.{n}" for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="two-stage"):
        RepulsionTraining(torch.nn.Linear(2, 2), 0.5)


def test_config_accepts_it_for_hkd_train_only(tiny_dataset, tiny_config):
    base = tiny_config(tiny_dataset)
    cfg = config_from_dict({**base, "train": {**base["train"], "repulsion": 0.5}})
    assert cfg.train.repulsion == 0.5 and cfg.train.repulsion_sigma == 0.5
    for train_keys, words in [({"repulsion": -1}, "train.repulsion"), ({"repulsion_sigma": 1.0}, "train.repulsion_sigma"),
                              ({"repulsion": float("nan")}, "train.repulsion")]:
        with pytest.raises(ConfigError, match=words):
            config_from_dict({**base, "train": {**base["train"], **train_keys}})
    with pytest.raises(ConfigError, match="distillation run does not take it"):
        config_from_dict({**base, "train": {**base["train"], "repulsion": 0.5}, "teacher": "t.safetensors"})
    single = {**base, "model": {**base["model"], "preset": "hkd_retina_lite0.student"}}
    with pytest.raises(ConfigError, match="two-stage"):
        config_from_dict({**single, "train": {**single["train"], "repulsion": 0.5}})


def test_a_run_with_repulsion_logs_the_term_and_saves_the_plain_model(tiny_dataset, tiny_config, tmp_path):
    cfg = tiny_config(tiny_dataset, repulsion=0.5)
    cfg["data"]["val"] = None
    status = train(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert status["state"] == "succeeded"
    run = RunFolder(tmp_path / "run")
    logged = [m for m in run.read_metrics() if "loss" in m]
    assert all("det/loss_rep_gt" in m for m in logged)
    from hkd.models.checkpoint import load_checkpoint

    final = load_checkpoint(run.checkpoint("final"))
    assert final.meta.train_config["train"]["repulsion"] == 0.5
    assert not any(k.startswith("model.") for k in final.model.state_dict()), "the detector's own keys"
