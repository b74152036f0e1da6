"""Images for HKD Studio: shipped samples and uploads, all decoded by ``hkd.data.images``.

Every image has a stable key (``sample:<relative path>`` or ``upload:<sha256 prefix>``)
that the compute caches use, so a result computed once for an image is reused
by every page and session. Uploads are kept in the session (the uploader
widget forgets them when the page changes).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from hkd.data.datasets import DatasetError, open_dataset
from hkd.data.images import IMAGE_SUFFIXES, ImageError, LoadedImage, load_image_with_scale

from app.services import settings

log = logging.getLogger(__name__)
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp"]


@dataclass(frozen=True)
class Picture:
    """A decoded input image.

    key: cache key; name: what the user sees; loaded: pixels (H, W, 3) uint8 and scale;
    gt_boxes: (N, 4) xyxy ground-truth pedestrians in ``pixels`` coordinates, or None.
    """

    key: str
    name: str
    loaded: LoadedImage
    gt_boxes: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        return self.loaded.pixels

    def describe(self) -> str:
        return self.loaded.describe()


def sample_paths() -> dict[str, Path]:
    """``sample:<relative path>`` → file, for SynthPed samples and real frames."""
    root = settings.samples_dir()
    out: dict[str, Path] = {}
    for folder in (root / "synthped" / "images", root / "real"):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    out[f"sample:{path.relative_to(root).as_posix()}"] = path
    return out


def choices() -> dict[str, str]:
    """Image key → label, uploads first (newest first), then samples."""
    uploads = st.session_state.get("uploaded_images", {})
    out = {key: f"⬆ {item['name']}" for key, item in reversed(list(uploads.items()))}
    for key, path in sample_paths().items():
        kind = "SynthPed" if key.startswith("sample:synthped/") else "real"
        out[key] = f"{path.name} ({kind} sample)"
    return out


@st.cache_data(show_spinner=False, max_entries=64)
def _decode_bytes(key: str, _data: bytes, max_side: int) -> LoadedImage:
    del key  # cache key only
    return load_image_with_scale(_data, max_side=max_side)


@st.cache_data(show_spinner=False, max_entries=64)
def _decode_path(path: str, mtime_ns: int, max_side: int) -> LoadedImage:
    del mtime_ns
    return load_image_with_scale(path, max_side=max_side)


@st.cache_data(show_spinner=False, max_entries=4)
def _synthped_truth(folder: str, mtime_ns: int) -> dict[str, np.ndarray]:
    """Resolved image path → (N, 4) xyxy pedestrian boxes (ignore boxes left out)."""
    del mtime_ns
    try:
        dataset = open_dataset(folder)
    except DatasetError as exc:
        log.warning("SynthPed sample annotations unusable: %s", exc)
        return {}
    out = {}
    for index in range(len(dataset)):
        ann = dataset.annotations(index)
        out[str(Path(ann.path).resolve())] = np.asarray(ann.boxes[~ann.ignore], dtype=np.float32).reshape(-1, 4)
    return out


def ground_truth(path: Path) -> np.ndarray | None:
    folder = settings.samples_dir() / "synthped"
    annotations = folder / "annotations.json"
    if not annotations.is_file():
        return None
    return _synthped_truth(str(folder), annotations.stat().st_mtime_ns).get(str(path.resolve()))


def add_uploads(files) -> list[str]:
    """Decode uploaded files into the session; newly added ones become the current image.

    Returns one error line per file that is not a usable image.
    """
    uploads = st.session_state.setdefault("uploaded_images", {})
    seen = st.session_state.setdefault("image_upload_ids", set())
    errors = []
    for file in files or []:
        data = file.getvalue()
        key = "upload:" + hashlib.sha256(data).hexdigest()[:16]
        try:
            _decode_bytes(key, data, settings.max_image_side())
        except ImageError as exc:
            errors.append(f"{file.name}: {exc}")
            continue
        uploads[key] = {"name": file.name, "data": data}
        if file.file_id not in seen:
            seen.add(file.file_id)
            st.session_state["image_key"] = key
    return errors


def load(key: str) -> Picture:
    """The image behind ``key``; raises ImageError (or KeyError for an unknown key)."""
    max_side = settings.max_image_side()
    if key.startswith("upload:"):
        item = st.session_state.get("uploaded_images", {})[key]
        return Picture(key, item["name"], _decode_bytes(key, item["data"], max_side))
    path = sample_paths()[key]
    mtime = path.stat().st_mtime_ns
    loaded = _decode_path(str(path), mtime, max_side)
    truth = ground_truth(path)
    if truth is not None:
        truth = truth * loaded.scale
    # the modification time is part of the key: results for an edited sample are not reused
    return Picture(f"{key}@{mtime}", path.name, loaded, truth)
