"""SynthPed generator: determinism, annotation consistency, difficulty, and the vtest frame guard."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from hkd.data.synth import LAST_TRAIN_FRAME, SynthConfig, compute_stats, contact_sheet, generate, sources



@pytest.fixture(autouse=True, scope="module")
def _vtest_installed():
    """SynthPed draws real people from OpenCV's vtest.avi: without it these tests fail, with the fix."""
    if not sources.VTEST_PATH.is_file():
        pytest.fail(f"{sources.VTEST_PATH} is missing: install Debian's opencv-doc "
                    "(`apt-get install opencv-doc`, or `bash scripts/setup.sh`)", pytrace=False)


class _RecordingCapture:
    """cv2.VideoCapture that remembers the index of every frame it hands out."""

    reads: list[int] = []
    real = cv2.VideoCapture

    def __init__(self, *args):
        self._capture = _RecordingCapture.real(*args)
        self._next = 0

    def read(self):
        ok, frame = self._capture.read()
        if ok:
            _RecordingCapture.reads.append(self._next)
            self._next += 1
        return ok, frame

    def release(self):
        self._capture.release()


@pytest.fixture(scope="session")
def dataset40(tmp_path_factory):
    """40 default images (the cutout bank comes from the user's cache, built on first use)."""
    out = tmp_path_factory.mktemp("synth40")
    coco = generate(out, 40, seed=0, workers=2, progress=False)
    return out, coco


class _FakeCapture:
    """A 600-frame stand-in for vtest.avi: a static scene with three dark walkers; records reads."""

    reads: list[int] = []

    def __init__(self, *args):
        rng = np.random.default_rng(0)
        self._background = cv2.GaussianBlur(rng.integers(90, 160, (160, 240, 3)).astype(np.uint8), (5, 5), 0)
        self._next = 0

    def read(self):
        if self._next >= 600:
            return False, None
        frame = self._background.copy()
        for k, (top, tall) in enumerate(((10, 60), (40, 80), (50, 100))):
            x = int((self._next * (2 + k) + 60 * k) % 180) + 20
            cv2.rectangle(frame, (x, top + tall // 5), (x + tall // 4, top + tall), (20, 20, 30), -1)
            cv2.circle(frame, (x + tall // 8, top + tall // 10), tall // 10, (40, 50, 90), -1)
        _FakeCapture.reads.append(self._next)
        self._next += 1
        return True, frame

    def release(self):
        pass


def test_cutout_bank_reads_only_training_frames(tmp_path, monkeypatch):
    video = tmp_path / "long.avi"
    video.write_bytes(b"frames come from _FakeCapture")
    monkeypatch.setenv("HKD_CACHE", str(tmp_path / "cache"))
    _FakeCapture.reads = []
    monkeypatch.setattr(sources.cv2, "VideoCapture", _FakeCapture)
    bank = sources.load_bank.__wrapped__(video)  # build and cache, bypassing the per-process memo
    assert max(_FakeCapture.reads) == LAST_TRAIN_FRAME == 450  # 600 frames available, 0..450 read
    assert bank is not None and len(bank.cutouts) > 0
    assert max(c.frame for c in bank.cutouts) <= LAST_TRAIN_FRAME
    assert sources.bank_path(video).is_file()
    with pytest.raises(AssertionError, match="evaluation-only"):
        next(sources.iter_train_frames(video, last=LAST_TRAIN_FRAME + 1))
    # the real video, through the real reader
    monkeypatch.setattr(sources.cv2, "VideoCapture", _RecordingCapture)
    _RecordingCapture.reads = []
    sources.export_train_frames(tmp_path / "real", frames=(60, 430))
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["vtest_0060.jpg", "vtest_0430.jpg"]
    assert max(_RecordingCapture.reads) == 430


@pytest.mark.slow
def test_real_bank_holds_training_frames_only(dataset40):
    bank = sources.load_bank()
    assert bank is not None and len(bank.cutouts) >= 100
    assert max(c.frame for c in bank.cutouts) <= LAST_TRAIN_FRAME


def test_same_seed_same_bytes_with_any_worker_count(dataset40, tmp_path):
    out40, coco40 = dataset40
    first = generate(tmp_path / "a", 3, seed=0, workers=1, progress=False)
    again = generate(tmp_path / "b", 3, seed=0, workers=1, progress=False)
    assert (tmp_path / "a" / "annotations.json").read_bytes() == (tmp_path / "b" / "annotations.json").read_bytes()
    for record in first["images"]:
        name = record["file_name"]
        data = (tmp_path / "a" / "images" / name).read_bytes()
        assert data == (tmp_path / "b" / "images" / name).read_bytes()
        assert data == (out40 / "images" / name).read_bytes(), f"{name}: workers=2 (40 images) differs from workers=1"
    assert [a for a in coco40["annotations"] if a["image_id"] <= 3] == first["annotations"] == again["annotations"]
    other = generate(tmp_path / "c", 1, seed=1, workers=1, progress=False)
    first_image = (tmp_path / "a" / "images" / "000000.jpg").read_bytes()
    assert (tmp_path / "c" / "images" / "000000.jpg").read_bytes() != first_image
    assert other["images"][0]["id"] == 1


def test_annotations_are_consistent(dataset40):
    out, coco = dataset40
    on_disk = json.loads((out / "annotations.json").read_text())
    assert on_disk == coco
    assert coco["categories"] == [{"id": 1, "name": "pedestrian"}]
    images = {im["id"]: im for im in coco["images"]}
    assert len(images) == 40 and all((out / "images" / im["file_name"]).is_file() for im in images.values())
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"], ann
        assert ann["height"] == h and ann["area"] == w * h
        assert 0.0 <= ann["vis_ratio"] <= 1.0
        vx, vy, vw, vh = ann["vis_bbox"]
        assert vw > 0 and vh > 0 and vx >= x and vy >= y and vx + vw <= x + w and vy + vh <= y + h, ann
        fx, fy, fw, fh = ann["full_bbox"]
        assert fx <= x and fy <= y and fx + fw >= x + w and fy + fh >= y + h
        assert ann["truncated"] == int([fx, fy, fw, fh] != [x, y, w, h])
        if ann["truncated"]:
            assert ann["vis_ratio"] < 1.0
        assert ann["ignore"] in (0, 1) and ann["iscrowd"] in (0, 1)
        if ann["iscrowd"]:
            assert ann["ignore"] == 1 and ann["num_people"] >= SynthConfig().crowd_ignore_min_people
        elif h < SynthConfig().min_height:
            assert ann["ignore"] == 1
    image = cv2.imread(str(out / "images" / images[1]["file_name"]))
    assert image.shape == (480, 640, 3)


def test_every_difficulty_is_present(dataset40):
    _, coco = dataset40
    stats = coco["info"]["stats"]
    assert stats == compute_stats(coco)
    assert stats["images"] == 40 and stats["people"] > 100
    assert stats["height_bins"]["20-50"] > 0 and stats["setups"]["Small"] > 0
    assert stats["setups"]["Heavy"] > 0 and stats["vis_bins"]["0.2-0.65"] > 0
    assert stats["border_cut"] > 0 and stats["ignore"] > 0 and stats["in_crowd"] > 0
    assert stats["setups"]["Reasonable"] > 0 and stats["setups"]["All"] >= stats["setups"]["Reasonable"]
    assert sum(stats["hard_negatives"].values()) > 0 and stats["occluders"].get("car", 0) > 0
    assert stats["sources"].get("real", 0) > 0 and stats["sources"].get("procedural", 0) > 0
    assert set(stats["backgrounds"]) == {"photo", "plate", "street"}


def test_existing_dataset_needs_overwrite(dataset40, tmp_path):
    out, _ = dataset40
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(out, 1, seed=0, workers=1, progress=False)
    config = SynthConfig(width=160, height=120, real_fraction=0.0, background_mix=(1.0, 0.0, 1.0))
    coco = generate(tmp_path / "d", 2, seed=3, config=config, workers=1, progress=False)
    generate(tmp_path / "d", 1, seed=3, config=config, workers=1, progress=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "d" / "images").iterdir()) == ["000000.jpg"]
    assert coco["images"][0]["width"] == 160
    with pytest.raises(ValueError, match="too small"):
        SynthConfig(width=40)
    with pytest.raises(ValueError, match="unknown SynthConfig key"):
        SynthConfig.from_dict({"peeple": [1, 2]})


def test_contact_sheet(dataset40, tmp_path):
    out, _ = dataset40
    sheet = cv2.imread(str(contact_sheet(out, tmp_path / "sheet.jpg", n=12)))
    assert sheet is not None and sheet.shape[1] > sheet.shape[0] > 0
    assert np.any(np.all(np.abs(sheet.astype(int) - (40, 220, 40)) < 40, axis=2))  # green boxes are drawn


def test_people_taller_than_the_frame_are_in_view_from_the_head_down(tmp_path):
    """free_scale_below puts the close-up person's feet far below the frame: taller than the image,
    the head in view, cut by the bottom border (the split that measures the zoomed-out look)."""
    config = SynthConfig(width=320, height=240, free_scale_prob=1.0, free_scale_height=(1.1, 1.3),
                         free_scale_below=(0.4, 0.5))
    coco = generate(tmp_path / "large", 4, seed=7, config=config, workers=1, progress=False)
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        tall = [a for a in anns if a["full_bbox"][3] > image["height"]]
        assert tall, f"image {image['id']}: no person taller than the frame"
        for a in tall:
            assert a["truncated"] == 1 and a["bbox"][1] + a["bbox"][3] == image["height"]
            assert a["full_bbox"][1] >= 0, "the head is in view"
    with pytest.raises(ValueError, match="free_scale_below"):
        SynthConfig(free_scale_below=(0.6, 0.3))
