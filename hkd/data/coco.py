"""COCO-style JSON: CityPersons' and SynthPed's files, and COCO's own ``instances_<split>.json``.

* :class:`CocoPedestrianDataset` — pedestrian files in COCO style (CityPersons, SynthPed,
  ``hkd data convert``): every non-pedestrian category is an ignore region.
* :class:`CocoOfficialDataset` — COCO itself (``annotations/instances_<split>.json`` with
  the images in ``<split>/``): ``person`` is the pedestrian, crowd persons are ignore
  regions, and the other 79 categories are not people at all, so they are dropped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from hkd.data.base import PEDESTRIAN_CATEGORY, DatasetError, PedestrianDataset, Transform
from hkd.data.validation import (
    BoxValidator,
    RawBox,
    float_or_nan,
    image_size,
    load_json,
    overlap_fraction,
    parse_xywh,
    resolve_image_paths,
)

__all__ = ["CocoOfficialDataset", "CocoPedestrianDataset", "coco_splits", "is_coco_instances"]

# Category names that mean "pedestrian" in COCO-style files; every other
# category (CityPersons: ignore region, rider, sitting, other, group) is an ignore box.
_PEDESTRIAN_NAMES = {"pedestrian", "pedestrians", "person", "persons"}
_COCO_INSTANCES = re.compile(r"instances_(.+)\.json")


class CocoPedestrianDataset(PedestrianDataset):
    """COCO-style JSON as CityPersons (and SynthPed) write it.

    Annotation keys used: ``image_id``, ``bbox`` ``[x, y, w, h]``, ``category_id``,
    and optionally ``height`` (default: bbox height), ``vis_ratio`` (default:
    area(``vis_bbox`` ∩ bbox) / area(bbox), else 1.0), ``ignore`` and ``iscrowd``.
    Annotations of non-pedestrian categories (CityPersons: ignore regions, riders,
    sitting and other persons, groups) and crowd/ignore ones become ignore boxes
    (a subclass with ``other_categories_are_ignore = False`` leaves the former out).
    Images are ``{"id", "file_name" (or CityPersons' "im_name"), "width", "height"}``.

    Args:
        images_dir: folder the ``file_name`` entries are relative to.
        annotation_json: the JSON file.
        pedestrian_category_ids: category ids that are pedestrians; by default the
            categories named pedestrian/person, or id 1 when the file lists none.
        transforms: see :class:`PedestrianDataset`.
    """

    format_name: ClassVar[str] = "coco-style json"
    #: CityPersons' other categories are people (riders, sitting persons, groups) and
    #: regions that no detector should be blamed for: ignore boxes, not background.
    other_categories_are_ignore: ClassVar[bool] = True

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
        data = load_json(source)
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

        raw_boxes: dict[int, list[RawBox]] = defaultdict(list)
        not_people = 0
        for position, ann in enumerate(data.get("annotations") or []):
            image_id = self._image_id(ann, position, entries, source)
            if not self.other_categories_are_ignore and (
                ann.get("category_id", PEDESTRIAN_CATEGORY["id"]) not in pedestrian_ids
            ):
                not_people += 1
                continue
            raw_boxes[image_id].append(self._raw_box(ann, position, pedestrian_ids, source))

        ids = list(entries)
        paths = resolve_image_paths(Path(images_dir), [entries[i]["file_name"] for i in ids], source)
        validator = BoxValidator(source)
        images = []
        for image_id, path in zip(ids, paths):
            width, height = image_size(path, entries[image_id])
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
        notes = validator.notes()
        if not_people:
            notes.append(f"{not_people} annotations of other categories than person were left out "
                         "(they are not people); crowds of persons are ignore regions")
        super().__init__(images, transforms=transforms, notes=notes)

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
    def _raw_box(ann: dict[str, Any], position: int, pedestrian_ids: set[int], source: Path) -> RawBox:
        bbox = parse_xywh(ann.get("bbox"))
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
        vis_bbox = parse_xywh(ann.get("vis_bbox"))
        if vis_ratio is None and vis_bbox is not None:
            vis_ratio = overlap_fraction(vis_bbox, bbox)
        height = ann.get("height")
        return RawBox(
            xywh=bbox,
            ignore=ignore,
            height=None if height is None else float_or_nan(height),
            vis_ratio=None if vis_ratio is None else float_or_nan(vis_ratio),
        )


def coco_splits(root: str | Path) -> dict[str, Path]:
    """``{split: annotations/instances_<split>.json}`` of a COCO root folder, by split name."""
    found = {}
    for path in sorted(Path(root, "annotations").glob("instances_*.json")):
        match = _COCO_INSTANCES.fullmatch(path.name)
        if match and path.is_file():
            found[match.group(1)] = path
    return found


def is_coco_instances(path: str | Path) -> bool:
    """Whether ``path`` is named as COCO names its detection files, ``instances_<split>.json``."""
    return _COCO_INSTANCES.fullmatch(Path(path).name) is not None


class CocoOfficialDataset(CocoPedestrianDataset):
    """COCO's own detection annotations, ``<root>/annotations/instances_<split>.json``.

    ``person`` is the pedestrian; ``iscrowd`` persons are ignore regions; annotations of
    every other category are left out (a car is background, not a region to ignore).
    COCO has no visibility: it is taken as 1.0 and :attr:`notes` says so.

    Args:
        annotation_json: the ``instances_<split>.json`` file.
        images_dir: the images; by default ``<root>/<split>`` (``<json folder>/..``),
            else ``<json folder>/<split>``.
        transforms: see :class:`PedestrianDataset`.
    """

    format_name: ClassVar[str] = "coco official"
    other_categories_are_ignore: ClassVar[bool] = False

    def __init__(
        self,
        annotation_json: str | Path,
        *,
        images_dir: str | Path | None = None,
        transforms: Transform | None = None,
    ):
        source = Path(annotation_json)
        match = _COCO_INSTANCES.fullmatch(source.name)
        self.split = match.group(1) if match else None
        if images_dir is None:
            images_dir = self._default_images_dir(source)
        super().__init__(images_dir, source, transforms=transforms)

    def _default_images_dir(self, source: Path) -> Path:
        if self.split is None:
            raise DatasetError(f"'{source}' is not named instances_<split>.json, so its images folder "
                               "is unknown; pass the images folder")
        candidates = [source.parent.parent / self.split, source.parent / self.split]
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        raise DatasetError(f"no images folder for '{source}': looked for {[str(c) for c in candidates]}; "
                           "pass the images folder")
