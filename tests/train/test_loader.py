"""The DataLoader pipeline: step-indexed order, per-sample seeded augmentation, workers change nothing."""
import pytest
import torch

from hkd.data.datasets import open_dataset
from hkd.train.config import AugmentConfig, TrainConfig, config_from_dict
from hkd.train.data import SeededSamples, StepBatchSampler, batch_indices, train_loader
from hkd.train.engine import train
from hkd.train.run_folder import RunFolder


def _samples(dataset, seed=0):
    return SeededSamples(dataset, seed=seed, flip=0.5, scale=(0.5, 1.5), color=0.2)


def test_sampler_yields_the_seeded_order_and_resumes_mid_run():
    sampler = StepBatchSampler(7, batch_size=3, rank=1, world=2, seed=5, start=0, total=6)
    batches = list(sampler)
    assert len(sampler) == 6 == len(batches)
    for step, batch in enumerate(batches):
        assert [index for _, index in batch] == batch_indices(step, n=7, batch_size=3, rank=1, world=2, seed=5)
        assert [pos for pos, _ in batch] == [(step * 2 + 1) * 3 + j for j in range(3)]
    resumed = StepBatchSampler(7, batch_size=3, rank=1, world=2, seed=5, start=4, total=6)
    assert list(resumed) == batches[4:]  # nothing about the order is state


def test_augmentation_depends_on_the_stream_position_only(tiny_dataset):
    samples = _samples(open_dataset(tiny_dataset))
    first = samples[(3, 1)]
    samples[(8, 2)]  # another sample in between must not shift the draws
    again = samples[(3, 1)]
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)
    torch.testing.assert_close(first[1]["boxes"], again[1]["boxes"], rtol=0, atol=0)
    # the same image at other positions is augmented differently (scale 0.5–1.5 changes its size)
    shapes = {tuple(samples[(pos, 1)][0].shape) for pos in range(6)}
    assert len(shapes) > 1
    other_seed = _samples(open_dataset(tiny_dataset), seed=1)
    assert {tuple(other_seed[(pos, 1)][0].shape) for pos in range(6)} != shapes
    assert set(first[1]) == {"boxes", "labels"}  # detection targets, ignore regions dropped


def test_workers_give_the_same_batches_as_the_main_process(tiny_dataset):
    dataset = open_dataset(tiny_dataset)
    augment = AugmentConfig(flip=0.5, scale=(0.75, 1.25), color=0.2)
    plain = list(train_loader(dataset, augment, TrainConfig(steps=5, batch_size=2, workers=0, seed=3),
                              start=0, rank=0, world=1))
    workers = list(train_loader(dataset, augment, TrainConfig(steps=5, batch_size=2, workers=2, seed=3),
                                start=0, rank=0, world=1))
    assert len(plain) == len(workers) == 5
    for (images_a, targets_a), (images_b, targets_b) in zip(plain, workers):
        for a, b in zip(images_a, images_b):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(targets_a, targets_b):
            torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)


def test_one_process_with_batch_2b_sees_the_images_of_two_ranks_with_batch_b(tiny_dataset):
    dataset = open_dataset(tiny_dataset)
    augment = AugmentConfig()
    single = list(train_loader(dataset, augment, TrainConfig(steps=3, batch_size=2), start=0, rank=0, world=1))
    ranks = [list(train_loader(dataset, augment, TrainConfig(steps=3, batch_size=1), start=0, rank=r, world=2))
             for r in (0, 1)]
    for step in range(3):
        both = ranks[0][step][0] + ranks[1][step][0]
        for a, b in zip(single[step][0], both):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_training_with_two_workers_gives_the_same_losses(tiny_dataset, tiny_config, tmp_path):
    losses = {}
    for workers in (0, 2):
        cfg = tiny_config(tiny_dataset, steps=3, checkpoint_every=0, workers=workers, device="cpu")
        cfg["data"]["val"] = None
        train(config_from_dict(cfg), tmp_path / f"w{workers}", progress=False)
        losses[workers] = [{k: v for k, v in m.items() if k not in ("time", "images_per_s")}
                           for m in RunFolder(tmp_path / f"w{workers}").read_metrics()]
    assert [m["step"] for m in losses[0]] == [1, 2, 3]
    assert losses[2] == losses[0]


def test_more_workers_than_cores_is_a_config_error(tiny_dataset, tiny_config):
    from hkd.train.config import ConfigError, cpu_cores

    with pytest.raises(ConfigError, match=rf"train.workers: {cpu_cores() + 1} is not between 0 .* and {cpu_cores()}"):
        config_from_dict(tiny_config(tiny_dataset, workers=cpu_cores() + 1))
    with pytest.raises(ConfigError, match="train.workers: -1"):
        config_from_dict(tiny_config(tiny_dataset, workers=-1))
