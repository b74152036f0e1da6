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

from eval_speed import generate, machine  # noqa: E402

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
    """Detections of another model on ``gt``: jittered copies of its boxes plus clutter."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    out = []
    for image in gt["images"]:
        boxes = np.asarray(by_image.get(image["id"], []), dtype=float).reshape(-1, 4)
        hits = boxes[rng.integers(0, len(boxes), dets_per_image // 2)] if len(boxes) else np.zeros((0, 4))
        hits = hits + rng.normal(0, 1, hits.shape) * hits[:, 3:4] * 0.05
        clutter_h = rng.uniform(20, 300, dets_per_image - len(hits))
        clutter = np.column_stack([rng.uniform(0, 2000, len(clutter_h)), rng.uniform(0, 700, len(clutter_h)),
                                   0.41 * clutter_h, clutter_h])
        for box in np.concatenate([hits, clutter]):
            box[2:] = np.abs(box[2:])
            out.append({"image_id": image["id"], "category_id": 1, "bbox": box.tolist(),
                        "score": float(rng.random())})
    return out


if __name__ == "__main__":
    main()
