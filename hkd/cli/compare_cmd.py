"""``hkd compare``: several detectors on one GT set — MR⁻², operating points, bins, disagreements.

    hkd compare --gt GT.json --dets teacher=T.json student=S.json [name=X.json ...]
                [--score S] [--fppi 0.1] [--setup Reasonable] [--iou 0.5]
                [--max-disagreements N] [--top 10] [--bootstrap N [--seed S]]
                [--json] [--out DIR]
    hkd compare --data DATASET --checkpoints teacher=T.safetensors student=S.safetensors [...]
                [--images-limit N] [the options above]

With ``--data`` the ground truth is the dataset's first N images (``--images-limit``, default
all) and each checkpoint's predictions are made by ``hkd predict`` (up to two at once) and kept
in the result store (``HKD_CACHE_DIR``, :mod:`hkd.results`): a second run, or the Evaluate page
on the same dataset, reuses them. Then it prints what ``--gt/--dets`` prints on those files
(:mod:`hkd.evaluation.workflow`); what it predicts or reuses goes to stderr.

``GT.json`` is CityPersons-style COCO (as for ``hkd eval``); each
``NAME=DETS.json`` is a COCO results list (as ``hkd predict`` writes). Each
model is looked at at the score where it reaches FPPI 0.1 on Reasonable, or at
``--score``; its false positives there are classed by error type
(:mod:`hkd.eval.errors`). ``--bootstrap N`` adds 95 % paired bootstrap
intervals over the images (N resamples, :mod:`hkd.eval.bootstrap`) to MR⁻²
and AP50 and to every pair's difference. ``--json`` prints ``{"models",
"breakdown", "disagreements", "errors"}``
(:meth:`hkd.eval.compare.ComparisonReport.to_dict`), plus ``"bootstrap"``
(:meth:`hkd.eval.bootstrap.BootstrapReport.to_dict`) with ``--bootstrap``. ``--out DIR`` also
writes ``models.csv``, ``breakdown.csv``, ``disagreements.csv``,
``fppi_miss_rate.html`` (plotly) and ``fppi_miss_rate.png`` (matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from hkd.cli import CLIError
from hkd.cli.eval_cmd import _load_json
from hkd.eval.matching import SETUP_NAMES

_HELP = "compare detectors on one ground truth: MR-2, miss rate by height/visibility, disagreements"


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=_HELP, description=_HELP)
    parser.add_argument("--gt", type=Path, metavar="GT.json",
                        help="ground truth, CityPersons-style COCO JSON (with --dets)")
    parser.add_argument("--dets", nargs="+", metavar="NAME=DETS.json",
                        help="two or more models: a name and its COCO results JSON list (with --gt)")
    parser.add_argument("--data", type=Path, metavar="DATASET",
                        help="instead of --gt/--dets: an annotated dataset (a folder with annotations.json and "
                             "images/, a COCO-style .json or a CrowdHuman .odgt) to predict on (with --checkpoints)")
    parser.add_argument("--checkpoints", nargs="+", metavar="NAME=CKPT",
                        help="with --data: two or more models, a name and its HKD .safetensors checkpoint "
                             "(or exported .onnx); predictions are cached in HKD_CACHE_DIR")
    parser.add_argument("--images-limit", type=int, default=None, metavar="N",
                        help="with --data: only the dataset's first N images (default all)")
    parser.add_argument("--score", type=float, default=None,
                        help="one score threshold for every model (default: each model's score at --fppi)")
    parser.add_argument("--fppi", type=float, default=0.1,
                        help="false positives per image that fix each model's operating point (default 0.1)")
    parser.add_argument("--setup", choices=SETUP_NAMES, default="Reasonable",
                        help="setup of the operating point and the plotted curves (default Reasonable)")
    parser.add_argument("--iou", type=float, default=0.5,
                        help="IoU of a match in the bins and disagreements (MR-2 always uses 0.5)")
    parser.add_argument("--max-disagreements", type=int, default=None, metavar="N",
                        help="keep the N most severe disagreements per model pair and kind (default all)")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="disagreements printed in the text output (default 10)")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N",
                        help="95%% paired bootstrap intervals of MR-2 and AP50 over the images, N resamples "
                             "(1000 is usual)")
    parser.add_argument("--seed", type=int, default=None, metavar="S",
                        help="seed of the bootstrap draws (default 0); needs --bootstrap")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="also write CSV tables and the FPPI-miss-rate plot (HTML and PNG) here")
    parser.set_defaults(func=run)
    return parser


def _model_files(specs: list[str], option: str = "--dets", example: str = "DETS.json",
                 e_g: str = "teacher=teacher_dets.json") -> dict[str, Path]:
    files: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise CLIError(f"{option} {spec!r}: expected NAME={example}, e.g. {e_g}")
        if name in files:
            raise CLIError(f"{option}: model name {name!r} is given twice")
        files[name] = Path(path)
    if len(files) < 2:
        short = "T.json student=S.json" if option == "--dets" else "T.safetensors student=S.safetensors"
        raise CLIError(f"{option}: give at least two models to compare, e.g. teacher={short}")
    return files


def _inputs(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    """(GT file, {name: detections file}): as given (--gt/--dets), or made from --data/--checkpoints."""
    given = [flag for flag, value in (("--gt", args.gt), ("--dets", args.dets)) if value is not None]
    data = [flag for flag, value in (("--data", args.data), ("--checkpoints", args.checkpoints),
                                     ("--images-limit", args.images_limit)) if value is not None]
    if given and data:
        raise CLIError(f"{' '.join(given)} and {' '.join(data)} are two ways of giving the inputs: use --gt with "
                       "--dets, or --data with --checkpoints")
    if data:
        if args.data is None or args.checkpoints is None:
            raise CLIError("--data and --checkpoints go together: the dataset and the checkpoints to predict on it")
        if args.images_limit is not None and args.images_limit < 1:
            raise CLIError(f"--images-limit must be a positive number of images, got {args.images_limit}")
        return _predicted(args)
    if args.gt is None or args.dets is None:
        raise CLIError("give --gt GT.json with --dets NAME=DETS.json ..., or --data DATASET with "
                       "--checkpoints NAME=CKPT ...")
    return args.gt, _model_files(args.dets)


def _predicted(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    from hkd.evaluation import EvaluationError, checkpoint, ground_truth, predict_all

    specs = _model_files(args.checkpoints, "--checkpoints", "CKPT", "teacher=teacher.safetensors")

    def say(line: str) -> None:
        print(f"hkd compare: {line}", file=sys.stderr, flush=True)

    try:
        checkpoints = {name: checkpoint(name, path) for name, path in specs.items()}
        gt = ground_truth(args.data, args.images_limit)
        say(f"ground truth of {gt.num_images} images of {args.data}: {gt.gt_path}")
        made = predict_all(checkpoints, gt, say=say)
    except EvaluationError as exc:
        raise CLIError(str(exc)) from None
    return gt.gt_path, made.files


def run(args: argparse.Namespace) -> int:
    # imported here so that `hkd --help` stays cheap
    from hkd.eval.compare import ComparisonInputError
    from hkd.evaluation import compare

    if args.top < 0:
        raise CLIError(f"--top must be >= 0, got {args.top}")
    if args.bootstrap is not None and args.bootstrap < 1:
        raise CLIError(f"--bootstrap must be a number of resamples >= 1, e.g. 1000; got {args.bootstrap}")
    if args.seed is not None and args.bootstrap is None:
        raise CLIError("--seed sets the bootstrap draws: give --bootstrap N too")
    if args.seed is not None and args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out} exists and is not a directory")
    gt_path, files = _inputs(args)
    gt = _load_json(gt_path, "ground-truth")
    dets = {name: _load_json(path, f"detections ({name})") for name, path in files.items()}
    try:
        report, boot = compare(gt, dets, score=args.score, fppi=args.fppi, setup=args.setup, iou=args.iou,
                               max_disagreements=args.max_disagreements, bootstrap=args.bootstrap,
                               seed=args.seed or 0)
    except ComparisonInputError as exc:
        path = gt_path if exc.source == "gt" else files[exc.source]
        raise CLIError(f"{'ground-truth' if exc.source == 'gt' else 'detections'} file {path}: {exc}") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    for line in report.skipped:
        print(f"hkd compare: skipped: {line}", file=sys.stderr)

    if args.json:
        data = report.to_dict()
        if boot is not None:
            data["bootstrap"] = boot.to_dict()
        print(json.dumps(data))
    else:
        _print_text(report, args.top, boot)
    if args.out is not None:
        written = write_outputs(report, args.out)
        if not args.json:
            print(f"\nwrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "   —  " if value is None else f"{100 * value:5.1f}%"


def _mr(value: float) -> str:
    return "   n/a" if value < 0 else f"{value:6.2f}"


def _with_interval(value: float, interval, digits: int) -> str:
    """``12.80 (11.10–14.60)``: a value and its bootstrap interval, when there is one."""
    if interval is None or interval.low is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({interval.low:.{digits}f}–{interval.high:.{digits}f})"


def _print_models(report, boot, width: int) -> None:
    setups = ("Reasonable", "Small", "Heavy", "All")
    titles = ("Reason.", "Small", "Heavy", "All", "AP50")
    rows = []
    for name, m in report.models.items():
        cells = [("   n/a" if m["mr"][s] < 0 else
                  _with_interval(m["mr"][s], boot.models[name][s] if boot else None, 1 if boot else 2))
                 for s in setups]
        cells.append(_with_interval(m["ap50"], boot.models[name]["ap50"] if boot else None, 3))
        rows.append(cells)
    widths = [7, 7, 7, 7, 6]  # the plain table's fixed columns
    if boot is not None:
        widths = [max([len(t)] + [len(c) for c in column]) for t, column in zip(titles, zip(*rows))]
    print(f"  {'model':<{width}} " + " ".join(f"{t:>{w}}" for t, w in zip(titles, widths))
          + f"  {'score':>6} {'rule':<9} {'FPPI':>6} {'miss':>6}  dets")
    for (name, m), cells in zip(report.models.items(), rows):
        op = m["operating_point"]
        fppi = "     —" if op["fppi"] is None else f"{op['fppi']:6.3f}"
        print(f"  {name:<{width}} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths))
              + f"  {op['score']:6.3f} {op['rule']:<9} {fppi} {_pct(op['miss_rate'])}  {m['num_detections']}")


def _print_differences(boot) -> None:
    level = f"{100 * boot.level:g} %"
    print(f"\nPaired differences a − b ({level} bootstrap interval, {boot.resamples} resamples of "
          f"{boot.num_images} images, seed {boot.seed}; MR-2 in points, lower is better; AP50 higher is better)")
    skipped = [f"{metric} {n}" for metric, n in boot.skipped.items() if n]
    if skipped:
        print(f"  resamples without any person of the setup, left out: {', '.join(skipped)}")
    pair_width = max([len(f"{a} − {b}") for a, b in boot.differences] + [4])
    for (a, b), by_metric in boot.differences.items():
        for metric, d in by_metric.items():
            if d.point is None or d.low is None:
                print(f"  {f'{a} − {b}':<{pair_width}}  {metric:<10}  n/a")
                continue
            digits = 3 if metric == "ap50" else 1
            cell = f"{d.point:+.{digits}f} ({d.low:+.{digits}f} to {d.high:+.{digits}f})"
            noise = "  within noise" if d.within_noise else ""
            print(f"  {f'{a} − {b}':<{pair_width}}  {metric:<10}  {cell}{noise}")


def _print_errors(report, width: int) -> None:
    from hkd.eval.errors import ERROR_TYPES

    print(f"\nFalse positives at the operating point by error type (setup {report.setup}); in brackets the "
          "MR-2 without that type's false positives at any score")
    cells = {name: [f"{e['counts'][t]} ({_mr(e['mr_if_fixed'][t]).strip()})" for t in ERROR_TYPES]
             for name, e in report.errors.items()}
    widths = [max([len(t)] + [len(c[k]) for c in cells.values()]) for k, t in enumerate(ERROR_TYPES)]
    print(f"  {'model':<{width}} " + " ".join(f"{t:>{w}}" for t, w in zip(ERROR_TYPES, widths)))
    for name, row in cells.items():
        print(f"  {name:<{width}} " + " ".join(f"{c:>{w}}" for c, w in zip(row, widths)))


def _print_text(report, top: int, boot=None) -> None:
    names = list(report.models)
    width = max(8, *(len(n) for n in names))
    title = f"MR-2 (%, lower is better), AP50 and operating point (setup {report.setup})"
    if boot is not None:
        title += f"; in brackets the {100 * boot.level:g} % bootstrap interval"
    print(title)
    _print_models(report, boot, width)
    if boot is not None:
        _print_differences(boot)
    _print_errors(report, width)

    for axis, title in (("height", "height (px)"), ("visibility", "visibility")):
        bins = [row["bin"] for row in report.breakdown[names[0]][axis]]
        print(f"\nMiss rate at the operating point by GT {title}; GTs counted per bin in brackets")
        print(f"  {'model':<{width}} " + " ".join(f"{b:>14}" for b in bins))
        for name in names:
            cells = [f"{_pct(r['miss_rate'])} ({r['missed']}/{r['gt']})" for r in report.breakdown[name][axis]]
            print(f"  {name:<{width}} " + " ".join(f"{c:>14}" for c in cells))

    print("\nDisagreements (per ordered pair: GTs a finds that b misses, FPs a makes that b does not)")
    for a in names:
        for b, counts in report.models[a]["versus"].items():
            print(f"  {a} vs {b}: {counts['found_by_a_missed_by_b']} found by {a} and missed by {b}, "
                  f"{counts['fp_of_a_only']} false positives of {a} only")
    shown = report.disagreements[:top]
    if shown:
        print(f"\nMost confident disagreements (top {len(shown)} of {len(report.disagreements)})")
    for r in shown:
        box = ", ".join(f"{v:.0f}" for v in r["box"])
        what = (f"{r['a']} finds, {r['b']} misses (h {r['height']:.0f} px, vis {r['visibility']:.2f})"
                if r["kind"] == "found_by_a_missed_by_b" else f"false positive of {r['a']} only")
        image = r["file_name"] or f"image {r['image_id']}"
        print(f"  {r['severity']:5.2f}  {image} [{box}]  {what}; "
              f"{r['a']} {r['score_a']:.2f}, {r['b']} {r['score_b']:.2f}")


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

MODEL_COLUMNS = ("model", "mr_reasonable", "mr_small", "mr_heavy", "mr_all", "ap50", "ap", "num_detections",
                 "op_score", "op_rule", "op_setup", "op_fppi", "op_miss_rate")
BREAKDOWN_COLUMNS = ("model", "by", "bin", "low", "high", "gt", "missed", "miss_rate")
DISAGREEMENT_COLUMNS = ("a", "b", "kind", "image_id", "file_name", "x1", "y1", "x2", "y2", "score_a", "score_b",
                        "iou_a", "iou_b", "height", "visibility", "severity")


def _csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def write_outputs(report, out: Path) -> list[Path]:
    """``models.csv``, ``breakdown.csv``, ``disagreements.csv``, ``fppi_miss_rate.html`` and ``.png``."""
    from hkd.viz.plots import fppi_figure, fppi_png

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create --out directory {out}: {exc.strerror or exc}") from None
    models = []
    for name, m in report.models.items():
        op = m["operating_point"]
        models.append({"model": name, **{f"mr_{k.lower()}": v for k, v in m["mr"].items()}, "ap50": m["ap50"],
                       "ap": m["ap"], "num_detections": m["num_detections"], "op_score": op["score"],
                       "op_rule": op["rule"], "op_setup": op["setup"], "op_fppi": op["fppi"],
                       "op_miss_rate": op["miss_rate"]})
    breakdown = [{"model": name, "by": axis, **row}
                 for name, b in report.breakdown.items() for axis in ("height", "visibility") for row in b[axis]]
    disagreements = [{**{k: v for k, v in r.items() if k != "box"}, **dict(zip(("x1", "y1", "x2", "y2"), r["box"]))}
                     for r in report.disagreements]
    mr = {name: m["mr"][report.setup] for name, m in report.models.items()}
    points = {name: m["operating_point"] for name, m in report.models.items()}
    try:
        written = [
            _csv(out / "models.csv", MODEL_COLUMNS, models),
            _csv(out / "breakdown.csv", BREAKDOWN_COLUMNS, breakdown),
            _csv(out / "disagreements.csv", DISAGREEMENT_COLUMNS, disagreements),
        ]
        html = out / "fppi_miss_rate.html"
        fppi_figure(report.curves, mr=mr, operating_points=points).write_html(html, include_plotlyjs=True)
        written.append(html)
        written.append(fppi_png(report.curves, out / "fppi_miss_rate.png", mr=mr, operating_points=points))
    except OSError as exc:
        raise CLIError(f"cannot write to --out directory {out}: {exc.strerror or exc}") from None
    return written
