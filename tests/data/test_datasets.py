"""Datasets: CityPersons-style COCO JSON, CrowdHuman .odgt, image folders, validation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hkd.data.datasets import (
    CocoPedestrianDataset,
    CrowdHumanDataset,
    DatasetError,
    ImageFolderDataset,
    collate_detection,
    open_dataset,
)
from hkd.data.transforms import RandomHorizontalFlip

W, H = 64, 48  # image size used throughout, pixels


def _write_image(
    path: Path, size: tuple[int, int] = (W, H), mode: str = "RGB", fmt: str | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": (90, 120, 150), "L": 100, "RGBA": (1, 2, 3, 255)}[mode]
    Image.new(mode, size, color).save(path, fmt)
    return path


def _write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _citypersons(tmp_path: Path) -> Path:
    """Two images; pedestrians, a rider, an ignore region, one box partly outside."""
    _write_image(tmp_path / "images" / "a.png")
    # Cityscapes keeps images in per-city folders while the JSON lists bare names.
    _write_image(tmp_path / "images" / "frankfurt" / "frankfurt_b.png")
    return _write_json(
        tmp_path / "val_gt.json",
        {
            "images": [
                {"id": 1, "file_name": "a.png", "width": W, "height": H},
                {"id": 2, "im_name": "frankfurt_b.png", "width": W, "height": H},
            ],
            "categories": [
                {"id": 0, "name": "ignore"},
                {"id": 1, "name": "pedestrian"},
                {"id": 2, "name": "rider"},
            ],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 10, 30],
                 "height": 30, "vis_ratio": 0.8, "ignore": 0, "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 5, 10, 30], "ignore": 0},
                {"id": 3, "image_id": 1, "category_id": 0, "bbox": [45, 0, 15, 20], "iscrowd": 1},
                # No height, no vis_ratio: computed from bbox and vis_bbox.
                {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 10, 8, 20],
                 "vis_bbox": [0, 10, 8, 10]},
                # Partly outside on the right: clipped, annotated height kept.
                {"id": 5, "image_id": 2, "category_id": 1, "bbox": [56, 4, 16, 40], "height": 40},
            ],
        },
    )


def test_citypersons_json_targets(tmp_path):
    dataset = CocoPedestrianDataset(tmp_path / "images", _citypersons(tmp_path))

    assert len(dataset) == 2
    assert repr(dataset) == "CocoPedestrianDataset(2 images, 5 boxes, 2 of them ignore)"
    assert dataset.image_ids == [1, 2]
    assert dataset.file_names == ["a.png", "frankfurt_b.png"]
    assert dataset.image_path(1) == tmp_path / "images" / "frankfurt" / "frankfurt_b.png"

    image, target = dataset[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[10, 5, 20, 35], [30, 5, 40, 35], [45, 0, 60, 20]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 1, 1]
    # The rider and the ignore region are ignore boxes.
    assert target["ignore"].dtype == torch.bool and target["ignore"].tolist() == [False, True, True]
    assert target["height"].tolist() == [30, 30, 20]
    assert target["vis_ratio"].tolist() == pytest.approx([0.8, 1.0, 1.0])
    assert target["image_id"] == 1 and target["file_name"] == "a.png"
    target["boxes"] += 100  # an in-place edit of a target must not reach the dataset
    assert dataset.target(0)["boxes"][0].tolist() == [10, 5, 20, 35]

    _, target = dataset[1]
    assert target["boxes"].tolist() == [[0, 10, 8, 30], [56, 4, 64, 44]]
    assert target["height"].tolist() == [20, 40]
    assert target["vis_ratio"].tolist() == pytest.approx([0.5, 1.0])
    assert target["ignore"].tolist() == [False, False]


def test_coco_gt_for_evaluation(tmp_path):
    gt = CocoPedestrianDataset(tmp_path / "images", _citypersons(tmp_path)).coco_gt()

    assert gt["categories"] == [{"id": 1, "name": "pedestrian"}]
    assert [image["id"] for image in gt["images"]] == [1, 2]
    assert gt["images"][1] == {"id": 2, "file_name": "frankfurt_b.png", "width": W, "height": H}
    annotations = gt["annotations"]
    assert [a["id"] for a in annotations] == [1, 2, 3, 4, 5]
    assert all(a["category_id"] == 1 for a in annotations)
    assert annotations[0]["bbox"] == [10, 5, 10, 30] and annotations[0]["area"] == 300
    assert [a["ignore"] for a in annotations] == [0, 1, 1, 0, 0]
    assert [a["iscrowd"] for a in annotations] == [0, 1, 1, 0, 0]
    assert annotations[4]["bbox"] == [56, 4, 8, 40] and annotations[4]["height"] == 40
    assert annotations[3]["vis_ratio"] == 0.5
    json.dumps(gt)  # plain Python types only


def test_invalid_boxes_are_dropped_with_one_warning(tmp_path, caplog):
    _write_image(tmp_path / "images" / "a.png")
    bad = [
        [float("nan"), 1, 5, 5],
        [1, 1, 0, 10],  # zero width
        [1, 1, 10, -3],  # negative height
        [100, 100, 5, 5],  # entirely outside a 64×48 image
        [-20, -10, 5, 5],  # entirely outside, top left
        [1, None, 5, 5],  # JSON null
    ]
    annotations = [{"id": i + 1, "image_id": 7, "category_id": 1, "bbox": b} for i, b in enumerate(bad)]
    partly_outside = {"id": 99, "image_id": 7, "category_id": 1, "bbox": [-4, 2, 10, 20], "height": 20}
    annotations.append(partly_outside)
    source = _write_json(
        tmp_path / "ann.json",
        {
            "images": [{"id": 7, "file_name": "a.png", "width": W, "height": H}],
            "annotations": annotations,
        },
    )

    with caplog.at_level(logging.WARNING, logger="hkd.data.datasets"):
        dataset = CocoPedestrianDataset(tmp_path / "images", source)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "ann.json" in message and "dropped 6 of 7 boxes" in message
    assert "2 missing or non-finite coordinates" in message
    assert "2 non-positive width or height" in message
    assert "2 lying entirely outside the image" in message
    assert "a.png [100.0, 100.0, 5.0, 5.0]" in message
    assert "clipped 1 box(es)" in message
    target = dataset.target(0)
    assert target["boxes"].tolist() == [[0, 2, 6, 22]]
    assert target["image_id"] == 7


def test_clipping_alone_logs_no_warning(tmp_path, caplog):
    _write_image(tmp_path / "images" / "a.png")
    source = _write_json(
        tmp_path / "ann.json",
        {"images": [{"id": 1, "file_name": "a.png"}],  # no size: read from the file
         "annotations": [{"id": 1, "image_id": 1, "bbox": [60, 40, 10, 10]}]},
    )
    with caplog.at_level(logging.INFO, logger="hkd.data.datasets"):
        dataset = CocoPedestrianDataset(tmp_path / "images", source)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "clipped 1 box(es)" in caplog.text
    assert dataset.target(0)["boxes"].tolist() == [[60, 40, 64, 48]]
    assert dataset.target(0)["height"].tolist() == [10]


def test_annotation_of_unknown_image_is_an_error(tmp_path):
    _write_image(tmp_path / "images" / "a.png")
    source = _write_json(
        tmp_path / "ann.json",
        {"images": [{"id": 1, "file_name": "a.png"}],
         "annotations": [{"id": 12, "image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5]}]},
    )
    with pytest.raises(DatasetError, match=r"ann\.json.*annotation 12 refers to image id 5"):
        CocoPedestrianDataset(tmp_path / "images", source)


def test_malformed_json_names_file_and_line(tmp_path):
    source = tmp_path / "broken.json"
    source.write_text('{"images": [\n  {"id": 1,, "file_name": "a.png"}\n]}')
    with pytest.raises(DatasetError, match=r"broken\.json.*line 2"):
        CocoPedestrianDataset(tmp_path, source)


def test_missing_image_file_and_unknown_categories_are_errors(tmp_path):
    (tmp_path / "images").mkdir()
    source = _write_json(tmp_path / "ann.json", {"images": [{"id": 1, "file_name": "gone.png"}]})
    with pytest.raises(DatasetError, match=r"not in .*images.*gone\.png"):
        CocoPedestrianDataset(tmp_path / "images", source)

    _write_image(tmp_path / "images" / "a.png")
    cars = _write_json(
        tmp_path / "cars.json",
        {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 3, "name": "car"}]},
    )
    with pytest.raises(DatasetError, match="no pedestrian category.*car"):
        CocoPedestrianDataset(tmp_path / "images", cars)
    dataset = CocoPedestrianDataset(tmp_path / "images", cars, pedestrian_category_ids=[3])
    assert len(dataset) == 1


def test_image_size_mismatch_is_reported(tmp_path):
    _write_image(tmp_path / "images" / "a.png", size=(32, 32))
    source = _write_json(
        tmp_path / "ann.json", {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}]}
    )
    dataset = CocoPedestrianDataset(tmp_path / "images", source)
    with pytest.raises(DatasetError, match=r"a\.png.*32×32.*64×48"):
        dataset[0]


def _crowdhuman(tmp_path: Path) -> Path:
    _write_image(tmp_path / "Images" / "273271,c9db000d5146c15.jpg", fmt="JPEG")
    _write_image(tmp_path / "Images" / "273271,1a0d6000b9e1f5b7.jpg", fmt="JPEG")
    lines = [
        {"ID": "273271,c9db000d5146c15", "gtboxes": [
            {"tag": "person", "fbox": [10, 4, 10, 40], "vbox": [10, 4, 10, 20], "hbox": [12, 4, 5, 5],
             "extra": {"box_id": 0, "occ": 1}},
            {"tag": "mask", "fbox": [40, 0, 20, 20], "vbox": [40, 0, 20, 20], "extra": {"ignore": 1}},
            {"tag": "person", "fbox": [30, 10, 5, 10], "vbox": [30, 10, 5, 10],
             "extra": {"box_id": 2, "ignore": 1}},
        ]},
        # Full body reaching below the image: clipped, height kept.
        {"ID": "273271,1a0d6000b9e1f5b7", "gtboxes": [
            {"tag": "person", "fbox": [5, 20, 10, 50], "vbox": [5, 20, 10, 20], "extra": {"occ": 0}},
        ]},
    ]
    source = tmp_path / "annotation_val.odgt"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return source


def test_crowdhuman_odgt_targets(tmp_path):
    dataset = CrowdHumanDataset(tmp_path / "Images", _crowdhuman(tmp_path))

    assert len(dataset) == 2
    assert dataset.image_ids == [1, 2]
    assert dataset.file_names == ["273271,c9db000d5146c15.jpg", "273271,1a0d6000b9e1f5b7.jpg"]
    image, target = dataset[0]
    assert image.shape == (3, H, W)
    assert target["boxes"].tolist() == [[10, 4, 20, 44], [40, 0, 60, 20], [30, 10, 35, 20]]
    assert target["ignore"].tolist() == [False, True, True]  # mask tag, extra.ignore
    assert target["vis_ratio"].tolist() == pytest.approx([0.5, 1.0, 1.0])
    assert target["height"].tolist() == [40, 20, 10]

    target = dataset.target(1)
    assert target["boxes"].tolist() == [[5, 20, 15, 48]]
    assert target["height"].tolist() == [50]
    assert target["vis_ratio"].tolist() == pytest.approx([0.4])


def test_malformed_odgt_line_names_file_and_line(tmp_path):
    source = tmp_path / "bad.odgt"
    source.write_text('{"ID": "a", "gtboxes": []}\n{"ID": "b", "gtboxes": [\n')
    with pytest.raises(DatasetError, match=r"bad\.odgt', line 2: malformed JSON"):
        CrowdHumanDataset(tmp_path, source)
    source.write_text('{"gtboxes": []}\n')
    with pytest.raises(DatasetError, match=r"line 1: expected an object with a string 'ID'"):
        CrowdHumanDataset(tmp_path, source)


def _image_folder(root: Path) -> Path:
    _write_image(root / "b.png")
    _write_image(root / "a.jpg", fmt="JPEG")
    _write_image(root / "c.webp", fmt="WEBP")
    _write_image(root / "gray.png", mode="L")
    _write_image(root / "rgba.png", mode="RGBA")
    _write_image(root / "nested" / "d.bmp", fmt="BMP")
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def test_image_folder_lists_images_with_empty_targets(tmp_path, caplog):
    root = _image_folder(tmp_path / "photos")
    (root / "broken.jpg").write_bytes(b"not really a jpeg")

    with caplog.at_level(logging.WARNING, logger="hkd.data.datasets"):
        dataset = ImageFolderDataset(root)

    assert dataset.file_names == ["a.jpg", "b.png", "c.webp", "gray.png", "rgba.png"]
    assert "skipped 1 unreadable image file(s)" in caplog.text and "broken.jpg" in caplog.text
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, H, W)
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert target["ignore"].shape == target["height"].shape == target["vis_ratio"].shape == (0,)
    assert "nested/d.bmp" in ImageFolderDataset(root, recursive=True).file_names
    assert dataset.coco_gt()["annotations"] == []


def test_open_dataset_recognises_layouts(tmp_path):
    synth = tmp_path / "synth"
    _write_image(synth / "images" / "a.png")
    _write_json(synth / "annotations.json",
                {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [],
                 "categories": [{"id": 1, "name": "pedestrian"}]})
    assert isinstance(open_dataset(synth), CocoPedestrianDataset)

    city = tmp_path / "city"
    assert isinstance(open_dataset(_citypersons(city)), CocoPedestrianDataset)
    crowd = tmp_path / "crowd"
    assert isinstance(open_dataset(_crowdhuman(crowd)), CrowdHumanDataset)
    assert isinstance(open_dataset(_image_folder(tmp_path / "photos")), ImageFolderDataset)

    with pytest.raises(DatasetError, match=r"nowhere.*does not exist.*accepted layouts"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"readme\.txt.*accepted layouts"):
        open_dataset(tmp_path / "readme.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no readable images.*empty.*accepted layouts"):
        open_dataset(tmp_path / "empty")


def test_dataloader_with_collate_and_transforms(tmp_path):
    dataset = CocoPedestrianDataset(
        tmp_path / "images", _citypersons(tmp_path), transforms=RandomHorizontalFlip(1.0)
    )
    images, targets = next(iter(DataLoader(dataset, batch_size=2, collate_fn=collate_detection)))

    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert images[0].shape == (3, H, W)
    # Flipped: x1' = W - x2.
    assert targets[0]["boxes"][0].tolist() == [44, 5, 54, 35]
    assert targets[0]["ignore"].tolist() == [False, True, True]
    # The dataset's own record is not changed by the transform.
    assert dataset.target(0)["boxes"][0].tolist() == [10, 5, 20, 35]
    assert np.isclose(images[0].mean().item(), images[1].mean().item())
