"""``hkd predict --checkpoint CKPT --images DIR [--gt GT.json] --out DETS.json``."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path

from hkd.cli import CLIError
from hkd.configfile import quote
from hkd.train.run_folder import write_status


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="detect pedestrians in a folder of images; write COCO results JSON")
    p.add_argument("--checkpoint", required=True,
                   help="HKD checkpoint (.safetensors), foreign weights with --preset, "
                        "or an exported .onnx model (run by onnxruntime)")
    p.add_argument("--preset", help="architecture of a foreign weights file")
    p.add_argument("--images", help="folder of images (optional when --gt names a dataset: its own images)")
    p.add_argument("--gt", help="COCO-style GT JSON, or a dataset as hkd.data.open_dataset reads it (CityPersons "
                                "anno_<split>.mat, a Caltech or COCO folder …): image_id is taken from it by file_name")
    p.add_argument("--out", required=True, help="COCO results JSON to write")
    p.add_argument("--score-thresh", type=float, default=0.05,
                   help="keep detections with score ≥ this (default 0.05: MR-2/AP need the low scores)")
    p.add_argument("--max-dets", type=int, default=100, help="at most this many detections per image (default 100)")
    p.add_argument("--suppress-contained", type=float, default=None, metavar="C",
                   help="post-processing, off by default: remove a box whose area lies, by a share ≥ C (0 < C ≤ 1, "
                        "e.g. 0.8), inside a higher-scoring kept box — a leg or torso box inside a full-body "
                        "box (hkd.models.inference.suppress_contained; measured in docs/BENCHMARKS.md)")
    p.add_argument("--zoom-out", type=float, default=None, metavar="Z",
                   help="off by default: a second pass on a canvas 1/Z times the image (0 < Z < 1, e.g. 0.5), "
                        "merged by NMS, for people larger than the frame (hkd.models.inference.merge_zoomed; "
                        "measured in docs/BENCHMARKS.md); one more forward pass per image")
    p.add_argument("--zoom-min-height", type=float, default=None, metavar="H",
                   help="with --zoom-out: keep the second pass's boxes at least H of the image height "
                        "(default 0.5)")
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

    from hkd.data.datasets import DatasetError, confine
    from hkd.evaluation.workflow import LazyDataset, dataset_ground_truth, images_folder, is_gt_json
    from hkd.results import cache_dir
    from hkd.data.images import IMAGE_SUFFIXES, ImageError, load_image
    from hkd.models.meta import atomic_write
    from hkd.models.checkpoint import CheckpointError
    from hkd.deploy.runtime import OnnxDetector, OnnxInputError
    from hkd.models.inference import ZOOM_MIN_HEIGHT, detect

    gt_dataset = bool(args.gt) and not is_gt_json(args.gt)
    opened = LazyDataset(args.gt) if gt_dataset else None  # one parse for its images folder and its GT
    if args.images is None:
        if not gt_dataset:
            raise CLIError("--images is needed (a folder of images), unless --gt names a dataset whose images "
                           "hkd finds itself (a CityPersons .mat, a Caltech or COCO folder …)")
        try:  # COCO's <split>/, Cityscapes' leftImg8bit/<split>/; Caltech's frames written once to the cache
            args.images = str(images_folder(args.gt, cache_dir(), opened=opened))
        except (DatasetError, OSError) as exc:
            raise CLIError(f"--gt {args.gt}: {exc}") from None
    images_dir = Path(args.images)
    if not images_dir.is_dir():
        raise CLIError(f"--images {images_dir}: not a folder")
    files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    try:  # a symlink that leads out of the folder is refused, as every dataset reader does
        files = [confine(p, images_dir, "--images") for p in files]
    except DatasetError as exc:
        raise CLIError(str(exc)) from None
    if not files:
        raise CLIError(f"--images {images_dir}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if args.limit is not None and args.limit <= 0:
        raise CLIError(f"--limit must be a positive number of images, got {args.limit}")
    if args.suppress_contained is not None and not 0 < args.suppress_contained <= 1:
        raise CLIError(f"--suppress-contained must be a share in (0, 1], got {args.suppress_contained:g}")
    if args.zoom_out is not None and not 0 < args.zoom_out < 1:
        raise CLIError(f"--zoom-out must be a scale in (0, 1), e.g. 0.5, got {args.zoom_out:g}")
    if args.zoom_min_height is not None:
        if args.zoom_out is None:
            raise CLIError("--zoom-min-height goes with --zoom-out")
        if not 0 <= args.zoom_min_height <= 1:
            raise CLIError(f"--zoom-min-height must be a share of the image height in [0, 1], "
                           f"got {args.zoom_min_height:g}")
    out = Path(args.out)
    _check_output(out, args, files)
    ids: dict[str, int] = {}
    if args.gt:
        if gt_dataset:
            try:
                gt = dataset_ground_truth(args.gt, opened=opened)
            except (DatasetError, OSError) as exc:
                raise CLIError(f"--gt {args.gt}: {exc}") from None
            ids = {im["file_name"]: im["id"] for im in gt["images"]}
        else:
            ids = _gt_ids(Path(args.gt))
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
    if args.zoom_out is not None:
        zoom_min_height = ZOOM_MIN_HEIGHT if args.zoom_min_height is None else args.zoom_min_height
        run_detect = partial(run_detect, zoom_out=args.zoom_out, zoom_min_height=zoom_min_height)
    if args.status:
        write_status(args.status, "running", step=0, total=len(files))
    results, skipped = [], []
    suppressed = 0
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
        if args.suppress_contained is not None:  # after either backend's detect(), so both apply it alike
            kept = dets.suppress_contained(args.suppress_contained)
            suppressed += len(dets) - len(kept)
            dets = kept
        results.extend(dets.to_coco(image_id))
    text = json.dumps(results)
    try:  # to a temporary file, then renamed: an error (a full disk) leaves the previous file whole
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    except OSError as exc:
        message = f"--out {out}: cannot write the detections ({exc.strerror or exc}); nothing was replaced"
        if args.status:
            with contextlib.suppress(OSError):
                write_status(args.status, "failed", message=message)
        raise CLIError(message) from None
    msg = f"predict: {len(results)} detections on {len(files) - len(skipped)} images → {out}"
    if args.zoom_out is not None:
        msg += f" (with a zoomed-out second look at --zoom-out {args.zoom_out:g})"
    if args.suppress_contained is not None:
        msg += f" ({suppressed} contained boxes suppressed at --suppress-contained {args.suppress_contained:g})"
    if skipped:
        msg += f" ({len(skipped)} images not in --gt skipped, e.g. {skipped[0]})"
    print(msg)
    if args.status:
        write_status(args.status, "succeeded", step=len(files), total=len(files), message=msg,
                     outputs={"dets": str(out)})
    return 0


def _check_output(out: Path, args, files: list[Path]) -> None:
    """Refuse an ``--out`` (or ``--status``) that would overwrite an input of this command, or is a folder."""
    from hkd.data.images import IMAGE_SUFFIXES

    inputs = {Path(args.checkpoint).resolve(): "--checkpoint", Path(args.images).resolve(): "--images"}
    if args.gt:
        inputs[Path(args.gt).resolve()] = "--gt"
    for name, path in (("--out", out), ("--status", args.status)):
        if path is None:
            continue
        target = Path(path).resolve()
        if target in inputs:
            raise CLIError(f"{name} {path} is the {inputs[target]} file of this command; writing it would destroy "
                           "that input — choose another output path")
        if target.suffix.lower() in IMAGE_SUFFIXES and target in {f.resolve() for f in files}:
            raise CLIError(f"{name} {path} is one of the --images; choose another output path")
        if target.is_dir():
            raise CLIError(f"{name} {path} is a folder; name the JSON file to write")
    if args.status is not None and Path(args.status).resolve() == out.resolve():
        raise CLIError(f"--status {args.status} and --out are the same file; give them different paths")


def _gt_ids(path: Path) -> dict[str, int]:
    """``{file_name: image_id}`` of a COCO-style GT file; a clear CLIError for anything else."""
    try:
        gt = json.loads(path.read_text())
    except FileNotFoundError:
        raise CLIError(f"--gt {path}: no such file") from None
    except IsADirectoryError:
        raise CLIError(f"--gt {path}: a folder, not a COCO-style GT file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CLIError(f"--gt {path}: not a JSON file ({str(exc)[:200]})") from None
    images = gt.get("images") if isinstance(gt, dict) else None
    if not isinstance(images, list):
        raise CLIError(f"--gt {path}: not a COCO-style GT file (no 'images' list)")
    ids: dict[str, int] = {}
    for im in images:
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
            raise CLIError(f"--gt {path}: every image needs a 'file_name' and an 'id'; found {quote(im)}")
        image_id = im["id"]
        if isinstance(image_id, str) and image_id.strip().isdigit():
            image_id = int(image_id)
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise CLIError(f"--gt {path}: image {quote(im['file_name'])} has id {quote(im['id'])}; COCO image ids "
                           "are whole numbers")
        ids[im["file_name"]] = image_id
    return ids


def _load_model(args):
    """The PyTorch model (prepared for inference), or an :class:`~hkd.deploy.runtime.OnnxDetector` for a .onnx
    file: both run through :func:`hkd.models.inference.detect` and give the same COCO results."""
    from hkd.deploy.runtime import OnnxDetector, is_onnx
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
    loaded = load_checkpoint(args.checkpoint, preset=args.preset, inference=True)
    if not loaded.meta.pedestrian_class:
        # predict writes label 1 as the pedestrian (category 1): another class 1 would be counted as one
        raise CLIError(f"{args.checkpoint}: its class 1 is {loaded.meta.classes[1]!r} (classes "
                       f"{loaded.meta.classes[:5]}), not a pedestrian; hkd predict writes class 1 as the "
                       "pedestrian category")
    return loaded.model.to(device)
