"""Teacher and student pairs trained with several seeds, on SynthPed *test*: per seed, the no-KD and
HKD students' MR⁻² with paired 95 % intervals, the HKD lead and the share of the no-KD → teacher gap
it closes; then mean ± std over the seeds and the floor of issue #32 (mean share ≥ 65 %, every
seed's lead interval above 0). Reported once per set of shipped models; never used to choose.

    python bench/seed_table.py --teacher assets/checkpoints/teacher.safetensors \\
        --pair 0=assets/checkpoints/student_baseline.safetensors,assets/checkpoints/student_hkd.safetensors \\
        --pair 1=runs/seeds/baseline_s1/checkpoints/final.safetensors,runs/seeds/hkd_s1/checkpoints/final.safetensors \\
        [--data data/synthped/test] [--out runs/test_table] [--threads 1] [--resamples 1000] [--json FILE]

Each checkpoint's detections are ``hkd predict``'s, kept in ``--out`` (``<stem>-<sha256 prefix>.json``,
as bench/test_table.py keeps them, reused while the checkpoint is the same file). Each seed's
intervals resample the images once for its three models (:func:`hkd.eval.bootstrap.bootstrap_intervals`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from test_table import ROOT, cell, predictions  # the same prediction cache as the one-seed table

FLOOR_SHARE = 0.65  # issue #32: the mean share of the gap the HKD students close on test


def parse_pair(text: str) -> tuple[str, Path, Path]:
    """``SEED=BASELINE,HKD`` → (seed, baseline checkpoint, HKD checkpoint)."""
    try:
        seed, paths = text.split("=", 1)
        baseline, hkd = paths.split(",")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pair {text!r}: expected SEED=NO_KD.safetensors,HKD.safetensors") from None
    return seed, Path(baseline), Path(hkd)


def seed_row(boot: dict, teacher: str, baseline: str, hkd: str) -> dict:
    """One seed's MR⁻² Reasonable of the three models, the HKD lead (no-KD − HKD) with its paired
    interval, and the share of the gap it closes."""
    models = boot["models"]
    diff = next(d for d in boot["differences"] if {d["a"], d["b"]} == {baseline, hkd})
    lead = diff["metrics"]["Reasonable"]
    sign = 1 if diff["a"] == baseline else -1
    low, high = sorted((sign * lead["low"], sign * lead["high"]))
    gap = models[baseline]["Reasonable"]["point"] - models[teacher]["Reasonable"]["point"]
    return {"teacher": models[teacher]["Reasonable"], "baseline": models[baseline]["Reasonable"],
            "hkd": models[hkd]["Reasonable"], "lead": {"point": sign * lead["point"], "low": low, "high": high},
            "gap": gap, "share": sign * lead["point"] / gap if gap > 0 else float("nan")}


def summary(rows: dict[str, dict]) -> dict:
    """Mean ± std over seeds (std over one seed is 0) and the floor's two conditions."""
    def stat(values):
        values = list(values)
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    out = {key: stat(r[key]["point"] for r in rows.values()) for key in ("baseline", "hkd", "lead")}
    out["share"] = stat(r["share"] for r in rows.values())
    out["floor"] = {"mean_share_at_least": FLOOR_SHARE, "mean_share_met": out["share"]["mean"] >= FLOOR_SHARE,
                    "every_lead_interval_above_0": all(r["lead"]["low"] > 0 for r in rows.values())}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, default=ROOT / "assets/checkpoints/teacher.safetensors")
    p.add_argument("--pair", type=parse_pair, action="append", required=True, metavar="SEED=NO_KD,HKD")
    p.add_argument("--data", type=Path, default=ROOT / "data/synthped/test")
    p.add_argument("--out", type=Path, default=ROOT / "runs/test_table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--json", type=Path, help="also write the rows and the summary here")
    args = p.parse_args(argv)

    from hkd.eval.bootstrap import bootstrap_intervals

    if not (args.data / "annotations.json").is_file():
        sys.exit(f"{args.data}: no annotations.json; generate the split first "
                 "(hkd synth --out data/synthped/test --num 2000 --seed 3000)")
    start = time.time()
    gt = json.loads((args.data / "annotations.json").read_text())
    teacher = json.loads(predictions(args.teacher, args.data, args.out, args.threads).read_text())
    rows = {}
    for seed, baseline, hkd in args.pair:
        dets = {"teacher": teacher,
                "no_kd": json.loads(predictions(baseline, args.data, args.out, args.threads).read_text()),
                "hkd": json.loads(predictions(hkd, args.data, args.out, args.threads).read_text())}
        boot = bootstrap_intervals(gt, dets, resamples=args.resamples, seed=args.seed).to_dict()
        rows[seed] = seed_row(boot, "teacher", "no_kd", "hkd") | {"checkpoints": [str(baseline), str(hkd)]}
    result = {"rows": rows, "summary": summary(rows), "images": len(gt["images"]), "data": str(args.data),
              "date": str(date.today()), "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    print(f"SynthPed {Path(args.data).name}: {len(gt['images'])} images ({args.data}); {args.resamples} paired bootstrap resamples "
          f"(seed {args.seed}) per training seed; {result['date']}; {result['host']}; {time.time() - start:.0f} s\n")
    print("| seed | teacher | no KD | HKD | HKD lead (95 % interval) | share of the gap |")
    print("|---|---:|---:|---:|---:|---:|")
    for seed, r in rows.items():
        print(f"| {seed} | {cell(r['teacher'])} | {cell(r['baseline'])} | {cell(r['hkd'])} | {cell(r['lead'])} "
              f"| {r['share']:.0%} |")
    s = result["summary"]
    print(f"| mean ± std | | {s['baseline']['mean']:.2f} ± {s['baseline']['std']:.2f} "
          f"| {s['hkd']['mean']:.2f} ± {s['hkd']['std']:.2f} | {s['lead']['mean']:.2f} ± {s['lead']['std']:.2f} "
          f"| {s['share']['mean']:.0%} ± {s['share']['std']:.0%} |")
    floor = s["floor"]
    print(f"\nFloor (mean share ≥ {FLOOR_SHARE:.0%}, every seed's lead interval above 0): "
          f"mean share {'met' if floor['mean_share_met'] else 'MISSED'}; lead intervals "
          f"{'all above 0' if floor['every_lead_interval_above_0'] else 'NOT all above 0'}.")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
