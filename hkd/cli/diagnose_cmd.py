"""``hkd diagnose``: where each missed pedestrian is lost — RPN, ROI score, NMS or localization.

    hkd diagnose --checkpoint CK [--checkpoint NAME=CK ...] --gt GT.json --images DIR
                 [--score S | --fppi F] [--setup Reasonable] [--limit N] [--json] [--out DIR]

One staged forward pass per image and checkpoint (:mod:`hkd.analysis.stages`),
then :func:`hkd.analysis.diagnose.diagnose`. ``--json`` prints
``{"setup", "operating_point", "cases", "summary", "pairs"}``, each keyed by
model name (``pairs``: for two or more checkpoints, the pedestrians one finds
and the other misses, by the stage that lost them). ``--out DIR`` writes
``diagnosis.json`` and ``cases.csv``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from hkd.cli import CLIError
from hkd.cli.eval_cmd import _load_json
from hkd.eval.matching import SETUP_NAMES

_HELP = "where each missed pedestrian is lost: RPN, ROI score, NMS or localization"


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=_HELP, description=_HELP)
    p.add_argument("--checkpoint", required=True, action="append", metavar="[NAME=]CK",
                   help="HKD checkpoint (.safetensors); repeat as NAME=CK for several models")
    p.add_argument("--gt", required=True, type=Path, metavar="GT.json", help="CityPersons-style COCO ground truth")
    p.add_argument("--images", required=True, type=Path, metavar="DIR",
                   help="folder the ground truth's file_name entries are relative to")
    point = p.add_mutually_exclusive_group()
    point.add_argument("--score", type=float, default=None, help="one operating score for every model")
    point.add_argument("--fppi", type=float, default=0.1,
                       help="false positives per image that fix each model's operating score (default 0.1)")
    p.add_argument("--setup", choices=SETUP_NAMES, default="Reasonable",
                   help="which pedestrians are cases, and the setup of the operating point (default Reasonable)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the ground truth's first N images")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the diagnosis as one JSON object")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="also write diagnosis.json and cases.csv here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def checkpoint_names(specs: list[str]) -> dict[str, Path]:
    """``NAME=CK`` (or a bare ``CK``, named after its file) -> ``{name: path}``; names unique."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        name = name.strip()
        if not name or not path:
            raise CLIError(f"--checkpoint {spec!r}: expected CK or NAME=CK")
        if name in out:
            raise CLIError(f"--checkpoint: model name {name!r} is given twice; name them NAME=CK")
        out[name] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from hkd.analysis.diagnose import DiagnosisInputError, describe, diagnose, stages_over_dataset
    from hkd.data.images import ImageError
    from hkd.models.checkpoint import CheckpointError, load_checkpoint

    models = checkpoint_names(args.checkpoint)
    if args.limit is not None and args.limit <= 0:
        raise CLIError(f"--limit must be a positive number of images, got {args.limit}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out} exists and is not a directory")
    if not args.images.is_dir():
        raise CLIError(f"--images {args.images}: not a folder")
    gt = _load_json(args.gt, "ground-truth")
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list) or not gt["images"]:
        raise CLIError(f"--gt {args.gt}: no 'images' list, so there is nothing to diagnose")
    if not gt.get("annotations"):
        raise CLIError(f"--gt {args.gt}: the ground truth has no annotations; diagnosis needs pedestrians to look for")
    if args.limit is not None:
        keep = {im["id"] for im in gt["images"][:args.limit]}
        gt = {**gt, "images": gt["images"][:args.limit],
              "annotations": [a for a in gt["annotations"] if a.get("image_id") in keep]}
    if args.threads:
        torch.set_num_threads(args.threads)
    loader = image_loader(args.images)
    runs = {}
    for name, path in models.items():
        try:
            loaded = load_checkpoint(path, inference=True)
        except CheckpointError as exc:
            raise CLIError(str(exc)) from None
        if [c.lower() for c in loaded.meta.classes[1:2]] not in (["pedestrian"], ["person"]):
            raise CLIError(f"--checkpoint {path}: its class 1 is {loaded.meta.classes[1:2]}, not a pedestrian; "
                           "diagnosis reads class 1 as the pedestrian")
        bar = tqdm(total=len(gt["images"]), desc=f"diagnose {name}", unit="img",
                   disable=args.no_progress or not sys.stderr.isatty())
        try:
            runs[name] = stages_over_dataset(loaded.model, gt, loader, progress=lambda done, total: bar.update(1))
        except (ImageError, FileNotFoundError) as exc:
            raise CLIError(str(exc)) from None
        except TypeError as exc:
            raise CLIError(f"--checkpoint {path}: {exc}") from None
        finally:
            bar.close()
    try:
        result = diagnose(gt, runs, score=args.score, fppi=args.fppi, setup=args.setup)
    except DiagnosisInputError as exc:
        raise CLIError(f"--gt {args.gt}: {exc}") from None
    if args.out is not None:
        write_outputs(result, args.out)
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return 0
    print(render_text(result, describe))
    if args.out is not None:
        print(f"wrote {args.out / 'diagnosis.json'} and {args.out / 'cases.csv'}")
    return 0


def image_loader(root: Path):
    """``image record -> pixels`` for files under ``root``; a file_name that leaves ``root`` is refused."""
    from hkd.data.images import load_image

    base = root.resolve()

    def load(record: dict):
        name = record.get("file_name")
        if not isinstance(name, str) or not name:
            raise CLIError(f"--gt: image id {record.get('id')!r} has no file_name")
        path = (base / name).resolve()
        if not path.is_relative_to(base):
            raise CLIError(f"--gt: file_name {name[:200]!r} leaves the images folder {root}")
        if not path.is_file():
            raise CLIError(f"--images {root}: {name[:200]} (image id {record.get('id')}) is not there; "
                           "is --images the folder the ground truth's file_name entries are relative to?")
        return load_image(path)

    return load


def write_outputs(result: dict, out: Path) -> None:
    """``diagnosis.json`` and ``cases.csv`` (one row per model and case), each written whole then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "diagnosis.json", json.dumps(result))
    buf = io.StringIO()
    fields = ["model", "image_id", "file_name", "annotation_id", "stage", "height", "visibility", "x1", "y1", "x2",
              "y2", "best_proposal_iou", "best_proposal_objectness", "best_proposal_rank", "best_score_before_nms",
              "suppressor_score", "suppressor_matched_other", "detection_score", "nearby_score", "nearby_why"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for name, cases in result["cases"].items():
        for c in cases:
            bp, sup, det, near = c["best_proposal"] or {}, c["suppressor"] or {}, c["detection"] or {}, c["nearby"] or {}
            writer.writerow({
                "model": name, "image_id": c["image_id"], "file_name": c["file_name"],
                "annotation_id": c["annotation_id"], "stage": c["stage"], "height": c["height"],
                "visibility": c["visibility"], **dict(zip(("x1", "y1", "x2", "y2"), c["box"])),
                "best_proposal_iou": bp.get("iou"), "best_proposal_objectness": bp.get("objectness"),
                "best_proposal_rank": bp.get("rank"), "best_score_before_nms": c["best_score_before_nms"],
                "suppressor_score": sup.get("score"), "suppressor_matched_other": sup.get("matched_other"),
                "detection_score": det.get("score"), "nearby_score": near.get("score"), "nearby_why": near.get("why"),
            })
    _atomic(out / "cases.csv", buf.getvalue())


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def render_text(result: dict, describe) -> str:
    """The text report: operating point and stage shares per model, then each pair's sentence."""
    lines = [f"setup {result['setup']}"]
    for name, summary in result["summary"].items():
        op = result["operating_point"][name]
        lines.append(f"\n{name}: score >= {op['score']:.3f} ({op['rule']}), {summary['cases']} pedestrians, "
                     f"{summary['found']} found, {summary['missed']} missed")
        for stage, info in summary["stages"].items():
            share = "" if info["share"] is None else f" ({info['share']:.0%} of missed)"
            lines.append(f"  {stage:<13} {info['count']:>5}{share}")
        heights = "  ".join(f"{b['bin']}: {b['missed']}/{b['cases']}" for b in summary["height"])
        lines.append(f"  missed by height (px): {heights}")
    for pair in result["pairs"]:
        lines.append("\n" + describe(pair))
    return "\n".join(lines)
