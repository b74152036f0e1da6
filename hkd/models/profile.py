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


def latency(
    model: nn.Module, width: int = 640, height: int = 480, *, device: torch.device | str = "cpu",
    threads: int | None = 2, warmup: int = 2, runs: int = 7,
) -> dict[str, float]:
    """Median / min / max wall time (seconds) of one eval forward on ``device``.

    The model and the image are moved to ``device`` (the model is moved back
    afterwards); on a GPU every run ends with ``torch.cuda.synchronize`` so the
    time is the forward's, not its launch's. ``threads`` sets torch's CPU threads
    (on a GPU they only run the host side). The result also names the device.
    """
    device = torch.device(device)
    was_training = model.training
    first = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    home = first.device if first is not None else torch.device("cpu")
    model.eval()
    if device != home:
        model.to(device)
    images = [image.to(device) for image in _dummy(width, height)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    try:
        with num_threads(threads), torch.inference_mode():
            for _ in range(warmup):
                model(images)
            sync()
            for _ in range(runs):
                start = time.perf_counter()
                model(images)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
        if device != home:
            model.to(home)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": runs,
            "threads": threads or torch.get_num_threads(), "device": str(device)}


def cpu_latency(
    model: nn.Module, width: int = 640, height: int = 480, *, threads: int | None = 2, warmup: int = 2, runs: int = 7
) -> dict[str, float]:
    """:func:`latency` on the CPU (``model`` may also be any callable with ``eval``/``train``, e.g. an
    onnxruntime detector)."""
    return latency(model, width, height, device="cpu", threads=threads, warmup=warmup, runs=runs)
