"""COCO's own instances_<split>.json and CityPersons' anno_<split>.mat, written in their exact
published layouts in tmp_path; the dataset split into modules keeps every old import working."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hkd.data.datasets import (
    CityPersonsDataset,
    CocoOfficialDataset,
    DatasetError,
    PedestrianDataset,
    open_dataset,
)

W, H = 320, 240  # image size of every fixture image, pixels

# --------------------------------------------------------------------------- CityPersons

FRANKFURT = "frankfurt_000000_000294_leftImg8bit.png"
LINDAU = "lindau_000000_000019_leftImg8bit.png"
MUNSTER = "munster_000000_000019_leftImg8bit.png"
# [class, x1, y1, w, h, instance id, x1_vis, y1_vis, w_vis, h_vis]; 1 pedestrian, 0 ignore
# region, 2 rider, 3 sitting, 4 other, 5 group.
CITYPERSONS_ROWS = {
    ("frankfurt", FRANKFURT): [
        [1, 10, 20, 40, 100, 1001, 10, 20, 40, 100],  # fully visible, 100 px: Reasonable
        [1, 100, 30, 24, 60, 1002, 100, 30, 24, 30],  # half visible, 60 px: Heavy
        [0, 200, 10, 50, 40, 0, 0, 0, 0, 0],  # ignore region
        [2, 150, 40, 30, 90, 1003, 150, 40, 30, 90],  # rider
        [1, 300, 50, 40, 120, 1004, 300, 50, 20, 120],  # half outside the image, half visible: Heavy
    ],
    ("lindau", LINDAU): [
        [1, 5, 5, 25, 64, 2001, 5, 5, 25, 64],  # 64 px, visible: Reasonable and Small
        [3, 60, 5, 20, 60, 2002, 60, 5, 20, 60],  # sitting
        [4, 90, 5, 20, 60, 2003, 90, 5, 20, 60],  # other
        [5, 120, 5, 60, 80, 2004, 120, 5, 60, 80],  # group
        [1, 200, 100, 10, 30, 2005, 200, 100, 10, 30],  # 30 px: only All
    ],
    ("munster", MUNSTER): [],  # nobody
}
# What each reader must give: per image boxes (xyxy, clipped), ignore, height, vis_ratio.
CITYPERSONS_EXPECTED = {
    "frankfurt/" + FRANKFURT: (
        [[10, 20, 50, 120], [100, 30, 124, 90], [200, 10, 250, 50], [150, 40, 180, 130], [300, 50, 320, 170]],
        [False, False, True, True, False],
        [100, 60, 40, 90, 120],
        [1.0, 0.5, 0.0, 1.0, 0.5],
    ),
    "lindau/" + LINDAU: (
        [[5, 5, 30, 69], [60, 5, 80, 65], [90, 5, 110, 65], [120, 5, 180, 85], [200, 100, 210, 130]],
        [False, True, True, True, False],
        [64, 60, 60, 80, 30],
        [1.0, 1.0, 1.0, 1.0, 1.0],
    ),
    "munster/" + MUNSTER: ([], [], [], []),
}
CITYPERSONS_COUNTS = {"images": 3, "pedestrians": 5, "ignore": 5,
                      "setups": {"Reasonable": 2, "Small": 1, "Heavy": 2, "All": 5}}


def write_image(path: Path, size: tuple[int, int] = (W, H), color=(90, 120, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:] = color
    pixels[::7, ::5] = (250, 10, 10)  # not flat, so a decoding mistake would show
    Image.fromarray(pixels).save(path)
    return path


def write_anno_mat(path: Path, split: str, rows: dict[tuple[str, str], list[list[float]]]) -> Path:
    """``anno_<split>_aligned``: a 1×N cell array of structs (cityname, im_name, bbs), as published."""
    cells = np.empty((1, len(rows)), dtype=object)
    for k, ((city, name), bbs) in enumerate(rows.items()):
        cells[0, k] = {"cityname": city, "im_name": name,
                       "bbs": np.asarray(bbs, np.float64) if bbs else np.zeros((0, 10))}
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {f"anno_{split}_aligned": cells})
    return path


def write_citypersons(root: Path, *, split: str = "val", mat_folder: str = "") -> Path:
    """Cityscapes' ``leftImg8bit/<split>/<city>/*.png`` + CityPersons' ``anno_<split>.mat``; returns the .mat."""
    for city, name in CITYPERSONS_ROWS:
        write_image(root / "leftImg8bit" / split / city / name)
    return write_anno_mat(root / mat_folder / f"anno_{split}.mat", split, CITYPERSONS_ROWS)


# --------------------------------------------------------------------------- COCO

COCO_CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
]
COCO_COUNTS = {"images": 2, "pedestrians": 2, "ignore": 1,
               "setups": {"Reasonable": 2, "Small": 1, "Heavy": 0, "All": 2}}


def write_coco(root: Path, split: str = "val2017") -> Path:
    """``<root>/annotations/instances_<split>.json`` + ``<root>/<split>/*.jpg``, as COCO ships them."""
    images = [
        {"license": 1, "file_name": "000000000139.jpg", "coco_url": "", "height": H, "width": W,
         "date_captured": "", "flickr_url": "", "id": 139},
        {"license": 1, "file_name": "000000000285.jpg", "coco_url": "", "height": H, "width": W,
         "date_captured": "", "flickr_url": "", "id": 285},
    ]
    for image in images:
        write_image(root / split / image["file_name"])

    def ann(id_, image_id, category_id, bbox, iscrowd=0):
        return {"segmentation": [[bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1], bbox[0], bbox[1] + bbox[3]]],
                "area": bbox[2] * bbox[3], "iscrowd": iscrowd, "image_id": image_id, "bbox": bbox,
                "category_id": category_id, "id": id_}

    annotations = [
        ann(10, 139, 1, [10.5, 20.25, 40.0, 100.0]),
        ann(11, 139, 1, [100.0, 20.0, 120.0, 90.0], iscrowd=1),  # a crowd of persons: ignore region
        ann(12, 139, 3, [200.0, 100.0, 60.0, 40.0]),  # a car: not a person at all
        ann(13, 285, 1, [50.0, 50.0, 30.0, 60.0]),
        ann(14, 285, 2, [50.0, 100.0, 30.0, 30.0]),  # a bicycle
    ]
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations,
                                "categories": COCO_CATEGORIES}))
    return path


# --------------------------------------------------------------------------- CityPersons tests


def _check_citypersons(dataset: PedestrianDataset, images_dir: Path) -> None:
    assert isinstance(dataset, CityPersonsDataset)
    assert dataset.format_name == "citypersons" and dataset.split == "val"
    assert dataset.image_ids == [1, 2, 3]  # the .mat order, from 1, as the official val_gt.json
    assert dataset.file_names == list(CITYPERSONS_EXPECTED)
    for index, (name, (boxes, ignore, heights, vis)) in enumerate(CITYPERSONS_EXPECTED.items()):
        target = dataset.target(index)
        assert target["boxes"].tolist() == boxes, name
        assert target["ignore"].tolist() == ignore, name
        assert target["height"].tolist() == heights, name
        assert target["vis_ratio"].tolist() == pytest.approx(vis), name
        assert dataset.image_path(index) == images_dir / name
    assert dataset.notes == []  # visibility is known for everybody


def test_the_fixture_loads_as_the_published_files_do(tmp_path):
    mat = write_citypersons(tmp_path)
    cells = scipy.io.loadmat(mat)["anno_val_aligned"]
    assert cells.shape == (1, 3) and cells.dtype == object
    first = cells[0][0]
    assert first.shape == (1, 1) and set(first.dtype.names) == {"cityname", "im_name", "bbs"}
    # how the CityPersons conversion scripts read a cell
    assert first[0][0][0][0] == "frankfurt" and first[0][0][1][0] == FRANKFURT
    assert first[0][0][2].shape == (5, 10)


def test_citypersons_mat_with_its_cityscapes_images(tmp_path):
    mat = write_citypersons(tmp_path / "cityscapes", mat_folder="annotations")
    images_dir = tmp_path / "cityscapes" / "leftImg8bit" / "val"
    _check_citypersons(open_dataset(mat), images_dir)  # <mat folder>/../leftImg8bit/val
    _check_citypersons(open_dataset(tmp_path / "cityscapes"), images_dir)  # the folder: annotations/anno_val.mat

    image, target = open_dataset(mat)[0]
    assert tuple(image.shape) == (3, H, W) and target["file_name"] == "frankfurt/" + FRANKFURT


def test_citypersons_folder_holding_the_mat_and_explicit_images(tmp_path):
    mat = write_citypersons(tmp_path / "cp")
    _check_citypersons(open_dataset(tmp_path / "cp"), tmp_path / "cp" / "leftImg8bit" / "val")
    moved = tmp_path / "elsewhere" / "val"
    moved.parent.mkdir()
    os.rename(tmp_path / "cp" / "leftImg8bit" / "val", moved)
    with pytest.raises(DatasetError, match=r"no Cityscapes images for '.*anno_val\.mat'.*leftImg8bit"):
        open_dataset(mat)
    _check_citypersons(open_dataset(mat, images=moved), moved)
    _check_citypersons(CityPersonsDataset(mat, images_dir=moved), moved)


def test_several_citypersons_splits_need_one_to_be_picked(tmp_path):
    write_citypersons(tmp_path, split="val")
    write_citypersons(tmp_path, split="train")
    with pytest.raises(DatasetError, match=r"several CityPersons splits .*anno_train\.mat.*anno_val\.mat"
                                           r".*pass the split \(train \| val\)"):
        open_dataset(tmp_path)
    assert open_dataset(tmp_path, split="val").split == "val"
    assert open_dataset(tmp_path, split="train").split == "train"
    with pytest.raises(DatasetError, match=r"no CityPersons split 'test'.*\['train', 'val'\]"):
        open_dataset(tmp_path, split="test")
    with pytest.raises(DatasetError, match="one split already"):
        open_dataset(tmp_path / "anno_val.mat", split="val")


@pytest.mark.parametrize("variables, message", [
    ({"boxes": np.eye(3)}, r"not a CityPersons annotation file: expected a variable anno_<split>_aligned.*"
                           r"it holds \['boxes'\]"),
    ({"anno_val_aligned": np.eye(3)}, r"anno_val_aligned is a float64 array of shape \(3, 3\); expected"),
])
def test_a_mat_of_another_structure_is_refused_naming_it(tmp_path, variables, message):
    write_citypersons(tmp_path)
    scipy.io.savemat(tmp_path / "anno_val.mat", variables)
    with pytest.raises(DatasetError, match=r"anno_val\.mat.*" + message):
        open_dataset(tmp_path / "anno_val.mat")


def test_cells_without_the_citypersons_fields_are_refused(tmp_path):
    write_citypersons(tmp_path)
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = {"cityname": "frankfurt", "im_name": FRANKFURT}  # no bbs
    scipy.io.savemat(tmp_path / "anno_val.mat", {"anno_val_aligned": cells})
    with pytest.raises(DatasetError,
                       match=r"anno_val\.mat', cell 1 is not a struct with fields cityname, im_name, bbs"):
        open_dataset(tmp_path / "anno_val.mat")
    write_anno_mat(tmp_path / "anno_val.mat", "val", {("frankfurt", FRANKFURT): [[1, 2, 3]]})
    with pytest.raises(DatasetError, match=r"cell 1: bbs has shape \(1, 3\); expected N rows of 10"):
        open_dataset(tmp_path / "anno_val.mat")


def test_a_file_that_is_no_mat_at_all_is_refused(tmp_path):
    write_citypersons(tmp_path)
    (tmp_path / "anno_val.mat").write_text("not MATLAB")
    with pytest.raises(DatasetError, match=r"anno_val\.mat' is not a readable MATLAB \.mat file"):
        open_dataset(tmp_path / "anno_val.mat")


def test_an_image_missing_from_the_tree_is_named_with_the_mat(tmp_path):
    write_citypersons(tmp_path)
    (tmp_path / "leftImg8bit" / "val" / "lindau" / LINDAU).unlink()
    with pytest.raises(DatasetError, match=rf"1 image\(s\) listed in '.*anno_val\.mat' are not in .*{LINDAU}"):
        open_dataset(tmp_path / "anno_val.mat")


@pytest.mark.parametrize("city, name", [("frankfurt", "../x.png"), ("..", "x.png"), ("frankfurt", "/etc/hostname")])
def test_names_that_leave_the_images_folder_are_refused(tmp_path, city, name):
    write_citypersons(tmp_path)
    write_image(tmp_path / "leftImg8bit" / "x.png")
    write_anno_mat(tmp_path / "anno_val.mat", "val", {(city, name): []})
    with pytest.raises(DatasetError, match=r"anno_val\.mat'.*leaves the images folder"):
        open_dataset(tmp_path / "anno_val.mat")


def test_a_symlink_out_of_the_tree_is_refused(tmp_path):
    write_citypersons(tmp_path / "cp")
    outside = write_image(tmp_path / "secret.png")
    image = tmp_path / "cp" / "leftImg8bit" / "val" / "lindau" / LINDAU
    image.unlink()
    image.symlink_to(outside)
    with pytest.raises(DatasetError, match=rf"anno_val\.mat'.*{LINDAU}.*outside the images folder"):
        open_dataset(tmp_path / "cp")


# --------------------------------------------------------------------------- COCO tests


def _check_coco(dataset: PedestrianDataset) -> None:
    assert isinstance(dataset, CocoOfficialDataset)
    assert dataset.format_name == "coco official" and dataset.split == "val2017"
    assert dataset.image_ids == [139, 285] and dataset.file_names == ["000000000139.jpg", "000000000285.jpg"]
    first, second = dataset.target(0), dataset.target(1)
    # the car and the bicycle are gone; the crowd of persons is an ignore region
    assert first["boxes"].tolist() == [[10.5, 20.25, 50.5, 120.25], [100, 20, 220, 110]]
    assert first["ignore"].tolist() == [False, True]
    assert second["boxes"].tolist() == [[50, 50, 80, 110]] and second["ignore"].tolist() == [False]
    assert second["height"].tolist() == [60] and second["vis_ratio"].tolist() == [1.0]
    assert dataset.notes == [
        "visibility unknown for 2 of 2 pedestrians: taken as 1.0 (fully visible), so the Heavy setup "
        "(visibility 0.2-0.65) cannot count them",
        "2 annotations of other categories than person were left out (they are not people); crowds of "
        "persons are ignore regions",
    ]


def test_coco_root_and_its_instances_json(tmp_path):
    json_file = write_coco(tmp_path / "coco")
    _check_coco(open_dataset(tmp_path / "coco"))
    _check_coco(open_dataset(json_file))  # images in <root>/val2017
    _check_coco(CocoOfficialDataset(json_file))
    image, target = open_dataset(json_file)[1]
    assert tuple(image.shape) == (3, H, W) and target["image_id"] == 285


def test_coco_json_with_images_elsewhere(tmp_path):
    json_file = write_coco(tmp_path / "coco")
    os.rename(tmp_path / "coco" / "val2017", tmp_path / "pictures")
    with pytest.raises(DatasetError, match=r"no images folder for '.*instances_val2017\.json'.*val2017"):
        open_dataset(json_file)
    _check_coco(open_dataset(json_file, images=tmp_path / "pictures"))


def test_several_coco_splits_need_one_to_be_picked(tmp_path):
    write_coco(tmp_path, "val2017")
    write_coco(tmp_path, "train2017")
    with pytest.raises(DatasetError, match=r"several COCO splits \(.*instances_train2017\.json, "
                                           r".*instances_val2017\.json\); open one of these files, or pass "
                                           r"the split \(train2017 \| val2017\)"):
        open_dataset(tmp_path)
    _check_coco(open_dataset(tmp_path, split="val2017"))


def test_a_coco_image_missing_is_named_with_the_json(tmp_path):
    write_coco(tmp_path)
    (tmp_path / "val2017" / "000000000285.jpg").unlink()
    with pytest.raises(DatasetError, match=r"listed in '.*instances_val2017\.json' are not in .*000000000285"):
        open_dataset(tmp_path)


def test_a_coco_style_pedestrian_json_still_makes_other_categories_ignore(tmp_path):
    """Only COCO's own files drop other categories; CityPersons-style riders stay ignore regions."""
    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "rider"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 10, 30]}]}))
    dataset = open_dataset(tmp_path / "gt.json")
    assert dataset.format_name == "coco-style json" and dataset.target(0)["ignore"].tolist() == [True]


# --------------------------------------------------------------------------- the split into modules


def test_every_old_name_still_imports_from_datasets():
    import hkd.data.datasets as datasets

    for name in ("ACCEPTED_LAYOUTS", "CocoPedestrianDataset", "CrowdHumanDataset", "DatasetError",
                 "ImageAnnotations", "ImageFolderDataset", "PedestrianDataset", "Target", "Transform",
                 "collate_detection", "open_dataset", "check_relative_name", "confine", "symlinks_allowed",
                 "ALLOW_SYMLINKS_ENV"):
        assert hasattr(datasets, name), name
    assert datasets.DatasetError is __import__("hkd.data.base", fromlist=["DatasetError"]).DatasetError


def test_no_module_of_hkd_data_is_above_600_lines():
    folder = Path(__import__("hkd.data", fromlist=["__file__"]).__file__).parent
    lengths = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in folder.glob("*.py")}
    assert max(lengths.values()) <= 600, lengths


def test_load_pixels_and_image_file_of_the_base_class(tmp_path):
    mat = write_citypersons(tmp_path)
    dataset = open_dataset(mat)
    pixels = dataset.load_pixels(1)
    assert pixels.shape == (H, W, 3) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.asarray(Image.open(dataset.image_path(1)).convert("RGB")))
    assert dataset.image_file(1) == dataset.image_path(1)
