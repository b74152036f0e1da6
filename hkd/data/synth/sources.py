"""Real material for SynthPed: vtest.avi (frames 0-450 only) and the OpenCV example photos.

vtest.avi (Debian ``opencv-doc``) is a fixed camera over a campus path with
people walking. Frames 0..LAST_TRAIN_FRAME feed the generator: a median
background plate and a bank of person cutouts found by background
subtraction. Frames after LAST_TRAIN_FRAME are reserved for evaluation; the
only function here that opens the video, :func:`iter_train_frames`, stops
reading at LAST_TRAIN_FRAME and asserts it.

The cutout bank is cached as an ``.npz`` (no pickles) under ``$HKD_CACHE``
(default ``~/.cache/hkd``); building it is deterministic and takes a few
seconds.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

OPENCV_DATA = Path(os.environ.get("HKD_OPENCV_DATA", "/usr/share/doc/opencv-doc/examples/data"))
VTEST_PATH = Path(os.environ.get("HKD_VTEST", str(OPENCV_DATA / "vtest.avi")))

LAST_TRAIN_FRAME = 450
"""Highest vtest.avi frame index the generator may read (inclusive); later frames are evaluation-only."""

# Example photos that show scenes without people. Street photos have a measured ground plane:
# name -> (horizon row, person px per px below the horizon, first walkable row), rows as fractions
# of the photo height. The others (walls, aerial views, indoor clutter) get a random one.
STREET_PHOTOS = {"leuvenA.jpg": (0.68, 1.05, 0.70), "leuvenB.jpg": (0.70, 1.0, 0.72),
                 "building.jpg": (0.79, 1.0, 0.81)}
CLUTTER_PHOTOS = ("home.jpg", "aero1.jpg", "aero3.jpg", "graf1.png", "graf3.png", "box_in_scene.png",
                  "rubberwhale1.png", "rubberwhale2.png", "stuff.jpg", "left.jpg", "right.jpg", "aloeL.jpg",
                  "squirrel_cls.jpg", "fruits.jpg", "licenseplate_motion.jpg", "blox.jpg", "board.jpg")

# Cutout extraction parameters (plate coordinates, 768x576). Part of the cache key.
_PLATE_STEP = 15           # every 15th frame of 0..450 goes into the median plate
_CUT_STEP = 3              # every 3rd frame of 0..450 is searched for people
_DIFF_THRESHOLD = 32       # max-over-channels |frame - plate| in 8-bit levels
_HEIGHT_RANGE = (42, 230)  # px, blob height
_ASPECT_RANGE = (1.7, 4.3)  # blob height / width
_MIN_FILL = 0.33           # mask pixels / box area
# Static things in front of the walkers (lamp post + sign, tripod): blobs touching them are cut.
_STATIC_OCCLUDERS = ((392, 10, 460, 402), (452, 330, 532, 490))  # x0, y0, x1, y1
_BANK_VERSION = 5


def cache_dir() -> Path:
    return Path(os.environ.get("HKD_CACHE", Path.home() / ".cache" / "hkd"))


def iter_train_frames(path: Path | str | None = None, last: int = LAST_TRAIN_FRAME) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, BGR frame)`` for frames ``0..last`` of vtest.avi, reading sequentially.

    ``last`` may not exceed :data:`LAST_TRAIN_FRAME`: frames after it are reserved for evaluation.
    """
    assert 0 <= last <= LAST_TRAIN_FRAME, \
        f"vtest.avi frames after {LAST_TRAIN_FRAME} are evaluation-only (asked up to {last})"
    path = Path(path or VTEST_PATH)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (install Debian's opencv-doc or set HKD_VTEST)")
    capture = cv2.VideoCapture(str(path))
    try:
        for index in range(last + 1):
            ok, frame = capture.read()
            if not ok:
                return
            assert index <= LAST_TRAIN_FRAME
            yield index, frame
    finally:
        capture.release()


def export_train_frames(out_dir: Path | str, frames: tuple[int, ...] = (60, 250, 430), quality: int = 90) -> list[Path]:
    """Save some real vtest.avi frames (full size, JPEG) as ``vtest_0060.jpg`` etc."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(frames)
    written = []
    for index, frame in iter_train_frames(last=max(frames)):
        if index in wanted:
            path = out_dir / f"vtest_{index:04d}.jpg"
            cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            written.append(path)
    return written


@dataclass(frozen=True)
class Cutout:
    """A real person cut out of vtest.avi: RGB float32 (h, w, 3) in [0, 1] and alpha (h, w) in [0, 1]."""

    rgb: np.ndarray
    alpha: np.ndarray
    frame: int
    height: int  # px, rows holding alpha >= 0.5


@dataclass(frozen=True)
class CutoutBank:
    cutouts: tuple[Cutout, ...]
    plate: np.ndarray  # RGB uint8 (576, 768, 3): median of frames 0..450
    ground: tuple[float, float]  # (horizon_y, px of person height per px below the horizon) in plate coords


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)
    flood[1:-1, 1:-1] = mask
    cv2.floodFill(flood, None, (0, 0), 2)
    return np.where(flood[1:-1, 1:-1] == 2, 0, 1).astype(np.uint8)


def _two_heads(mask: np.ndarray) -> bool:
    """True when the top 30% of a blob splits into two big parts: two people side by side."""
    top = np.ascontiguousarray(mask[: max(3, int(0.3 * mask.shape[0]))])
    count, _, stats, _ = cv2.connectedComponentsWithStats(top, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return int((areas >= 0.15 * max(1, areas.sum())).sum()) >= 2


def _build_bank(path: Path) -> dict[str, np.ndarray]:
    samples = [frame for index, frame in iter_train_frames(path) if index % _PLATE_STEP == 0]
    plate = np.median(np.stack(samples), axis=0).astype(np.uint8)
    del samples
    plate_blur = cv2.GaussianBlur(plate, (5, 5), 0).astype(np.int16)
    small = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    large = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    ph, pw = plate.shape[:2]
    found = []  # (frame index, x, y, w, h, rgb crop, mask crop)
    for index, frame in iter_train_frames(path):
        if index % _CUT_STEP:
            continue
        diff = np.abs(cv2.GaussianBlur(frame, (5, 5), 0).astype(np.int16) - plate_blur).max(axis=2)
        mask = (diff > _DIFF_THRESHOLD).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, small)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, large)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for j in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[j])
            if not (_HEIGHT_RANGE[0] <= h <= _HEIGHT_RANGE[1] and _ASPECT_RANGE[0] <= h / w <= _ASPECT_RANGE[1]):
                continue
            if area / (w * h) < _MIN_FILL or x <= 2 or y <= 2 or x + w >= pw - 2 or y + h >= ph - 2:
                continue
            if any(x < x1 and x + w > x0 and y < y1 and y + h > y0 for x0, y0, x1, y1 in _STATIC_OCCLUDERS):
                continue
            pad = 3
            crop = (slice(y - pad, y + h + pad), slice(x - pad, x + w + pad))
            blob = _fill_holes((labels[crop] == j).astype(np.uint8))
            if _two_heads(blob[pad:pad + h]):
                continue
            blob = cv2.erode(blob, small)  # the blurred difference spills ~1 px onto the ground
            found.append((index, x, y, w, h, frame[crop], blob))
    # Ground plane from the blobs themselves: height = a * foot_y + b; refit without outliers
    # (merged pairs, half people), then keep the blobs that agree with it.
    heights = np.array([f[4] for f in found], np.float64)
    feet = np.array([f[2] + f[4] for f in found], np.float64)
    a, b = np.polyfit(feet, heights, 1)
    keep = np.abs(heights - (a * feet + b)) <= 0.2 * (a * feet + b)
    a, b = np.polyfit(feet[keep], heights[keep], 1)
    keep = np.abs(heights - (a * feet + b)) <= 0.16 * (a * feet + b)
    rgb_parts, alpha_parts, shapes, frames = [], [], [], []
    for (index, *_rest, crop, blob), ok in zip(found, keep):
        if not ok:
            continue
        alpha = cv2.GaussianBlur(blob.astype(np.float32), (3, 3), 0.8)
        rgb_parts.append(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).reshape(-1, 3))
        alpha_parts.append((alpha * 255 + 0.5).astype(np.uint8).reshape(-1))
        shapes.append(crop.shape[:2])
        frames.append(index)
    return {
        "plate": cv2.cvtColor(plate, cv2.COLOR_BGR2RGB),
        "rgb": np.concatenate(rgb_parts),
        "alpha": np.concatenate(alpha_parts),
        "shapes": np.array(shapes, np.int32),
        "frames": np.array(frames, np.int32),
        "ground": np.array([-b / a, a], np.float64),
    }


def bank_path(path: Path | str | None = None) -> Path:
    path = Path(path or VTEST_PATH)
    stat = path.stat()
    key = f"{_BANK_VERSION}|{LAST_TRAIN_FRAME}|{_PLATE_STEP}|{_CUT_STEP}|{_DIFF_THRESHOLD}|{_HEIGHT_RANGE}|" \
          f"{_ASPECT_RANGE}|{_MIN_FILL}|{_STATIC_OCCLUDERS}|{stat.st_size}|{cv2.__version__}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_dir() / f"synthped_vtest_bank_{digest}.npz"


def ensure_bank(path: Path | str | None = None) -> Path | None:
    """Build the cutout bank into the cache if it is not there; None when vtest.avi is missing."""
    path = Path(path or VTEST_PATH)
    if not path.is_file():
        return None
    target = bank_path(path)
    if target.is_file():
        return target
    arrays = _build_bank(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, target)  # atomic: parallel builders cannot leave half a file
    return target


@lru_cache(maxsize=2)
def load_bank(path: Path | str | None = None) -> CutoutBank | None:
    """The cutout bank (built on first use), or None when vtest.avi is not installed."""
    target = ensure_bank(path)
    if target is None:
        return None
    with np.load(target, allow_pickle=False) as data:
        rgb, alpha, shapes, frames = data["rgb"], data["alpha"], data["shapes"], data["frames"]
        plate, ground = data["plate"], data["ground"]
    assert int(frames.max()) <= LAST_TRAIN_FRAME
    cutouts, start = [], 0
    for (h, w), frame in zip(shapes, frames):
        n = int(h) * int(w)
        a = alpha[start:start + n].reshape(h, w).astype(np.float32) / 255.0
        rows = np.flatnonzero((a >= 0.5).any(axis=1))
        cutouts.append(Cutout(rgb=rgb[start:start + n].reshape(h, w, 3).astype(np.float32) / 255.0, alpha=a,
                              frame=int(frame), height=int(rows[-1] - rows[0] + 1)))
        start += n
    return CutoutBank(cutouts=tuple(cutouts), plate=plate, ground=(float(ground[0]), float(ground[1])))


@lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[str, np.ndarray, tuple[float, float, float] | None], ...]:
    """``(name, RGB uint8 image, ground calibration or None)`` for every example photo that is installed."""
    photos = []
    for name in (*STREET_PHOTOS, *CLUTTER_PHOTOS):
        image = cv2.imread(str(OPENCV_DATA / name), cv2.IMREAD_COLOR)
        if image is not None:
            photos.append((name, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), STREET_PHOTOS.get(name)))
    return tuple(photos)
