"""Detections of the demo checkpoints on a real frame of OpenCV's vtest.avi.

    python bench/real_examples.py [--frame assets/samples/real/vtest_0250.jpg] [--out docs/img/real_vtest.png]
    python bench/real_examples.py --pair single-stage --out docs/img/real_vtest_retina.png
    python bench/real_examples.py --checkpoints runs/candidates --out /tmp/candidates.png   # before shipping
    python bench/real_examples.py --frame a.jpg b.jpg --suppress-contained 0.9 --out docs/img/real_one_box.png
    python bench/real_examples.py --models teacher=assets/checkpoints/teacher.safetensors longer=runs/t/final.safetensors

Draws teacher | no-KD student | distilled student side by side (score ≥ 0.5) and
prints how many pedestrians each found and its CPU time. ``--pair`` picks the demo
checkpoints: the two-stage pair (teacher, student_baseline, student_hkd) or the
single-stage one (retina_teacher, retina_student_baseline, retina_student_kd), read from
``--checkpoints`` (default assets/checkpoints/; a folder of candidates under the same names
shows them before they are shipped); ``--models NAME=CKPT …`` draws any checkpoints instead. Several ``--frame`` s give one row each;
``--suppress-contained C`` adds, under each frame's row, the same detections with the boxes
mostly inside a higher-scoring one removed (``hkd predict --suppress-contained C``), so the
figure reads before / after.
"""
from __future__ import annotations

import argparse
import itertools
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
    p.add_argument("--frame", nargs="+", default=[str(ROOT / "assets/samples/real/vtest_0250.jpg")])
    p.add_argument("--out", default=str(ROOT / "docs/img/real_vtest.png"))
    p.add_argument("--score", type=float, default=0.5)
    p.add_argument("--pair", choices=list(PAIRS), default="two-stage", help="which demo checkpoints")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "assets/checkpoints",
                   help="the folder holding the pair's files (default %(default)s)")
    p.add_argument("--models", nargs="+", metavar="NAME=CKPT", default=None,
                   help="any checkpoints, one column each, instead of --pair/--checkpoints")
    p.add_argument("--suppress-contained", type=float, default=None, metavar="C",
                   help="add a row per frame with boxes ≥ C inside a higher-scoring one removed")
    p.add_argument("--width", type=int, default=384, help="width of each panel in px (default %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(2)
    images = [load_image(frame) for frame in args.frame]
    settings = [None] + ([args.suppress_contained] if args.suppress_contained is not None else [])
    rows: dict[tuple[int, float | None], list[np.ndarray]] = {}
    if args.models:
        if any("=" not in m for m in args.models):
            p.error("--models takes NAME=CKPT pairs")
        columns = {name: Path(path) for name, path in (m.split("=", 1) for m in args.models)}
    else:
        columns = {name: args.checkpoints / f"{name}.safetensors" for name in PAIRS[args.pair]}
    palette = ((30, 120, 255), (255, 140, 0), (40, 180, 60), (170, 80, 220), (220, 40, 40))
    for (name, path), color in zip(columns.items(), itertools.cycle(palette)):
        model = load_checkpoint(path, inference=True).model
        detect(model, images[:1])  # warm-up
        for i, (frame, image) in enumerate(zip(args.frame, images)):
            (found,) = detect(model, [image], score_thresh=args.score)
            for setting in settings:
                shown = found if setting is None else found.suppress_contained(setting)
                label = "off" if setting is None else f"suppress-contained {setting:g}"
                print(f"{name} · {Path(frame).name} · {label}: {len(shown)} pedestrians ≥ {args.score}, "
                      f"{found.seconds * 1000:.0f} ms")
                panel = Image.fromarray(draw_boxes(image, shown.boxes, scores=shown.scores, color=color, labels=None))
                height = round(image.shape[0] * args.width / image.shape[1])
                rows.setdefault((i, setting), []).append(np.asarray(panel.resize((args.width, height))))
    Image.fromarray(np.concatenate([np.concatenate(row, axis=1) for row in rows.values()], axis=0)).save(args.out)
    print(f"wrote {args.out}: rows " + ", ".join(f"{Path(args.frame[i]).name} ({'off' if s is None else s})"
                                                  for i, s in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
