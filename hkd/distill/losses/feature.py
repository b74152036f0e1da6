"""Feature-imitation losses for backbone / FPN maps (and region features / embeddings).

* :func:`mse` — the plain hint loss (FitNets; Chen et al. 2017): mean squared
  difference between the adapted student map and the teacher map.
* :func:`masked_mse` — fine-grained feature imitation (Wang et al., CVPR 2019):
  the hint loss only at the locations near objects, given by :func:`imitation_mask`.
* :func:`nmse` / :func:`masked_nmse` — the same, divided by the teacher's mean
  energy, so that every level starts near 1 whatever the scale of its activations
  (raw teacher maps differ by two orders of magnitude between C3 and P6).
* :func:`attention` — attention transfer (Zagoruyko & Komodakis, ICLR 2017) on
  :func:`~hkd.models.ops.attention_map` (in :mod:`hkd.models.ops`, which the visualisation
  code shares).
* :func:`pearson` — PKD (Cao et al., NeurIPS 2022): the hint loss after each
  channel of both maps is standardised over its locations, i.e. one minus the
  Pearson correlation per channel; blind to a channel's scale and offset, which
  differ between detectors of unequal depth.
* :func:`decoupled_nmse` — decoupled foreground / background imitation in the
  spirit of FGD (Yang et al., CVPR 2022): the locations inside ground-truth boxes
  (each box weighted by the inverse of its area, so that small people count as
  much as large ones) and the rest, each relative to the teacher's energy there,
  with their own weights.

Every loss takes the student tensor first and the teacher tensor second, returns
a scalar, is exactly 0 when both are equal and never sends a gradient into the
teacher (its input is detached).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from hkd.models.ops import attention_map  # noqa: F401  (its home is below viz and distill; re-exported)


def mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Plain hint loss: ``mean((student - teacher)²)`` over every element.

    Args:
        student: (N, C, H, W) adapted student map — or (K, C, 7, 7) region
            features, or (K, D) embeddings; any shape equal to the teacher's.
        teacher: the teacher tensor, same shape.
    Returns:
        scalar.
    """
    _same_shape(student, teacher, "mse")
    return F.mse_loss(student, teacher.detach(), reduction="mean")


def masked_mse(
    student: Tensor,
    teacher: Tensor,
    *,
    gt_boxes: list[Tensor],
    cell_anchors: Tensor,
    stride: tuple[int, int],
    psi: float = 0.5,
) -> Tensor:
    """Fine-grained imitation (Wang et al., CVPR 2019): squared difference near objects only.

    The locations come from :func:`imitation_mask` (anchors with IoU > ``psi`` ×
    the best IoU of some ground-truth box). Normalised per imitated element,
    ``Σ mask·(s - t)² / (C · Σ mask)``, so that its scale (and its weight in a
    config) is comparable to :func:`mse`; Wang et al. divide by ``2·Σ mask``
    only and use a weight of 0.01 instead. No object in the batch gives 0.

    Args:
        student: (N, C, H, W) adapted student map.
        teacher: (N, C, H, W) teacher map.
        gt_boxes: per image, (G_i, 4) xyxy boxes in the transformed batch's coordinates.
        cell_anchors: (A, 4) zero-centred anchors of one location at this map's scale.
        stride: (sy, sx) input pixels per cell of this map.
        psi: fraction of each box's best anchor IoU above which a location is imitated.
    Returns:
        scalar.
    """
    mask = _checked_mask("masked_mse", student, teacher, gt_boxes, cell_anchors, stride, psi)
    return masked_squared_error(student, teacher, mask)


def _checked_mask(name: str, student: Tensor, teacher: Tensor, gt_boxes: list[Tensor], cell_anchors: Tensor,
                  stride: tuple[int, int], psi: float) -> Tensor:
    """The (N, H, W) imitation mask for a pair of maps, after checking shapes and box count."""
    _same_shape(student, teacher, name)
    n, _, h, w = teacher.shape
    if len(gt_boxes) != n:
        raise ValueError(f"{name}: {len(gt_boxes)} sets of boxes for {n} images")
    return imitation_mask(gt_boxes, cell_anchors, (h, w), stride, psi=psi).to(student.dtype)


def nmse(student: Tensor, teacher: Tensor) -> Tensor:
    """Hint loss relative to the teacher's energy: ``mean((s - t)²) / mean(t²)``.

    student, teacher: same shape, e.g. (N, C, H, W) or (K, C, 7, 7). Returns a scalar,
    0 when equal and 1 for an all-zero student.
    """
    _same_shape(student, teacher, "nmse")
    teacher = teacher.detach()
    return F.mse_loss(student, teacher, reduction="mean") / teacher.pow(2).mean().clamp(min=1e-12)


def masked_nmse(
    student: Tensor,
    teacher: Tensor,
    *,
    gt_boxes: list[Tensor],
    cell_anchors: Tensor,
    stride: tuple[int, int],
    psi: float = 0.5,
) -> Tensor:
    """:func:`masked_mse` divided by the teacher's mean energy at the imitated locations."""
    mask = _checked_mask("masked_nmse", student, teacher, gt_boxes, cell_anchors, stride, psi)
    energy = masked_squared_error(torch.zeros_like(teacher), teacher, mask)
    return masked_squared_error(student, teacher, mask) / energy.clamp(min=1e-12)


def masked_squared_error(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """``Σ mask·(s - t)² / (C · Σ mask)`` for (N, C, H, W) maps and an (N, H, W) mask; 0 if the mask is empty."""
    n, c, h, w = teacher.shape
    if mask.shape != (n, h, w):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, the maps need {(n, h, w)}")
    mask = mask.detach().to(student.dtype)
    squared = (student - teacher.detach()).pow(2) * mask[:, None]
    return squared.sum() / (mask.sum().clamp(min=1.0) * c)


def imitation_mask(
    gt_boxes: list[Tensor],
    cell_anchors: Tensor,
    size: tuple[int, int],
    stride: tuple[int, int] | int,
    *,
    psi: float = 0.5,
) -> Tensor:
    """Locations near objects, as Wang et al. (CVPR 2019) define them.

    For each ground-truth box, the IoU with every anchor at every location of
    the map is computed; with ``M`` its largest IoU, the locations that have an
    anchor with IoU > ``psi · M`` are imitated. The union over the boxes of an
    image is its mask.

    Args:
        gt_boxes: per image, (G_i, 4) xyxy boxes in the coordinates of the
            transformed (resized, padded) batch.
        cell_anchors: (A, 4) zero-centred anchors of one location (torchvision's
            ``AnchorGenerator.cell_anchors[level]``).
        size: (H, W) of the map.
        stride: input pixels per cell, ``(sy, sx)`` or one int.
        psi: fraction of the best IoU above which an anchor counts, in (0, 1].
    Returns:
        (N, H, W) float mask in {0, 1}.
    """
    h, w = size
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    device = cell_anchors.device
    ys = torch.arange(h, device=device, dtype=torch.float32) * sy
    xs = torch.arange(w, device=device, dtype=torch.float32) * sx
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)
    anchors = (shifts + cell_anchors.to(torch.float32).reshape(1, -1, 4)).reshape(-1, 4)  # (H·W·A, 4)
    masks = []
    for boxes in gt_boxes:
        if boxes.numel() == 0:
            masks.append(torch.zeros(h, w, device=device))
            continue
        iou = box_iou(boxes.to(device=device, dtype=torch.float32), anchors)  # (G, H·W·A)
        best = iou.max(dim=1, keepdim=True).values
        near = (iou > psi * best) & (best > 0)
        masks.append(near.reshape(-1, h, w, cell_anchors.shape[0]).any(dim=-1).any(dim=0).float())
    return torch.stack(masks)


def attention(student: Tensor, teacher: Tensor, *, p: float = 2.0) -> Tensor:
    """Attention transfer: ``mean((a_s - a_t)²)`` of the :func:`attention_map` of both.

    The channel counts may differ (the maps are averaged over channels); the
    spatial sizes must be equal.

    Args:
        student: (N, C_s, H, W) student map (resized to the teacher's H, W if needed).
        teacher: (N, C_t, H, W) teacher map.
        p: exponent of :func:`attention_map`.
    Returns:
        scalar.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"attention: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            "differ in batch or spatial size"
        )
    return (attention_map(student, p) - attention_map(teacher.detach(), p)).pow(2).mean()


def _standardise(x: Tensor, eps: float) -> Tensor:
    """Each (image, channel) of an (N, C, H, W) map to zero mean and unit variance over its locations."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = x.var(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt()


def pearson(student: Tensor, teacher: Tensor, *, eps: float = 1e-6) -> Tensor:
    """PKD: ``mean((ŝ - t̂)²) / 2`` of the per-channel standardised maps (Cao et al., NeurIPS 2022).

    With ``ŝ``, ``t̂`` standardised per image and channel over the H×W locations, the
    loss is ``1 - r`` averaged over channels, ``r`` the Pearson correlation of the two
    channels' maps: 0 when the student equals the teacher up to a positive scale and an
    offset per channel, 1 for uncorrelated maps, 2 at worst. ``eps`` keeps a flat channel
    (variance 0) finite.

    Args:
        student: (N, C, H, W) adapted student map; teacher: same shape.
    Returns:
        scalar.
    """
    _same_shape(student, teacher, "pearson")
    if student.dim() != 4:
        raise ValueError(f"pearson: needs (N, C, H, W) maps, got {tuple(student.shape)}")
    if eps <= 0:
        raise ValueError(f"pearson: eps must be > 0, got {eps}")
    return 0.5 * (_standardise(student, eps) - _standardise(teacher.detach(), eps)).pow(2).mean()


def box_area_mask(gt_boxes: list[Tensor], size: tuple[int, int], stride: tuple[int, int] | int) -> Tensor:
    """(N, H, W) foreground weights: at each cell whose centre lies inside a box, ``1 / (the box's area
    in cells)`` (the largest where boxes overlap); 0 on the background (FGD's scale mask)."""
    h, w = size
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    out = []
    for boxes in gt_boxes:
        mask = torch.zeros(h, w, device=boxes.device if boxes.numel() else None)
        if boxes.numel():
            ys = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) * sy
            xs = (torch.arange(w, device=boxes.device, dtype=torch.float32) + 0.5) * sx
            b = boxes.to(torch.float32)
            inside = ((ys[None, :, None] >= b[:, 1, None, None]) & (ys[None, :, None] < b[:, 3, None, None])
                      & (xs[None, None, :] >= b[:, 0, None, None]) & (xs[None, None, :] < b[:, 2, None, None]))
            cells = inside.flatten(1).sum(dim=1).clamp(min=1).to(torch.float32)  # (G,) the box's area in cells
            mask = (inside.to(torch.float32) / cells[:, None, None]).amax(dim=0)
        out.append(mask)
    return torch.stack(out)


def decoupled_nmse(
    student: Tensor,
    teacher: Tensor,
    *,
    gt_boxes: list[Tensor],
    stride: tuple[int, int],
    fg_weight: float = 1.0,
    bg_weight: float = 0.5,
) -> Tensor:
    """Decoupled imitation: ``fg_weight · L_fg + bg_weight · L_bg`` (after FGD, Yang et al. 2022).

    ``L_fg = Σ m·(s - t)² / Σ m·t²`` with ``m`` the :func:`box_area_mask` weights (cells
    inside ground-truth boxes, each box's cells summing to 1); ``L_bg`` the same over the
    cells outside every box with weight 1. Each part is relative to the teacher's energy
    where it looks, so a few foreground cells are not drowned by the background; a part
    with no cells (no boxes, or boxes everywhere) is 0.

    Args:
        student, teacher: (N, C, H, W) maps (student adapted).
        gt_boxes: per image, (G_i, 4) xyxy boxes in the transformed batch's coordinates.
        stride: (sy, sx) input pixels per cell of this map.
    Returns:
        scalar.
    """
    _same_shape(student, teacher, "decoupled_nmse")
    n, _, h, w = teacher.shape
    if len(gt_boxes) != n:
        raise ValueError(f"decoupled_nmse: {len(gt_boxes)} sets of boxes for {n} images")
    if fg_weight < 0 or bg_weight < 0:
        raise ValueError(f"decoupled_nmse: fg_weight and bg_weight must be >= 0, got {fg_weight}, {bg_weight}")
    teacher = teacher.detach()
    fg = box_area_mask(gt_boxes, (h, w), stride).to(device=student.device, dtype=student.dtype)
    bg = (fg == 0).to(student.dtype)
    squared = (student - teacher).pow(2).sum(dim=1)  # (N, H, W)
    energy = teacher.pow(2).sum(dim=1)

    def part(mask: Tensor) -> Tensor:
        if not bool(mask.any()):
            return squared.sum() * 0.0  # keeps the graph (and the device)
        return (mask * squared).sum() / (mask * energy).sum().clamp(min=1e-12)

    return fg_weight * part(fg) + bg_weight * part(bg)


def _same_shape(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ "
            "(is an adapter missing?)"
        )
