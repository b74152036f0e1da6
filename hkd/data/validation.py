"""Checks every reader shares: box validation, and image names confined to their folder.

* :class:`BoxValidator` — unusable boxes are dropped with one logged summary,
  boxes partly outside their image are clipped, so that training never stops on a bad box.
* :func:`check_relative_name` and :func:`confine` — an image is read from inside
  its dataset's images folder only: no ``..``, no absolute names, no symlinks out
  (unless ``HKD_ALLOW_SYMLINKS=1``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hkd.data.base import DatasetError, ImageAnnotations
from hkd.data.images import read_image_size

__all__ = [
    "ALLOW_SYMLINKS_ENV",
    "MAX_EXAMPLES",
    "BoxValidator",
    "RawBox",
    "check_relative_name",
    "confine",
    "float_or_nan",
    "image_size",
    "load_json",
    "overlap_fraction",
    "parse_xywh",
    "resolve_image_paths",
    "symlinks_allowed",
]

# One logger for every dataset reader, under the name it has always had, so that
# a logging configuration (or a test) that quiets or raises "hkd.data.datasets" still applies.
log = logging.getLogger("hkd.data.datasets")

MAX_EXAMPLES = 3  # examples quoted in one summary or error message


def float_or_nan(value: Any) -> float:
    """A JSON number as float; anything else (null, text) as NaN so validation drops it."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def parse_xywh(value: Any) -> list[float] | None:
    """A ``[x, y, w, h]`` list as floats, or None when it is not a list of 4."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    return [float_or_nan(v) for v in value]


def overlap_fraction(inner: list[float], outer: list[float]) -> float:
    """area(inner ∩ outer) / area(outer) for two xywh boxes, in [0, 1]."""
    x1, y1 = max(inner[0], outer[0]), max(inner[1], outer[1])
    x2 = min(inner[0] + inner[2], outer[0] + outer[2])
    y2 = min(inner[1] + inner[3], outer[1] + outer[3])
    area = outer[2] * outer[3]
    if not area > 0:
        return 1.0
    return float(np.clip(max(0.0, x2 - x1) * max(0.0, y2 - y1) / area, 0.0, 1.0))


@dataclass
class RawBox:
    """One annotation as read from a file, before validation (xywh pixels)."""

    xywh: list[float]
    ignore: bool
    height: float | None = None
    vis_ratio: float | None = None


class BoxValidator:
    """Drops unusable boxes and clips the rest, counting why, for one summary log line.

    It also counts the pedestrians whose file gives no visibility (taken as 1.0):
    :meth:`notes` says so, since the Heavy setup cannot count them.
    """

    _DROP_REASONS = {
        "non_finite": "missing or non-finite coordinates",
        "non_positive": "non-positive width or height",
        "outside": "lying entirely outside the image",
    }

    def __init__(self, source: Path):
        self.source = source
        self.total = 0
        self.clipped = 0
        self.pedestrians = 0
        self.unknown_visibility = 0
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def _drop(self, reason: str, file_name: str, xywh: list[float]) -> None:
        self.dropped[reason] += 1
        if len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(f"{file_name} {[round(v, 2) for v in xywh]}")

    def annotate_files(self, file_names: Sequence[str], paths: Sequence[Path],
                       raw_boxes: Sequence[Iterable[RawBox]]) -> list[ImageAnnotations]:
        """:meth:`annotate` each image file of a format that records no image sizes (read from the
        files), ids counting from 1 in order."""
        images = []
        for name, path, boxes in zip(file_names, paths, raw_boxes):
            width, height = read_image_size(path)
            images.append(self.annotate(image_id=len(images) + 1, file_name=name, path=path, width=width,
                                        height=height, raw_boxes=boxes))
        return images

    def annotate(
        self, *, image_id: int, file_name: str, path: Path, width: int, height: int,
        raw_boxes: Iterable[RawBox],
    ) -> ImageAnnotations:
        """Validate one image's raw boxes into :class:`ImageAnnotations`."""
        boxes, ignore, heights, vis = [], [], [], []
        for raw in raw_boxes:
            self.total += 1
            x, y, w, h = raw.xywh
            if not np.all(np.isfinite(raw.xywh)):
                self._drop("non_finite", file_name, raw.xywh)
                continue
            if w <= 0 or h <= 0:
                self._drop("non_positive", file_name, raw.xywh)
                continue
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if x2 <= x1 or y2 <= y1:
                self._drop("outside", file_name, raw.xywh)
                continue
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                self.clipped += 1
            boxes.append((x1, y1, x2, y2))
            ignore.append(raw.ignore)
            # The annotated height describes the whole person, also when the box is
            # clipped, as in the CityPersons evaluation; fall back to the box height.
            person_height = raw.height if raw.height is not None and raw.height > 0 else h
            heights.append(person_height)
            known = raw.vis_ratio is not None and np.isfinite(raw.vis_ratio)
            if not raw.ignore:
                self.pedestrians += 1
                self.unknown_visibility += not known
            vis.append(min(max(raw.vis_ratio, 0.0), 1.0) if known else 1.0)
        return ImageAnnotations(
            image_id=image_id,
            file_name=file_name,
            path=path,
            width=width,
            height=height,
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
            ignore=np.asarray(ignore, bool),
            heights=np.asarray(heights, np.float64),
            vis_ratio=np.asarray(vis, np.float64),
        )

    def notes(self) -> list[str]:
        """What was assumed about the kept boxes, for :attr:`PedestrianDataset.notes`."""
        if not self.unknown_visibility:
            return []
        return [f"visibility unknown for {self.unknown_visibility} of {self.pedestrians} pedestrians: "
                "taken as 1.0 (fully visible), so the Heavy setup (visibility 0.2-0.65) cannot count them"]

    def report(self) -> None:
        """Log one summary: a warning if boxes were dropped, info if only clipped."""
        n_dropped = sum(self.dropped.values())
        clipped = f"clipped {self.clipped} box(es) partly outside their image"
        if n_dropped:
            reasons = "; ".join(
                f"{count} {self._DROP_REASONS[reason]} (e.g. {', '.join(self.examples[reason])})"
                for reason, count in self.dropped.items()
            )
            log.warning(
                "%s: dropped %d of %d boxes: %s; %s",
                self.source, n_dropped, self.total, reasons, clipped,
            )
        elif self.clipped:
            log.info("%s: %s", self.source, clipped)


#: ``HKD_ALLOW_SYMLINKS=1``: a trusted dataset whose images folder holds symlinks to files
#: elsewhere (a shared image store) may read them; ``..`` and absolute names stay refused.
ALLOW_SYMLINKS_ENV = "HKD_ALLOW_SYMLINKS"


def symlinks_allowed() -> bool:
    return os.environ.get(ALLOW_SYMLINKS_ENV, "").strip().lower() in ("1", "true", "yes")


def check_relative_name(name: str, images_dir: Path, source: Path) -> None:
    """Refuse a file name that climbs out of ``images_dir`` (``..``) or names an absolute path."""
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts or ".." in name.split("\\"):
        raise DatasetError(f"'{source}': image file name {name[:200]!r} leaves the images folder "
                           f"'{images_dir}'; file names are relative to it, without '..'")


def confine(path: Path, folder: Path, source: Path | str) -> Path:
    """``path`` when the file it opens lies inside ``folder`` (symlinks resolved), else DatasetError
    naming it; ``HKD_ALLOW_SYMLINKS=1`` lets a trusted dataset's symlinks point elsewhere."""
    if symlinks_allowed():
        return path
    real, root = path.resolve(), folder.resolve()
    if real != root and root not in real.parents:
        raise DatasetError(f"'{source}': image '{path}' resolves to '{real}', outside the images folder '{root}' "
                           f"(a symlink or '..'); set {ALLOW_SYMLINKS_ENV}=1 to read a trusted dataset's symlinks")
    return path


def resolve_image_paths(images_dir: Path, file_names: Sequence[str], source: Path) -> list[Path]:
    """Find each annotated file under ``images_dir``, and nowhere else.

    ``images_dir / file_name`` first; CityPersons lists bare names while
    Cityscapes stores images in per-city subfolders, so files not found there are
    looked up by name anywhere below ``images_dir``. A name with ``..`` or an
    absolute one, and a file that resolves outside ``images_dir`` (a symlink), are
    refused naming the file (:func:`confine`).
    """
    if not images_dir.is_dir():
        raise DatasetError(f"images folder '{images_dir}' for '{source}' does not exist")
    for name in file_names:
        check_relative_name(name, images_dir, source)
    paths = [images_dir / name for name in file_names]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        by_name: dict[str, list[Path]] = defaultdict(list)
        for candidate in images_dir.rglob("*"):
            by_name[candidate.name].append(candidate)
        still_missing = []
        for i in missing:
            found = by_name.get(Path(file_names[i]).name, [])
            if len(found) == 1:
                paths[i] = found[0]
            else:
                still_missing.append(file_names[i])
        if still_missing:
            raise DatasetError(
                f"{len(still_missing)} image(s) listed in '{source}' are not in '{images_dir}', "
                f"e.g. {still_missing[:MAX_EXAMPLES]}"
            )
    return [confine(path, images_dir, source) for path in paths]


def image_size(path: Path, entry: dict[str, Any]) -> tuple[int, int]:
    """(width, height) from an annotation entry, or from the file header when absent."""
    width, height = entry.get("width"), entry.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return read_image_size(path)


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"'{path}' is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"'{path}' is not a UTF-8 text file: {err}") from err
