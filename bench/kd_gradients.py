"""Per-term loss value and gradient norm of a distillation config: how to balance the hierarchies.

    python bench/kd_gradients.py --config assets/configs/distill_full.yaml \\
        --teacher runs/bench/teacher/checkpoints/final.safetensors \\
        [--student CKPT] [--data data/synthped/train] [--batches 3]

For each ``det/…`` and ``kd/<level>/<loss>`` term (already weighted) it prints
the mean value and the mean L2 norm of its gradient over the student and
adapter parameters, on a few training batches with every hierarchy active.
A term whose gradient is many times the detection losses' will, through
``train.grad_clip``, shrink every other term's step: lower its weight.
``--student`` starts from a checkpoint (e.g. a no-KD run) instead of the
ImageNet-initialised preset.
"""
from __future__ import annotations

import argparse
import sys

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="distillation config (YAML/JSON)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint")
    p.add_argument("--student", help="student checkpoint (default: the default student preset, ImageNet backbone)")
    p.add_argument("--data", default="data/synthped/train", help="training dataset (COCO-style folder)")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    from hkd.data.datasets import open_dataset
    from hkd.data.transforms import detection_train_transforms
    from hkd.distill.distiller import Distiller
    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.presets import DEFAULT_STUDENT, get_preset
    from hkd.train.engine import detection_targets

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = load_checkpoint(args.teacher)
    if args.student:
        student = load_checkpoint(args.student)
        s_model, s_spec = student.model, get_preset(student.meta.preset).hierarchy
    else:
        s_model, s_spec = get_preset(DEFAULT_STUDENT).build(pretrained_backbone=True), get_preset(DEFAULT_STUDENT).hierarchy
    distiller = Distiller.build(teacher.model, get_preset(teacher.meta.preset).hierarchy, s_model, s_spec, args.config)
    distiller.train()
    data = open_dataset(args.data, transforms=detection_train_transforms(flip_p=0.5, scale_range=(1.0, 1.0), color=0.2))
    params = list(distiller.trainable_parameters())
    sums: dict[str, list[float]] = {}
    for b in range(args.batches):
        samples = [data[b * args.batch_size + i] for i in range(args.batch_size)]
        losses = distiller([s[0] for s in samples], [detection_targets(s[1]) for s in samples], step=sys.maxsize)
        groups = {"total det/*": sum(v for k, v in losses.items() if k.startswith("det/")),
                  "total kd/*": sum(v for k, v in losses.items() if k.startswith("kd/")),
                  "total (what grad_clip sees)": sum(losses.values())}
        for key, value in {**losses, **groups}.items():
            if not torch.is_tensor(value) or not value.requires_grad:
                continue
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0] += float(value.detach()) / args.batches
            acc[1] += float(norm) / args.batches
    print(f"{'term':36s} {'value':>9s} {'grad norm':>10s}")
    for key, (value, norm) in sums.items():
        print(f"{key:36s} {value:9.4f} {norm:10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
