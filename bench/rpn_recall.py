"""RPN proposal recall of checkpoints: the share of ground-truth pedestrians that one of the
top-k proposals covers with IoU ≥ 0.5 (ignore regions left out).

    python bench/rpn_recall.py CKPT [CKPT ...] [--data data/synthped/tune] [--images 60] [--top 50 300]

A detector cannot find what its RPN does not propose: when a student's MR⁻²
is worse than expected, compare this with the teacher's and the no-KD student's.
"""
from __future__ import annotations

import argparse

import torch
from torchvision.ops import box_iou


def recall(path: str, data, images: int, tops: list[int]) -> dict[int, float]:
    from hkd.models.checkpoint import load_checkpoint

    model = load_checkpoint(path, inference=True).model
    found = {k: 0 for k in tops}
    total = 0
    with torch.inference_mode():
        for i in range(min(images, len(data))):
            image, target = data[i]
            batch, _ = model.transform([image])
            proposals, _ = model.rpn(batch, model.backbone(batch.tensors))
            sy = batch.image_sizes[0][0] / image.shape[1]
            sx = batch.image_sizes[0][1] / image.shape[2]
            boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
            boxes = boxes[~torch.as_tensor(target["ignore"], dtype=torch.bool)] * torch.tensor([sx, sy, sx, sy])
            if len(boxes) == 0:
                continue
            total += len(boxes)
            for k in tops:
                found[k] += int((box_iou(boxes, proposals[0][:k]).max(dim=1).values >= 0.5).sum())
    return {k: found[k] / max(total, 1) for k in tops}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default="data/synthped/tune", help="dataset with annotations (COCO-style folder)")
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--top", type=int, nargs="+", default=[50, 300])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    from hkd.data.datasets import open_dataset

    torch.set_num_threads(args.threads)
    data = open_dataset(args.data)
    print("| checkpoint | " + " | ".join(f"recall@{k}" for k in args.top) + " |")
    print("|---|" + "---|" * len(args.top))
    for path in args.checkpoints:
        r = recall(path, data, args.images, args.top)
        print(f"| {path} | " + " | ".join(f"{r[k]:.3f}" for k in args.top) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
