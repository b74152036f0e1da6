"""Images for HKD Studio: shipped samples, uploads and image files, all decoded by ``hkd.data.images``.

Every image has a stable key that the compute caches use, so a result computed
once for an image is reused by every page and session:

* ``sample:<relative path>`` — a shipped sample (``HKD_SAMPLES_DIR``);
* ``upload:<sha256 prefix>`` — an upload, kept in the session (the uploader
  widget forgets them when the page changes);
* ``file:<absolute path>`` — any image file under the allowed roots
  (``settings.confine``: HKD_DATA_ROOTS, the SynthPed folder, samples …), e.g. a
  dataset image picked on the Evaluate page (:func:`file_key`).

Samples and files are decoded from disk, cached by path and modification time,
with ground truth when their dataset's ``annotations.json`` sits beside their
``images/`` folder (SynthPed and COCO-style layouts).
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
FILE_PREFIX = "file:"


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


def file_key(path: str | Path) -> str:
    """``file:<absolute path>``: the key of an image file under the allowed roots (symlinks resolved).

    Raises :class:`settings.PathNotAllowed` outside every root, ImageError for a file
    that is not a JPEG/PNG/WebP/BMP by its name, FileNotFoundError when it does not exist.
    """
    return FILE_PREFIX + _image_file(path).as_posix()


def _image_file(path: str | Path) -> Path:
    resolved = settings.confine(path)
    if resolved.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"'{resolved}' is not an image file; accepted: {', '.join(IMAGE_SUFFIXES)}")
    if not resolved.is_file():
        raise FileNotFoundError(f"image file '{resolved}' does not exist")
    return resolved


def choices() -> dict[str, str]:
    """Image key → label: the current ``file:`` image (only while it is the current one), uploads
    (newest first), then samples. Labels are plain text: an emoji is an empty box where no emoji
    font is installed."""
    out = {}
    current = st.session_state.get("image_key")
    if isinstance(current, str) and current.startswith(FILE_PREFIX):
        out[current] = f"{Path(current[len(FILE_PREFIX):]).name} (dataset image)"
    uploads = st.session_state.get("uploaded_images", {})
    out.update({key: f"{item['name']} (uploaded)" for key, item in reversed(list(uploads.items()))})
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
def _dataset_truth(folder: str, mtime_ns: int) -> dict[str, np.ndarray]:
    """Resolved image path → (N, 4) xyxy pedestrian boxes (ignore boxes left out)."""
    del mtime_ns
    try:
        dataset = open_dataset(folder)
    except DatasetError as exc:
        log.warning("annotations of %s unusable: %s", folder, exc)
        return {}
    out = {}
    for index in range(len(dataset)):
        ann = dataset.annotations(index)
        out[str(Path(ann.path).resolve())] = np.asarray(ann.boxes[~ann.ignore], dtype=np.float32).reshape(-1, 4)
    return out


def ground_truth(path: Path) -> np.ndarray | None:
    """(N, 4) xyxy pedestrians of the image at ``path`` in its original pixels, when it lies in a
    dataset's ``images/`` folder with ``annotations.json`` beside it (SynthPed, COCO-style); else None."""
    path = Path(path).resolve()
    if path.parent.name != "images":
        return None
    folder = path.parent.parent
    annotations = folder / "annotations.json"
    if not annotations.is_file():
        return None
    return _dataset_truth(str(folder), annotations.stat().st_mtime_ns).get(str(path))


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
    """The image behind ``key``; raises ImageError, KeyError for an unknown sample or upload key,
    and for a ``file:`` key PathNotAllowed or FileNotFoundError (see :func:`file_key`)."""
    max_side = settings.max_image_side()
    if key.startswith("upload:"):
        item = st.session_state.get("uploaded_images", {})[key]
        return Picture(key, item["name"], _decode_bytes(key, item["data"], max_side))
    path = _image_file(key[len(FILE_PREFIX):]) if key.startswith(FILE_PREFIX) else sample_paths()[key]
    mtime = path.stat().st_mtime_ns
    loaded = _decode_path(str(path), mtime, max_side)
    truth = ground_truth(path)
    if truth is not None:
        truth = truth * loaded.scale
    # the modification time is part of the key: results for an edited file are not reused
    return Picture(f"{key}@{mtime}", path.name, loaded, truth)


# -- a case picked on another page ------------------------------------------------
@dataclass(frozen=True)
class Focus:
    """A box another page (Evaluate) asked the image pages to look at.

    box: (x1, y1, x2, y2) in ``Picture.pixels`` coordinates; source: the page that set it.
    """

    box: tuple[float, float, float, float]
    source: str
    what: str = ""  # what the case is, in words (e.g. "teacher finds, student misses — student: lost at rpn")

    @property
    def label(self) -> str:
        return f"box from {self.source.title()}" + (f" ({self.what})" if self.what else "")

    def describe(self) -> str:
        return f"{self.label} · {', '.join(f'{v:.0f}' for v in self.box)}"


def focus_for(picture: Picture) -> Focus | None:
    """The focused box of the current image, or None.

    Contract: ``st.session_state["focus"] = {"image_key": KEY, "box": [x1, y1, x2, y2],
    "source": "evaluate"}`` with the box in the original image's pixels (before the app's
    downscaling) applies while ``st.session_state["image_key"] == KEY``. Raises ValueError
    for a focus that is not of that form.
    """
    focus = st.session_state.get("focus")
    if not focus:
        return None
    if not isinstance(focus, dict) or "image_key" not in focus or "box" not in focus:
        raise ValueError(f"focus must be a dict with image_key, box and source, got {focus!r}")
    if focus["image_key"] != st.session_state.get("image_key"):
        return None
    try:
        box = np.asarray(focus["box"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        box = np.zeros(0)
    if box.size != 4 or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"the focus box must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {focus['box']!r}")
    box = box * picture.loaded.scale
    return Focus(tuple(float(v) for v in box), str(focus.get("source") or "another page"), str(focus.get("what") or ""))


def focus_pending(page: str) -> bool:
    """True while ``page`` has not yet seen the current focus (:func:`take_focus` will return True)."""
    focus = st.session_state.get("focus")
    return bool(focus) and st.session_state.get(f"{page}_focus_applied") != focus


def take_focus(page: str) -> bool:
    """True the first time ``page`` sees the current focus: it preselects its widgets for it then,
    and leaves the user's own choices alone afterwards (a new focus value applies again)."""
    focus = st.session_state.get("focus")
    marker = f"{page}_focus_applied"
    if not focus or st.session_state.get(marker) == focus:
        return False
    st.session_state[marker] = dict(focus)
    return True


def clear_focus() -> None:
    """Forget the focused box (a button callback); the same box set again later applies again."""
    st.session_state["focus"] = None
    for key in [k for k in st.session_state if str(k).endswith("_focus_applied")]:
        del st.session_state[key]
