"""Pedestrian detection datasets: one interface, one class per real format, one opener.

* :class:`CocoPedestrianDataset` — COCO-style JSON as CityPersons uses it (and SynthPed)
  (:mod:`hkd.data.coco`).
* :class:`CocoOfficialDataset` — COCO's own ``instances_<split>.json`` (:mod:`hkd.data.coco`).
* :class:`CityPersonsDataset` — CityPersons' ``anno_<split>.mat`` over Cityscapes
  (:mod:`hkd.data.citypersons`).
* :class:`CrowdHumanDataset` — CrowdHuman ``.odgt`` (:mod:`hkd.data.crowdhuman`).
* :class:`ImageFolderDataset` — a plain folder of images, no labels (:mod:`hkd.data.folder`).

All of them yield ``(image, target)`` with the same target keys and give the
same COCO-style ground truth (:meth:`PedestrianDataset.coco_gt`, :mod:`hkd.data.base`)
to the evaluation code. Annotations are validated once, on load
(:mod:`hkd.data.validation`): boxes that cannot be used are dropped with one logged
summary, boxes partly outside their image are clipped, so that training never
stops on a bad box. :func:`open_dataset` recognises the layout from a path.
"""

from __future__ import annotations

from pathlib import Path

from hkd.data.base import (
    ACCEPTED_LAYOUTS,
    PEDESTRIAN_CATEGORY,
    DatasetError,
    ImageAnnotations,
    PedestrianDataset,
    Target,
    Transform,
    collate_detection,
)
from hkd.data.citypersons import CityPersonsDataset, citypersons_splits
from hkd.data.coco import CocoOfficialDataset, CocoPedestrianDataset, coco_splits, is_coco_instances
from hkd.data.crowdhuman import CrowdHumanDataset
from hkd.data.folder import ImageFolderDataset
from hkd.data.validation import ALLOW_SYMLINKS_ENV, check_relative_name, confine, symlinks_allowed

__all__ = [
    "ACCEPTED_LAYOUTS",
    "ALLOW_SYMLINKS_ENV",
    "PEDESTRIAN_CATEGORY",
    "CityPersonsDataset",
    "CocoOfficialDataset",
    "CocoPedestrianDataset",
    "CrowdHumanDataset",
    "DatasetError",
    "ImageAnnotations",
    "ImageFolderDataset",
    "PedestrianDataset",
    "Target",
    "Transform",
    "check_relative_name",
    "collate_detection",
    "confine",
    "is_annotated",
    "open_dataset",
    "symlinks_allowed",
]


def open_dataset(
    path: str | Path,
    *,
    images: str | Path | None = None,
    split: str | None = None,
    transforms: Transform | None = None,
) -> PedestrianDataset:
    """Open a dataset, recognising its layout from ``path``.

    * a folder with ``annotations.json`` → :class:`CocoPedestrianDataset` (images in
      ``images`` or ``<folder>/images``), e.g. a SynthPed folder or ``hkd data convert``'s output;
    * a COCO folder, ``annotations/instances_<split>.json`` + ``<split>/`` →
      :class:`CocoOfficialDataset`; a CityPersons folder, ``anno_<split>.mat`` (or
      ``annotations/anno_<split>.mat``) + ``leftImg8bit/<split>/`` → :class:`CityPersonsDataset`.
      With several splits there, ``split`` picks one;
    * a ``.json`` file → :class:`CocoOfficialDataset` when it is named ``instances_<split>.json``
      (images in ``images`` or ``<json folder>/../<split>``), else :class:`CocoPedestrianDataset`
      (images in ``images`` or ``<json folder>/images``);
    * a ``.mat`` file → :class:`CityPersonsDataset` (images in ``images`` or
      ``<mat folder>/../leftImg8bit/<split>``, else ``<mat folder>/leftImg8bit/<split>``);
    * a ``.odgt`` file → :class:`CrowdHumanDataset` (images in ``images`` or
      ``<odgt folder>/Images``, CrowdHuman's own name, else ``<odgt folder>/images``);
    * a Caltech folder (:func:`hkd.data.caltech.is_caltech_root`) → :class:`hkd.data.caltech.CaltechDataset`
      (``split`` train or test, default test; every 30th frame);
    * any other folder → :class:`ImageFolderDataset`.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path '{path}' does not exist; {ACCEPTED_LAYOUTS}")
    caltech = _open_caltech(path, split, transforms)
    if caltech is not None:
        return caltech
    if path.is_dir():
        annotation_json = path / "annotations.json"
        if annotation_json.is_file():
            if split is not None:
                raise DatasetError(f"'{path}' holds one set of annotations (annotations.json), so split {split!r} "
                                   "makes no sense; split picks a file in a COCO, CityPersons or Caltech folder")
            return CocoPedestrianDataset(
                images or path / "images", annotation_json, transforms=transforms
            )
        if found := coco_splits(path):
            return CocoOfficialDataset(
                _pick_split(found, split, path, "COCO"), images_dir=images, transforms=transforms
            )
        if found := citypersons_splits(path):
            return CityPersonsDataset(
                _pick_split(found, split, path, "CityPersons"), images_dir=images, transforms=transforms
            )
        if images is not None:
            raise DatasetError(
                f"'{path}' is a folder without annotations.json, so an images folder makes no sense; "
                f"{ACCEPTED_LAYOUTS}"
            )
        if split is not None:
            raise DatasetError(f"'{path}' holds no COCO instances_<split>.json nor CityPersons anno_<split>.mat, "
                               f"so split {split!r} makes no sense; {ACCEPTED_LAYOUTS}")
        return ImageFolderDataset(path, transforms=transforms)
    if split is not None:
        raise DatasetError(f"'{path}' is an annotation file, which is one split already; "
                           "split picks a file in a COCO or CityPersons folder")
    suffix = path.suffix.lower()
    if suffix == ".json":
        if is_coco_instances(path):
            return CocoOfficialDataset(path, images_dir=images, transforms=transforms)
        return CocoPedestrianDataset(images or path.parent / "images", path, transforms=transforms)
    if suffix == ".mat":
        return CityPersonsDataset(path, images_dir=images, transforms=transforms)
    if suffix == ".odgt":
        if images is None:
            images = path.parent / "Images"
            if not images.is_dir():
                images = path.parent / "images"
        return CrowdHumanDataset(images, path, transforms=transforms)
    raise DatasetError(f"cannot open '{path}' as a dataset; {ACCEPTED_LAYOUTS}")


def _pick_split(found: dict[str, Path], split: str | None, root: Path, what: str) -> Path:
    """The annotation file of ``split`` among ``found`` ({split: file}); the only one when not given."""
    if split is not None:
        if split not in found:
            raise DatasetError(f"'{root}' has no {what} split {split!r}; it has {sorted(found)}")
        return found[split]
    if len(found) > 1:
        files = ", ".join(str(found[name]) for name in sorted(found))
        raise DatasetError(f"'{root}' holds several {what} splits ({files}); "
                           f"open one of these files, or pass the split ({' | '.join(sorted(found))})")
    return next(iter(found.values()))


def _open_caltech(path: Path, split: str | None, transforms: Transform | None) -> PedestrianDataset | None:
    """A :class:`hkd.data.caltech.CaltechDataset` when ``path`` is a Caltech folder, else None."""
    from hkd.data import caltech

    if not caltech.is_caltech_root(path):
        return None
    return caltech.CaltechDataset(path, split=split or "test", transforms=transforms)


def is_annotated(path: str | Path) -> bool:
    """Whether ``path`` is a layout with ground truth :func:`open_dataset` reads (not a plain image
    folder), judged from names only: nothing is parsed."""
    from hkd.data.caltech import is_caltech_root

    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in (".json", ".odgt", ".mat")
    return path.is_dir() and ((path / "annotations.json").is_file() or bool(coco_splits(path))
                              or bool(citypersons_splits(path)) or is_caltech_root(path))
