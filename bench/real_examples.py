"""Detections of the demo checkpoints on a real frame of OpenCV's vtest.avi.

    python bench/real_examples.py [--frame assets/samples/real/vtest_0250.jpg] [--out docs/img/real_vtest.png]
    python bench/real_examples.py --pair single-stage --out docs/img/real_vtest_retina.png
    python bench/real_examples.py --checkpoints runs/candidates --out /tmp/candidates.png   # before shipping

Draws teacher | no-KD student | distilled student side by side (score ≥ 0.5) and
prints how many pedestrians each found and its CPU time. ``--pair`` picks the demo
checkpoints: the two-stage pair (teacher, student_baseline, student_hkd) or the
single-stage one (retina_teacher, retina_student_baseline, retina_student_kd), read from
``--checkpoints`` (default assets/checkpoints/; a folder of candidates under the same names
shows them before they are shipped).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hkd.data.images import load_image
from hkd.models.checkpoint import load_checkpoint
from hkd.models.inference import detect
from hkd.viz.draw import draw_boxes

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"two-stage": ("teacher", "student_baseline", "student_hkd"),
         "single-stage": ("retina_teacher", "retina_student_baseline", "retina_student_kd")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frame", default=str(ROOT / "assets/samples/real/vtest_0250.jpg"))
    p.add_argument("--out", default=str(ROOT / "docs/img/real_vtest.png"))
    p.add_argument("--score", type=float, default=0.5)
    p.add_argument("--pair", choices=list(PAIRS), default="two-stage", help="which demo checkpoints")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "assets/checkpoints",
                   help="the folder holding the pair's files (default %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(2)
    image = load_image(args.frame)
    panels = []
    for name, color in zip(PAIRS[args.pair], ((30, 120, 255), (255, 140, 0), (40, 180, 60))):
        model = load_checkpoint(args.checkpoints / f"{name}.safetensors", inference=True).model
        detect(model, [image])  # warm-up
        (found,) = detect(model, [image], score_thresh=args.score)
        print(f"{name}: {len(found)} pedestrians ≥ {args.score}, {found.seconds * 1000:.0f} ms")
        panel = draw_boxes(image, found.boxes, scores=found.scores, color=color, labels=None)
        panels.append(np.asarray(Image.fromarray(panel).resize((image.shape[1] // 2, image.shape[0] // 2))))
    Image.fromarray(np.concatenate(panels, axis=1)).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
