"""Model cost: parameters and FLOPs per hierarchy, CPU latency.

Hierarchies are mapped from module paths: ``backbone.body`` → backbone,
``backbone.fpn`` → neck, ``rpn`` → rpn, ``roi_heads`` → roi, ``head`` →
head (single-stage), ``transform`` → transform.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_PREFIXES = (
    ("backbone.body", "backbone"),
    ("backbone.fpn", "neck"),
    ("rpn", "rpn"),
    ("roi_heads", "roi"),
    ("head", "head"),
    ("anchor_generator", "head"),
    ("transform", "transform"),
)


def hierarchy_of(module_path: str) -> str:
    for prefix, name in _PREFIXES:
        if module_path == prefix or module_path.startswith(prefix + "."):
            return name
    return "other"


def params_by_hierarchy(model: nn.Module) -> dict[str, int]:
    """Parameter count per hierarchy plus ``total``."""
    out: dict[str, int] = {}
    for name, param in model.named_parameters():
        key = hierarchy_of(name.rsplit(".", 1)[0])
        out[key] = out.get(key, 0) + param.numel()
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


def _dummy(width: int, height: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(3, height, width, generator=gen)]


def flops_by_hierarchy(model: nn.Module, width: int = 640, height: int = 480) -> dict[str, int]:
    """FLOPs (multiply-add = 2) of one eval forward at ``width``×``height``, per hierarchy and ``total``.

    Counted by ``torch.utils.flop_counter`` (convolutions and matmuls). The ROI
    head's share depends on how many proposals survive, so a random image is a
    worst-ish case (the RPN keeps its full post-NMS budget).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with torch.inference_mode(), counter:
            model(_dummy(width, height))
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values())
    out: dict[str, int] = {}
    # keys look like "FasterRCNN.backbone.body"; count each hierarchy at its own root module
    roots = {prefix: name for prefix, name in _PREFIXES}
    for key, per_op in counts.items():
        path = key.split(".", 1)[1] if "." in key else ""
        if path in roots:
            out[roots[path]] = out.get(roots[path], 0) + sum(per_op.values())
    out["total"] = total
    return out


@contextmanager
def num_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def cpu_latency(
    model: nn.Module, width: int = 640, height: int = 480, *, threads: int | None = 2, warmup: int = 2, runs: int = 7
) -> dict[str, float]:
    """Median / min wall time (seconds) of one eval forward on the CPU."""
    was_training = model.training
    model.eval()
    images = _dummy(width, height)
    times = []
    try:
        with num_threads(threads), torch.inference_mode():
            for _ in range(warmup):
                model(images)
            for _ in range(runs):
                start = time.perf_counter()
                model(images)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs, "threads": threads or torch.get_num_threads()}
