"""``hkd train-aux``'s training loop: fit a teacher's HSAKD auxiliary heads (:mod:`hkd.distill.aux`).

The teacher is frozen; the heads (:class:`~hkd.distill.aux.AuxHeads`) learn the joint
(class × rotation) label of region crops of the dataset (:func:`~hkd.distill.aux.sample_crops`).
The heads, their losses, their checkpoint format and their use in distillation live in
:mod:`hkd.distill.aux` (which imports nothing from here: the train wing stands above it).

    fitted = train_teacher_aux(teacher, spec, dataset, steps=200)   # .heads, .metrics, .probe
    save_aux_heads("teacher_aux.safetensors", fitted.heads, AuxMeta(...), fitted.probe)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from hkd.distill.aux import (
    NUM_JOINT,
    AuxHeads,
    accuracy,
    aux_ce,
    check_levels,
    default_levels,
    level_features,
    model_inputs,
    sample_crops,
    teacher_probe,
)
from hkd.models.hierarchy import HierarchySpec

__all__ = ["TeacherAux", "train_teacher_aux"]


@dataclass
class TeacherAux:
    """What :func:`train_teacher_aux` returns: the fitted heads (eval, on the teacher's device),
    their metrics and the teacher's probe features."""

    heads: AuxHeads
    metrics: dict
    probe: dict[str, Tensor]


def train_teacher_aux(
    teacher: nn.Module,
    spec: HierarchySpec,
    dataset: Sequence[tuple[Tensor, Mapping[str, Any]]],
    *,
    levels: Sequence[str] | None = None,
    steps: int = 200,
    seed: int = 0,
    crop: int = 64,
    boxes: int = 8,
    batch_size: int = 4,
    lr: float = 1e-3,
    hidden: int = 128,
    grid: int = 2,
    on_step: Callable[[int, dict], None] | None = None,
) -> TeacherAux:
    """Fit the teacher's aux heads with the teacher frozen (put in eval mode, ``requires_grad_(False)``).

    Args:
        teacher: a torchvision-style detector (``transform``, ``backbone``).
        spec: its hierarchy spec.
        dataset: ``dataset[i] = (image (3, H, W) float in [0, 1], {"boxes": (G, 4) xyxy, "ignore": (G,) bool
            (optional)})``, e.g. :func:`hkd.data.datasets.open_dataset`.
        levels: feature levels (default :func:`default_levels`).
        steps, batch_size: AdamW steps on ``batch_size`` random images each.
        seed: the image draws, the crops and the heads' initialisation: same seed, same heads (on the CPU).
        crop, boxes: crop side in pixels; ground-truth and background boxes per image.
        on_step: called ``on_step(step, {"loss": …, "accuracy": …})`` after every step.
    Returns:
        :class:`TeacherAux`; ``metrics`` holds per level the CE loss and joint accuracy over the last
        tenth of the steps (at least one), their mean, and the step and crop counts.

    Raises:
        ConfigError: a level that is not a feature level of the teacher.
        ValueError: an empty dataset, or bad numbers.
    """
    levels = check_levels(spec, levels if levels is not None else default_levels(spec), what="levels")
    if len(dataset) == 0:
        raise ValueError("the dataset has no images")
    for name, value, low in (("steps", steps, 1), ("crop", crop, 8), ("boxes", boxes, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    teacher.eval().requires_grad_(False)
    device = next(teacher.parameters()).device
    heads = AuxHeads(spec, levels, hidden=hidden, grid=grid, seed=seed).to(device)
    heads.train()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    window = max(1, steps // 10)
    tail: dict[str, list[tuple[float, float]]] = {name: [] for name in levels}
    crops_seen = 0
    for step in range(steps):
        indices = torch.randint(len(dataset), (batch_size,), generator=generator).tolist()
        images, gt, ignore = [], [], []
        for index in indices:
            image, target = dataset[index]
            keep = ~target["ignore"].bool() if "ignore" in target else torch.ones(len(target["boxes"]), dtype=torch.bool)
            images.append(image)
            gt.append(target["boxes"][keep])
            ignore.append(target["boxes"][~keep])
        crops, labels = sample_crops(images, gt, crop=crop, count=boxes, generator=generator, ignore=ignore)
        labels = labels.to(device)
        crops_seen += len(labels)
        with torch.no_grad():
            features = level_features(teacher, spec, levels, model_inputs(teacher, crops))
        logits = heads({name: value.float() for name, value in features.items()})
        losses = {name: aux_ce(logits[name], labels) for name in levels}
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        record = {name: (float(losses[name].detach()), accuracy(logits[name].detach(), labels)) for name in levels}
        if step >= steps - window:
            for name in levels:
                tail[name].append(record[name])
        if on_step is not None:
            on_step(step, {"loss": sum(v[0] for v in record.values()) / len(levels),
                           "accuracy": sum(v[1] for v in record.values()) / len(levels)})
    heads.eval()
    per_level = {name: {"loss": round(sum(v[0] for v in tail[name]) / len(tail[name]), 4),
                        "accuracy": round(sum(v[1] for v in tail[name]) / len(tail[name]), 4)} for name in levels}
    metrics = {
        "levels": per_level,
        "accuracy": round(sum(v["accuracy"] for v in per_level.values()) / len(levels), 4),
        "loss": round(sum(v["loss"] for v in per_level.values()) / len(levels), 4),
        "chance_accuracy": round(1 / NUM_JOINT, 4),
        "window_steps": window,
        "steps": steps,
        "crops_per_step": round(crops_seen / steps, 1),
    }
    return TeacherAux(heads, metrics, teacher_probe(teacher, spec, levels, crop))
