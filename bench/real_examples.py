"""Detections of the demo checkpoints on a real frame of OpenCV's vtest.avi.

    python bench/real_examples.py [--frame assets/samples/real/vtest_0250.jpg] [--out docs/img/real_vtest.png]
    python bench/real_examples.py --pair single-stage --out docs/img/real_vtest_retina.png
    python bench/real_examples.py --checkpoints runs/candidates --out /tmp/candidates.png   # before shipping
    python bench/real_examples.py --frame a.jpg b.jpg --suppress-contained 0.9 --out docs/img/real_one_box.png
    python bench/real_examples.py --frame a.jpg --suppress-contained 0.9 --zoom-out 0.5 --out docs/img/real_zoom.jpg
    python bench/real_examples.py --models teacher=assets/checkpoints/teacher.safetensors longer=runs/t/final.safetensors

Draws teacher | no-KD student | distilled student side by side (score ≥ 0.5) and
prints how many pedestrians each found and its CPU time. ``--pair`` picks the demo
checkpoints: the two-stage pair (teacher, student_baseline, student_hkd) or the
single-stage one (retina_teacher, retina_student_baseline, retina_student_kd), read from
``--checkpoints`` (default assets/checkpoints/; a folder of candidates under the same names
shows them before they are shipped); ``--models NAME=CKPT …`` draws any checkpoints instead. Several ``--frame`` s give one row each;
``--suppress-contained C`` adds, under each frame's row, the same detections with the boxes
mostly inside a higher-scoring one removed (``hkd predict --suppress-contained C``), so the
figure reads before / after; ``--zoom-out Z`` adds one more row with the zoomed-out second look
(``hkd predict --zoom-out Z``, with the suppression too when given).
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
    p.add_argument("--zoom-out", type=float, default=None, metavar="Z",
                   help="add a row per frame with a second look zoomed out to Z (and the suppression, if given)")
    p.add_argument("--width", type=int, default=384, help="width of each panel in px (default %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(2)
    images = [load_image(frame) for frame in args.frame]
    # (suppress_contained, zoom_out) per row of each frame
    settings: list[tuple[float | None, float | None]] = [(None, None)]
    if args.suppress_contained is not None:
        settings.append((args.suppress_contained, None))
    if args.zoom_out is not None:
        settings.append((args.suppress_contained, args.zoom_out))
    rows: dict[tuple[int, tuple], list[np.ndarray]] = {}
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
            # the model runs once per look (one, or two zoomed out); suppression works on its boxes
            found = {zoom: detect(model, [image], score_thresh=args.score, zoom_out=zoom)[0]
                     for zoom in dict.fromkeys(z for _, z in settings)}
            for setting in settings:
                contained, zoom = setting
                shown = found[zoom] if contained is None else found[zoom].suppress_contained(contained)
                print(f"{name} · {Path(frame).name} · {label(setting)}: {len(shown)} pedestrians ≥ {args.score}, "
                      f"{found[zoom].seconds * 1000:.0f} ms")
                panel = Image.fromarray(draw_boxes(image, shown.boxes, scores=shown.scores, color=color, labels=None))
                height = round(image.shape[0] * args.width / image.shape[1])
                rows.setdefault((i, setting), []).append(np.asarray(panel.resize((args.width, height))))
    Image.fromarray(np.concatenate([np.concatenate(row, axis=1) for row in rows.values()], axis=0)).save(args.out)
    print(f"wrote {args.out}: rows " + ", ".join(f"{Path(args.frame[i]).name} ({label(s)})" for i, s in rows))
    return 0


def label(setting: tuple[float | None, float | None]) -> str:
    contained, zoom = setting
    parts = ([f"suppress-contained {contained:g}"] if contained is not None else []) + \
        ([f"zoom-out {zoom:g}"] if zoom is not None else [])
    return " + ".join(parts) or "off"


if __name__ == "__main__":
    raise SystemExit(main())
