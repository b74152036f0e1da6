"""The training input pipeline: a DataLoader whose batches are fixed by ``(seed, step)``.

    loader = train_loader(dataset, cfg.data.augment, cfg.train, start=start, rank=rank, world=world,
                          pin_memory=device.type == "cuda")
    for step, (images, targets) in zip(range(start, cfg.train.steps), loader): ...

- Order: :class:`StepBatchSampler` yields, for every step from ``start`` to the end,
  ``batch_indices(step, …)`` — this rank's share of an endless stream of per-epoch
  permutations. It is the distributed sampler too: under torchrun every rank takes
  its own ``batch_size`` consecutive stream positions of the step, without overlap.
  Resuming at step ``s`` starts the sampler at ``s``: nothing about the order is
  state to save.
- Augmentation: every sample's flip / scale / colour draws come from a generator
  seeded by ``(seed, stream position)`` in the process that loads it (the training
  process or a worker), never from the global RNG, so ``workers: 0`` and
  ``workers: 4`` give the same images, and a run on 2 processes × batch B sees the
  same augmented images as one process × batch 2B.
- Workers (``train.workers``) stay alive for the whole run: the loop takes one
  iterator over all its steps, so there is no epoch boundary at which they would
  restart (what ``persistent_workers`` saves an epoch loop), and dropping that
  iterator stops them. Batches come from pinned memory on CUDA only.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hkd.data.datasets import collate_detection


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def batch_positions(step: int, *, batch_size: int, rank: int, world: int) -> list[int]:
    """Positions in the sample stream of ``rank``'s share of global ``step``."""
    first = (step * world + rank) * batch_size
    return list(range(first, first + batch_size))


def batch_indices(step: int, *, n: int, batch_size: int, rank: int, world: int, seed: int) -> list[int]:
    """Dataset indices of ``rank``'s share of global ``step``.

    An endless stream of per-epoch permutations (seeded by ``seed`` and the
    epoch); each step takes ``batch_size × world`` consecutive positions.
    """
    out = []
    for pos in batch_positions(step, batch_size=batch_size, rank=rank, world=world):
        epoch, offset = divmod(pos, n)
        out.append(int(_permutation(seed, epoch, n)[offset]))
    return out


def sample_seed(seed: int, position: int) -> int:
    """Seed of the augmentation draws of the sample at ``position`` of the stream."""
    return (seed * 0x9E3779B97F4A7C15 + position * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 63)


def detection_targets(target: dict) -> dict:
    """Only what torchvision's detection losses take: non-ignored boxes, label 1."""
    keep = ~target["ignore"].bool()
    return {"boxes": target["boxes"][keep].float(), "labels": target["labels"][keep].long()}


class StepBatchSampler(Sampler):
    """For each step in ``[start, total)``: ``[(stream position, dataset index), …]`` of ``rank``'s share."""

    def __init__(self, n: int, *, batch_size: int, rank: int, world: int, seed: int, start: int, total: int) -> None:
        if n <= 0:
            raise ValueError("the training set is empty")
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.start, self.total = start, total

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            positions = batch_positions(step, batch_size=self.batch_size, rank=self.rank, world=self.world)
            indices = batch_indices(step, n=self.n, batch_size=self.batch_size, rank=self.rank,
                                    world=self.world, seed=self.seed)
            yield list(zip(positions, indices))


class SeededSamples(Dataset):
    """``dataset[index]`` augmented with draws seeded by ``(seed, position)``; keys are ``(position, index)``.

    ``dataset`` must come without transforms; the training transforms are built in
    each process on first use (a worker gets its own generator, nothing is pickled
    but the settings).

    Returns ``(image (3, H, W) float in [0, 1], {"boxes": (G, 4) xyxy float, "labels": (G,) int64})``
    with ignore regions removed.
    """

    def __init__(self, dataset: Dataset, *, seed: int, flip: float, scale: tuple[float, float], color: float) -> None:
        self.dataset = dataset
        self.seed = seed
        self.augment = {"flip_p": flip, "scale_range": tuple(scale), "color": color}
        self._generator: torch.Generator | None = None
        self._transforms = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_generator": None, "_transforms": None}

    def __getitem__(self, key: tuple[int, int]):
        from hkd.data.transforms import detection_train_transforms

        position, index = key
        if self._transforms is None:
            self._generator = torch.Generator()
            self._transforms = detection_train_transforms(generator=self._generator, **self.augment)
        self._generator.manual_seed(sample_seed(self.seed, position))
        with _one_thread():
            image, target = self._transforms(*self.dataset[index])
        return image, detection_targets(target)


@contextlib.contextmanager
def _one_thread():
    """Augment on one thread, as a DataLoader worker does: a multi-threaded resize rounds
    a few pixels differently (1 ulp), and the batches must not depend on ``train.workers``."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def train_loader(dataset: Dataset, augment, train, *, start: int, rank: int, world: int,
                 pin_memory: bool = False) -> DataLoader:
    """The DataLoader of a run's steps ``start … train.steps - 1`` (one batch per step).

    Args:
        dataset: the training set, opened without transforms.
        augment: ``cfg.data.augment`` (flip, scale, color).
        train: ``cfg.train`` (seed, batch_size, steps, workers).
        pin_memory: page-locked batches for asynchronous copies to a GPU.
    """
    samples = SeededSamples(dataset, seed=train.seed, flip=augment.flip, scale=augment.scale, color=augment.color)
    sampler = StepBatchSampler(len(dataset), batch_size=train.batch_size, rank=rank, world=world, seed=train.seed,
                               start=start, total=train.steps)
    workers = train.workers
    return DataLoader(
        samples, batch_sampler=sampler, collate_fn=collate_detection, num_workers=workers,
        pin_memory=pin_memory, prefetch_factor=2 if workers else None,
        # the loader draws its workers' base seed from this, not from the global RNG
        generator=torch.Generator().manual_seed(train.seed),
    )
