"""``hkd train-aux``: fit a teacher's self-supervised aux heads (HSAKD) for ``distill.aux``.

    hkd train-aux --teacher CKPT --data DIR --out AUX.safetensors [--levels L ...] [--steps N]
                  [--seed S] [--threads T] [--crop 64] [--boxes 8] [--batch-size 4] [--lr 0.001]

The teacher is frozen; only the heads learn the joint (class × rotation) label of
region crops of the dataset (the loop: :mod:`hkd.train.aux_heads`; the heads and their
checkpoint: :mod:`hkd.distill.aux`). The output is a safetensors file whose metadata
names the teacher checkpoint (file, sha256, preset, step), the levels, the crop size
and the heads' accuracy; a distill config points at it with ``distill.aux.checkpoint``.
"""
from __future__ import annotations

from pathlib import Path

from hkd.cli import CLIError


def add_parser(subparsers, name: str) -> None:
    what = "fit a teacher's self-supervised aux heads (joint class x rotation) for distill.aux"
    p = subparsers.add_parser(name, help=what, description=what)
    p.add_argument("--teacher", required=True, help="the teacher checkpoint (.safetensors; a .pth needs --preset)")
    p.add_argument("--preset", default=None, help="architecture of a foreign teacher weights file")
    p.add_argument("--data", required=True, help="training images with pedestrian boxes (e.g. a `hkd synth` folder)")
    p.add_argument("--out", required=True, type=Path, help="the aux-heads checkpoint to write (.safetensors)")
    p.add_argument("--levels", nargs="+", default=None, metavar="LEVEL",
                   help="feature levels to fit heads on (default: backbone.c3-c5 and neck.p3-p5 of the teacher)")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draws, crops and heads (default 0)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--crop", type=int, default=64, help="crop side in pixels (default 64)")
    p.add_argument("--boxes", type=int, default=8,
                   help="ground-truth boxes and background boxes per image (default 8)")
    p.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 0.001)")
    p.add_argument("--hidden", type=int, default=128, help="width of the heads (default 128)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from hkd.data.datasets import DatasetError, open_dataset
    from hkd.distill.aux import AuxMeta, check_levels, default_levels, save_aux_heads
    from hkd.distill.config import ConfigError
    from hkd.models.checkpoint import CheckpointError, load_checkpoint
    from hkd.models.presets import get_preset
    from hkd.train.aux_heads import train_teacher_aux

    for name, value, low in (("--steps", args.steps, 1), ("--threads", args.threads, 1), ("--crop", args.crop, 8),
                             ("--boxes", args.boxes, 1), ("--batch-size", args.batch_size, 1),
                             ("--hidden", args.hidden, 1)):
        if value < low:
            raise CLIError(f"{name} must be at least {low}, got {value}")
    if not args.lr > 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    torch.set_num_threads(args.threads)
    try:
        teacher = load_checkpoint(args.teacher, preset=args.preset, inference=True)
    except CheckpointError as exc:
        raise CLIError(f"--teacher: {exc}") from None
    spec = get_preset(teacher.meta.preset).hierarchy
    try:
        levels = check_levels(spec, args.levels if args.levels else default_levels(spec), what="--levels")
    except ConfigError as exc:
        raise CLIError(f"{exc} (teacher {teacher.meta.preset})") from None
    try:
        dataset = open_dataset(args.data)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise CLIError(f"--data: {exc}") from None
    if len(dataset) == 0:
        raise CLIError(f"--data {args.data}: the dataset has no images")
    if hasattr(dataset, "target") and not any(
            (~dataset.target(i)["ignore"].bool()).any() for i in range(len(dataset))):
        raise CLIError(f"--data {args.data}: no pedestrian boxes in {len(dataset)} images; the aux heads learn "
                       "pedestrian vs background crops, so they need annotated images (e.g. a `hkd synth` folder)")

    def report(step: int, values: dict) -> None:
        if step == 0 or (step + 1) % 10 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}: loss {values['loss']:.3f}, accuracy {values['accuracy']:.3f}",
                  flush=True)

    fitted = train_teacher_aux(teacher.model, spec, dataset, levels=levels, steps=args.steps, seed=args.seed,
                               crop=args.crop, boxes=args.boxes, batch_size=args.batch_size, lr=args.lr,
                               hidden=args.hidden, on_step=report)
    meta = AuxMeta(
        teacher={"file": teacher.path.name, "sha256": teacher.sha256, "preset": teacher.meta.preset,
                 "step": teacher.meta.step},
        levels={name: spec[name].channels for name in levels},
        crop=args.crop,
        head=fitted.heads.arch,
        train={"steps": args.steps, "seed": args.seed, "boxes": args.boxes, "batch_size": args.batch_size,
               "lr": args.lr, "dataset": str(Path(args.data).resolve()), "images": len(dataset)},
        metrics=fitted.metrics,
    )
    path = save_aux_heads(args.out, fitted.heads, meta, fitted.probe)
    per_level = ", ".join(f"{name} {m['accuracy']:.3f}" for name, m in fitted.metrics["levels"].items())
    print(f"train-aux: done → {path}")
    print(f"joint accuracy (chance {fitted.metrics['chance_accuracy']:.3f}): {per_level}")
    return 0
