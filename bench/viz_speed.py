"""Time the model-inspection calls the app makes on one 640x480 image.

    python bench/viz_speed.py [--teacher T.safetensors] [--student S.safetensors]
                              [--threads 2] [--repeat 3] [--level neck.p3]

Without checkpoints the default presets are built with random weights (the
timings do not depend on the weights, except CAM targets: a random-init
detector has ~100 detections >= 0.5). Prints a markdown table: the first call
(cold: lazy imports — the first CAM imports pytorch-grad-cam and scikit-learn —
allocator warm-up) and the best of ``--repeat`` warm calls, wall clock and
process CPU time, with ``--threads`` intra-op threads.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import machine  # noqa: E402

from hkd.models.inference import detect  # noqa: E402
from hkd.models.optimize import prepare_for_inference  # noqa: E402
from hkd.models.presets import DEFAULT_STUDENT, DEFAULT_TEACHER, build_detector, get_preset  # noqa: E402
from hkd.viz import detection_cam, level_views, similarity_profile  # noqa: E402


def load(path: str | None, preset: str, seed: int):
    if path:
        from hkd.models.checkpoint import load_checkpoint

        loaded = load_checkpoint(path, inference=True)
        return loaded.model, get_preset(loaded.meta.preset).hierarchy, loaded.meta.preset
    torch.manual_seed(seed)
    return prepare_for_inference(build_detector(preset)), get_preset(preset).hierarchy, f"{preset} (random init)"


def street(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A street-ish (h, w, 3) uint8 image: vertical gradient, a few dark upright figures, noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.linspace(200, 90, h)[:, None, None]
    for _ in range(6):
        ph = int(rng.integers(h // 8, h // 2))
        pw = max(4, ph // 3)
        x, y = int(rng.integers(0, w - pw)), int(rng.integers(h // 3, h - ph))
        img[y:y + ph, x:x + pw] = rng.integers(20, 80, 3)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def timed(fn, repeat: int) -> tuple[float, float, float]:
    """(first call s, best of ``repeat`` further calls s, process CPU s of that best call).

    On a shared machine the wall clock includes waiting for the cores; the CPU
    time says how much work the call was (with several threads it includes
    their spinning too).
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    best, best_cpu = float("inf"), float("nan")
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, best_cpu = wall, time.process_time() - cpu
    return first, best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", help="teacher checkpoint (default: random-init preset)")
    parser.add_argument("--student", help="student checkpoint (default: random-init preset)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--level", default="neck.p3")
    parser.add_argument("--skip-similarity", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    image = street()
    teacher, t_spec, t_name = load(args.teacher, DEFAULT_TEACHER, 0)
    student, s_spec, s_name = load(args.student, DEFAULT_STUDENT, 1)
    models = {"teacher": (teacher, t_spec), "student": (student, s_spec)}
    n_dets = {who: len(detect(m, [image], score_thresh=0.5)[0]) for who, (m, _) in models.items()}

    rows = []
    for who, (model, spec) in models.items():
        rows.append(("(a) detect", who, *timed(lambda: detect(model, [image]), args.repeat)))
    for who, (model, spec) in models.items():
        rows.append((f"(b) level_views {args.level}", who,
                     *timed(lambda: level_views(model, spec, image, [args.level]), args.repeat)))
    for method in ("gradcam", "gradcam++", "eigencam"):
        for who, (model, spec) in models.items():
            call = lambda: detection_cam(model, spec, image, method=method, level=args.level)  # noqa: E731
            rows.append((f"(c) detection_cam {method} {args.level}, all boxes >= 0.5", who, *timed(call, args.repeat)))
    call = lambda: detection_cam(teacher, t_spec, image, level=args.level, box_index=0)  # noqa: E731
    rows.append((f"(c) detection_cam gradcam {args.level}, box_index=0", "teacher", *timed(call, args.repeat)))
    if not args.skip_similarity:
        rows.append(("similarity_profile (default levels)", "both",
                     *timed(lambda: similarity_profile(teacher, t_spec, student, s_spec, image), args.repeat)))

    loadavg = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{machine()}, torch {torch.__version__}; torch threads {args.threads}; image 640x480; "
          f"load average at the end {loadavg}")
    print(f"teacher: {t_name}, {n_dets['teacher']} detections >= 0.5; student: {s_name}, {n_dets['student']}\n")
    print(f"| step | model | first s | best of {args.repeat} s | CPU s (best) |")
    print("|---|---|---:|---:|---:|")
    for step, who, first, best, cpu in rows:
        print(f"| {step} | {who} | {first:.3f} | {best:.3f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
