"""``hkd predict --checkpoint CKPT --images DIR [--gt GT.json] --out DETS.json``."""
from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path

from hkd.cli import CLIError
from hkd.train.run_folder import write_status


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="detect pedestrians in a folder of images; write COCO results JSON")
    p.add_argument("--checkpoint", required=True,
                   help="HKD checkpoint (.safetensors), foreign weights with --preset, "
                        "or an exported .onnx model (run by onnxruntime)")
    p.add_argument("--preset", help="architecture of a foreign weights file")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--gt", help="COCO-style GT: image_id is taken from it by file_name")
    p.add_argument("--out", required=True, help="COCO results JSON to write")
    p.add_argument("--score-thresh", type=float, default=0.05,
                   help="keep detections with score ≥ this (default 0.05: MR-2/AP need the low scores)")
    p.add_argument("--max-dets", type=int, default=100, help="at most this many detections per image (default 100)")
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | cuda:N (default auto: a GPU when there is one); PyTorch checkpoints only")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads (default: torch's or onnxruntime's choice)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N images (in the GT's image order with --gt, else sorted by path)")
    p.add_argument("--status", type=Path, metavar="JSON",
                   help="also write progress to this status file (state, step, total), as background jobs read it")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from hkd.data.images import IMAGE_SUFFIXES, ImageError, load_image
    from hkd.models.checkpoint import CheckpointError
    from hkd.deploy.onnx import OnnxDetector, OnnxInputError
    from hkd.models.inference import detect

    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise CLIError(f"--images {images_dir}: not a folder")
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CLIError(f"--images {images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if args.limit is not None and args.limit <= 0:
        raise CLIError(f"--limit must be a positive number of images, got {args.limit}")
    ids: dict[str, int] = {}
    if args.gt:
        try:
            gt = json.loads(Path(args.gt).read_text())
            for im in gt["images"]:
                ids[im["file_name"]] = int(im["id"])
        except FileNotFoundError:
            raise CLIError(f"--gt {args.gt}: no such file") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CLIError(f"--gt {args.gt}: not a COCO-style GT file ({exc})") from None
    if args.limit is not None:
        if ids:  # the GT's first N images, whatever their file order
            wanted = set(list(ids)[:args.limit])
            files = [p for p in files if p.relative_to(images_dir).as_posix() in wanted or p.name in wanted]
        files = files[:args.limit]
    try:
        model = _load_model(args)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    # both backends give the same Detections: PyTorch through detect(), onnxruntime through its own detect()
    run_detect = model.detect if isinstance(model, OnnxDetector) else partial(detect, model)
    if args.status:
        write_status(args.status, "running", step=0, total=len(files))
    results, skipped = [], []
    last_report = time.monotonic()
    for n, path in enumerate(tqdm(files, desc="predict", unit="img",
                                      disable=args.no_progress or not sys.stderr.isatty())):
        if args.status and time.monotonic() - last_report >= 1.0:
            write_status(args.status, "running", step=n, total=len(files))
            last_report = time.monotonic()
        rel = path.relative_to(images_dir).as_posix()
        if ids:
            image_id = ids.get(rel, ids.get(path.name))
            if image_id is None:
                skipped.append(rel)
                continue
        else:
            image_id = n + 1
        try:
            image = load_image(path)
        except ImageError as exc:
            if args.status:
                write_status(args.status, "failed", message=str(exc))
            raise CLIError(str(exc)) from None
        try:
            (dets,) = run_detect([image], score_thresh=args.score_thresh, max_dets=args.max_dets)
        except OnnxInputError as exc:  # a fixed-size ONNX export and an image of another size
            if args.status:
                write_status(args.status, "failed", message=f"{path}: {exc}")
            raise CLIError(f"{path}: {exc}") from None
        results.extend(dets.to_coco(image_id))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results))
    msg = f"predict: {len(results)} detections on {len(files) - len(skipped)} images → {out}"
    if skipped:
        msg += f" ({len(skipped)} images not in --gt skipped, e.g. {skipped[0]})"
    print(msg)
    if args.status:
        write_status(args.status, "succeeded", step=len(files), total=len(files), message=msg,
                     outputs={"dets": str(out)})
    return 0


def _load_model(args):
    """The PyTorch model (prepared for inference), or an :class:`~hkd.deploy.onnx.OnnxDetector` for a .onnx
    file: both run through :func:`hkd.models.inference.detect` and give the same COCO results."""
    from hkd.deploy.onnx import OnnxDetector, is_onnx
    from hkd.models.checkpoint import load_checkpoint

    if is_onnx(args.checkpoint):
        if args.preset:
            raise CLIError(f"--preset is for foreign weights; {args.checkpoint} carries its own metadata")
        if args.threads < 0:
            raise CLIError(f"--threads must be a positive number, got {args.threads}")
        return OnnxDetector(args.checkpoint, threads=args.threads or None)
    from hkd.models.device import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as exc:
        raise CLIError(f"--device: {exc}") from None
    return load_checkpoint(args.checkpoint, preset=args.preset, inference=True).model.to(device)
