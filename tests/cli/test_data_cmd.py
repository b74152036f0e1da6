"""``hkd data info`` and ``hkd data convert``: every format named, counted per setup, and converted
into a folder that opens with default settings and scores detections exactly as the original."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hkd.cli import main
from hkd.cli.data_cmd import INFO_KEYS, convert
from hkd.data.base import ImageAnnotations, PedestrianDataset
from hkd.data.datasets import open_dataset
from hkd.eval.mr import evaluate_mr
from tests.data.test_formats_official import (
    CITYPERSONS_COUNTS,
    COCO_COUNTS,
    H,
    W,
    write_citypersons,
    write_coco,
    write_image,
)


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch):
    monkeypatch.delenv("HKD_ALLOW_SYMLINKS", raising=False)


def _info(path: Path, *extra: str, capsys) -> dict:
    assert main(["data", "info", str(path), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _synthped_style(root: Path) -> Path:
    write_image(root / "images" / "a.jpg")
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "pedestrian"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 80], "vis_ratio": 0.5},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 10, 30, 80]}]}))
    return root


def _crowdhuman(root: Path) -> Path:
    write_image(root / "Images" / "273271,c9db000d5146c15.jpg")
    line = {"ID": "273271,c9db000d5146c15", "gtboxes": [
        {"tag": "person", "fbox": [10, 10, 30, 80], "vbox": [10, 10, 30, 40], "extra": {}},
        {"tag": "mask", "fbox": [100, 10, 50, 50], "vbox": [100, 10, 50, 50], "extra": {"ignore": 1}}]}
    (root / "train.odgt").write_text(json.dumps(line) + "\n")
    return root / "train.odgt"


def _folder(root: Path) -> Path:
    write_image(root / "a.png")
    write_image(root / "b.jpg")
    return root


# --------------------------------------------------------------------------- info


def test_info_json_of_citypersons(tmp_path, capsys):
    info = _info(write_citypersons(tmp_path), capsys=capsys)
    assert list(info) == list(INFO_KEYS) == ["format", "images", "pedestrians", "ignore", "setups", "notes"]
    assert info == {"format": "citypersons", **CITYPERSONS_COUNTS, "notes": []}


def test_info_json_of_coco_notes_the_unknown_visibility(tmp_path, capsys):
    write_coco(tmp_path / "coco")
    info = _info(tmp_path / "coco", capsys=capsys)
    assert {key: info[key] for key in ("images", "pedestrians", "ignore", "setups")} == COCO_COUNTS
    assert info["format"] == "coco official"
    assert any(note.startswith("visibility unknown for 2 of 2 pedestrians") for note in info["notes"])


@pytest.mark.parametrize("make, fmt, counts", [
    (_synthped_style, "coco-style json", (1, 2, 0)),
    (lambda root: _synthped_style(root) / "annotations.json", "coco-style json", (1, 2, 0)),
    (_crowdhuman, "crowdhuman", (1, 1, 1)),
    (_folder, "image folder", (2, 0, 0)),
    (lambda root: write_coco(root), "coco official", (2, 2, 1)),
    (lambda root: write_citypersons(root), "citypersons", (3, 5, 5)),
])
def test_info_names_every_format(tmp_path, capsys, make, fmt, counts):
    info = _info(make(tmp_path / "ds"), capsys=capsys)
    assert info["format"] == fmt
    assert (info["images"], info["pedestrians"], info["ignore"]) == counts
    assert list(info["setups"]) == ["Reasonable", "Small", "Heavy", "All"]


def test_info_notes_a_partly_unknown_visibility_and_an_unlabelled_folder(tmp_path, capsys):
    info = _info(_synthped_style(tmp_path / "s"), capsys=capsys)
    assert info["notes"] == ["visibility unknown for 1 of 2 pedestrians: taken as 1.0 (fully visible), "
                             "so the Heavy setup (visibility 0.2-0.65) cannot count them"]
    assert info["setups"] == {"Reasonable": 1, "Small": 0, "Heavy": 1, "All": 2}
    assert _info(_folder(tmp_path / "f"), capsys=capsys)["notes"] == ["no labels: a folder of images only"]


def test_info_text(tmp_path, capsys):
    mat = write_citypersons(tmp_path)
    assert main(["data", "info", str(mat)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{mat}: citypersons"
    assert "images       3" in out and "pedestrians  5" in out and "ignore       5 regions" in out
    assert "Reasonable 2, Small 1, Heavy 2, All 5" in out
    write_coco(tmp_path / "coco")
    assert main(["data", "info", str(tmp_path / "coco")]) == 0
    assert "note: visibility unknown for 2 of 2 pedestrians" in capsys.readouterr().out


def test_info_images_and_split_options(tmp_path, capsys):
    write_coco(tmp_path, "val2017")
    write_coco(tmp_path, "train2017")
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "several COCO splits" in capsys.readouterr().err
    assert _info(tmp_path, "--split", "val2017", capsys=capsys)["images"] == 2
    os.rename(tmp_path / "val2017", tmp_path / "pictures")
    info = _info(tmp_path / "annotations" / "instances_val2017.json", "--images", str(tmp_path / "pictures"),
                 capsys=capsys)
    assert info["format"] == "coco official" and info["images"] == 2


@pytest.mark.parametrize("args, message", [
    (["data", "info", "no/such/folder"], "dataset path 'no/such/folder' does not exist"),
    (["data", "convert", "no/such/folder", "--out", "x"], "does not exist"),
])
def test_user_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("hkd data: error: ") and message in err


def test_an_action_is_required_and_convert_needs_out(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["data"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "convert", str(tmp_path)])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------- convert


def _detections() -> list[dict]:
    """A mix of hits, misses, a loose box, a hit on an ignore region and false alarms (CityPersons fixture)."""
    return [
        {"image_id": 1, "category_id": 1, "bbox": [11, 21, 39, 98], "score": 0.95},  # the 100 px person
        {"image_id": 1, "category_id": 1, "bbox": [200, 10, 50, 40], "score": 0.9},  # on the ignore region
        {"image_id": 1, "category_id": 1, "bbox": [298, 52, 22, 118], "score": 0.6},  # the clipped one
        {"image_id": 1, "category_id": 1, "bbox": [60, 150, 30, 70], "score": 0.8},  # false alarm
        {"image_id": 2, "category_id": 1, "bbox": [6, 6, 25, 62], "score": 0.7},  # the 64 px person
        {"image_id": 2, "category_id": 1, "bbox": [250, 150, 30, 75], "score": 0.85},  # false alarm
        {"image_id": 3, "category_id": 1, "bbox": [10, 10, 30, 80], "score": 0.5},  # false alarm, empty image
    ]


def test_convert_citypersons_scores_as_the_original(tmp_path, capsys):
    mat = write_citypersons(tmp_path / "cp")
    out = tmp_path / "converted"
    assert main(["data", "convert", str(mat), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote 3 images (3 hard links) and {out / 'annotations.json'}")

    original, copy = open_dataset(mat), open_dataset(out)  # default settings: no HKD_ALLOW_SYMLINKS
    assert copy.format_name == "coco-style json" and copy.file_names == original.file_names
    written = json.loads((out / "annotations.json").read_text())
    assert written["info"] == {"converted_from": str(mat), "format": "citypersons", "notes": []}
    assert {k: v for k, v in written.items() if k != "info"} == original.coco_gt() == copy.coco_gt()
    for index in range(len(original)):
        assert os.path.samefile(copy.image_path(index), original.image_path(index))  # hard links
        assert np.array_equal(copy.load_pixels(index), original.load_pixels(index))

    dets_file = tmp_path / "dets.json"
    dets_file.write_text(json.dumps(_detections()))
    direct = evaluate_mr(original.coco_gt(), _detections()).mr
    assert direct["Heavy"] > 0 and direct["All"] > 0 and all(np.isfinite(v) for v in direct.values())
    assert main(["eval", "--gt", str(out / "annotations.json"), "--dets", str(dets_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mr"] == direct
    assert evaluate_mr(copy.coco_gt(), _detections()).mr == direct
    assert _info(out, capsys=capsys) == {"format": "coco-style json", **CITYPERSONS_COUNTS, "notes": []}


def test_convert_copy_and_coco_notes(tmp_path, capsys):
    write_coco(tmp_path / "coco")
    out = tmp_path / "converted"
    assert main(["data", "convert", str(tmp_path / "coco"), "--out", str(out), "--copy"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 images (2 copies)" in printed and "note: visibility unknown" in printed
    copy = open_dataset(out)
    assert not os.path.samefile(copy.image_path(0), tmp_path / "coco" / "val2017" / "000000000139.jpg")
    assert copy.image_ids == [139, 285] and copy.coco_gt()["annotations"] == open_dataset(
        tmp_path / "coco").coco_gt()["annotations"]
    notes = json.loads((out / "annotations.json").read_text())["info"]["notes"]
    assert notes[0].startswith("visibility unknown")  # kept: the copy itself reads vis_ratio 1.0 as known


def test_convert_falls_back_to_copies_where_hard_links_fail(tmp_path, capsys, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert main(["data", "convert", str(_crowdhuman(tmp_path / "ch")), "--out", str(tmp_path / "out")]) == 0
    assert "wrote 1 images (1 copies)" in capsys.readouterr().out
    assert open_dataset(tmp_path / "out").coco_gt() == open_dataset(tmp_path / "ch" / "train.odgt").coco_gt()


def test_convert_refuses_a_folder_that_holds_something(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["data", "convert", str(_folder(tmp_path / "f")), "--out", str(tmp_path / "out")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "out" / "keep.txt").read_text() == "mine"


class _Frames(PedestrianDataset):
    """Images that are no files of their own (as video frames), to convert."""

    def __init__(self, video: Path):
        frames = [ImageAnnotations(image_id=i + 1, file_name=f"set06/V000/I{i:05d}.jpg", path=video,
                                   width=W, height=H, boxes=np.array([[10.0, 10.0, 40.0, 90.0]]),
                                   ignore=np.array([False]), heights=np.array([80.0]), vis_ratio=np.array([0.5]))
                  for i in range(2)]
        super().__init__(frames)

    def load_pixels(self, index: int) -> np.ndarray:
        pixels = np.zeros((H, W, 3), np.uint8)
        pixels[:, :, 0] = 40 * index + 7
        pixels[5:9, 5:9] = 250
        return pixels


def test_convert_saves_frames_through_the_dataset_as_png(tmp_path):
    video = tmp_path / "V000.seq"
    video.write_bytes(b"not an image")
    frames = _Frames(video)
    assert frames.image_file(0) is None  # a video is no image file
    counts = convert(frames, tmp_path / "out", source=str(video))
    assert counts == {"images": 2, "hard_links": 0, "copies": 0, "encoded": 2}
    copy = open_dataset(tmp_path / "out")
    assert copy.file_names == ["set06/V000/I00000.png", "set06/V000/I00001.png"]
    for index in range(2):
        assert np.array_equal(copy.load_pixels(index), frames.load_pixels(index))  # PNG: lossless
        assert Image.open(copy.image_path(index)).format == "PNG"
    gt, original = copy.coco_gt(), frames.coco_gt()
    assert gt["annotations"] == original["annotations"]
