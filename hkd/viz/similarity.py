"""How alike the teacher's and the student's representations are, level by level.

* :func:`linear_cka` — linear centered kernel alignment (Kornblith et al.,
  ICML 2019): invariant to orthogonal transforms and isotropic scaling of
  either representation, defined for different feature widths.
* :func:`cosine` — cosine similarity of two same-shape tensors.
* :func:`similarity_profile` — both, for every level the two detectors share,
  on one image.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from hkd.models.hierarchy import HierarchySpec
from hkd.models.inference import image_tensor
from hkd.models.taps import Tap
from hkd.viz.featmaps import Geometry, first_item, model_device, require_eval, resize_map

_COMPARABLE = ("map", "maps", "regions", "vectors")


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations of the same ``n`` samples.

    ``CKA = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` with centered columns, computed
    in float64 through whichever of the feature (d×d) or sample (n×n) Gram
    matrices is cheaper. 1 for representations equal up to rotation and
    scale, near 0 for independent ones; NaN when either has no variance or
    ``n < 2``.

    Args:
        x: (n, d1); y: (n, d2).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka expects (n, d1) and (n, d2) with the same n, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, d1, d2 = x.shape[0], x.shape[1], y.shape[1]
    if n < 2:
        return math.nan
    x = x.detach().double()
    y = y.detach().double().to(x.device)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    if n * (d1 + d2) >= d1 * d2 + d1 * d1 + d2 * d2:  # many samples: feature-space Gram matrices
        cross = (y.T @ x).pow(2).sum()
        norm_x = torch.linalg.matrix_norm(x.T @ x)
        norm_y = torch.linalg.matrix_norm(y.T @ y)
    else:  # wide features: sample-space Gram matrices
        gram_x, gram_y = x @ x.T, y @ y.T
        cross = (gram_x * gram_y).sum()
        norm_x = torch.linalg.matrix_norm(gram_x)
        norm_y = torch.linalg.matrix_norm(gram_y)
    if norm_x <= 0 or norm_y <= 0:
        return math.nan
    return float(cross / (norm_x * norm_y))


def cosine(x: Tensor, y: Tensor) -> float:
    """Cosine similarity of two same-shape tensors, flattened; NaN if either is all zeros."""
    if tuple(x.shape) != tuple(y.shape):
        raise ValueError(f"cosine needs tensors of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    a = x.detach().double().flatten()
    b = y.detach().double().flatten().to(a.device)
    denom = a.norm() * b.norm()
    if denom <= 0:
        return math.nan
    return float((a @ b) / denom)


def similarity_profile(
    teacher: nn.Module,
    teacher_spec: HierarchySpec,
    student: nn.Module,
    student_spec: HierarchySpec,
    image: np.ndarray,
    levels: list[str] | None = None,
) -> list[dict]:
    """Teacher/student similarity at each level on one (H, W, 3) uint8 image.

    Rows ``{"level", "cka", "cosine", "teacher_shape", "student_shape"}`` in the
    teacher's level order. Default levels: every ``backbone.*``/``neck.*`` map
    level both specs have, plus ``roi.features``; ``rpn.*`` (finest FPN level)
    and ``roi.embedding``/``roi.logits``/``roi.deltas`` can be asked for.

    * Maps: each map's padding cells are cropped; the student map is resized
      (bilinear) to the teacher's h×w when they differ. CKA treats spatial
      positions as samples and channels as features, so the channel counts may
      differ. ``cosine`` compares the two *attention maps* (``attention_map``
      of the attention-transfer loss: mean of squares over channels,
      L2-normalised), so it is channel-agnostic.
    * ``roi.features``: both ROI poolers run on the *same boxes*, the student's
      RPN proposals (mapped into each model's input coordinates); CKA samples
      are the K·7·7 region cells, cosine compares the per-region attention maps.
    * Vector levels: CKA over the K proposals; cosine of the raw vectors, NaN
      when their widths differ.

    Each model runs one tapped forward (transform → backbone → RPN when needed
    → ROI pooler/head on the student's proposals), in eval mode and without
    gradients. Shapes are per image: (C, h, w) for maps, (K, C, 7, 7) regions.
    """
    if levels is None:
        levels = teacher_spec.shared_with(student_spec, kinds=("map", "regions"))  # backbone/FPN maps, roi.features
    else:
        missing = [n for n in levels if n not in teacher_spec or n not in student_spec]
        if missing:
            shared = teacher_spec.shared_with(student_spec)
            raise ValueError(f"levels {missing} are not in both detectors; shared levels: {shared}")
        levels = [lv.name for lv in teacher_spec if lv.name in set(levels)]  # computation order
    for name in levels:
        t_kind, s_kind = teacher_spec[name].kind, student_spec[name].kind
        if t_kind != s_kind or t_kind not in _COMPARABLE:
            raise ValueError(f"level {name!r} cannot be compared (teacher kind {t_kind!r}, student {s_kind!r})")

    tensor = image_tensor(image)
    s_values, s_geometry, proposals = _aligned_forward(student, student_spec, levels, tensor, None)
    t_values, t_geometry, _ = _aligned_forward(teacher, teacher_spec, levels, tensor, proposals)

    from hkd.models.ops import attention_map  # the attention-transfer loss's own map

    rows = []
    for name in levels:
        kind = teacher_spec[name].kind
        t, s = t_values[name], s_values[name]
        if kind == "maps":  # per FPN level: compare the finest
            t, s, kind = t[0], s[0], "map"
        t, s = t.float().cpu(), s.float().cpu()
        t_shape, s_shape = tuple(t.shape), tuple(s.shape)
        if kind == "map":
            t = t_geometry.crop(t)
            s = resize_map(s_geometry.crop(s), t.shape[-2:])
            cka = linear_cka(t.flatten(1).T, s.flatten(1).T)
            cos = cosine(attention_map(t[None]), attention_map(s[None]))
        elif kind == "regions":
            cka = linear_cka(t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]), s.permute(0, 2, 3, 1).reshape(-1, s.shape[1]))
            cos = cosine(attention_map(t), attention_map(s))
        else:
            cka = linear_cka(t, s)
            cos = cosine(t, s) if t.shape == s.shape else math.nan
        rows.append({"level": name, "cka": cka, "cosine": cos, "teacher_shape": t_shape, "student_shape": s_shape})
    return rows


def _aligned_forward(
    model: nn.Module, spec: HierarchySpec, names: Sequence[str], tensor: Tensor, boxes: Tensor | None
) -> tuple[dict[str, Any], Geometry, Tensor | None]:
    """Tapped forward of one detector with the ROI head on given boxes.

    ``boxes``: (K, 4) xyxy in original-image pixels to pool (the other model's
    proposals); ``None`` pools this model's own proposals. Returns the level
    values (batch item 0), the geometry and this model's own proposals in
    original-image pixels (``None`` when its RPN did not run).
    """
    require_eval(model, "similarity_profile")
    selected = spec.select(list(names))
    need_roi = any(lv.kind in ("regions", "vectors") for lv in selected)
    need_head = any(lv.kind == "vectors" for lv in selected)
    need_rpn = any(lv.hierarchy == "rpn" for lv in selected) or (need_roi and boxes is None)
    device = model_device(model)
    proposals = None
    with torch.no_grad(), Tap(model, selected, detach=True) as tap:
        batch, _ = model.transform([tensor.to(device)])
        features = model.backbone(batch.tensors)
        geometry = Geometry.of(batch, tensor.shape[-2:])
        if need_rpn:
            proposals, _ = model.rpn(batch, features)
        if need_roi:
            pool_boxes = [geometry.to_model(boxes.to(device))] if boxes is not None else proposals
            pooled = model.roi_heads.box_roi_pool(features, pool_boxes, batch.image_sizes)
            if need_head:
                model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    own = geometry.to_image(proposals[0]).cpu() if proposals is not None else None
    return {lv.name: first_item(lv, tap[lv.name]) for lv in selected}, geometry, own
