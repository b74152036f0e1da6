"""``hkd export --checkpoint CKPT --out MODEL.onnx [--opset N] [--size W H | --dynamic]``.

The whole detector (transform, backbone, FPN, RPN, ROI head, post-processing)
as one ONNX graph with the checkpoint's metadata; onnxruntime's detections are
checked against PyTorch's before the file is written (:mod:`hkd.deploy.export`).
"""
from __future__ import annotations

import json
from pathlib import Path

from hkd.cli import CLIError


def add_parser(subparsers, name: str) -> None:
    from hkd.deploy.export import DEFAULT_OPSET, OPSET_RANGE

    p = subparsers.add_parser(name, help="export a checkpoint to ONNX (checked against PyTorch with onnxruntime)")
    p.add_argument("--checkpoint", required=True, help="HKD checkpoint (.safetensors) or foreign weights with --preset")
    p.add_argument("--preset", help="architecture of a foreign weights file (see `hkd presets`)")
    p.add_argument("--out", required=True, help="ONNX file to write (.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {OPSET_RANGE[0]}-{OPSET_RANGE[1]} (default {DEFAULT_OPSET})")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--size", type=int, nargs=2, metavar=("W", "H"),
                       help="a graph for W×H images only (fixed input shape)")
    shape.add_argument("--dynamic", action="store_true",
                       help="a graph for images of any size (the default)")
    p.add_argument("--check-images", type=Path, metavar="DIR",
                   help="compare onnxruntime with PyTorch on the images of this folder "
                        "(default: SynthPed scenes rendered at the export size)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    p.add_argument("--json", action="store_true", help="print the export record as JSON")
    p.set_defaults(func=run)


def _check_images(folder: Path, size) -> list:
    from hkd.data.images import IMAGE_SUFFIXES, ImageError, load_image

    if not folder.is_dir():
        raise CLIError(f"--check-images {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CLIError(f"--check-images {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = []
    for path in files:
        try:
            image = load_image(path)
        except ImageError as exc:
            raise CLIError(str(exc)) from None
        if size is not None and image.shape[:2] != (size[1], size[0]):
            raise CLIError(f"--check-images: {path} is {image.shape[1]}x{image.shape[0]}, "
                           f"but the export is for {size[0]}x{size[1]} images")
        images.append(image)
    return images


def run(args) -> int:
    import sys
    from dataclasses import asdict

    from hkd.deploy.export import OnnxCheckError, OnnxExportError, export_onnx
    from hkd.models.meta import CheckpointError

    size = tuple(args.size) if args.size else None
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise CLIError(f"--out {args.out} is the --checkpoint itself; writing it would destroy that input")
    images = _check_images(args.check_images, size) if args.check_images else None
    try:
        result = export_onnx(args.checkpoint, args.out, preset=args.preset, opset=args.opset, size=size,
                             check=not args.no_check, check_images=images)
    except OnnxCheckError as exc:
        # exported, but onnxruntime disagrees with PyTorch: the report, exit 1 (nothing was written)
        print(f"hkd export: {exc}", file=sys.stderr)
        return 1
    except (OnnxExportError, CheckpointError) as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:  # written to a temporary file then renamed: a full disk replaced nothing
        raise CLIError(f"--out {args.out}: cannot write the export ({exc.strerror or exc}); nothing was "
                       "replaced") from None
    if args.json:
        print(json.dumps({"path": str(result.path), "meta": asdict(result.meta), "export": result.export}, indent=2))
        return 0
    shape = "any image size" if size is None else f"{size[0]}x{size[1]} images"
    mb = result.path.stat().st_size / 1e6
    print(f"export: {args.checkpoint} ({result.meta.preset}) → {result.path} "
          f"({mb:.1f} MB, opset {args.opset}, {shape})")
    if result.check is not None:
        print(f"check: {result.check.summary()}")
    else:
        print("check: skipped (--no-check)")
    return 0
