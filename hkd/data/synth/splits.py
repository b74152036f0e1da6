"""The SynthPed splits and their roles — the one place their sizes and seeds are written.

* ``train`` (and ``train_small``, its first 400 images: image *i* depends only on (seed, *i*)) —
  what models learn from;
* ``tune`` — for choosing: configs, thresholds, checkpoints;
* ``val`` — for confirming a choice made on tune;
* ``test`` — reported once per shipped model, never used to choose anything.

Generate one with ``hkd synth --out data/synthped/<name> --num <images> --seed <seed>``
(:func:`command`).
"""
from __future__ import annotations

from typing import NamedTuple


class Split(NamedTuple):
    images: int
    seed: int
    role: str


SPLITS: dict[str, Split] = {
    "train": Split(3000, 0, "training"),
    "train_small": Split(400, 0, "training (the quick demo's: the first 400 images of train)"),
    "val": Split(500, 1000, "confirming a choice made on tune"),
    "tune": Split(200, 2000, "choosing configs and thresholds"),
    "test": Split(2000, 3000, "reported once per shipped model; never used to choose"),
}


def command(name: str, root: str = "data/synthped") -> str:
    """The ``hkd synth`` command line that writes split ``name``."""
    split = SPLITS[name]
    return f"hkd synth --out {root}/{name} --num {split.images} --seed {split.seed}"
