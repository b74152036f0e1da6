"""Pedestrian detection datasets: one interface, one class per real format.

* :class:`CocoPedestrianDataset` — COCO-style JSON as CityPersons uses it (and SynthPed).
* :class:`CrowdHumanDataset` — CrowdHuman ``.odgt`` (one JSON object per line).
* :class:`ImageFolderDataset` — a plain folder of images, no labels.

All of them yield ``(image, target)`` with the same target keys and give the
same COCO-style ground truth (:meth:`PedestrianDataset.coco_gt`) to the
evaluation code. Annotations are validated once, on load: boxes that cannot be
used are dropped with one logged summary, boxes partly outside their image are
clipped, so that training never stops on a bad box.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hkd.data.images import IMAGE_SUFFIXES, ImageError, load_image, read_image_size, to_tensor

__all__ = [
    "ACCEPTED_LAYOUTS",
    "CocoPedestrianDataset",
    "CrowdHumanDataset",
    "DatasetError",
    "ImageAnnotations",
    "ImageFolderDataset",
    "PedestrianDataset",
    "Target",
    "Transform",
    "collate_detection",
    "open_dataset",
]

log = logging.getLogger(__name__)

#: ``target`` dict of one image; see :class:`PedestrianDataset` for its keys.
Target = dict[str, Any]
#: A training transform: ``(image [3, H, W], target) -> (image, target)``.
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]

PEDESTRIAN_CATEGORY = {"id": 1, "name": "pedestrian"}
# Category names that mean "pedestrian" in COCO-style files; every other
# category (CityPersons: ignore region, rider, sitting, other, group) is an ignore box.
_PEDESTRIAN_NAMES = {"pedestrian", "pedestrians", "person", "persons"}
_MAX_EXAMPLES = 3

ACCEPTED_LAYOUTS = (
    "accepted layouts: a folder with annotations.json and images/ (SynthPed, COCO-style); "
    "a COCO-style .json file (CityPersons; images in <json folder>/images or given); "
    "a CrowdHuman .odgt file (images in <odgt folder>/Images or given); "
    f"a folder of images ({', '.join(IMAGE_SUFFIXES)})"
)


class DatasetError(ValueError):
    """A dataset cannot be opened: a bad path, malformed file, or inconsistent annotations."""


@dataclass(frozen=True)
class ImageAnnotations:
    """Validated ground truth of one image (N boxes).

    Attributes:
        image_id: id used in :meth:`PedestrianDataset.coco_gt`.
        file_name: name as written in the annotation file (relative to the images folder).
        path: where the image file is.
        width, height: image size in pixels (EXIF orientation applied).
        boxes: ``float64 [N, 4]`` full-body boxes, xyxy pixels, inside the image
            (float64 so that :meth:`PedestrianDataset.coco_gt` writes the annotated values).
        ignore: ``bool [N]``; True for ignore regions and non-pedestrian people.
        heights: ``float64 [N]`` annotated full-body height in pixels (unclipped).
        vis_ratio: ``float64 [N]`` visible fraction of the full body, in [0, 1].
    """

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    heights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    vis_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def target(self) -> Target:
        """This image's target dict (tensors), as :meth:`PedestrianDataset.__getitem__` gives it."""
        n = len(self.boxes)
        return {
            # torch.tensor copies: a transform editing the target in place must not
            # change the dataset.
            "boxes": torch.tensor(self.boxes, dtype=torch.float32).reshape(n, 4),
            "labels": torch.ones(n, dtype=torch.int64),
            "ignore": torch.tensor(self.ignore, dtype=torch.bool),
            "height": torch.tensor(self.heights, dtype=torch.float32),
            "vis_ratio": torch.tensor(self.vis_ratio, dtype=torch.float32),
            "image_id": self.image_id,
            "file_name": self.file_name,
        }


class PedestrianDataset(Dataset):
    """Pedestrian detection dataset over validated :class:`ImageAnnotations`.

    ``dataset[i]`` is ``(image, target)``:

    * ``image``: ``float32 [3, H, W]`` RGB in [0, 1].
    * ``target["boxes"]``: ``float32 [N, 4]`` full-body boxes, xyxy pixels.
    * ``target["labels"]``: ``int64 [N]``, all 1 (pedestrian).
    * ``target["ignore"]``: ``bool [N]``, ignore regions / non-pedestrian people;
      neither positives nor negatives in training and evaluation.
    * ``target["height"]``: ``float32 [N]`` full-body height in pixels (the
      CityPersons ``height``; can exceed the clipped box height).
    * ``target["vis_ratio"]``: ``float32 [N]`` visible fraction in [0, 1].
    * ``target["image_id"]``: ``int``; ``target["file_name"]``: ``str``.

    Args:
        images: per-image annotations, in dataset order.
        transforms: optional ``(image, target) -> (image, target)`` applied last.
    """

    def __init__(self, images: Sequence[ImageAnnotations], *, transforms: Transform | None = None):
        self._images = list(images)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self._images[index]
        pixels = load_image(record.path)
        if pixels.shape[:2] != (record.height, record.width):
            # Boxes were validated against the annotated size; a different file
            # would put them on the wrong pixels.
            message = (f"image '{record.path}' is {pixels.shape[1]}×{pixels.shape[0]} but its "
                       f"annotations say {record.width}×{record.height}")
            if pixels.shape[:2] == (record.width, record.height):
                message += ("; its EXIF orientation turns it by 90° and hkd reads images upright, so the "
                            "annotations were made on the stored, unrotated pixels — annotate the upright image, "
                            "or save the file without the EXIF rotation")
            raise DatasetError(message)
        image, target = to_tensor(pixels), record.target()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        n_boxes = sum(len(record.boxes) for record in self._images)
        n_ignore = sum(int(record.ignore.sum()) for record in self._images)
        return f"{type(self).__name__}({len(self)} images, {n_boxes} boxes, {n_ignore} of them ignore)"

    def annotations(self, index: int) -> ImageAnnotations:
        """Ground truth of image ``index`` without decoding the image."""
        return self._images[index]

    def target(self, index: int) -> Target:
        """Target dict of image ``index`` (untransformed) without decoding the image."""
        return self._images[index].target()

    @property
    def image_ids(self) -> list[int]:
        return [record.image_id for record in self._images]

    @property
    def file_names(self) -> list[str]:
        return [record.file_name for record in self._images]

    def image_path(self, index: int) -> Path:
        return self._images[index].path

    def coco_gt(self) -> dict[str, Any]:
        """Ground truth as a COCO-style dict for the evaluation code.

        ``annotations`` carry ``bbox`` ``[x, y, w, h]`` pixels, ``area``, ``height``,
        ``vis_ratio``, ``ignore`` and ``iscrowd`` (both 1 for ignore boxes, because
        pycocotools derives its ignore flag from ``iscrowd`` alone), ``category_id`` 1
        and ``id`` counting from 1.
        """
        images, annotations = [], []
        for record in self._images:
            images.append(
                {
                    "id": record.image_id,
                    "file_name": record.file_name,
                    "width": record.width,
                    "height": record.height,
                }
            )
            for box, ignore, height, vis in zip(
                record.boxes.tolist(), record.ignore.tolist(), record.heights.tolist(),
                record.vis_ratio.tolist(),
            ):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": PEDESTRIAN_CATEGORY["id"],
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "height": height,
                        "vis_ratio": vis,
                        "ignore": int(ignore),
                        "iscrowd": int(ignore),
                    }
                )
        return {"images": images, "annotations": annotations, "categories": [dict(PEDESTRIAN_CATEGORY)]}


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """DataLoader ``collate_fn``: images differ in size, so keep lists (as torchvision does)."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


# --------------------------------------------------------------------------- validation


def _float(value: Any) -> float:
    """A JSON number as float; anything else (null, text) as NaN so validation drops it."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _xywh(value: Any) -> list[float] | None:
    """A ``[x, y, w, h]`` list as floats, or None when it is not a list of 4."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    return [_float(v) for v in value]


def _overlap_fraction(inner: list[float], outer: list[float]) -> float:
    """area(inner ∩ outer) / area(outer) for two xywh boxes, in [0, 1]."""
    x1, y1 = max(inner[0], outer[0]), max(inner[1], outer[1])
    x2 = min(inner[0] + inner[2], outer[0] + outer[2])
    y2 = min(inner[1] + inner[3], outer[1] + outer[3])
    area = outer[2] * outer[3]
    if not area > 0:
        return 1.0
    return float(np.clip(max(0.0, x2 - x1) * max(0.0, y2 - y1) / area, 0.0, 1.0))


@dataclass
class _RawBox:
    """One annotation as read from a file, before validation (xywh pixels)."""

    xywh: list[float]
    ignore: bool
    height: float | None = None
    vis_ratio: float | None = None


class _BoxValidator:
    """Drops unusable boxes and clips the rest, counting why, for one summary log line."""

    _DROP_REASONS = {
        "non_finite": "missing or non-finite coordinates",
        "non_positive": "non-positive width or height",
        "outside": "lying entirely outside the image",
    }

    def __init__(self, source: Path):
        self.source = source
        self.total = 0
        self.clipped = 0
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def _drop(self, reason: str, file_name: str, xywh: list[float]) -> None:
        self.dropped[reason] += 1
        if len(self.examples[reason]) < _MAX_EXAMPLES:
            self.examples[reason].append(f"{file_name} {[round(v, 2) for v in xywh]}")

    def annotate(
        self, *, image_id: int, file_name: str, path: Path, width: int, height: int,
        raw_boxes: Iterable[_RawBox],
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
            ratio = raw.vis_ratio if raw.vis_ratio is not None and np.isfinite(raw.vis_ratio) else 1.0
            vis.append(min(max(ratio, 0.0), 1.0))
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


# --------------------------------------------------------------------------- formats


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


def _resolve_image_paths(images_dir: Path, file_names: Sequence[str], source: Path) -> list[Path]:
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
                f"e.g. {still_missing[:_MAX_EXAMPLES]}"
            )
    return [confine(path, images_dir, source) for path in paths]


def _image_size(path: Path, entry: dict[str, Any]) -> tuple[int, int]:
    """(width, height) from an annotation entry, or from the file header when absent."""
    width, height = entry.get("width"), entry.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return read_image_size(path)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"'{path}' is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"'{path}' is not a UTF-8 text file: {err}") from err


class CocoPedestrianDataset(PedestrianDataset):
    """COCO-style JSON as CityPersons (and SynthPed) write it.

    Annotation keys used: ``image_id``, ``bbox`` ``[x, y, w, h]``, ``category_id``,
    and optionally ``height`` (default: bbox height), ``vis_ratio`` (default:
    area(``vis_bbox`` ∩ bbox) / area(bbox), else 1.0), ``ignore`` and ``iscrowd``.
    Annotations of non-pedestrian categories (CityPersons: ignore regions, riders,
    sitting and other persons, groups) and crowd/ignore ones become ignore boxes.
    Images are ``{"id", "file_name" (or CityPersons' "im_name"), "width", "height"}``.

    Args:
        images_dir: folder the ``file_name`` entries are relative to.
        annotation_json: the JSON file.
        pedestrian_category_ids: category ids that are pedestrians; by default the
            categories named pedestrian/person, or id 1 when the file lists none.
        transforms: see :class:`PedestrianDataset`.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_json: str | Path,
        *,
        pedestrian_category_ids: Iterable[int] | None = None,
        transforms: Transform | None = None,
    ):
        source = Path(annotation_json)
        if not source.is_file():
            raise DatasetError(f"annotation file '{source}' does not exist")
        data = _load_json(source)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(f"'{source}' is not COCO-style: expected an object with an 'images' list")
        pedestrian_ids = self._pedestrian_ids(data, source, pedestrian_category_ids)

        entries: dict[int, dict[str, Any]] = {}
        for position, entry in enumerate(data["images"]):
            entry = entry if isinstance(entry, dict) else {"invalid entry": entry}
            name = entry.get("file_name", entry.get("im_name"))
            if not isinstance(entry.get("id"), int) or not isinstance(name, str):
                raise DatasetError(
                    f"'{source}': images[{position}] needs an integer 'id' and a 'file_name', "
                    f"got {repr(entry)[:200]}"
                )
            if entry["id"] in entries:
                raise DatasetError(f"'{source}': image id {entry['id']} is listed twice")
            entries[entry["id"]] = {**entry, "file_name": name}

        raw_boxes: dict[int, list[_RawBox]] = defaultdict(list)
        for position, ann in enumerate(data.get("annotations") or []):
            raw_boxes[self._image_id(ann, position, entries, source)].append(
                self._raw_box(ann, position, pedestrian_ids, source)
            )

        ids = list(entries)
        paths = _resolve_image_paths(Path(images_dir), [entries[i]["file_name"] for i in ids], source)
        validator = _BoxValidator(source)
        images = []
        for image_id, path in zip(ids, paths):
            width, height = _image_size(path, entries[image_id])
            images.append(
                validator.annotate(
                    image_id=image_id,
                    file_name=entries[image_id]["file_name"],
                    path=path,
                    width=width,
                    height=height,
                    raw_boxes=raw_boxes.get(image_id, []),
                )
            )
        validator.report()
        super().__init__(images, transforms=transforms)

    @staticmethod
    def _pedestrian_ids(
        data: dict[str, Any], source: Path, explicit: Iterable[int] | None
    ) -> set[int]:
        if explicit is not None:
            return set(explicit)
        categories = [c for c in data.get("categories") or [] if isinstance(c, dict)]
        if not categories:
            return {PEDESTRIAN_CATEGORY["id"]}
        ids = {c.get("id") for c in categories if str(c.get("name", "")).lower() in _PEDESTRIAN_NAMES}
        if not ids:
            names = [(c.get("id"), c.get("name")) for c in categories]
            raise DatasetError(
                f"'{source}': no pedestrian category among {names}; expected one named "
                f"{sorted(_PEDESTRIAN_NAMES)} or pass pedestrian_category_ids"
            )
        return ids

    @staticmethod
    def _image_id(ann: Any, position: int, entries: dict[int, Any], source: Path) -> int:
        if not isinstance(ann, dict):
            raise DatasetError(f"'{source}': annotations[{position}] is not an object: {ann!r}")
        image_id = ann.get("image_id")
        if image_id not in entries:
            raise DatasetError(
                f"'{source}': annotation {ann.get('id', f'at position {position}')} refers to "
                f"image id {image_id!r}, which is not in 'images'"
            )
        return image_id

    @staticmethod
    def _raw_box(ann: dict[str, Any], position: int, pedestrian_ids: set[int], source: Path) -> _RawBox:
        bbox = _xywh(ann.get("bbox"))
        if bbox is None:
            raise DatasetError(
                f"'{source}': annotation {ann.get('id', f'at position {position}')} needs "
                f"'bbox' as [x, y, w, h], got {ann.get('bbox')!r}"
            )
        ignore = (
            bool(ann.get("ignore", 0))
            or bool(ann.get("iscrowd", 0))
            or ann.get("category_id", PEDESTRIAN_CATEGORY["id"]) not in pedestrian_ids
        )
        vis_ratio = ann.get("vis_ratio")
        vis_bbox = _xywh(ann.get("vis_bbox"))
        if vis_ratio is None and vis_bbox is not None:
            vis_ratio = _overlap_fraction(vis_bbox, bbox)
        height = ann.get("height")
        return _RawBox(
            xywh=bbox,
            ignore=ignore,
            height=None if height is None else _float(height),
            vis_ratio=None if vis_ratio is None else _float(vis_ratio),
        )


class CrowdHumanDataset(PedestrianDataset):
    """CrowdHuman ``.odgt``: one JSON object per line, images at ``images_dir/<ID>.jpg``.

    Per ``gtboxes`` entry: ``fbox`` (full body, ``[x, y, w, h]``) is the box;
    ``vis_ratio`` = area(``vbox`` ∩ ``fbox``) / area(``fbox``); tag ``mask`` (an
    ignore region) or ``extra.ignore`` = 1 make an ignore box. Full boxes often
    reach outside the image; they are clipped, ``height`` keeps the full height.
    ``hbox`` (head) and ``extra.occ`` are not used: ``vis_ratio`` measures occlusion.

    Args:
        images_dir: folder with ``<ID>.jpg`` files.
        odgt_file: the annotation file.
        transforms: see :class:`PedestrianDataset`.
    """

    def __init__(
        self,
        images_dir: str | Path,
        odgt_file: str | Path,
        *,
        transforms: Transform | None = None,
    ):
        source = Path(odgt_file)
        if not source.is_file():
            raise DatasetError(f"annotation file '{source}' does not exist")
        ids: dict[str, int] = {}  # ID -> line number, in file order
        raw_boxes: list[list[_RawBox]] = []
        with source.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                record = self._parse_line(line, line_number, source)
                if record["ID"] in ids:
                    raise DatasetError(
                        f"'{source}', line {line_number}: ID {record['ID']!r} is already on "
                        f"line {ids[record['ID']]}"
                    )
                ids[record["ID"]] = line_number
                raw_boxes.append([self._raw_box(box) for box in record.get("gtboxes") or []])

        file_names = [f"{image_id}.jpg" for image_id in ids]
        paths = _resolve_image_paths(Path(images_dir), file_names, source)
        validator = _BoxValidator(source)
        images = []
        for name, path, boxes in zip(file_names, paths, raw_boxes):
            width, height = read_image_size(path)  # the .odgt has no image sizes
            images.append(
                validator.annotate(
                    image_id=len(images) + 1,  # COCO-style ids start at 1
                    file_name=name,
                    path=path,
                    width=width,
                    height=height,
                    raw_boxes=boxes,
                )
            )
        validator.report()
        super().__init__(images, transforms=transforms)

    @staticmethod
    def _parse_line(line: str, line_number: int, source: Path) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"'{source}', line {line_number}: malformed JSON ({err.msg} at column {err.colno})"
            ) from err
        if not isinstance(record, dict) or not isinstance(record.get("ID"), str):
            raise DatasetError(f"'{source}', line {line_number}: expected an object with a string 'ID'")
        if not isinstance(record.get("gtboxes", []), list):
            raise DatasetError(f"'{source}', line {line_number}: 'gtboxes' must be a list")
        return record

    @staticmethod
    def _raw_box(entry: Any) -> _RawBox:
        entry = entry if isinstance(entry, dict) else {}
        extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
        full = _xywh(entry.get("fbox")) or _xywh(entry.get("vbox"))
        visible = _xywh(entry.get("vbox"))
        if full is None:
            # No usable box: validation drops it and counts it.
            full = [float("nan")] * 4
        return _RawBox(
            xywh=full,
            ignore=entry.get("tag") != "person" or bool(extra.get("ignore", 0)),
            height=full[3],
            vis_ratio=None if visible is None else _overlap_fraction(visible, full),
        )


class ImageFolderDataset(PedestrianDataset):
    """A folder of images without labels (every target is empty).

    Images are the files with suffixes in :data:`IMAGE_SUFFIXES` (any case),
    sorted by path relative to ``root``. Files that cannot be read as images are
    skipped with one logged warning.

    Args:
        root: the folder.
        recursive: also list images in subfolders.
        transforms: see :class:`PedestrianDataset`.
    """

    def __init__(
        self, root: str | Path, *, recursive: bool = False, transforms: Transform | None = None
    ):
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"image folder '{root}' does not exist")
        candidates = root.rglob("*") if recursive else root.iterdir()
        files = sorted(
            (p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        images, unreadable = [], []
        for path in files:
            confine(path, root, root)
            try:
                width, height = read_image_size(path)
            except ImageError as err:
                unreadable.append(str(err))
                continue
            images.append(
                ImageAnnotations(
                    image_id=len(images) + 1,
                    file_name=path.relative_to(root).as_posix(),
                    path=path,
                    width=width,
                    height=height,
                )
            )
        if unreadable:
            log.warning(
                "%s: skipped %d unreadable image file(s), e.g. %s",
                root, len(unreadable), "; ".join(unreadable[:_MAX_EXAMPLES]),
            )
        if not images:
            where = "in or below" if recursive else "directly in"
            raise DatasetError(f"no readable images {where} '{root}'; {ACCEPTED_LAYOUTS}")
        super().__init__(images, transforms=transforms)


def open_dataset(
    path: str | Path,
    *,
    images: str | Path | None = None,
    transforms: Transform | None = None,
) -> PedestrianDataset:
    """Open a dataset, recognising its layout from ``path``.

    * a folder with ``annotations.json`` → :class:`CocoPedestrianDataset` (images in
      ``images`` or ``<folder>/images``), e.g. a SynthPed folder;
    * a ``.json`` file → :class:`CocoPedestrianDataset` (images in ``images`` or
      ``<json folder>/images``);
    * a ``.odgt`` file → :class:`CrowdHumanDataset` (images in ``images`` or
      ``<odgt folder>/Images``, CrowdHuman's own name, else ``<odgt folder>/images``);
    * any other folder → :class:`ImageFolderDataset`.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path '{path}' does not exist; {ACCEPTED_LAYOUTS}")
    if path.is_dir():
        annotation_json = path / "annotations.json"
        if annotation_json.is_file():
            return CocoPedestrianDataset(
                images or path / "images", annotation_json, transforms=transforms
            )
        if images is not None:
            raise DatasetError(
                f"'{path}' is a folder without annotations.json, so an images folder makes no sense; "
                f"{ACCEPTED_LAYOUTS}"
            )
        return ImageFolderDataset(path, transforms=transforms)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return CocoPedestrianDataset(images or path.parent / "images", path, transforms=transforms)
    if suffix == ".odgt":
        if images is None:
            images = path.parent / "Images"
            if not images.is_dir():
                images = path.parent / "images"
        return CrowdHumanDataset(images, path, transforms=transforms)
    raise DatasetError(f"cannot open '{path}' as a dataset; {ACCEPTED_LAYOUTS}")
