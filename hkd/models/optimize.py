"""Inference-time optimisation: frozen batch norms folded into their convs, channels-last memory.

The presets freeze every backbone batch norm (timm ``FrozenBatchNormAct2d``: a
fixed per-channel scale and shift, then the activation). At inference such a
norm is one more pass over memory per convolution; on a CPU the depthwise
stages of EfficientNet-Lite are memory-bound, so folding it into the conv
weights (``w' = w·s``, ``b' = b·s + t``) is a real saving, with outputs equal
up to float rounding.

    model = prepare_for_inference(model)          # in place: fold + channels_last + eval
    load_checkpoint(path, inference=True)         # the same, at load time

Channels-last (NHWC) memory lets oneDNN run the depthwise and 1×1 convs
without layout reorders; together with the folding it takes the default
default student 1.5× faster at 640×480 on two cores (docs/BENCHMARKS.md, both columns).

The prepared model has fewer state-dict keys: prepare copies that are only
run, never saved (the CLI's ``predict``/``info --bench``, the app, the
benchmarks). Hierarchy taps are unaffected: no level is a batch norm.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fuse_frozen_bn", "count_fusable", "prepare_for_inference"]


def _frozen_norms() -> tuple[type, ...]:
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNormAct2d, FrozenBatchNorm2d


def _scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = norm.running_var, norm.running_mean
    weight = norm.weight if norm.weight is not None else torch.ones_like(var)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(mean)
    scale = weight * (var + norm.eps).rsqrt()
    return scale, bias - mean * scale


def _activation(norm: nn.Module) -> nn.Module:
    """What remains of the norm after folding: its activation (and dropout), or identity."""
    act = getattr(norm, "act", None)
    drop = getattr(norm, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _foldable(norm: nn.Module) -> bool:
    """A norm with fixed statistics: a frozen one, or a ``BatchNorm2d`` in eval mode using running stats."""
    if isinstance(norm, _frozen_norms()):
        return True
    return (isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats
            and norm.running_mean is not None and type(norm).forward is nn.BatchNorm2d.forward)


def _pairs(module: nn.Module):
    """(conv name, norm name) of direct children where a foldable norm directly follows a conv."""
    previous: tuple[str, nn.Module] | None = None
    for name, child in module.named_children():
        if isinstance(child, nn.Identity):
            continue  # a no-op placeholder (timm's aa / se) does not separate a conv from its norm
        if _foldable(child) and previous is not None and isinstance(previous[1], nn.Conv2d):
            if previous[1].out_channels == child.running_mean.numel():
                yield previous[0], name
        previous = (name, child)


def count_fusable(model: nn.Module) -> int:
    """How many (conv, fixed-statistics norm) pairs :func:`fuse_frozen_bn` would fold."""
    return sum(1 for module in model.modules() for _ in _pairs(module))


@torch.no_grad()
def fuse_frozen_bn(model: nn.Module) -> nn.Module:
    """Fold every fixed-statistics norm that directly follows a conv (as a sibling) into it, in place.

    Folded: frozen norms (timm ``FrozenBatchNormAct2d``, torchvision
    ``FrozenBatchNorm2d``) and ``BatchNorm2d`` layers in eval mode (torchvision's
    detectors built without pretrained weights use those). A ``BatchNorm2d`` in
    training mode is left alone. Returns ``model``.
    """
    for module in list(model.modules()):
        for conv_name, norm_name in list(_pairs(module)):
            conv: nn.Conv2d = getattr(module, conv_name)
            norm = getattr(module, norm_name)
            scale, shift = _scale_shift(norm)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
            setattr(module, norm_name, _activation(norm))
    return model


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Eval mode, frozen norms folded (:func:`fuse_frozen_bn`), channels-last weights; in place.

    The model is meant to be run (detections, taps, CAMs), not trained or saved.
    Returns ``model``.
    """
    model.eval()
    fuse_frozen_bn(model)
    return model.to(memory_format=torch.channels_last)
