"""The one dataset interface: per-image ground truth, ``(image, target)`` items, COCO-style GT.

Every reader (:mod:`hkd.data.coco`, :mod:`hkd.data.citypersons`, :mod:`hkd.data.crowdhuman`,
:mod:`hkd.data.folder`) builds a :class:`PedestrianDataset` from validated
:class:`ImageAnnotations`; :func:`hkd.data.datasets.open_dataset` picks the reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from hkd.data.images import IMAGE_SUFFIXES, load_image, to_tensor

__all__ = [
    "ACCEPTED_LAYOUTS",
    "PEDESTRIAN_CATEGORY",
    "DatasetError",
    "ImageAnnotations",
    "PedestrianDataset",
    "Target",
    "Transform",
    "collate_detection",
]

#: ``target`` dict of one image; see :class:`PedestrianDataset` for its keys.
Target = dict[str, Any]
#: A training transform: ``(image [3, H, W], target) -> (image, target)``.
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]

PEDESTRIAN_CATEGORY = {"id": 1, "name": "pedestrian"}

ACCEPTED_LAYOUTS = (
    "accepted layouts: a folder with annotations.json and images/ (SynthPed, COCO-style); "
    "a COCO-style .json file (CityPersons; images in <json folder>/images or given); "
    "COCO itself (a folder with annotations/instances_<split>.json and <split>/, or that .json); "
    "CityPersons' anno_<split>.mat (or a folder holding it) with Cityscapes' leftImg8bit/<split>/; "
    "a CrowdHuman .odgt file (images in <odgt folder>/Images or given); "
    "Caltech Pedestrian (a folder with annotations/setXX/VYYY.vbb and setXX/VYYY.seq or videos/setXX/); "
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

    A reader whose images are not files of their own (frames of a video) overrides
    :meth:`load_pixels` and :meth:`image_file`; everything else works on the annotations.

    Args:
        images: per-image annotations, in dataset order.
        transforms: optional ``(image, target) -> (image, target)`` applied last.
        notes: what the reader had to assume about the data (say, unknown
            visibility), for ``hkd data info``; ``dataset.notes`` keeps them.
    """

    #: The layout this reader reads, as ``hkd data info`` names it.
    format_name: ClassVar[str] = "pedestrian dataset"

    def __init__(
        self,
        images: Sequence[ImageAnnotations],
        *,
        transforms: Transform | None = None,
        notes: Sequence[str] = (),
    ):
        self._images = list(images)
        self.transforms = transforms
        self.notes = list(notes)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = to_tensor(self.load_pixels(index)), self._images[index].target()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def load_pixels(self, index: int) -> np.ndarray:
        """Image ``index`` as ``uint8 [H, W, 3]`` RGB, upright, at its annotated size (no transforms).

        Raises:
            DatasetError: the decoded image is not the size its annotations were made on.
        """
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
        return pixels

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

    def image_file(self, index: int) -> Path | None:
        """The image file of image ``index`` (copy it to copy the image), or None when the image is
        not a file of its own (its ``path`` is a video, say): then :meth:`load_pixels` gives it."""
        path = self._images[index].path
        return path if path.suffix.lower() in IMAGE_SUFFIXES else None

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
