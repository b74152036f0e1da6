"""``hkd eval``: CityPersons MR⁻² and COCO AP of a detections file against a GT file.

    hkd eval --gt GT.json --dets DETS.json [--json]

``GT.json`` is CityPersons-style COCO (images, categories, annotations with
bbox, height, vis_ratio, ignore); ``DETS.json`` is a COCO results list
(image_id, category_id, bbox [x, y, w, h], score). With ``--json`` the output
is exactly ``{"mr": {"Reasonable": …, "Small": …, "Heavy": …, "All": …},
"ap50": …, "ap": …}`` (MR in percent, AP in [0, 1]; MR -100 and AP -1 mean
no ground truth to score against, as the official evaluators print).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hkd.cli import CLIError

_HELP = "MR-2 (CityPersons protocol) and COCO AP of detections against ground truth"


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=_HELP, description=_HELP)
    parser.add_argument("--gt", required=True, type=Path, metavar="GT",
                        help="ground truth: a CityPersons-style COCO JSON, or a dataset as hkd.data.open_dataset "
                             "reads it (CityPersons anno_<split>.mat, a Caltech or COCO folder, a .odgt …)")
    parser.add_argument("--dets", required=True, type=Path, metavar="DETS.json",
                        help="detections, COCO results JSON list")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    parser.set_defaults(func=run)
    return parser


def _load_json(path: Path, what: str) -> Any:
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CLIError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise CLIError(f"{what} file {path} is a directory, expected a JSON file") from None
    except OSError as exc:
        raise CLIError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"{what} file {path} is not valid JSON: {exc}") from None


def _gt_file(path: Path) -> bool:
    """A COCO-style GT JSON (read as it is), or a file that is no dataset either (its own error then)."""
    from hkd.evaluation.workflow import is_gt_json

    return is_gt_json(path) or not (path.is_dir() or path.suffix.lower() in (".json", ".mat", ".odgt"))


def _dataset_gt(path: Path) -> dict:
    """The GT of a dataset as distributed (a CityPersons .mat, a Caltech or COCO folder, a CrowdHuman .odgt …)."""
    from hkd.data.datasets import DatasetError
    from hkd.evaluation.workflow import dataset_ground_truth

    try:
        return dataset_ground_truth(path)
    except (DatasetError, OSError) as exc:
        raise CLIError(f"ground truth {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    # imported here so that `hkd --help` stays cheap
    from hkd.eval import evaluate_ap, evaluate_mr, parse_detections, parse_ground_truth

    gt = _load_json(args.gt, "ground-truth") if _gt_file(args.gt) else _dataset_gt(args.gt)
    dets = _load_json(args.dets, "detections")
    try:
        truth = parse_ground_truth(gt)
    except ValueError as exc:
        raise CLIError(f"ground-truth file {args.gt}: {exc}") from None
    try:
        found = parse_detections(dets, truth)
    except ValueError as exc:
        raise CLIError(f"detections file {args.dets}: {exc}") from None

    mr = evaluate_mr(truth, found)
    ap = evaluate_ap(truth, found)
    if args.json:
        print(json.dumps({"mr": mr.mr, "ap50": ap["ap50"], "ap": ap["ap"]}))
        return 0

    print("MR-2 (%, lower is better)")
    for name, result in mr.setups.items():
        note = "" if result.valid else "  (no ground truth in this setup)"
        print(f"  {name:<11} {result.mr:7.2f}{note}")
    print(f"AP50  {ap['ap50']:.4f}")
    print(f"AP    {ap['ap']:.4f}")
    return 0
