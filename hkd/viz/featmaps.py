"""Feature maps of one image at chosen hierarchy levels, ready to show.

Every tensor comes from a :class:`hkd.models.taps.Tap` (the one way to get a
level's tensor); nothing stays attached to the model and the model's mode is
never switched, so a detector cached for all app sessions can be passed in.

Maps are shown over the *original* image. A torchvision detector resizes the
image and pads the batch to a multiple of 32 at the bottom/right, so a level's
map also covers padding; :class:`Geometry` knows how much and the views below
crop it away before anything is normalised or resized onto the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hkd.models.hierarchy import HierarchySpec, Level
from hkd.models.inference import image_tensor
from hkd.models.ops import lstsq_moments, ridge_solve
from hkd.models.taps import Tap

# The model's own input transform, tapped beside the levels for the geometry of
# the resized, padded batch (its output is ``(ImageList, targets)``).
TRANSFORM_LEVEL = Level("_transform", "transform", channels=0, select=0, kind="image_list")
# ``roi.features`` of a torchvision Faster R-CNN, for callers without a spec.
_ROI_FEATURES = Level("roi.features", "roi_heads.box_roi_pool", channels=0, kind="regions")
# Levels computed by ``model.backbone`` alone: no RPN/ROI work is needed for them.
_BACKBONE_HIERARCHIES = ("backbone", "neck")

COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")}


@dataclass(frozen=True)
class Geometry:
    """Where the original image lies in the model's transformed batch.

    image_hw: (H, W) of the original image; resized_hw: its size after the
    model's resize; padded_hw: the batch tensor's size (resized + padding).
    """

    image_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @classmethod
    def of(cls, image_list: Any, image_hw: Sequence[int]) -> "Geometry":
        """From the ``ImageList`` the model's transform returned for one image."""
        return cls(
            (int(image_hw[0]), int(image_hw[1])),
            (int(image_list.image_sizes[0][0]), int(image_list.image_sizes[0][1])),
            (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1])),
        )

    def valid_cells(self, feature_hw: Sequence[int]) -> tuple[int, int]:
        """Rows, columns of a (h, w) feature map that cover the image, not the padding."""
        h, w = int(feature_hw[0]), int(feature_hw[1])
        rows = min(h, math.ceil(self.resized_hw[0] * h / self.padded_hw[0]))
        cols = min(w, math.ceil(self.resized_hw[1] * w / self.padded_hw[1]))
        return max(rows, 1), max(cols, 1)

    def crop(self, fmap: Tensor) -> Tensor:
        """(…, h, w) → (…, rows, cols): the padding cells removed."""
        rows, cols = self.valid_cells(fmap.shape[-2:])
        return fmap[..., :rows, :cols]

    def stride(self, feature_hw: Sequence[int]) -> int:
        """Input pixels (of the transformed batch) per feature cell."""
        return max(1, round(self.padded_hw[0] / int(feature_hw[0])))

    def to_model(self, boxes: Tensor) -> Tensor:
        """(K, 4) xyxy boxes in original-image pixels → the transformed batch's pixels."""
        ry = self.resized_hw[0] / self.image_hw[0]
        rx = self.resized_hw[1] / self.image_hw[1]
        return boxes * boxes.new_tensor([rx, ry, rx, ry])

    def to_image(self, boxes: Tensor) -> Tensor:
        """Inverse of :meth:`to_model`."""
        ry = self.resized_hw[0] / self.image_hw[0]
        rx = self.resized_hw[1] / self.image_hw[1]
        return boxes / boxes.new_tensor([rx, ry, rx, ry])


@dataclass
class LevelView:
    """What the feature-map page shows for one level.

    level: logical level name; shape: shape of the tapped tensor for this image
    ((C, h, w) for maps, including padding cells; for ``rpn.*`` the finest FPN
    level's (A, h, w); for ``roi.features`` (C, 7, 7)); energy: (h, w) float32 in
    [0, 1] — mean of squares over channels, min-max normalised (for
    ``rpn.objectness``: max sigmoid objectness over anchors, *not* normalised);
    pca_rgb: (h, w, 3) uint8, the first three principal components of the
    channels as R, G, B; topk: ``k`` most energetic channels as
    ``(channel index, (h, w) map in [0, 1])``; stride: input pixels per cell
    (``None`` for region features). The maps have the padding cropped away, so
    they line up with the original image (see :func:`overlay`).
    """

    level: str
    shape: tuple
    energy: np.ndarray
    pca_rgb: np.ndarray
    topk: list[tuple[int, np.ndarray]]
    stride: int | None


# ---------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------
def tapped_forward(
    model: nn.Module, spec: HierarchySpec, image: np.ndarray | Tensor, levels: Sequence[str]
) -> tuple[dict[str, Any], Geometry]:
    """One eval forward (no grad) under a detached Tap: ``({level: value for batch item 0}, geometry)``.

    Only ``model.transform`` and ``model.backbone`` run when every level is a
    backbone/neck level; otherwise the whole detector runs.
    """
    require_eval(model, "tapped_forward")
    selected = spec.select(list(levels))
    tensor = image_tensor(image)
    device = model_device(model)
    with torch.no_grad(), Tap(model, [*selected, TRANSFORM_LEVEL], detach=True) as tap:
        if all(lv.hierarchy in _BACKBONE_HIERARCHIES for lv in selected) and _has_parts(model):
            batch, _ = model.transform([tensor.to(device)])
            model.backbone(batch.tensors)
        else:
            model([tensor.to(device)])
    geometry = Geometry.of(tap[TRANSFORM_LEVEL.name], tensor.shape[-2:])
    return {lv.name: first_item(lv, tap[lv.name]) for lv in selected}, geometry


def capture_levels(model: nn.Module, spec: HierarchySpec, image: np.ndarray, levels: list[str]) -> dict[str, object]:
    """Raw tapped values of ``levels`` for one (H, W, 3) uint8 RGB image.

    One eval forward without gradients inside ``Tap(detach=True)``. Values are
    batch item 0: ``map`` levels (C, h, w) (padding cells included), ``maps``
    levels a list of (A, h, w) per FPN level, ``regions`` (K, C, 7, 7) and
    ``vectors`` (K, C) for all K proposals of the image.
    """
    values, _ = tapped_forward(model, spec, image, levels)
    return values


def roi_features_for_box(
    model: nn.Module, image: np.ndarray, box_xyxy: Sequence[float], *, spec: HierarchySpec | None = None
) -> Tensor:
    """(C, 7, 7) region features the model's own ``roi_heads.box_roi_pool`` gives one box.

    ``box_xyxy`` is in original-image pixels (e.g. a detection); it is mapped
    into the transformed batch's coordinates as the model maps its proposals.
    The result is read from a Tap on ``roi.features`` (``spec``'s level, or
    torchvision's module path when no spec is given).
    """
    box = torch.as_tensor(np.asarray(box_xyxy, dtype=np.float32)).reshape(-1)
    if box.numel() != 4 or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"box_xyxy must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {box.tolist()}")
    require_eval(model, "roi_features_for_box")
    level = spec["roi.features"] if spec is not None else _ROI_FEATURES
    tensor = image_tensor(image)
    device = model_device(model)
    with torch.no_grad(), Tap(model, [level], detach=True) as tap:
        batch, _ = model.transform([tensor.to(device)])
        features = model.backbone(batch.tensors)
        geometry = Geometry.of(batch, tensor.shape[-2:])
        model.roi_heads.box_roi_pool(features, [geometry.to_model(box[None].to(device))], batch.image_sizes)
    return tap[level.name][0]


# ---------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------
def level_views(
    model: nn.Module,
    spec: HierarchySpec,
    image: np.ndarray,
    levels: list[str],
    *,
    k: int = 4,
    box_xyxy: Sequence[float] | None = None,
) -> dict[str, LevelView]:
    """A :class:`LevelView` per level, all map levels from one tapped forward.

    ``map`` levels (``backbone.*``, ``neck.*``) are shown as they are. ``maps``
    levels (``rpn.*``, one map per FPN level) show the finest FPN level; for
    ``rpn.objectness`` the values are sigmoid objectness and the energy is the
    max over anchors (a probability, so not re-normalised). ``roi.features``
    needs ``box_xyxy`` (a detection in image pixels) and is computed by
    :func:`roi_features_for_box`. Vector levels (``roi.logits`` …) have no map.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    by_kind = {name: spec[name].kind for name in levels}
    bad = [n for n, kind in by_kind.items() if kind not in ("map", "maps", "regions")]
    if bad:
        shown = [lv.name for lv in spec if lv.kind in ("map", "maps", "regions")]
        raise ValueError(f"levels {bad} have no spatial map to show; choose from {shown}")
    regions = [n for n, kind in by_kind.items() if kind == "regions"]
    if regions and box_xyxy is None:
        raise ValueError(f"{regions[0]!r} is per region: pass box_xyxy (a detection) to show its 7x7 features")

    maps = [n for n in levels if by_kind[n] != "regions"]
    views: dict[str, LevelView] = {}
    if maps:
        values, geometry = tapped_forward(model, spec, image, maps)
        for name in maps:
            value = values[name]
            if by_kind[name] == "maps":
                finest = value[0]
                fmap = geometry.crop(finest)
                if name == "rpn.objectness":
                    fmap = fmap.sigmoid()
                views[name] = _view(name, tuple(finest.shape), fmap, k, geometry.stride(finest.shape[-2:]),
                                    probability=name == "rpn.objectness")
            else:
                views[name] = _view(name, tuple(value.shape), geometry.crop(value), k, spec[name].stride)
    for name in regions:
        fmap = roi_features_for_box(model, image, box_xyxy, spec=spec)
        views[name] = _view(name, tuple(fmap.shape), fmap, k, None)
    return {name: views[name] for name in levels}


def _view(name: str, shape: tuple, fmap: Tensor, k: int, stride: int | None, *, probability: bool = False) -> LevelView:
    """The view of a (C, h, w) map; ``probability``: its values are probabilities (objectness),
    so the energy is their max over channels and the top-k maps are shown unscaled."""
    fmap = fmap.detach().float().cpu()
    energy = fmap.amax(dim=0) if probability else normalise(fmap.pow(2).mean(dim=0))
    order = torch.argsort(fmap.pow(2).mean(dim=(1, 2)), descending=True, stable=True)[:k]
    topk = [(c, (fmap[c] if probability else normalise(fmap[c])).numpy().astype(np.float32)) for c in order.tolist()]
    return LevelView(name, shape, energy.numpy().astype(np.float32), pca_rgb(fmap), topk, stride)


def normalise(x: Tensor) -> Tensor:
    """Min-max to [0, 1]; a constant tensor becomes all zeros."""
    x = x.float()
    low, high = x.min(), x.max()
    if not torch.isfinite(high - low) or high - low <= 0:
        return torch.zeros_like(x)
    return (x - low) / (high - low)


def principal_components(fmap: Tensor, n: int) -> Tensor:
    """(C, h, w) → (n', h, w) float64: projections on the first n' = min(n, C) principal components.

    Positions are samples, channels are variables (centered). The components
    come from ``eigh`` of the C×C scatter matrix — the thin route to the same
    vectors as an SVD of the (h·w, C) matrix. An eigenvector's sign is
    arbitrary, so each projection is flipped to make its largest-magnitude
    value positive (the sign correction of Seg-Eigen-CAM, Eq. 13).
    """
    c, h, w = fmap.shape
    x = torch.nan_to_num(fmap.detach().reshape(c, -1).T.double().cpu())
    x = x - x.mean(dim=0)
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    projections = (x @ vectors.flip(-1)[:, : min(n, c)]).T
    flip = projections.amin(dim=1).abs() > projections.amax(dim=1).abs()
    projections[flip] = -projections[flip]
    return projections.reshape(-1, h, w)


def pca_rgb(fmap: Tensor) -> np.ndarray:
    """(C, h, w) → (h, w, 3) uint8: the first 3 :func:`principal_components` as R, G, B.

    Each component is min-max scaled to 0–255 on its own. Fewer than three
    channels (or a component without variance) leave a channel black.
    """
    _, h, w = fmap.shape
    rgb = torch.zeros(3, h, w, dtype=torch.float64)
    for i, component in enumerate(principal_components(fmap, 3)):
        rgb[i] = normalise(component).double()
    return (rgb.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float, colormap: str = "jet") -> np.ndarray:
    """(H, W, 3) uint8 RGB image with a (h, w) heat map in [0, 1] blended on top.

    The heat map is resized (bilinear) to the image; ``opacity`` 0 gives the
    image, 1 the coloured heat map. ``colormap`` is an OpenCV colormap name
    (``jet``, ``viridis``, ``turbo``, ``inferno`` …).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}")
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    if heat.ndim != 2:
        raise ValueError(f"heat must be (h, w), got shape {heat.shape}")
    height, width = image.shape[:2]
    heat = cv2.resize(np.clip(heat, 0.0, 1.0), (width, height), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), COLORMAPS[colormap])
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    blended = image.astype(np.float32) * (1.0 - opacity) + colored.astype(np.float32) * opacity
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def adapter_difference(teacher_map: Tensor, student_map: Tensor, adapter: nn.Module | None) -> np.ndarray:
    """Where the student's map differs from the teacher's: (h, w) float32 at the teacher's size.

    With ``adapter`` (the distillation adapter of this level, mapping
    (N, C_s, h', w') → (N, C_t, ·, ·)): the per-location L2 distance over
    channels ``‖t − adapter(s)‖₂`` in the teacher's feature units — what the
    plain imitation loss penalises. Without: a channel-agnostic comparison,
    ``|e_t − e_s|`` of the min-max normalised energy maps (mean of squares over
    channels), in [0, 1]. The student result is resized (bilinear) to the
    teacher's (h, w) when the sizes differ.

    teacher_map: (C_t, h, w); student_map: (C_s, h', w').
    """
    if teacher_map.dim() != 3 or student_map.dim() != 3:
        raise ValueError(
            f"adapter_difference expects (C, h, w) maps, got teacher {tuple(teacher_map.shape)} "
            f"and student {tuple(student_map.shape)}"
        )
    teacher = teacher_map.detach().float()
    size = teacher.shape[-2:]
    with torch.no_grad():
        if adapter is None:
            e_t = normalise(teacher.pow(2).mean(dim=0))
            e_s = normalise(student_map.detach().float().pow(2).mean(dim=0))
            e_s = resize_map(e_s[None], size)[0]
            return (e_t - e_s).abs().cpu().numpy().astype(np.float32)
        param = next(adapter.parameters(), None)
        student = student_map.detach().float()[None]
        if param is not None:
            student = student.to(param.device, param.dtype)
        adapted = adapter(student)[0].float().to(teacher.device)
        if adapted.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"the adapter maps the student to {adapted.shape[0]} channels, the teacher map has "
                f"{teacher.shape[0]} (is it the adapter of another level?)"
            )
        adapted = resize_map(adapted, size)
        return (teacher - adapted).pow(2).sum(dim=0).sqrt().cpu().numpy().astype(np.float32)


def resize_map(fmap: Tensor, size: Sequence[int]) -> Tensor:
    """(C, h, w) → (C, *size), bilinear; unchanged when the size already matches."""
    if tuple(fmap.shape[-2:]) == tuple(size):
        return fmap
    return F.interpolate(fmap[None].float(), size=tuple(int(s) for s in size), mode="bilinear",
                         align_corners=False)[0]


# ---------------------------------------------------------------------------
def first_item(level: Level, value: Any) -> Any:
    """Batch item 0 of a tapped value (``regions``/``vectors`` are per proposal already)."""
    if level.kind == "map":
        return value[0]
    if level.kind == "maps":
        return [v[0] for v in value]
    return value


def require_eval(model: nn.Module, what: str) -> None:
    """A shared model is never switched here: refuse one in train mode (its forward needs targets)."""
    if model.training:
        raise RuntimeError(f"{what}() needs a model in eval mode; call model.eval() once when loading it")


def _has_parts(model: nn.Module) -> bool:
    return isinstance(getattr(model, "transform", None), nn.Module) and isinstance(
        getattr(model, "backbone", None), nn.Module)


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def fit_adapter(teacher_map: torch.Tensor, student_map: torch.Tensor, ridge: float = 1e-6) -> nn.Conv2d:
    """The 1×1 conv C_s→C_t that best maps the student's map onto the teacher's on this image.

    Ridge least squares over all positions (student resized to the teacher's h×w; a 1×1
    conv and a bilinear resize commute), solved as the distiller's adapters are
    (:func:`hkd.models.ops.ridge_solve`; ``ridge`` relative to the student's mean channel
    variance). teacher_map: (C_t, h, w); student_map: (C_s, h', w').
    """
    target = teacher_map.detach().double().flatten(1).T  # (N, C_t)
    source = resize_map(student_map.detach().double(), teacher_map.shape[-2:]).flatten(1).T  # (N, C_s)
    xx, xy = lstsq_moments(source, target)
    weight, bias = ridge_solve(xx / len(source), xy / len(source), ridge)
    conv = nn.Conv2d(student_map.shape[0], teacher_map.shape[0], kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(weight[:, :, None, None].float())
        conv.bias.copy_(bias.float())
    return conv
