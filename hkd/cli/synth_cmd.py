"""``hkd synth``: generate the SynthPed benchmark, or describe an existing one.

    hkd synth --out DIR --num N --seed S [--width W --height H] [--workers K] [--overwrite]
              [--config CONFIG.json] [--contact-sheet SHEET.jpg]
    hkd synth --stats DIR [--json] [--contact-sheet SHEET.jpg]

``--contact-sheet`` draws the first 12 images of the dataset in play (the one
just generated with ``--out``, or the one read with ``--stats``) as a 4x3 grid
with ground-truth boxes: green normal, yellow heavily occluded
(vis_ratio < 0.65), grey ignore/crowd.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from hkd.cli import CLIError
from hkd.jobs.status import write_status


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="generate the SynthPed pedestrian benchmark (or print its statistics)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, metavar="DIR", help="write DIR/images/*.jpg and DIR/annotations.json")
    mode.add_argument("--stats", type=Path, metavar="DIR", help="print the statistics of an existing dataset")
    p.add_argument("--num", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--width", type=int, default=None, help="image width in px (default 640)")
    p.add_argument("--height", type=int, default=None, help="image height in px (default 480)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default min(2, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="replace the dataset in a non-empty --out DIR")
    p.add_argument("--config", metavar="JSON", help="SynthConfig overrides as a JSON object: a file holding one, "
                                                    "or the object itself, e.g. '{\"free_scale_prob\": 0.5}'")
    p.add_argument("--contact-sheet", type=Path, metavar="JPG",
                   help="also draw the first 12 images of the dataset (--out or --stats) as a 4x3 grid with boxes: "
                        "green normal, yellow vis_ratio < 0.65, grey ignore/crowd")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--status", type=Path, metavar="JSON",
                   help="also write progress to this status file (state, step, total), as background jobs read it")
    p.set_defaults(func=run)


def _config(args):
    from hkd.data.synth import SynthConfig

    overrides = {}
    if args.config:
        try:
            text = args.config if args.config.lstrip().startswith("{") else Path(args.config).read_text()
            overrides = json.loads(text)
        except (OSError, json.JSONDecodeError) as exc:
            raise CLIError(f"--config {args.config}: {exc}") from None
        if not isinstance(overrides, dict):
            raise CLIError(f"--config {args.config} must hold a JSON object of SynthConfig fields")
    if args.width is not None:
        overrides["width"] = args.width
    if args.height is not None:
        overrides["height"] = args.height
    try:
        return SynthConfig.from_dict(overrides)
    except (TypeError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _status_reporter(path: Path | None, total: int):
    """``on_progress`` for generate(): the status file at most every second, or None."""
    if path is None:
        return None
    import time

    write_status(path, "running", step=0, total=total)
    last = [0.0]

    def report(done: int, num: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or done == num:
            write_status(path, "running", step=done, total=num)
            last[0] = now

    return report


def run(args) -> int:
    from hkd.data.synth import compute_stats, contact_sheet, format_stats, generate, load

    if args.stats is not None:
        try:
            coco = load(args.stats)
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            raise CLIError(str(exc)) from None
        stats = compute_stats(coco)
        print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
        dataset = args.stats
    else:
        from hkd.data.synth.dataset import MAX_IMAGES

        if args.num <= 0:
            raise CLIError(f"--num must be a positive number of images, got {args.num}")
        if args.num > MAX_IMAGES:
            raise CLIError(f"--num {str(args.num)[:40]}: at most {MAX_IMAGES:,} images in one dataset")
        if args.workers is not None and args.workers <= 0:
            raise CLIError(f"--workers must be >= 1, got {args.workers}")
        config = _config(args)
        report = _status_reporter(args.status, args.num)
        try:
            coco = generate(args.out, args.num, args.seed, config, workers=args.workers, overwrite=args.overwrite,
                            progress=not args.no_progress, on_progress=report)
        except FileExistsError as exc:
            if args.status:
                write_status(args.status, "failed", message=str(exc))
            raise CLIError(str(exc)) from None
        except OSError as exc:  # a full disk: one sentence; annotations.json is only ever replaced whole
            message = f"{exc.filename or args.out}: {exc.strerror or exc}; the dataset in {args.out} is incomplete"
            if args.status:
                with contextlib.suppress(OSError):
                    write_status(args.status, "failed", message=message)
            raise CLIError(message) from None
        if args.status:
            write_status(args.status, "succeeded", step=args.num, total=args.num, outputs={"dataset": str(args.out)})
        stats = coco["info"]["stats"]
        print(f"wrote {stats['images']} images, {stats['people']} people to {args.out}")
        print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
        dataset = args.out
    if args.contact_sheet:
        print(f"contact sheet: {contact_sheet(dataset, args.contact_sheet)}")
    return 0
