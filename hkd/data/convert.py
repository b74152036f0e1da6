"""What a dataset holds (:func:`describe`) and the same dataset in hkd's own layout (:func:`convert`):
``annotations.json`` (:meth:`PedestrianDataset.coco_gt`) + ``images/``, which
:func:`hkd.data.datasets.open_dataset` reads with default settings. ``hkd data info`` and
``hkd data convert`` are these two functions."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from hkd.data.base import DatasetError

__all__ = ["INFO_KEYS", "convert", "describe"]

INFO_KEYS = ("format", "images", "pedestrians", "ignore", "setups", "notes")


def describe(dataset) -> dict[str, Any]:
    """``hkd data info --json``: ``format``, ``images``, ``pedestrians``, ``ignore`` (regions),
    ``setups`` ({setup name: pedestrians that setup evaluates, as MR⁻² counts them}) and ``notes``."""
    from hkd.eval.matching import SETUP_NAMES
    from hkd.eval.mr import count_detections, parse_detections, parse_ground_truth

    gt = dataset.coco_gt()
    truth = parse_ground_truth(gt)
    # The positives of each setup are counted by the matching itself (with no detections),
    # so these are exactly the pedestrians MR⁻² divides by.
    counted = count_detections(truth, parse_detections([], truth), SETUP_NAMES)
    setups = {name: 0 if counted is None else int(counted[name].positives.sum()) for name in SETUP_NAMES}
    ignore = sum(annotation["ignore"] for annotation in gt["annotations"])
    return {
        "format": dataset.format_name,
        "images": len(dataset),
        "pedestrians": len(gt["annotations"]) - ignore,
        "ignore": ignore,
        "setups": setups,
        "notes": list(dataset.notes),
    }


def convert(dataset, out: Path, *, source: str = "", copy: bool = False) -> dict[str, int]:
    """Write ``dataset`` to ``out/annotations.json`` + ``out/images/``; returns how each image was written.

    Image ``file_name``s are kept (a video frame becomes ``<name>.png``); a file image is
    hard-linked (``copy=False``, same file system) or copied, a frame decoded and saved as PNG.
    The annotations are :meth:`PedestrianDataset.coco_gt`, with ``info`` naming the source,
    its format and its notes.

    Raises:
        DatasetError: ``out`` holds something already, or two images share a file name.
    """
    from PIL import Image

    from hkd.data.validation import check_relative_name
    from hkd.models.meta import atomic_write

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"--out {out} is not an empty folder; convert writes into a new or empty one")
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations = out / "annotations.json"
    gt = dataset.coco_gt()
    written: dict[str, str] = {}
    counts = {"images": len(dataset), "hard_links": 0, "copies": 0, "encoded": 0}
    for index, entry in enumerate(gt["images"]):
        image_file = dataset.image_file(index)
        if image_file is None:
            entry["file_name"] = str(PurePosixPath(entry["file_name"]).with_suffix(".png"))
        name = entry["file_name"]
        check_relative_name(name, images_dir, annotations)
        origin = str(image_file) if image_file is not None else f"image {index} of {source}"
        if name in written:
            if written[name] == origin:
                continue  # the same file listed twice
            raise DatasetError(f"two images would both be written as images/{name}: {written[name]} and {origin}")
        written[name] = origin
        target = images_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if image_file is None:
            Image.fromarray(dataset.load_pixels(index)).save(target, format="PNG")
            counts["encoded"] += 1
            continue
        if not copy:
            try:
                os.link(image_file, target, follow_symlinks=True)
                counts["hard_links"] += 1
                continue
            except OSError:
                pass  # another file system, or one without hard links: copy
        shutil.copyfile(image_file, target)
        counts["copies"] += 1
    gt["info"] = {"converted_from": source, "format": dataset.format_name, "notes": list(dataset.notes)}
    atomic_write(annotations, lambda tmp: Path(tmp).write_text(json.dumps(gt), encoding="utf-8"))
    return counts
