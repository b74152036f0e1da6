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
    p.add_argument("--setup", choices=[*SETUP_NAMES, "Analysis"], default="Reasonable",
                   help="which pedestrians are cases (default Reasonable; Analysis: every non-ignored pedestrian "
                        ">= 20 px at any visibility, as hkd compare's breakdown); the operating point is always "
                        "taken on Reasonable, as hkd compare does")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the ground truth's first N images")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the diagnosis as one JSON object")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="also write diagnosis.json and cases.csv here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--status", type=Path, metavar="JSON",
                   help="also write progress to this status file (state, step, total), as background jobs read it")
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

    from hkd.analysis.diagnose import DiagnosisInputError, describe, diagnose

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
    loader = image_loader(args.images, args.gt)
    total = len(gt["images"]) * len(models)
    report = _status_writer(args.status, total)
    try:
        runs = _stage_runs(models, gt, loader, args, report)
        result = diagnose(gt, runs, score=args.score, fppi=args.fppi, setup=args.setup)
    except DiagnosisInputError as exc:
        report("failed", total, f"--gt {args.gt}: {exc}")
        raise CLIError(f"--gt {args.gt}: {exc}") from None
    except CLIError as exc:
        report("failed", 0, str(exc))
        raise
    if args.out is not None:
        write_outputs(result, args.out)
    summary = "; ".join(f"{name}: {s['missed']} of {s['cases']} missed" for name, s in result["summary"].items())
    report("succeeded", total, summary)
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return 0
    print(render_text(result, describe))
    if args.out is not None:
        print(f"wrote {args.out / 'diagnosis.json'} and {args.out / 'cases.csv'}")
    return 0


def _status_writer(path: Path | None, total: int):
    """``report(state, step, message)``: progress for a background job's status file (a no-op without one)."""
    from hkd.jobs.status import write_status

    def report(state: str, step: int, message: str = "") -> None:
        if path is not None:
            outputs = {} if state != "succeeded" else {"diagnosis": "diagnosis.json"}
            write_status(path, state, step=step, total=total, message=message, **({"outputs": outputs} if outputs else {}))

    report("running", 0)
    return report


def _stage_runs(models: dict, gt: dict, loader, args, report) -> dict:
    """The staged pass of every checkpoint over the images; CLIError naming the checkpoint or image at fault."""
    import time

    from tqdm import tqdm

    from hkd.analysis.diagnose import stages_over_dataset
    from hkd.data.images import ImageError
    from hkd.models.checkpoint import CheckpointError, load_checkpoint

    runs, done, last = {}, 0, [0.0]
    for name, path in models.items():
        try:
            loaded = load_checkpoint(path, inference=True)
        except CheckpointError as exc:
            raise CLIError(str(exc)) from None
        if not loaded.meta.pedestrian_class:
            raise CLIError(f"--checkpoint {path}: its classes are {', '.join(loaded.meta.classes)}; class 1 is "
                           "not a pedestrian, and diagnosis reads class 1 as the pedestrian")
        bar = tqdm(total=len(gt["images"]), desc=f"diagnose {name}", unit="img",
                   disable=args.no_progress or not sys.stderr.isatty())

        def progress(n: int, total: int, offset: int = done) -> None:
            bar.update(1)
            if time.monotonic() - last[0] >= 1.0:
                report("running", offset + n, f"{name}: {n} of {total} images")
                last[0] = time.monotonic()

        try:
            runs[name] = stages_over_dataset(loaded.model, gt, loader, progress=progress)
        except (ImageError, FileNotFoundError) as exc:
            raise CLIError(str(exc)) from None
        except TypeError as exc:
            raise CLIError(f"--checkpoint {path}: {exc}") from None
        finally:
            bar.close()
        done += len(gt["images"])
    return runs


def image_loader(root: Path, source: Path):
    """``image record -> pixels`` for files under ``root``: a file_name that leaves it (``..``, an
    absolute path, a symlink out) is refused by the rule every dataset reader follows
    (:func:`hkd.data.datasets.check_relative_name`, :func:`~hkd.data.datasets.confine`)."""
    from hkd.data.datasets import DatasetError, check_relative_name, confine
    from hkd.data.images import load_image

    def load(record: dict):
        name = record.get("file_name")
        if not isinstance(name, str) or not name:
            raise CLIError(f"--gt: image id {record.get('id')!r} has no file_name")
        try:
            check_relative_name(name, root, source)
            path = confine(root / name, root, source)
        except DatasetError as exc:
            raise CLIError(str(exc)) from None
        if not path.is_file():
            raise CLIError(f"--images {root}: {name[:200]} (image id {record.get('id')}) is not there; "
                           "is --images the folder the ground truth's file_name entries are relative to?")
        return load_image(path)

    return load


def write_outputs(result: dict, out: Path) -> None:
    """``diagnosis.json`` and ``cases.csv`` (one row per model and case), each written whole then renamed."""
    from hkd.models.meta import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result)
    atomic_write(out / "diagnosis.json", lambda tmp: Path(tmp).write_text(text))
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
    atomic_write(out / "cases.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))


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
