"""Parameters, FLOPs and CPU latency of every preset at 640×480 (random weights:
cost does not depend on them).

    python bench/presets_cost.py [--threads 2] [--runs 9] [--only NAME ...]

Prints a markdown table for docs/BENCHMARKS.md. The ROI head's FLOPs depend on
how many proposals reach it; a random image keeps the full post-NMS budget.
Latency is timed twice: as built ("plain") and as every inference path runs the
models (`prepare_for_inference`: frozen norms folded, channels-last).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from hkd.models.optimize import prepare_for_inference
from hkd.models.presets import PRESETS, build_detector
from hkd.models.profile import cpu_latency, flops_by_hierarchy, params_by_hierarchy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--only", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{args.threads} threads; input {args.width}×{args.height}; median of {args.runs} runs; "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| preset | role | params | backbone | neck | rpn | roi/head | GFLOPs | CPU ms plain | CPU ms inference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, preset in PRESETS.items():
        if args.only and name not in args.only:
            continue
        torch.manual_seed(0)
        model = build_detector(name).eval()
        params = params_by_hierarchy(model)
        flops = flops_by_hierarchy(model, args.width, args.height)
        lat = cpu_latency(model, args.width, args.height, threads=args.threads, runs=args.runs)
        fast = cpu_latency(prepare_for_inference(model), args.width, args.height, threads=args.threads, runs=args.runs)
        head = params.get("roi", 0) + params.get("head", 0)
        print(f"| {name} | {preset.role} | {params['total'] / 1e6:.2f} M | {params.get('backbone', 0) / 1e6:.2f} M | "
              f"{params.get('neck', 0) / 1e6:.2f} M | {params.get('rpn', 0) / 1e6:.2f} M | {head / 1e6:.2f} M | "
              f"{flops['total'] / 1e9:.1f} | {lat['median_s'] * 1000:.0f} | {fast['median_s'] * 1000:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
