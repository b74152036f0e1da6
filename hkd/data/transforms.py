"""Detection training transforms that keep boxes and their per-box fields consistent.

Every transform is a callable ``(image, target) -> (image, target)`` on the
dataset's output: ``image`` ``float32 [3, H, W]`` in [0, 1] and a target dict
with ``boxes`` ``float32 [N, 4]`` xyxy pixels plus per-box tensors ``labels``,
``ignore``, ``height`` and ``vis_ratio`` (see :class:`hkd.data.datasets.PedestrianDataset`).

The geometry is done by torchvision's maintained ``transforms.v2`` kernels on
``tv_tensors.BoundingBoxes``, so image and boxes move together. Random draws
are ours rather than v2's, because v2 samples from the global RNG only; each
random transform takes an optional ``torch.Generator`` for reproducible
augmentation (``None`` uses torch's global RNG, which DataLoader seeds per
worker; a generator passed in is copied into every worker with the same state).
Transforms never modify the target dict they are given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hkd.data.datasets import Target, Transform

__all__ = [
    "ColorJitter",
    "Compose",
    "RandomHorizontalFlip",
    "RandomScale",
    "SanitizeBoxes",
    "detection_train_transforms",
]


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    """One draw from U(low, high) using ``generator`` (or the global RNG)."""
    return low + (high - low) * torch.rand((), generator=generator).item()


def _bounding_boxes(image: torch.Tensor, target: Target) -> tv_tensors.BoundingBoxes:
    """``target["boxes"]`` as xyxy ``BoundingBoxes`` on ``image``'s ``[H, W]`` canvas."""
    return tv_tensors.BoundingBoxes(
        target["boxes"], format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=tuple(image.shape[-2:])
    )


def _plain(boxes: torch.Tensor) -> torch.Tensor:
    """Back to a plain tensor, so targets look the same with and without transforms."""
    return boxes.as_subclass(torch.Tensor)


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomHorizontalFlip:
    """Mirror image and boxes left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if torch.rand((), generator=self.generator).item() >= self.p:
            return image, target
        boxes = F.horizontal_flip(_bounding_boxes(image, target))
        return F.horizontal_flip(image), {**target, "boxes": _plain(boxes)}

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomScale:
    """Resize image and boxes by a factor drawn from U(``min_scale``, ``max_scale``).

    Scale jitter without cropping, so no person is cut off. ``height`` (the
    annotated full-body height in pixels) is rescaled with the image's vertical
    factor; ``vis_ratio`` is scale-invariant and stays.
    """

    def __init__(
        self, min_scale: float = 0.8, max_scale: float = 1.2, *, generator: torch.Generator | None = None
    ):
        if not 0.0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale} and {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        scale = _uniform(self.min_scale, self.max_scale, self.generator)
        old_h, old_w = image.shape[-2:]
        size = [max(1, round(old_h * scale)), max(1, round(old_w * scale))]
        boxes = F.resize(_bounding_boxes(image, target), size)
        image = F.resize(image, size, antialias=True)
        # Rounding makes the real factor differ slightly from ``scale``; use the real one.
        height = target["height"] * (size[0] / old_h)
        return image, {**target, "boxes": _plain(boxes), "height": height}

    def __repr__(self) -> str:
        return f"RandomScale(min_scale={self.min_scale}, max_scale={self.max_scale})"


class ColorJitter:
    """Random brightness, contrast and saturation on a float image in [0, 1].

    Each factor is drawn from U(1 - x, 1 + x) for x = ``brightness``, ``contrast``,
    ``saturation`` (0 disables it) and applied in that order. Boxes are untouched.
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        *,
        generator: torch.Generator | None = None,
    ):
        strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        for name, value in strengths.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.generator = generator

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        adjustments = (
            (self.brightness, F.adjust_brightness),
            (self.contrast, F.adjust_contrast),
            (self.saturation, F.adjust_saturation),
        )
        for strength, adjust in adjustments:
            if strength > 0:
                image = adjust(image, _uniform(1.0 - strength, 1.0 + strength, self.generator))
        return image, target

    def __repr__(self) -> str:
        return (
            f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation})"
        )


class SanitizeBoxes:
    """Clamp boxes to the image and drop those smaller than ``min_size`` pixels.

    Every tensor in the target whose first dimension equals the number of boxes
    (``labels``, ``ignore``, ``height``, ``vis_ratio``, …) is filtered with the
    boxes, so the per-box fields stay aligned. Run it last in a pipeline.
    """

    def __init__(self, min_size: float = 1.0):
        self.min_size = min_size
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=min_size, labels_getter=self._per_box_tensors)

    @staticmethod
    def _per_box_tensors(inputs: tuple[torch.Tensor, Target]) -> list[torch.Tensor]:
        # v2 filters exactly the tensor objects returned here, found by identity.
        _, target = inputs
        n = target["boxes"].shape[0]
        return [
            value
            for key, value in target.items()
            if key != "boxes"
            and isinstance(value, torch.Tensor)
            and value.ndim >= 1
            and value.shape[0] == n
        ]

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        boxes = F.clamp_bounding_boxes(_bounding_boxes(image, target))
        image, target = self._sanitize(image, {**target, "boxes": boxes})
        return image, {**target, "boxes": _plain(target["boxes"])}

    def __repr__(self) -> str:
        return f"SanitizeBoxes(min_size={self.min_size})"


def detection_train_transforms(
    *,
    flip_p: float = 0.5,
    scale_range: tuple[float, float] = (0.8, 1.2),
    color: float = 0.2,
    generator: torch.Generator | None = None,
) -> Compose:
    """The standard training pipeline: flip, scale jitter, colour jitter, sanitize.

    ``color`` sets brightness, contrast and saturation strength alike. All random
    transforms share ``generator``.
    """
    return Compose(
        [
            RandomHorizontalFlip(flip_p, generator=generator),
            RandomScale(*scale_range, generator=generator),
            ColorJitter(color, color, color, generator=generator),
            SanitizeBoxes(),
        ]
    )
