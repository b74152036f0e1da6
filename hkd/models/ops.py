"""Tensor maths that both the distillation losses and the visualisation use, so neither imports the other.

* :func:`attention_map` — the spatial attention of a feature map (Zagoruyko &
  Komodakis): the attention-transfer loss compares these, and the CAM,
  similarity and divergence views show the same map.
* :func:`lstsq_moments` / :func:`ridge_solve` — the ridge least-squares map
  from a student's channels to a teacher's (a 1×1 conv or linear layer with
  bias): the distiller's adapters fit it on running moments of recent batches,
  the Features page and the divergence views on one image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_map", "lstsq_moments", "ridge_solve"]


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention of a feature map (Zagoruyko & Komodakis).

    ``mean_c |f|^p``, flattened and L2-normalised per image, so maps with any
    number of channels can be compared.

    Args:
        features: (N, C, H, W).
        p: exponent (2 in the paper).
    Returns:
        (N, H·W), each row of unit L2 norm (or all zeros for an all-zero map).
    """
    if features.dim() != 4:
        raise ValueError(f"attention_map expects (N, C, H, W), got shape {tuple(features.shape)}")
    att = features.abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(att, p=2.0, dim=1)


def lstsq_moments(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The sums ``x̃ᵀx̃`` (C_s + 1, C_s + 1) and ``x̃ᵀy`` (C_s + 1, C_t) in float64, ``x̃ = [x, 1]``.

    x: (rows, C_s) student values; y: (rows, C_t) teacher values at the same rows.
    Divide both by the row count for :func:`ridge_solve`.

    The products run as float32 matrix products (one batch's rows: 25k region cells
    × 64 student channels × 256 teacher channels for ``roi.features``, where float64
    products took 0.26 s of a 4.6 s CPU step) and are accumulated in float64; the
    column sums (the ones column) in float32 (torch sums pairwise), then widened: a
    float64 sum of a float32 tensor first copies all of it to float64. Float64
    inputs (one image's fit) stay float64 throughout.
    """
    if x.dtype != torch.float64 or y.dtype != torch.float64:
        x, y = x.float(), y.float()
    xx = x.new_empty(x.shape[1] + 1, x.shape[1] + 1, dtype=torch.float64)
    xy = x.new_empty(x.shape[1] + 1, y.shape[1], dtype=torch.float64)
    xx[:-1, :-1] = x.T @ x
    xx[-1, :-1] = xx[:-1, -1] = x.sum(dim=0).double()
    xx[-1, -1] = len(x)
    xy[:-1] = x.T @ y
    xy[-1] = y.sum(dim=0).double()
    return xx, xy


def ridge_solve(xx: Tensor, xy: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """The ridge least-squares map ``y ≈ W x + b`` from mean moments; returns (W (C_t, C_s), b (C_t,)) float64.

    ``xx``, ``xy``: :func:`lstsq_moments` divided by the row count (E[x̃x̃ᵀ], E[x̃yᵀ]).
    ``ridge`` is relative to the mean variance of the student's channels and
    penalises the weights only, not the bias, so it does not depend on the
    features' scale or offset.
    """
    gram = xx.double().clone()  # a copy: the caller's moments (running buffers) never hold the ridge
    mean = gram[-1, :-1]
    variance = (gram.diagonal()[:-1] - mean.pow(2)).clamp(min=0).mean().clamp(min=1e-12)
    gram.diagonal()[:-1] += ridge * variance
    solution = torch.linalg.solve(gram, xy.double())  # (C_s + 1, C_t)
    return solution[:-1].T, solution[-1]
