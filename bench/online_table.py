"""Online distillation against the two-stage pipeline: wall time to a student of a given MR⁻².

    hkd distill --config assets/configs/student_online.yaml --out runs/online/student_online_s0 \\
        --set train.threads=1
    python bench/online_table.py --online runs/online/student_online_s0 \\
        --no-kd runs/variants_long/no_kd_s0 --hkd runs/variants_long/distill_full_s0 \\
        --teacher-minutes 94 [--data data/synthped] [--write-docs]

The two-stage pipeline trains a teacher (``teacher.yaml``: 1500 steps) and then
distils a student (``student_hkd.yaml``: 800 steps); its wall time is the
teacher's training time (``--teacher-minutes``, or ``--teacher-run DIR`` for a
run folder with its ``status.json``) plus the student's. The online run trains
both at once (``student_online.yaml``). For every run the table gives its wall
time (``seconds`` in ``status.json``, every resumed segment included) and the
final student's MR⁻² on the *val* split (``hkd predict`` + ``hkd eval``, kept in
the run folders), and for the online run the student's MR⁻² along the run (its
periodic evaluations on the first ``data.val_images`` val images) with the first
step at which it is at least as good as the no-KD student on those same images
(evaluated here the same way, by :func:`hkd.train.evaluate.evaluate_model`).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from distill_table import ROOT, evaluate_checkpoint

DOCS = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- online-table:begin -->", "<!-- online-table:end -->"


def _status(run: Path) -> dict:
    path = run / "status.json"
    if not path.exists():
        raise SystemExit(f"{run}: no status.json (not a run folder)")
    return json.loads(path.read_text())


def _minutes(run: Path) -> float:
    status = _status(run)
    if status.get("state") != "succeeded":
        raise SystemExit(f"{run}: state {status.get('state')!r}, not succeeded; finish it first (--resume)")
    return float(status.get("seconds", 0.0)) / 60


def _curve(run: Path) -> list[tuple[int, float, float]]:
    """(step, minutes, MR⁻² Reasonable) of the run's periodic student evaluations."""
    out, last_time = [], 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "time" in record:
            last_time = float(record["time"])
        if "eval" in record:
            out.append((int(record["step"]), last_time / 60, float(record["eval"]["mr"]["Reasonable"])))
    return out


def _subset_mr(checkpoint: Path, data: Path, images: int) -> float:
    """MR⁻² Reasonable of a checkpoint on the first ``images`` val images, as the training loop evaluates."""
    from hkd.data.datasets import open_dataset
    from hkd.models.checkpoint import load_checkpoint
    from hkd.train.evaluate import evaluate_model

    model = load_checkpoint(checkpoint).model
    return float(evaluate_model(model, open_dataset(str(data)), max_images=images)["mr"]["Reasonable"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--online", type=Path, required=True, help="the online run folder")
    p.add_argument("--no-kd", type=Path, required=True, help="the no-KD student's run folder (same seed)")
    p.add_argument("--hkd", type=Path, required=True, help="the two-stage HKD student's run folder (same seed)")
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher-minutes", type=float, help="wall time of the two-stage teacher's training")
    teacher.add_argument("--teacher-run", type=Path, help="the two-stage teacher's run folder")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synthped", help="holds val/")
    p.add_argument("--write-docs", action="store_true", help=f"replace the table between the markers in {DOCS}")
    args = p.parse_args()

    val = args.data / "val"
    teacher_min = args.teacher_minutes if args.teacher_minutes is not None else _minutes(args.teacher_run)
    final = {name: evaluate_checkpoint(run / "checkpoints" / "final.safetensors", val, run, "val")
             for name, run in (("online", args.online), ("no_kd", args.no_kd), ("hkd", args.hkd))}
    online_teacher = evaluate_checkpoint(args.online / "checkpoints" / "teacher_final.safetensors", val,
                                         args.online, "val_teacher")
    minutes = {name: _minutes(run) for name, run in (("online", args.online), ("no_kd", args.no_kd), ("hkd", args.hkd))}
    config = json.loads((args.online / "config.json").read_text())
    val_images = int(config["data"]["val_images"])
    curve = _curve(args.online)
    no_kd_subset = _subset_mr(args.no_kd / "checkpoints" / "final.safetensors", val, val_images)
    reached = next(((step, t) for step, t, mr in curve if mr <= no_kd_subset), None)

    def mr(m: dict) -> str:
        return f"{m['mr']['Reasonable']:.2f}"

    lines = [
        f"Student MR⁻² Reasonable on val ({val}, all images); wall time from `status.json` "
        f"(two-stage teacher: {teacher_min:.0f} min{' as given' if args.teacher_minutes is not None else ''}).",
        "",
        "| pipeline | teacher | student | wall time (min) | student MR⁻² | Small | Heavy | AP50 | teacher MR⁻² |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        f"| no KD | — | {args.no_kd.name} | {minutes['no_kd']:.0f} | {mr(final['no_kd'])} | "
        f"{final['no_kd']['mr']['Small']:.2f} | {final['no_kd']['mr']['Heavy']:.2f} | {final['no_kd']['ap50']:.3f} | — |",
        f"| two-stage (teacher, then HKD) | 1500 steps | {args.hkd.name} | {teacher_min + minutes['hkd']:.0f} "
        f"({teacher_min:.0f} + {minutes['hkd']:.0f}) | {mr(final['hkd'])} | {final['hkd']['mr']['Small']:.2f} | "
        f"{final['hkd']['mr']['Heavy']:.2f} | {final['hkd']['ap50']:.3f} | see the distillation table |",
        f"| online (together) | {config['train']['steps']} steps, beside the student | {args.online.name} | "
        f"{minutes['online']:.0f} | {mr(final['online'])} | {final['online']['mr']['Small']:.2f} | "
        f"{final['online']['mr']['Heavy']:.2f} | {final['online']['ap50']:.3f} | {mr(online_teacher)} |",
        "",
        f"The online student along its run (first {val_images} val images): "
        + ", ".join(f"step {s} ({t:.0f} min) {m:.2f}" for s, t, m in curve)
        + f"; the no-KD student's final checkpoint on the same images: {no_kd_subset:.2f}"
        + (f", first matched at step {reached[0]} after {reached[1]:.0f} min." if reached
           else ", not matched by any periodic evaluation."),
    ]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        docs = DOCS.read_text()
        if BEGIN not in docs:
            raise SystemExit(f"{DOCS}: no {BEGIN} … {END} markers")
        DOCS.write_text(re.sub(f"{re.escape(BEGIN)}.*?{re.escape(END)}", f"{BEGIN}\n{text}\n{END}", docs, flags=re.S))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
