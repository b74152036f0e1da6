"""The shipped models on SynthPed *test*: MR⁻² and AP50 with paired 95 % intervals, the HKD lead,
false alarms by type. Reported once per shipped set of models; never used to choose anything.

    python bench/test_table.py [--data data/synthped/test] [--checkpoints assets/checkpoints]
                               [--models teacher student_baseline student_hkd] [--threads 1]
                               [--resamples 1000] [--out runs/test_table]

Generate the split first (hkd.data.synth.splits: 2000 images, seed 3000):
``hkd synth --out data/synthped/test --num 2000 --seed 3000``. Each model's detections are
``hkd predict``'s, kept in ``--out`` (``<model>-<sha256 prefix>.json``, reused while the
checkpoint is the same file), then :func:`hkd.eval.compare.compare_models` and
:func:`hkd.eval.bootstrap.bootstrap_intervals` (images resampled, the same resample for every
model). Prints Markdown: the scores, the share of the no-KD → teacher gap the HKD student closes
(with the interval of its MR⁻² lead), and the false positives at the operating point by type.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def predictions(checkpoint: Path, data: Path, out: Path, threads: int) -> Path:
    from hkd.models.meta import file_sha256

    path = out / f"{checkpoint.stem}-{file_sha256(checkpoint)[:12]}.json"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "hkd", "predict", "--checkpoint", str(checkpoint), "--images",
                        str(data / "images"), "--gt", str(data / "annotations.json"), "--out", str(path),
                        "--threads", str(threads), "--no-progress"], check=True)
    return path


def cell(interval: dict, digits: int = 2) -> str:
    return f"{interval['point']:.{digits}f} ({interval['low']:.{digits}f}–{interval['high']:.{digits}f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "data/synthped/test")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "assets/checkpoints")
    p.add_argument("--models", nargs="+", default=["teacher", "student_baseline", "student_hkd"],
                   help="checkpoint stems: the teacher, the no-KD student, the HKD student (in that order)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs/test_table")
    args = p.parse_args()

    from hkd.eval.bootstrap import bootstrap_intervals
    from hkd.eval.compare import compare_models

    if not (args.data / "annotations.json").is_file():
        sys.exit(f"{args.data}: no annotations.json; generate the split first "
                 "(hkd synth --out data/synthped/test --num 2000 --seed 3000)")
    start = time.time()
    gt = json.loads((args.data / "annotations.json").read_text())
    dets = {}
    for name in args.models:
        path = predictions(args.checkpoints / f"{name}.safetensors", args.data, args.out, args.threads)
        dets[name] = json.loads(path.read_text())
    report = compare_models(gt, dets)
    boot = bootstrap_intervals(gt, dets, resamples=args.resamples, seed=args.seed).to_dict()
    models = boot["models"]
    print(f"SynthPed {Path(args.data).name}: {len(gt['images'])} images ({args.data}); {args.resamples} paired bootstrap resamples "
          f"(seed {args.seed}); {date.today()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.time() - start:.0f} s\n")
    print("| model | MR⁻² Reasonable | Small | Heavy | All | AP50 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        m = models[name]
        print(f"| {name} | {cell(m['Reasonable'])} | {cell(m['Small'])} | {cell(m['Heavy'])} | {cell(m['All'])} "
              f"| {cell(m['ap50'], 3)} |")
    if len(args.models) >= 3:
        teacher, baseline, kd = args.models[:3]
        diff = next(d for d in boot["differences"] if {d["a"], d["b"]} == {baseline, kd})
        lead = diff["metrics"]["Reasonable"]
        sign = 1 if diff["a"] == baseline else -1  # the HKD lead: no-KD − HKD, positive when HKD is better
        low, high = sorted((sign * lead["low"], sign * lead["high"]))
        gap = models[baseline]["Reasonable"]["point"] - models[teacher]["Reasonable"]["point"]
        share = sign * lead["point"] / gap if gap > 0 else float("nan")
        print(f"\nHKD lead over no KD (MR⁻² Reasonable, no-KD − HKD): {sign * lead['point']:.2f} "
              f"(95 % paired interval {low:.2f}–{high:.2f}{', within noise' if lead['within_noise'] else ''}); "
              f"the no-KD → teacher gap is {gap:.2f}, of which HKD closes {share:.0%}.")
    print("\nFalse positives at each model's operating point (FPPI 0.1 on Reasonable), by type "
          "(→ MR⁻² Reasonable if that type were gone):\n")
    types = list(next(iter(report.errors.values()))["counts"])
    print("| model | " + " | ".join(types) + " |")
    print("|---|" + "---:|" * len(types))
    for name in args.models:
        e = report.errors[name]
        print(f"| {name} | " + " | ".join(f"{e['counts'][t]} → {e['mr_if_fixed'][t]:.2f}" for t in types) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
