"""Where a distillation step's time goes: teacher forward, student forward, KD terms, backward, optimizer.

    python bench/step_time.py                                   # tiny random pair, 96×128 images (seconds)
    python bench/step_time.py --real --device cuda --amp bf16   # the shipped teacher + default student
        [--teacher assets/checkpoints/teacher.safetensors] [--config assets/configs/distill_full.yaml]
        [--data data/synthped/train] [--batch-size 2] [--steps 5]
        [--plain] [--teacher-cache /tmp/teacher_cache]

Each part is wall time per step (median over ``--steps`` after one warm-up step),
with ``torch.cuda.synchronize()`` at every boundary on a GPU, so parts add up to
the step:

- ``teacher forward``: the teacher modules the distiller calls (backbone, RPN head,
  box RoI pool / head / predictor), timed by hooks;
- ``kd terms``: every ``kd/…`` term, least-squares adapter fits included;
- ``student forward``: the rest of the forward (transform, student, ``det/`` losses);
- ``backward`` and ``optimizer``.

The same placement as ``hkd distill``: both models on ``--device``, autocast for
``--amp`` with the teacher stored in that precision (:mod:`hkd.train.engine`).

``--plain`` also times the student's own training step (no teacher, no KD; a copy of
the student with its own optimizer) on the same batches, interleaved with the distill
steps, and prints the distill / plain ratio. ``--teacher-cache DIR`` then times the
distill steps with a warm :class:`~hkd.distill.teacher_cache.TeacherCache` in ``DIR``:
a first pass over the same steps fills it (or finds it filled), a second pass is timed;
``teacher cache`` is the time spent finding, reading and checking its entries.
Every step's random draws (multi-scale size, proposal sampling) are seeded from the
step, so both passes see the same batches.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _clock(device: torch.device):
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return now


def _batch(args, data, step: int, size: tuple[int, int]):
    """(images, targets): dataset samples if ``--data``, else noise images with two upright boxes."""
    if data is not None:  # augmented samples with detection targets (hkd.train.data.SeededSamples)
        samples = [data[(step * args.batch_size + i) % len(data)] for i in range(args.batch_size)]
        return [s[0] for s in samples], [s[1] for s in samples]
    gen = torch.Generator().manual_seed(step)
    h, w = size
    images = [torch.rand(3, h, w, generator=gen) for _ in range(args.batch_size)]
    box = torch.tensor([[0.1 * w, 0.2 * h, 0.25 * w, 0.8 * h], [0.6 * w, 0.3 * h, 0.72 * w, 0.9 * h]])
    return images, [{"boxes": box.clone(), "labels": torch.ones(2, dtype=torch.int64)} for _ in images]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", action="store_true", help="the shipped teacher and the default student preset")
    p.add_argument("--teacher", default=str(REPO / "assets/checkpoints/teacher.safetensors"),
                   help="with --real: a teacher checkpoint, or a preset name (built from ImageNet weights: "
                        "timing does not depend on the weights)")
    p.add_argument("--student", default=None, help="with --real: the student preset (default: the HKD student)")
    p.add_argument("--config", default=str(REPO / "assets/configs/distill_full.yaml"), help="distill config")
    p.add_argument("--data", help="a training dataset folder (default: generated noise images)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plain", action="store_true", help="also time the student's own step (no teacher, no KD)")
    p.add_argument("--teacher-cache", metavar="DIR", help="also time distill steps with a warm teacher cache in DIR")
    args = p.parse_args()

    from hkd.distill.distiller import Distiller, detection_losses
    from hkd.distill.teacher_cache import TeacherCache
    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.device import resolve_device
    from hkd.models.presets import DEFAULT_STUDENT, build_detector, get_preset
    from hkd.train.engine import AMP_DTYPES, autocast

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        p.error("--amp fp16 needs a CUDA device; use bf16 or off on the CPU")
    s_preset = args.student or DEFAULT_STUDENT
    if args.real:
        from hkd.models.presets import PRESETS

        if args.teacher not in PRESETS:  # a checkpoint file
            loaded = load_checkpoint(args.teacher, inference=True)
            teacher, t_preset, teacher_id = loaded.model, loaded.meta.preset, loaded.sha256
        else:  # a preset: ImageNet backbone, prepared for inference like a loaded teacher
            from hkd.models.optimize import prepare_for_inference

            t_preset, teacher_id = args.teacher, f"bench-preset:{args.teacher}:imagenet"
            teacher = prepare_for_inference(get_preset(t_preset).build(pretrained_backbone=True))
        student = get_preset(s_preset).build(pretrained_backbone=True)
        size = (480, 640)
    else:
        t_preset = "hkd_frcnn_lite2.teacher"
        teacher = build_detector(t_preset, min_size=96, max_size=128).eval()
        teacher_id = f"bench-tiny:{t_preset}:seed0:{args.amp}"  # random init from torch.manual_seed(0)
        student = build_detector(DEFAULT_STUDENT, pretrained_backbone=False, min_size=96, max_size=128)
        size = (96, 128)
    teacher.to(device=device, dtype=AMP_DTYPES[args.amp] or torch.float32)
    student.to(device)
    plain = copy.deepcopy(student).train() if args.plain else None  # the student at the same init
    distiller = Distiller.build(teacher, get_preset(t_preset).hierarchy, student, get_preset(s_preset).hierarchy,
                                args.config).train()
    opt = torch.optim.SGD(list(distiller.trainable_parameters()), lr=1e-4, momentum=0.9)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=1e-4, momentum=0.9) if plain is not None else None
    plain_scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    data = None
    if args.data:
        from hkd.data.datasets import open_dataset
        from hkd.train.data import SeededSamples
        data_set = SeededSamples(open_dataset(args.data), seed=0, flip=0.5, scale=(1.0, 1.0), color=0.2)
        data = _Indexed(data_set)

    now = _clock(device)
    spent = {"teacher": 0.0, "kd": 0.0, "cache": 0.0}
    starts: dict[int, float] = {}
    modules = [getattr(teacher, name) for name in ("backbone", "head") if hasattr(teacher, name)]
    if hasattr(teacher, "rpn"):
        modules += [teacher.rpn.head, teacher.roi_heads.box_roi_pool, teacher.roi_heads.box_head,
                    teacher.roi_heads.box_predictor]
    for module in modules:
        module.register_forward_pre_hook(lambda m, _inputs: starts.__setitem__(id(m), now()))
        module.register_forward_hook(lambda m, _i, _o: spent.__setitem__("teacher", spent["teacher"] + now()
                                                                         - starts[id(m)]))
    term_loss = distiller._term_loss

    def timed_term_loss(*a, **k):
        start = now()
        try:
            return term_loss(*a, **k)
        finally:
            spent["kd"] += now() - start

    distiller._term_loss = timed_term_loss  # this instance only: the bench's probe, not a code path

    def lookup_timed(cache: TeacherCache):
        image_outputs = cache.image_outputs

        def timed_image_outputs(*a, **k):
            start, teacher_before = now(), spent["teacher"]
            try:
                return image_outputs(*a, **k)
            finally:  # on a miss the teacher runs inside: that time is the teacher's
                spent["cache"] += now() - start - (spent["teacher"] - teacher_before)

        cache.image_outputs = timed_image_outputs  # this instance only, like _term_loss above
        return cache

    def distill_pass(plain_rows: list | None = None) -> tuple[list[dict[str, float]], dict]:
        rows: list[dict[str, float]] = []
        losses: dict = {}
        for step in range(args.steps + 1):
            images, targets = _batch(args, data, step, size)
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            spent.update(teacher=0.0, kd=0.0, cache=0.0)
            torch.manual_seed(step)  # multi-scale size, proposal sampling: the same batch in every pass
            t0 = now()
            with autocast(device, args.amp):
                losses = distiller(images, targets, step=10**9)  # every scheduled term active
                total = sum(losses.values())
            t1 = now()
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            t2 = now()
            scaler.step(opt)
            scaler.update()
            t3 = now()
            if step:  # the first step warms up (allocator, cudnn autotuning, lazy inits)
                rows.append({"teacher forward": spent["teacher"], "teacher cache": spent["cache"],
                             "kd terms": spent["kd"],
                             "student forward": t1 - t0 - spent["teacher"] - spent["kd"] - spent["cache"],
                             "backward": t2 - t1, "optimizer": t3 - t2, "step": t3 - t0})
            if plain_rows is not None:  # the student's own step on the same batch, right after
                torch.manual_seed(step)
                t4 = now()
                with autocast(device, args.amp):
                    plain_total = sum(detection_losses(plain, images, targets).values())
                plain_opt.zero_grad(set_to_none=True)
                plain_scaler.scale(plain_total).backward()
                plain_scaler.step(plain_opt)
                plain_scaler.update()
                if step:
                    plain_rows.append({"step": now() - t4})
        return rows, losses

    def report(rows: list[dict[str, float]], keys: tuple[str, ...]) -> float:
        total_ms = statistics.median(r["step"] for r in rows) * 1e3
        for key in keys:
            ms = statistics.median(r[key] for r in rows) * 1e3
            print(f"  {key:16s} {ms:9.1f} ms  {100 * ms / total_ms:5.1f} %")
        return total_ms

    plain_rows: list[dict[str, float]] | None = [] if plain is not None else None
    rows, losses = distill_pass(plain_rows)
    print(f"{'real' if args.real else 'tiny'} pair on {device} (amp {args.amp}), batch {args.batch_size} at "
          f"{size[1]}×{size[0]}, {len(rows)} steps, {len([k for k in losses if k.startswith('kd/')])} kd terms")
    total_ms = report(rows, ("teacher forward", "student forward", "kd terms", "backward", "optimizer", "step"))
    plain_ms = None
    if plain_rows:
        plain_ms = statistics.median(r["step"] for r in plain_rows) * 1e3
        print(f"  {'plain step':16s} {plain_ms:9.1f} ms  (the student alone; "
              f"distill / plain {total_ms / plain_ms:.2f}×)")
    if args.teacher_cache:
        distiller.teacher_cache = lookup_timed(TeacherCache(args.teacher_cache, teacher_id))
        distill_pass()  # fills the cache (or finds it filled)
        filled = distiller.teacher_cache.misses
        distiller.teacher_cache = cache = lookup_timed(TeacherCache(args.teacher_cache, teacher_id))
        warm_plain: list[dict[str, float]] | None = [] if plain is not None else None
        rows, _ = distill_pass(warm_plain)  # plain steps interleaved again: one ratio from one pass
        per_step = cache.bytes_read / max(1, cache.hits) / 1e6
        print(f"warm teacher cache {args.teacher_cache}: {cache.hits} hits, {cache.misses} misses "
              f"({filled} entries written by the filling pass), {per_step:.1f} MB per step")
        cached_ms = report(rows, ("teacher forward", "teacher cache", "student forward", "kd terms", "backward",
                                  "optimizer", "step"))
        ratios = f"cached / uncached distill {cached_ms / total_ms:.2f}×"
        if warm_plain:
            warm_plain_ms = statistics.median(r["step"] for r in warm_plain) * 1e3
            ratios += (f", cached distill / plain {cached_ms / warm_plain_ms:.2f}× "
                       f"(plain step {warm_plain_ms:.1f} ms in this pass)")
        print(f"  {ratios}")
    return 0


class _Indexed:
    """``data[i]`` for :class:`SeededSamples`, whose keys are (stream position, index)."""

    def __init__(self, samples) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.samples[(i, i)]


if __name__ == "__main__":
    raise SystemExit(main())
