"""Time bootstrap_intervals (MR⁻² of four setups and AP50, paired) on a generated set.

    python bench/bootstrap_speed.py [--images 1000] [--models 3] [--resamples 1000] [--gts 8] [--dets 50]

The set and the first model are :func:`eval_speed.generate` (random
pedestrians on 2048x1024 images, jittered hits plus clutter, seed 0); each
further model draws its own jittered hits and clutter on that GT (seed = its
number). Prints one line: machine, sizes, seconds, and the
first model's Reasonable interval.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import detections_on, generate, machine  # noqa: E402

from hkd.eval.bootstrap import bootstrap_intervals  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--gts", type=int, default=8, help="mean GTs per image")
    parser.add_argument("--dets", type=int, default=50, help="detections per image and model")
    args = parser.parse_args()

    gt, first = generate(args.images, args.gts, args.dets, seed=0)
    dets = {"model_0": first, **{f"model_{m}": _on(gt, args.dets, seed=m) for m in range(1, args.models)}}
    num_dets = sum(len(d) for d in dets.values())

    start = time.perf_counter()
    report = bootstrap_intervals(gt, dets, resamples=args.resamples, seed=0)
    seconds = time.perf_counter() - start
    first = report.models["model_0"]["Reasonable"]
    print(f"{machine()}: {args.images} images, {len(gt['annotations'])} GT, {args.models} models, "
          f"{num_dets} detections, {args.resamples} resamples: {seconds:.1f} s "
          f"(model_0 Reasonable {first.point:.2f} [{first.low:.2f}, {first.high:.2f}])")


def _on(gt: dict, dets_per_image: int, seed: int) -> list[dict]:
    """Another model's detections on ``gt``: :func:`eval_speed.detections_on` image by image."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    out = []
    for image in gt["images"]:
        boxes = np.asarray(by_image.get(image["id"], []), dtype=float).reshape(-1, 4)
        out += detections_on(rng, image["id"], boxes, dets_per_image)
    return out


if __name__ == "__main__":
    main()
