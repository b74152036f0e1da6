"""Issue #31: every image of a dataset is read from inside its images folder: `..`, absolute
names and symlinks that leave it are refused naming the file; HKD_ALLOW_SYMLINKS=1 opts in."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hkd.cli import main
from hkd.data.datasets import DatasetError, ImageFolderDataset, open_dataset


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (90, 120, 150)).save(path)
    return path


def _dataset(root: Path, names: list[str]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": [],
                                                       "categories": [{"id": 1, "name": "pedestrian"}]}))
    return root


@pytest.mark.parametrize("name", ["../../../outside.jpg", "sub/../../outside.jpg", "/etc/hostname",
                                  "..\\outside.jpg"])
def test_names_that_leave_the_images_folder_are_refused(tmp_path, name):
    _image(tmp_path / "outside.jpg")
    root = _dataset(tmp_path / "data" / "set", [name])
    with pytest.raises(DatasetError, match="leaves the images folder"):
        open_dataset(root)


def test_a_symlink_out_of_the_images_folder_is_refused_unless_allowed(tmp_path, monkeypatch):
    outside = _image(tmp_path / "secret" / "x.jpg")
    root = _dataset(tmp_path / "set", ["a.jpg", "link.jpg"])
    _image(root / "images" / "a.jpg")
    (root / "images" / "link.jpg").symlink_to(outside)
    with pytest.raises(DatasetError, match="link.jpg.*outside the images folder.*HKD_ALLOW_SYMLINKS=1"):
        open_dataset(root)
    with pytest.raises(DatasetError, match="link.jpg"):
        ImageFolderDataset(root / "images")
    monkeypatch.setenv("HKD_ALLOW_SYMLINKS", "1")
    assert len(open_dataset(root)) == 2
    assert len(ImageFolderDataset(root / "images")) == 2


def test_a_symlink_inside_the_folder_and_a_symlinked_dataset_folder_are_fine(tmp_path):
    real = _dataset(tmp_path / "real", ["a.jpg", "b.jpg"])
    _image(real / "images" / "a.jpg")
    (real / "images" / "b.jpg").symlink_to(real / "images" / "a.jpg")
    (tmp_path / "alias").symlink_to(real)  # data/synthped -> /mnt/…: the folder itself may be a link
    assert len(open_dataset(tmp_path / "alias")) == 2


def test_crowdhuman_ids_cannot_climb_out(tmp_path):
    (tmp_path / "Images").mkdir()
    _image(tmp_path / "x.jpg")
    (tmp_path / "a.odgt").write_text(json.dumps({"ID": "../x", "gtboxes": []}) + "\n")
    with pytest.raises(DatasetError, match="leaves the images folder"):
        open_dataset(tmp_path / "a.odgt")


def test_predict_refuses_a_symlink_out_of_its_images(tmp_path, capsys):
    outside = _image(tmp_path / "secret" / "x.jpg")
    images = tmp_path / "images"
    _image(images / "a.jpg")
    (images / "link.jpg").symlink_to(outside)
    assert main(["predict", "--checkpoint", str(tmp_path / "none.safetensors"), "--images", str(images),
                 "--out", str(tmp_path / "d.json")]) == 2
    assert "link.jpg" in capsys.readouterr().err
