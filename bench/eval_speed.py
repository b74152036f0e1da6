"""Time evaluate_mr + evaluate_ap on a generated CityPersons-sized set.

    python bench/eval_speed.py [--images 500] [--gts 8] [--dets 50] [--repeat 3]

Prints one markdown table row: | machine | images | GT | dets | MR s | AP s | total s |
(best of ``--repeat`` runs, wall clock).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hkd.eval import evaluate_ap, evaluate_mr  # noqa: E402


def generate(num_images: int, gts_per_image: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list]:
    """Random pedestrians on 2048x1024 images and detections: jittered hits plus clutter."""
    rng = np.random.default_rng(seed)
    annotations, dets = [], []
    for img in range(1, num_images + 1):
        n_gt = int(rng.poisson(gts_per_image))
        h = rng.uniform(20, 300, n_gt)
        boxes = np.column_stack([rng.uniform(0, 2000, n_gt), rng.uniform(0, 700, n_gt), 0.41 * h, h])
        for box, vis in zip(boxes, rng.uniform(0.1, 1.0, n_gt)):
            annotations.append({
                "id": len(annotations) + 1, "image_id": img, "category_id": 1, "bbox": box.tolist(),
                "height": float(box[3]), "vis_ratio": float(vis), "ignore": int(rng.random() < 0.1),
            })
        dets += detections_on(rng, img, boxes, dets_per_image)
    gt = {"images": [{"id": i} for i in range(1, num_images + 1)], "categories": [{"id": 1}],
          "annotations": annotations}
    return gt, dets


def detections_on(rng: np.random.Generator, image_id: int, boxes: np.ndarray, dets_per_image: int) -> list[dict]:
    """One image's random detections on its (G, 4) xywh GT ``boxes``: half jittered hits, the rest
    clutter, random scores (COCO results)."""
    hits = boxes[rng.integers(0, len(boxes), dets_per_image // 2)] if len(boxes) else np.zeros((0, 4))
    hits = hits + rng.normal(0, 1, hits.shape) * hits[:, 3:4] * 0.05
    clutter_h = rng.uniform(20, 300, dets_per_image - len(hits))
    clutter = np.column_stack([rng.uniform(0, 2000, len(clutter_h)), rng.uniform(0, 700, len(clutter_h)),
                               0.41 * clutter_h, clutter_h])
    out = []
    for box in np.concatenate([hits, clutter]):
        box[2:] = np.abs(box[2:])
        out.append({"image_id": image_id, "category_id": 1, "bbox": box.tolist(), "score": float(rng.random())})
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--gts", type=int, default=8, help="mean GTs per image")
    parser.add_argument("--dets", type=int, default=50, help="detections per image")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    gt, dets = generate(args.images, args.gts, args.dets)
    mr_s, ap_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        evaluate_mr(gt, dets)
        t1 = time.perf_counter()
        evaluate_ap(gt, dets)
        t2 = time.perf_counter()
        mr_s.append(t1 - t0)
        ap_s.append(t2 - t1)
    print("| machine | images | GT | dets | MR s | AP s | total s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {machine()} | {args.images} | {len(gt['annotations'])} | {len(dets)} "
          f"| {min(mr_s):.3f} | {min(ap_s):.3f} | {min(mr_s) + min(ap_s):.3f} |")


if __name__ == "__main__":
    main()
