"""A plain folder of images, without labels: for predictions and a look at a model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from hkd.data.base import ACCEPTED_LAYOUTS, DatasetError, ImageAnnotations, PedestrianDataset, Transform
from hkd.data.images import IMAGE_SUFFIXES, ImageError, read_image_size
from hkd.data.validation import MAX_EXAMPLES, confine

__all__ = ["ImageFolderDataset"]

log = logging.getLogger("hkd.data.datasets")  # the one logger of the dataset readers (see validation)


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

    format_name: ClassVar[str] = "image folder"

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
                root, len(unreadable), "; ".join(unreadable[:MAX_EXAMPLES]),
            )
        if not images:
            where = "in or below" if recursive else "directly in"
            raise DatasetError(f"no readable images {where} '{root}'; {ACCEPTED_LAYOUTS}")
        super().__init__(images, transforms=transforms, notes=["no labels: a folder of images only"])
