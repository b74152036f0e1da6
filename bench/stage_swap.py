"""Where is a student's gap to its teacher: in its proposals or in its ROI head?

    python bench/stage_swap.py --teacher T.safetensors STUDENT.safetensors [...] \
        [--data data/synthped/val] [--images 500] [--threads 2]

For each student, four detectors are scored on the same images with MR⁻² and AP50:

* ``teacher``: the teacher alone;
* ``student``: the student alone (the same numbers as ``hkd predict`` + ``hkd eval``);
* ``student head on teacher proposals``: the student's backbone, FPN and ROI head,
  fed the teacher's RPN proposals (mapped to the student's resized image);
* ``teacher head on student proposals``: the reverse.

If the student's ROI head on the teacher's proposals closes most of the gap, the
student's RPN is what holds it back (distil the RPN harder); if the teacher's head
on the student's proposals is about as good as the teacher, likewise; if neither
moves much, the gap is in the student's region features and classifier.
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor


def _stages(model, image: Tensor):
    batch, _ = model.transform([image])
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    return batch, features, proposals[0]


def _head(model, batch, features, proposals: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
    detections, _ = model.roi_heads(features, [proposals], batch.image_sizes)
    return model.transform.postprocess(detections, batch.image_sizes, [size])[0]


def _map(boxes: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
    """Boxes from one model's resized image to another's (sizes are (h, w))."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def _coco(pred: dict[str, Tensor], image_id: int) -> list[dict]:
    """COCO results as ``hkd predict`` writes them (``detect``'s default filtering, the same rounding)."""
    from hkd.models.inference import Detections

    return Detections.from_prediction(pred).to_coco(image_id)


def swap(teacher, students: dict[str, object], data, images: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {"teacher": []}
    for name in students:
        for key in (name, f"{name} head on teacher proposals", f"teacher head on {name} proposals"):
            results[key] = []
    with torch.inference_mode():
        for i in range(min(images, len(data))):
            image, target = data[i]
            image_id = int(target["image_id"])
            size = (int(image.shape[1]), int(image.shape[2]))
            t_batch, t_feats, t_props = _stages(teacher, image)
            t_size = tuple(t_batch.image_sizes[0])
            results["teacher"] += _coco(_head(teacher, t_batch, t_feats, t_props, size), image_id)
            for name, student in students.items():
                s_batch, s_feats, s_props = _stages(student, image)
                s_size = tuple(s_batch.image_sizes[0])
                results[name] += _coco(_head(student, s_batch, s_feats, s_props, size), image_id)
                results[f"{name} head on teacher proposals"] += _coco(
                    _head(student, s_batch, s_feats, _map(t_props, t_size, s_size), size), image_id)
                results[f"teacher head on {name} proposals"] += _coco(
                    _head(teacher, t_batch, t_feats, _map(s_props, s_size, t_size), size), image_id)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("students", nargs="+", help="student checkpoints (.safetensors)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (.safetensors)")
    p.add_argument("--data", default="data/synthped/val", help="dataset with annotations (COCO-style folder)")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    from hkd.data.datasets import open_dataset
    from hkd.models.checkpoint import load_checkpoint
    from hkd.train.evaluate import evaluate_detections, subset_gt

    torch.set_num_threads(args.threads)
    data = open_dataset(args.data)
    n = min(args.images, len(data))
    teacher = load_checkpoint(args.teacher, inference=True).model
    students = {path: load_checkpoint(path, inference=True).model for path in args.students}
    results = swap(teacher, students, data, n)
    gt = subset_gt(data.coco_gt(), {int(data.image_ids[i]) for i in range(n)})
    print(f"{args.data}, first {n} images; teacher {args.teacher}")
    print("| detector | MR⁻² Reasonable | Small | Heavy | All | AP50 |")
    print("|---|---|---|---|---|---|")
    for key, dets in results.items():
        m = evaluate_detections(gt, dets)
        mr = m["mr"]
        print(f"| {key} | {mr['Reasonable']:.2f} | {mr['Small']:.2f} | {mr['Heavy']:.2f} | {mr['All']:.2f} | "
              f"{m['ap50']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
