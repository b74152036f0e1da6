"""People larger than the frame: MR⁻² and recall of large people with and without a zoomed-out second look.

    python bench/zoom_out.py --split tune_large --models teacher=assets/checkpoints/teacher.safetensors ...
        [--zoom 0.5] [--min-heights 0.3 0.5 0.7] [--base NAME=DETS.json] [--bootstrap 1000] [--json FILE]

For each model: the first pass (``hkd predict --score-thresh 0.05``; or an existing COCO results file
given with ``--base``) and the zoomed-out pass alone — the model on
:func:`hkd.models.inference.zoomed_canvas` of each image, its boxes in the image's coordinates — are
predicted once each and kept in ``runs/zoom/<split>/`` (``<stem>-<sha256 prefix>.json`` as
bench/test_table.py keeps predictions, and ``<stem>-zoom<Z>-<sha256 prefix>.json``).
Then :func:`hkd.models.inference.merge_zoomed` merges them offline, image by image, at each
``--min-heights`` value: the boxes ``hkd predict --zoom-out Z --zoom-min-height H`` writes (up to the
rounding of the saved boxes). For each variant:

* MR⁻² Reasonable and All (:func:`hkd.eval.mr.evaluate_mr`) and MR⁻² of a setup ``Large``:
  people at least half the image tall (clipped box height ≥ 240 px on SynthPed's 480-px images),
  visibility ≥ 0.2 as All (a person cut by the border is counted by the share of them in view);
* the miss rate of ``Large`` people at score 0.5 (what the Detections page draws) and the false
  positives per image there (all setups' ignore rules: Reasonable's);
* with ``--bootstrap R``, the paired interval (95 %, R resamples of the images, seed 0) of
  MR⁻²(with) − MR⁻²(without) (:func:`hkd.eval.bootstrap.bootstrap_intervals`); negative: it helps.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from test_table import ROOT, predictions  # the first pass: the same prediction cache as the test tables
DISPLAY_SCORE = 0.5
LARGE_SHARE = 0.5  # the Large setup: people at least this share of the image's height


def zoom_pass(name: str, checkpoint: Path, data: Path, out_dir: Path, split: str, zoom: float) -> Path:
    """The zoomed-out pass alone, every box (score ≥ 0.05, at most 100) in the image's coordinates."""
    import torch

    from hkd.data.images import load_image
    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.inference import detect, image_tensor, zoomed_canvas
    from hkd.models.meta import atomic_write, file_sha256

    out = out_dir / f"{checkpoint.stem}-zoom{zoom:g}-{file_sha256(checkpoint)[:12]}.json"
    if out.exists() and out.stat().st_size > 0:
        return out
    torch.set_num_threads(1)
    model = load_checkpoint(checkpoint, inference=True).model.eval()
    gt = json.loads((data / "annotations.json").read_text())
    start, rows = time.perf_counter(), []
    for im in gt["images"]:
        canvas = zoomed_canvas(image_tensor(load_image(data / "images" / im["file_name"])), zoom)
        (dets,) = detect(model, [canvas], score_thresh=0.05)
        rows.extend(dets.to_coco(im["id"]))
    text = json.dumps(rows)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))  # a killed run leaves no half file to reuse
    print(f"# {name}: zoomed-out pass on {split} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return out


def large_setup(gt: dict):
    """The setup ``Large``: people at least ``LARGE_SHARE`` of the image's height (a SynthPed split's images
    share one size), visibility ≥ 0.2 as All."""
    from hkd.eval.matching import Setup

    return Setup("Large", (LARGE_SHARE * gt["images"][0]["height"], float("inf")), (0.2, float("inf")))


def merged(gt: dict, base: list[dict], zoomed: list[dict], min_height: float) -> list[dict]:
    """``merge_zoomed`` image by image on saved COCO results."""
    from hkd.models.inference import Detections, merge_zoomed

    def by_image(rows):
        out: dict[int, list[dict]] = {}
        for r in rows:
            out.setdefault(r["image_id"], []).append(r)
        return out

    def dets(rows):
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)], np.float32).reshape(-1, 4)
        return Detections(boxes, np.array([r["score"] for r in rows], np.float32))

    b, z = by_image(base), by_image(zoomed)
    rows = []
    for im in gt["images"]:
        m = merge_zoomed(dets(b.get(im["id"], [])), dets(z.get(im["id"], [])), im["height"], im["width"],
                         min_height=min_height)
        rows.extend(m.to_coco(im["id"]))
    return rows


def measure(truth, found, large) -> dict:
    from hkd.eval.compare import operating_point
    from hkd.eval.mr import evaluate_mr

    mr = evaluate_mr(truth, found, setups=["Reasonable", "All", large])
    out = {"mr": {name: float(mr.mr[name]) for name in ("Reasonable", "All", "Large")},
           "num_detections": int(len(found.score))}
    large_curve = mr.setups["Large"].curve
    at = operating_point(large_curve, DISPLAY_SCORE, 0.1, "Large")
    reasonable = operating_point(mr.setups["Reasonable"].curve, DISPLAY_SCORE, 0.1, "Reasonable")
    out["large_people"] = int(mr.setups["Large"].num_positives)
    out["large_miss_at_0.5"] = at["miss_rate"]
    out["fppi_at_0.5"] = reasonable["fppi"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="tune_large", help="SynthPed split under data/synthped")
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=CKPT")
    p.add_argument("--base", nargs="*", default=[], metavar="NAME=DETS.json",
                   help="an existing first pass (hkd predict --score-thresh 0.05 on this split) to reuse")
    p.add_argument("--zoom", type=float, default=0.5)
    p.add_argument("--min-heights", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--bootstrap", type=int, default=0, metavar="R")
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "zoom")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from hkd.eval.bootstrap import bootstrap_intervals
    from hkd.eval.mr import parse_detections, parse_ground_truth

    data = ROOT / "data" / "synthped" / args.split
    args.out_dir.mkdir(parents=True, exist_ok=True)
    gt = json.loads((data / "annotations.json").read_text())
    truth = parse_ground_truth(gt)
    large = large_setup(gt)
    reuse = dict(item.split("=", 1) for item in args.base)
    results, intervals = {}, {}
    cache = args.out_dir / args.split
    for item in args.models:
        name, checkpoint = item.split("=", 1)
        checkpoint = Path(checkpoint)
        base_file = Path(reuse[name]) if name in reuse else predictions(checkpoint, data, cache, 1)
        base = json.loads(base_file.read_text())
        zoomed = json.loads(zoom_pass(name, checkpoint, data, cache, args.split, args.zoom).read_text())
        variants = {"off": parse_detections(base, truth)}
        for h in args.min_heights:
            variants[f"zoom {args.zoom:g} ≥{h:g}"] = parse_detections(merged(gt, base, zoomed, h), truth)
        results[name] = {v: measure(truth, found, large) for v, found in variants.items()}
        if args.bootstrap:
            report = bootstrap_intervals(truth, variants, resamples=args.bootstrap, seed=0,
                                         setups=["Reasonable", "All", large])
            intervals[name] = {v: {m: {"point": -d.point, "low": -d.high, "high": -d.low}
                                   for m, d in report.differences[("off", v)].items()}
                               for v in variants if v != "off"}
    print(f"## {args.split}: {len(gt['images'])} images, "
          f"{next(iter(results.values()))['off']['large_people']} people ≥ {LARGE_SHARE:g} of the image height\n")
    print("| model | variant | MR⁻² R | MR⁻² All | MR⁻² Large | Large missed @0.5 | FPPI @0.5 (R) | boxes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, by_v in results.items():
        for v, r in by_v.items():
            print(f"| {name} | {v} | {r['mr']['Reasonable']:.2f} | {r['mr']['All']:.2f} | {r['mr']['Large']:.2f} | "
                  f"{100 * r['large_miss_at_0.5']:.1f} % | {r['fppi_at_0.5']:.3f} | {r['num_detections']} |")
    if intervals:
        print("\n| model | variant | Δ MR⁻² R [95 %] | Δ MR⁻² All [95 %] | Δ MR⁻² Large [95 %] |\n|---|---|---|---|---|")
        for name, by_v in intervals.items():
            for v, d in by_v.items():
                print(f"| {name} | {v} | " + " | ".join(
                    f"{d[m]['point']:+.2f} [{d[m]['low']:+.2f}, {d[m]['high']:+.2f}]"
                    for m in ("Reasonable", "All", "Large")) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split": args.split, "zoom": args.zoom, "results": results,
                                         "intervals": intervals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
