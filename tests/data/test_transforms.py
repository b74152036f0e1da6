"""Training transforms: boxes stay on their pixels and per-box fields stay aligned."""

from __future__ import annotations

import pytest
import torch

from hkd.data.transforms import (
    ColorJitter,
    Compose,
    RandomHorizontalFlip,
    RandomScale,
    SanitizeBoxes,
    detection_train_transforms,
)

H, W = 40, 60  # image size, pixels


def _target(boxes: list[list[float]], **fields) -> dict:
    n = len(boxes)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "labels": torch.ones(n, dtype=torch.int64),
        "ignore": torch.zeros(n, dtype=torch.bool),
        "height": torch.tensor([b[3] - b[1] for b in boxes], dtype=torch.float32),
        "vis_ratio": torch.ones(n),
        "image_id": 3,
        "file_name": "x.png",
    }
    target.update(fields)
    return target


def _image_with_box(box: list[int]) -> torch.Tensor:
    """Black image whose red channel is 1 exactly on the pixels of ``box`` (xyxy)."""
    image = torch.zeros(3, H, W)
    x1, y1, x2, y2 = box
    image[0, y1:y2, x1:x2] = 1.0
    return image


def _red_inside(image: torch.Tensor, box: torch.Tensor) -> float:
    """Mean red value inside ``box`` (pixel coordinates rounded to the grid)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box.tolist())
    return image[0, y1:y2, x1:x2].mean().item()


def test_flip_keeps_boxes_on_their_pixels():
    box = [5, 8, 17, 30]
    image = _image_with_box(box)
    target = _target([box])

    flipped, out = RandomHorizontalFlip(1.0)(image, target)

    assert out["boxes"].tolist() == [[W - 17, 8, W - 5, 30]]
    assert _red_inside(flipped, out["boxes"][0]) == 1.0
    assert flipped[0].sum() == image[0].sum()  # nothing outside the box is red
    assert type(out["boxes"]) is torch.Tensor  # plain tensor, not a tv_tensor
    assert target["boxes"].tolist() == [box]  # input target untouched


def test_flip_with_probability_zero_is_identity():
    image, target = torch.rand(3, H, W), _target([[1, 2, 3, 4]])
    out_image, out = RandomHorizontalFlip(0.0)(image, target)
    assert out_image is image and out is target


def test_scale_moves_boxes_with_pixels_and_recomputes_height():
    box = [10, 4, 30, 36]
    target = _target([box], height=torch.tensor([50.0]))  # annotated height beyond the clipped box

    scaled, out = RandomScale(0.5, 0.5)(_image_with_box(box), target)

    assert scaled.shape == (3, H // 2, W // 2)
    assert out["boxes"].tolist() == [[5, 2, 15, 18]]
    assert out["height"].tolist() == [25.0]
    assert out["vis_ratio"].tolist() == [1.0]
    # Bilinear resizing blurs the edges only; the box interior stays red.
    x1, y1, x2, y2 = (int(v) for v in out["boxes"][0].tolist())
    assert scaled[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.99
    assert target["height"].tolist() == [50.0]


def test_scale_uses_the_real_factor_after_rounding():
    image, target = torch.rand(3, 3, 5), _target([[0, 0, 5, 3]])
    scaled, out = RandomScale(1.5, 1.5)(image, target)  # 3 × 1.5 = 4.5 rounds to 4
    assert scaled.shape[-2:] == (4, 8)
    assert out["height"].item() == pytest.approx(3 * 4 / 3)
    assert out["boxes"].tolist() == [[0, 0, 8, 4]]


def test_sanitize_drops_degenerate_boxes_and_keeps_fields_aligned():
    boxes = [[1, 1, 11, 21], [5, 5, 5.5, 20], [20, 2, 30, 12], [40, 10, 40, 30], [50, 30, 70, 45]]
    target = _target(
        boxes,
        ignore=torch.tensor([False, True, True, False, True]),
        height=torch.tensor([20.0, 15.0, 10.0, 20.0, 15.0]),
        vis_ratio=torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]),
        labels=torch.tensor([1, 2, 3, 4, 5]),
    )

    _, out = SanitizeBoxes()(torch.rand(3, H, W), target)

    # Boxes 1 (0.5 px wide) and 3 (zero width) go; box 4 is clamped to the image.
    assert out["boxes"].tolist() == [[1, 1, 11, 21], [20, 2, 30, 12], [50, 30, 60, 40]]
    assert out["labels"].tolist() == [1, 3, 5]
    assert out["ignore"].tolist() == [False, True, True]
    assert out["height"].tolist() == [20.0, 10.0, 15.0]
    assert out["vis_ratio"].tolist() == pytest.approx([0.1, 0.3, 0.5])
    assert out["image_id"] == 3 and out["file_name"] == "x.png"
    assert type(out["boxes"]) is torch.Tensor


def test_color_jitter_changes_pixels_only():
    image, target = torch.rand(3, H, W), _target([[1, 2, 30, 20]])
    jitter = ColorJitter(0.5, 0.5, 0.5, generator=torch.Generator().manual_seed(1))
    out_image, out = jitter(image, target)
    assert not torch.equal(out_image, image)
    assert out_image.min() >= 0 and out_image.max() <= 1
    assert out is target
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=2.0)


def _run_pipeline(seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    pipeline = detection_train_transforms(generator=torch.Generator().manual_seed(seed))
    image = torch.linspace(0, 1, 3 * H * W).reshape(3, H, W)
    results = [pipeline(image, _target([[5, 5, 25, 35], [30, 10, 50, 30]])) for _ in range(4)]
    return torch.cat([r[0].flatten() for r in results]), [r[1]["boxes"] for r in results]


def test_pipeline_is_deterministic_given_a_generator():
    image_a, boxes_a = _run_pipeline(seed=7)
    image_b, boxes_b = _run_pipeline(seed=7)
    image_c, _ = _run_pipeline(seed=8)
    assert torch.equal(image_a, image_b)
    assert all(torch.equal(a, b) for a, b in zip(boxes_a, boxes_b))
    assert image_a.shape != image_c.shape or not torch.equal(image_a, image_c)


def test_pipeline_uses_global_rng_without_generator():
    pipeline = Compose([RandomHorizontalFlip(0.5), RandomScale(0.7, 1.3), ColorJitter()])
    image, target = torch.rand(3, H, W), _target([[5, 5, 25, 35]])
    torch.manual_seed(3)
    first = pipeline(image, target)
    torch.manual_seed(3)
    second = pipeline(image, target)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1]["boxes"], second[1]["boxes"])


def test_pipeline_handles_images_without_boxes():
    image, target = detection_train_transforms()(torch.rand(3, H, W), _target([]))
    assert image.shape[0] == 3
    assert target["boxes"].shape == (0, 4)
    assert target["ignore"].shape == target["height"].shape == (0,)
