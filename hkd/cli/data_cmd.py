"""``hkd data``: what a dataset holds, and the same dataset in hkd's own layout.

    hkd data info PATH [--images DIR] [--split S] [--json]
    hkd data convert PATH --out DIR [--images DIR] [--split S] [--copy]

PATH is anything :func:`hkd.data.datasets.open_dataset` reads: a folder with
``annotations.json`` + ``images/`` (SynthPed, COCO style), a COCO-style ``.json``
(CityPersons), COCO itself (``annotations/instances_<split>.json`` + ``<split>/``),
CityPersons' ``anno_<split>.mat`` with Cityscapes' ``leftImg8bit/``, a CrowdHuman
``.odgt``, a Caltech folder where that reader is installed, or a folder of images.

``info`` names the format, counts images, pedestrians and ignore regions, and the
pedestrians each CityPersons setup (Reasonable, Small, Heavy, All) evaluates.
``convert`` writes ``DIR/annotations.json`` (:meth:`PedestrianDataset.coco_gt`) and
``DIR/images/``, which ``open_dataset`` reads with default settings: images are
hard links where the file system allows (symlinks would point outside the folder,
which the readers refuse), else copies; frames of a video are written as PNG.
"""
from __future__ import annotations

import json
from pathlib import Path

from hkd.cli import CLIError
from hkd.data.convert import INFO_KEYS, convert, describe

__all__ = ["INFO_KEYS", "convert", "describe"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="describe a dataset, or convert it to hkd's own layout",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="format, images, pedestrians, ignore regions, pedestrians per setup")
    _dataset_arguments(info)
    info.add_argument("--json", action="store_true", help=f"print a JSON object ({', '.join(INFO_KEYS)})")
    convert = sub.add_parser("convert", help="write DIR/annotations.json + DIR/images/ (hkd's own layout)")
    _dataset_arguments(convert)
    convert.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new or empty folder")
    convert.add_argument("--copy", action="store_true",
                         help="copy every image (default: hard links where the file system allows, else copies; "
                              "a hard link shares the file, so editing one edits both)")
    p.set_defaults(func=run)


def _dataset_arguments(parser) -> None:
    parser.add_argument("path", help="a dataset folder or annotation file (.json, .mat, .odgt)")
    parser.add_argument("--images", metavar="DIR", help="the images folder, where it is not the layout's default")
    parser.add_argument("--split", help="which split of a COCO or CityPersons folder that holds several")


def run(args) -> int:
    from hkd.data.datasets import DatasetError, open_dataset
    from hkd.data.images import ImageError

    try:
        dataset = open_dataset(args.path, images=args.images, split=args.split)
        return _ACTIONS[args.data_command](dataset, args)
    except (DatasetError, ImageError) as exc:
        raise CLIError(str(exc)) from None


def _info(dataset, args) -> int:
    info = describe(dataset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.path}: {info['format']}")
    print(f"  images       {info['images']}")
    print(f"  pedestrians  {info['pedestrians']}")
    print(f"  ignore       {info['ignore']} regions")
    print("  per setup    " + ", ".join(f"{name} {count}" for name, count in info["setups"].items())
          + "  (pedestrians each CityPersons setup evaluates)")
    for note in info["notes"]:
        print(f"  note: {note}")
    return 0


def _convert(dataset, args) -> int:
    from hkd.data.datasets import DatasetError, open_dataset

    counts = convert(dataset, args.out, source=str(args.path), copy=args.copy)
    try:
        copy = open_dataset(args.out)  # as training and evaluation will open it: default settings
    except DatasetError as exc:
        raise CLIError(f"the converted dataset in {args.out} does not open: {exc}") from None
    if len(copy) != len(dataset):
        raise CLIError(f"the converted dataset in {args.out} has {len(copy)} images, not {len(dataset)}")
    how = ", ".join(f"{counts[key]} {label}" for key, label in
                    (("hard_links", "hard links"), ("copies", "copies"), ("encoded", "frames saved as PNG"))
                    if counts[key])
    print(f"wrote {counts['images']} images ({how or 'none'}) and {args.out / 'annotations.json'}")
    for note in dataset.notes:
        print(f"note: {note}")
    return 0


_ACTIONS = {"info": _info, "convert": _convert}
