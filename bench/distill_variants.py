"""Distillation configs compared on the tune split: how the weights of distill_full.yaml were chosen.

    hkd synth --out data/synthped/tune --num 200 --seed 2000
    python bench/distill_variants.py --teacher assets/checkpoints/teacher.safetensors \\
        --seed 1 none assets/configs/distill_full.yaml bench/variants/*.yaml
    # the single-stage pair: its own no-KD config and the run config its distill variants go into
    python bench/distill_variants.py --teacher runs/retina/teacher_1500/checkpoints/final.safetensors \
        --baseline-config assets/configs/retina_student_baseline.yaml \
        --base-config assets/configs/retina_student_kd.yaml --root runs/retina --steps 800 \
        --seed 0 none assets/configs/distill_retina_focal.yaml

Each variant is a distill config (``none``: the no-KD student) trained like a
student of the distillation benchmark (same data, steps and seed, one torch
thread, ``--jobs`` at a time) into runs/variants/<name>_s<seed>/ (runs/variants<steps>/
for another ``--steps``), then
evaluated with ``hkd predict`` + ``hkd eval`` on the *tune* split, never on
val, so that choosing a config does not leak into the table. Finished runs are
skipped, interrupted ones resumed; the table goes to stdout and
runs/variants/table_s<seed>.md.

``--teacher-cache DIR`` passes ``train.teacher_cache=DIR/s<seed>`` to every distill
run: the variants of one seed see the same batches, so the teacher's image-level
outputs are computed once per seed and read back by the others (exactly the same
losses; about 22 MB per step on disk, see :mod:`hkd.distill.teacher_cache`).
"""
from __future__ import annotations

import argparse
import concurrent.futures
from pathlib import Path

from distill_table import CONFIGS, ROOT, evaluate_checkpoint, run_training, train_command


def default_root(steps: int) -> Path:
    """runs/variants for the benchmark's 400 steps, runs/variants<steps> otherwise: runs of another
    length must never pass for finished ones."""
    return ROOT / "runs" / ("variants" if steps == 400 else f"variants{steps}")


def variant_name(variant: str) -> str:
    return "no_kd" if variant == "none" else Path(variant).stem


def train_variant(variant: str, args) -> Path:
    """Train (or resume) one variant; returns its run folder."""
    out = args.root / f"{variant_name(variant)}_s{args.seed}"
    if variant == "none":
        command, config, overrides = "train", args.baseline_config.resolve(), []
    else:
        command, config = "distill", args.base_config.resolve()
        overrides = [f"distill={Path(variant).resolve()}", f"teacher={args.teacher.resolve()}"]
        if args.teacher_cache:
            overrides.append(f"train.teacher_cache={(args.teacher_cache / f's{args.seed}').resolve()}")
    run_training(train_command(command, config, out, steps=args.steps, seed=args.seed,
                               train_data=args.data / "train", threads=1, overrides=overrides), out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="distill config files, or 'none' for the no-KD student")
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synthped", help="holds train/ and tune/")
    p.add_argument("--root", type=Path, default=None,
                   help="where the runs go (default runs/variants, or runs/variants<steps> when --steps is not 400, "
                        "so that runs of another length never pass for finished ones)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (one torch thread each)")
    p.add_argument("--baseline-config", type=Path, default=CONFIGS / "student_baseline.yaml",
                   help="run config of the no-KD student ('none'); e.g. assets/configs/retina_student_baseline.yaml")
    p.add_argument("--base-config", type=Path, default=CONFIGS / "student_hkd.yaml",
                   help="run config the distill variants replace `distill:` and `teacher:` of "
                        "(e.g. assets/configs/retina_student_kd.yaml for the single-stage pair)")
    p.add_argument("--teacher-cache", type=Path, default=None,
                   help="share the teacher's outputs between the distill runs of a seed (a folder; large)")
    args = p.parse_args()
    if args.root is None:
        args.root = default_root(args.steps)
    for config in (args.baseline_config, args.base_config):
        if not config.is_file():
            p.error(f"{config}: no such run config")
    for variant in args.variants:
        if variant != "none" and not Path(variant).is_file():
            p.error(f"{variant}: no such distill config (or 'none' for the no-KD student)")
    if not (args.data / "tune" / "annotations.json").is_file():
        p.error(f"{args.data / 'tune'}: no tune split; make it with "
                "`hkd synth --out data/synthped/tune --num 200 --seed 2000`")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        folders = list(pool.map(lambda v: train_variant(v, args), args.variants))
    lines = [f"Tune split ({args.data / 'tune'}), seed {args.seed}, {args.steps} steps, teacher {args.teacher}:", "",
             "| variant | MR⁻² Reasonable | Small | Heavy | All | AP50 |", "|---|---|---|---|---|---|"]
    for variant, out in zip(args.variants, folders):
        m = evaluate_checkpoint(out / "checkpoints" / "final.safetensors", args.data / "tune", out, "tune")
        mr = m["mr"]
        lines.append(f"| {variant_name(variant)} | {mr['Reasonable']:.2f} | {mr['Small']:.2f} | {mr['Heavy']:.2f} | "
                     f"{mr['All']:.2f} | {m['ap50']:.3f} |")
    text = "\n".join(lines)
    print(text)
    (args.root / f"table_s{args.seed}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
