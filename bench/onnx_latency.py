"""PyTorch against onnxruntime on the demo checkpoints: latency at 640×480 and equality of the detections.

    python bench/onnx_latency.py [--threads 2] [--runs 9] [--val data/synthped/val] [--val-limit N]
                                 [--teacher-val-limit 50] [--out-dir runs/onnx_bench] [--int8]

One run, every number from the same process:

1. exports ``assets/checkpoints/{teacher,student_hkd,student_baseline}.safetensors``
   with ``hkd.deploy.export_onnx`` (any image size; each export checks itself);
2. times one 640×480 image (``hkd.models.profile.cpu_latency``'s protocol: the
   same random image, 2 warm-ups, median of ``--runs``) through the teacher and
   the HKD student, each in PyTorch (prepared for inference, as ``hkd predict``
   runs it) and in onnxruntime (CPU execution provider), on ``--threads`` threads;
3. runs both students through both backends on SynthPed val and on the shipped
   real frames (``assets/samples/real``), pairs their detections
   (``hkd.deploy.backend_agreement``: boxes within 1 px, scores within 1e-3)
   and compares MR⁻² on val (within 0.1); the teacher on the real frames and
   the first ``--teacher-val-limit`` val images (its PyTorch path is the slow one).

With ``--int8`` the HKD student is also quantised (``hkd.deploy.quantize_int8``,
static, calibrated on SynthPed train images) and timed and scored beside the rest.
Prints markdown for docs/BENCHMARKS.md; exits 1 when a floor or an equality is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hkd.data.images import IMAGE_SUFFIXES, load_image  # noqa: E402
from hkd.deploy.agreement import backend_agreement  # noqa: E402
from hkd.deploy.export import export_onnx  # noqa: E402
from hkd.deploy.runtime import OnnxDetector, onnx_latency  # noqa: E402
from hkd.models.checkpoint import load_checkpoint  # noqa: E402
from hkd.models.inference import detect  # noqa: E402
from hkd.models.profile import cpu_latency  # noqa: E402
from hkd.train.evaluate import evaluate_detections, subset_gt  # noqa: E402

FLOOR_MS = 100.0  # student through onnxruntime, per 640×480 image
FLOOR_RATIO = 8.0  # times faster than the teacher in PyTorch
MR_TOL = 0.1


def _images(val: Path, limit: int | None) -> tuple[dict, list[tuple[int, Path]]]:
    gt = json.loads((val / "annotations.json").read_text())
    items = [(int(im["id"]), val / "images" / im["file_name"]) for im in gt["images"]]
    if limit:
        items = items[:limit]
    return subset_gt(gt, {i for i, _ in items}), items


def _run(model, items: list[tuple[int, Path]], cache: dict) -> tuple[list, list[dict]]:
    dets, coco = [], []
    for image_id, path in items:
        if path not in cache:
            cache[path] = load_image(path)
        (found,) = model.detect([cache[path]]) if isinstance(model, OnnxDetector) else detect(model, [cache[path]])
        dets.append(found)
        coco += found.to_coco(image_id)
    return dets, coco


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--checkpoints", type=Path, default=ROOT / "assets/checkpoints")
    p.add_argument("--val", type=Path, default=ROOT / "data/synthped/val")
    p.add_argument("--val-limit", type=int, default=None, help="students: only the first N val images (default all)")
    p.add_argument("--teacher-val-limit", type=int, default=50, help="teacher: the first N val images")
    p.add_argument("--real", type=Path, default=ROOT / "assets/samples/real")
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs/onnx_bench")
    p.add_argument("--int8", action="store_true", help="also quantise the HKD student to int8 (static, calibrated)")
    p.add_argument("--calibration", type=Path, default=ROOT / "data/synthped/train_small",
                   help="SynthPed train images for the int8 calibration")
    p.add_argument("--calibration-images", type=int, default=64)
    args = p.parse_args()
    if not (args.val / "annotations.json").is_file():
        print(f"--val {args.val}: no annotations.json (generate it with `hkd synth`)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; {args.threads} threads; input {args.width}×{args.height}; median of "
          f"{args.runs} runs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 1-min load at start {load:.2f}\n")

    names = ("teacher", "student_hkd", "student_baseline")
    models = {name: load_checkpoint(args.checkpoints / f"{name}.safetensors", inference=True).model for name in names}
    size = (args.width, args.height)
    # PyTorch first, before any onnxruntime session (and its thread pool) exists in the process
    torch_rows = [(name, "PyTorch", cpu_latency(models[name], *size, threads=args.threads, runs=args.runs))
                  for name in ("teacher", "student_hkd")]
    exported, onnx = {}, {}
    for name in names:
        start = time.perf_counter()
        result = export_onnx(args.checkpoints / f"{name}.safetensors", args.out_dir / f"{name}.onnx")
        exported[name] = result.path
        print(f"exported {name}: {result.path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - start:.0f} s; "
              f"{result.export['prepared']}; check {result.check.summary()}")
    # the same student as the plain TorchScript export of the prepared model (no graph rewrites): timed only
    plain = export_onnx(args.checkpoints / "student_hkd.safetensors", args.out_dir / "student_hkd.plain.onnx",
                        rewrite=False)
    exported["student_hkd.plain"] = plain.path
    print(f"exported student_hkd without the graph rewrites; check {plain.check.summary()}")
    # the same student as a fixed-size graph (``hkd export --size 640 480``): timed only
    fixed = export_onnx(args.checkpoints / "student_hkd.safetensors",
                        args.out_dir / f"student_hkd.{args.width}x{args.height}.onnx", size=(args.width, args.height))
    exported["student_hkd.fixed"] = fixed.path
    print(f"exported student_hkd for {args.width}×{args.height} only; check {fixed.check.summary()}")
    if args.int8:
        from hkd.deploy.quantize import quantize_int8

        files = sorted(f for f in (args.calibration / "images").iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        start = time.perf_counter()
        exported["student_hkd.int8"] = quantize_int8(exported["student_hkd"], args.out_dir / "student_hkd.int8.onnx",
                                                     [load_image(f) for f in files[:args.calibration_images]])
        where = args.calibration.relative_to(ROOT) if args.calibration.is_relative_to(ROOT) else args.calibration
        print(f"quantised student_hkd to int8 (backbone and FPN) on {min(len(files), args.calibration_images)} "
              f"images of {where} in {time.perf_counter() - start:.0f} s")
    print()

    rows = list(torch_rows)
    for name, path in exported.items():
        onnx[name] = OnnxDetector(path, threads=args.threads, providers=["CPUExecutionProvider"])
    rows.insert(1, ("teacher", "onnxruntime", onnx_latency(onnx["teacher"], *size, runs=args.runs)))
    rows.append(("student_hkd", "onnxruntime", onnx_latency(onnx["student_hkd"], *size, runs=args.runs)))
    rows.append(("student_hkd", "onnxruntime, plain export (no graph rewrites)",
                 onnx_latency(onnx.pop("student_hkd.plain"), *size, runs=args.runs)))
    rows.append(("student_hkd", f"onnxruntime, fixed {args.width}×{args.height} graph",
                 onnx_latency(onnx.pop("student_hkd.fixed"), *size, runs=args.runs)))
    if "student_hkd.int8" in onnx:
        rows.append(("student_hkd", "onnxruntime int8", onnx_latency(onnx["student_hkd.int8"], *size, runs=args.runs)))
    teacher_ms = rows[0][2]["median_s"] * 1000
    print("| model | backend | median ms | min ms | teacher PyTorch ÷ this |")
    print("|---|---|---|---|---|")
    for name, backend, lat in rows:
        ms = lat["median_s"] * 1000
        print(f"| {name} | {backend} | {ms:.1f} | {lat['min_s'] * 1000:.1f} | {teacher_ms / ms:.2f}× |")
    print(f"\nPyTorch ÷ onnxruntime: teacher {rows[0][2]['median_s'] / rows[1][2]['median_s']:.2f}×, "
          f"student {rows[2][2]['median_s'] / rows[3][2]['median_s']:.2f}×.")
    latency_ok = False
    for name, backend, lat in rows[3:]:
        if "plain" in backend or "fixed" in backend:
            continue  # the floors are for what `hkd export` writes by default (and its int8 form)
        ms = lat["median_s"] * 1000
        ok = ms <= FLOOR_MS and teacher_ms / ms >= FLOOR_RATIO
        latency_ok |= ok
        print(f"Floors, student through {backend}: {ms:.1f} ms ≤ {FLOOR_MS:.0f} ms "
              f"{'met' if ms <= FLOOR_MS else 'MISSED'}; {teacher_ms / ms:.2f}× faster than the teacher in PyTorch "
              f"≥ {FLOOR_RATIO:.0f}× {'met' if teacher_ms / ms >= FLOOR_RATIO else 'MISSED'}.")
    print()

    real = sorted(f for f in args.real.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    real_items = [(i + 1, f) for i, f in enumerate(real)]
    print("| model | images | PyTorch / onnxruntime detections | paired | max box diff px | max score diff | "
          "unpaired at the cut | other unpaired | MR⁻² R / S / H / A PyTorch | onnxruntime | max MR⁻² diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    equal_ok = True
    cache: dict = {}
    jobs = [("student_hkd", "student_hkd", args.val_limit), ("student_baseline", "student_baseline", args.val_limit),
            ("teacher", "teacher", args.teacher_val_limit)]
    if "student_hkd.int8" in onnx:
        jobs.insert(1, ("student_hkd.int8", "student_hkd", args.val_limit))
    for key, torch_name, limit in jobs:
        gt, items = _images(args.val, limit)
        for label, chosen in (("SynthPed val", items), ("real frames", real_items)):
            start = time.perf_counter()
            ref, ref_coco = _run(models[torch_name], chosen, cache)
            cand, cand_coco = _run(onnx[key], chosen, cache)
            agreement = backend_agreement(ref, cand)
            mr_cells = ["-", "-", "-"]
            mr_diff = 0.0
            if label == "SynthPed val":
                mr_a = evaluate_detections(gt, ref_coco)["mr"]
                mr_b = evaluate_detections(gt, cand_coco)["mr"]
                mr_diff = max(abs(mr_a[k] - mr_b[k]) for k in mr_a)
                mr_cells = [" / ".join(f"{mr_a[k]:.2f}" for k in ("Reasonable", "Small", "Heavy", "All")),
                            " / ".join(f"{mr_b[k]:.2f}" for k in ("Reasonable", "Small", "Heavy", "All")),
                            f"{mr_diff:.3f}"]
            exact = not key.endswith(".int8")  # int8 is measured, not held to the float tolerances
            if exact:
                equal_ok &= agreement.ok and mr_diff <= MR_TOL
            print(f"| {key} | {label} ({len(chosen)}) | {agreement.reference} / {agreement.candidate} | "
                  f"{agreement.matched} | {agreement.max_box_diff_px:.4f} | {agreement.max_score_diff:.2e} | "
                  f"{agreement.borderline} | {len(agreement.unmatched)} | {' | '.join(mr_cells)} |", flush=True)
            print(f"<!-- {key} on {label}: {time.perf_counter() - start:.0f} s -->", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n1-min load at the end {load:.2f} (this run's own 2 threads included).")
    print(f"Equality (boxes ≤ 1 px, scores ≤ 1e-3 for every paired detection, nothing unpaired but at the "
          f"score/max_dets cut, MR⁻² within {MR_TOL}): {'met' if equal_ok else 'MISSED'}.")
    return 0 if latency_ok and equal_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
