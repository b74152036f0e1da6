"""CPU latency of several exported detectors, interleaved, so that a noisy machine slows them alike.

    python bench/onnx_interleaved.py runs/onnx_bench/teacher.onnx runs/onnx_bench/student_hkd.onnx \\
        old_student_hkd.onnx [--threads 2] [--rounds 9]

``bench/onnx_latency.py`` times each model in one block of runs; on a shared virtual
machine whose speed drifts within minutes, two students timed a minute apart can differ
by more than the students do. Here every round runs each model once on the same random
640×480 image (:func:`hkd.models.profile.cpu_latency`'s image; 2 warm-ups each first),
so the medians of two models compare even when the machine does not hold still.
Prints one markdown row per model: median and min over the rounds, and the first
model's median ÷ this one's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hkd.deploy.runtime import OnnxDetector  # noqa: E402
from hkd.models.profile import _dummy  # noqa: E402


def interleaved(detectors: dict, width: int, height: int, rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """{name: [seconds per round]}: each round runs every detector once, in the given order."""
    images = _dummy(width, height)
    for detector in detectors.values():
        for _ in range(warmup):
            detector(images)
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for _ in range(rounds):
        for name, detector in detectors.items():
            start = time.perf_counter()
            detector(images)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path, help=".onnx files written by `hkd export`")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default %(default)s)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    args = p.parse_args()
    if len({m.name for m in args.models}) != len(args.models):
        p.error("give models with different file names (the rows are named by them)")
    detectors = {m.name: OnnxDetector(m, threads=args.threads) for m in args.models}
    load = os.getloadavg()[0]
    times = interleaved(detectors, args.width, args.height, args.rounds)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; onnxruntime, {args.threads} threads; "
          f"{args.width}×{args.height}; {args.rounds} interleaved rounds; 1-min load at start {load:.2f}\n")
    print(f"| model | median ms | min ms | {args.models[0].name} ÷ this |\n|---|---:|---:|---:|")
    first = statistics.median(times[args.models[0].name])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.1f} | {min(values) * 1000:.1f} | {first / median:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
