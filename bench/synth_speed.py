"""Time SynthPed generation (``hkd synth``) with 1 and 2 worker processes.

    python bench/synth_speed.py [N] [--width 640 --height 480] [--workers 1 2]

Prints one line per worker count: images, seconds, images/s (wall clock,
including process start-up and JPEG writing). The vtest cutout bank is built
into the cache first so it is not timed.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hkd.data.synth import SynthConfig, generate  # noqa: E402
from hkd.data.synth.sources import ensure_bank  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("num", nargs="?", type=int, default=200, help="images per run (default 200)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    config = SynthConfig(width=args.width, height=args.height)
    ensure_bank()
    print(f"# {platform.node()} {os.cpu_count()} CPUs, {args.width}x{args.height}, load {os.getloadavg()[0]:.1f}")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate(tmp, args.num, seed=0, config=config, workers=workers, progress=False)
            seconds = time.perf_counter() - start
        print(f"workers={workers}: {args.num} images in {seconds:.1f} s = {args.num / seconds:.2f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
