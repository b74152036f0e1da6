"""The distiller's options on SynthPed: every variant on the tune split over seeds, the best on val.

    python bench/options_table.py --root runs/variants_long --seeds 0 1 \\
        --teacher assets/checkpoints/teacher.safetensors \\
        no_kd distill_full distill_trust distill_aux [--marker two-stage] [--write-docs] \\
        [--record bench/records/variants_long] [--full distill_full] [--ship retina_] [--kd-name student_kd]

Reads the runs ``bench/distill_variants.py`` trained (``<root>/<variant>_s<seed>/``,
``no_kd`` the no-KD student), evaluates each final checkpoint on the *tune* split
(``hkd predict`` + ``hkd eval``, kept in the run folder as ``tune_eval.json``) and
the teacher likewise (kept in ``<root>/teacher_eval/``). The tune table gives every
variant per seed, the mean, and the share of the no-KD → teacher gap it closes,
**paired by seed** (``(no_kd_s − variant_s) / (no_kd_s − teacher)`` for each seed,
then the mean). The best distill variant by its tune mean (only variants with
every seed finished compete) is then evaluated on *val* with no-KD and full HKD
(``--full``, default ``distill_full``; the single-stage pair's is ``distill_retina_focal``) beside it: the choice is made on tune, val only reports it.
A run that has not finished is a ``—`` cell, never a number.

``--record DIR`` keeps what the table needs of each run (status, config, evaluations;
no checkpoints) in ``DIR``; ``--root DIR`` rebuilds the table from such a record.

``--ship PREFIX`` copies the teacher, the first seed's no-KD student and the first seed's
best student to ``assets/checkpoints/<PREFIX>teacher.safetensors``,
``<PREFIX>student_baseline.safetensors`` and ``<PREFIX><KD_NAME>.safetensors`` (``--kd-name``,
default ``student_kd``; the two-stage demo's is ``student_hkd``) with their val results in the
metadata (the student names the shipped teacher as its parent). A ``--teacher`` that already is
the shipped ``<PREFIX>teacher.safetensors`` is left as it is.

``--write-docs`` puts the tables into docs/BENCHMARKS.md between
``<!-- options-table:<marker>:begin -->`` and ``<!-- options-table:<marker>:end -->``.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from distill_table import ROOT, dataset_label, evaluate_checkpoint

DOCS = ROOT / "docs" / "BENCHMARKS.md"
NO_KD, FULL = "no_kd", "distill_full"


def succeeded(run: Path) -> dict | None:
    """The status of a succeeded run, else None."""
    status = run / "status.json"
    if not status.exists():
        return None
    state = json.loads(status.read_text())
    return state if state.get("state") == "succeeded" else None


def run_metrics(run: Path, data: Path, split: str) -> dict | None:
    """The evaluation of a succeeded run on ``split``: its final checkpoint evaluated (kept as
    ``<split>_eval.json``), or, where the checkpoint is gone (a record made by ``--record``),
    the evaluation recorded beside its status. None for a run that has not finished."""
    ckpt, recorded = run / "checkpoints" / "final.safetensors", run / f"{split}_eval.json"
    if ckpt.is_file():
        return evaluate_checkpoint(ckpt, data / split, run, split)
    return json.loads(recorded.read_text()) if recorded.is_file() else None


def record(runs: list[Path], out: Path) -> None:
    """Copy each run's status, config and evaluations (not its checkpoints) to ``out/<run>/``:
    enough for this table to be rebuilt with ``--root out`` on a machine without the runs."""
    import shutil

    for run in runs:
        dest = out / run.name
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("status.json", "config.json", "tune_eval.json", "val_eval.json"):
            if (run / name).is_file() and (run / name).resolve() != (dest / name).resolve():
                shutil.copy2(run / name, dest / name)


def used_teacher_cache(args) -> bool:
    """Whether any run of the table read or filled a teacher cache (``train.teacher_cache`` in its config)."""
    for variant in args.variants:
        for seed in args.seeds:
            config = args.root / f"{variant}_s{seed}" / "config.json"
            if config.is_file() and (json.loads(config.read_text()).get("train") or {}).get("teacher_cache"):
                return True
    return False


def train_cost(status: dict) -> tuple[float, float | None]:
    """(wall minutes, seconds per step) of a run from its status."""
    seconds = float(status.get("seconds", 0.0))
    per_step = seconds / int(status["total"]) if status.get("total") and "seconds" in status else None
    return seconds / 60, per_step


def gap_closed(no_kd: float, student: float, teacher: float) -> float:
    """Share (%) of the no-KD → teacher MR⁻² gap a student closes."""
    return 100.0 * (no_kd - student) / (no_kd - teacher)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def collect(args, split: str) -> tuple[dict, dict]:
    """({variant: {seed: metrics}}, {variant: {seed: train minutes}}) of the finished runs on ``split``."""
    metrics: dict = {}
    train_min: dict = {}
    for variant in args.variants:
        for seed in args.seeds:
            run = args.root / f"{variant}_s{seed}"
            status = succeeded(run)
            result = run_metrics(run, args.data, split) if status else None
            if result is None:
                continue
            metrics.setdefault(variant, {})[seed] = result
            train_min.setdefault(variant, {})[seed] = train_cost(status)
    return metrics, train_min


def mr(m: dict) -> float:
    return float(m["mr"]["Reasonable"])


def closed_by_seed(metrics: dict, variant: str, teacher: float, seeds: list[int]) -> list[float]:
    return [gap_closed(mr(metrics[NO_KD][s]), mr(metrics[variant][s]), teacher) for s in seeds
            if s in metrics.get(NO_KD, {}) and s in metrics.get(variant, {})]


def split_table(args, split: str, variants: list[str], metrics: dict, train_min: dict, teacher: dict) -> list[str]:
    t_mr = mr(teacher)
    seed_cols = " | ".join(f"seed {s}" for s in args.seeds)
    lines = [f"| variant | {seed_cols} | mean MR⁻² | gap closed (paired) | mean Small | mean Heavy | mean AP50 | train min | s/step |",
             "|---|" + "---:|" * (len(args.seeds) + 7)]
    for variant in variants:
        runs = metrics.get(variant, {})
        cells = [_fmt(mr(runs[s]) if s in runs else None) for s in args.seeds]
        complete = all(s in runs for s in args.seeds)
        mean = statistics.fmean(mr(runs[s]) for s in args.seeds) if complete else None
        closed = closed_by_seed(metrics, variant, t_mr, args.seeds) if variant != NO_KD else []
        closed_cell = "—" if variant == NO_KD or len(closed) < len(args.seeds) else \
            f"{statistics.fmean(closed):.0f} % ({' / '.join(f'{c:.0f}' for c in closed)})"
        means = {k: statistics.fmean(float(runs[s]["mr"][k]) for s in args.seeds) if complete else None
                 for k in ("Small", "Heavy")}
        ap = statistics.fmean(float(runs[s]["ap50"]) for s in args.seeds) if complete else None
        costs = [train_min[variant][s] for s in args.seeds if s in train_min.get(variant, {})]
        tmin = " / ".join(f"{m:.0f}" for m, _ in costs)
        per_step = [c for _, c in costs if c is not None]
        step_cell = f"{statistics.fmean(per_step):.2f}" if per_step else "—"
        lines.append(f"| {variant} | {' | '.join(cells)} | {_fmt(mean)} | {closed_cell} | {_fmt(means['Small'])} | "
                     f"{_fmt(means['Heavy'])} | {_fmt(ap, '.3f')} | {tmin or '—'} | {step_cell} |")
    lines.append(f"| teacher ({Path(args.teacher).name}) | " + " | ".join(f"{t_mr:.2f}" for _ in args.seeds)
                 + f" | {t_mr:.2f} | 100 % | {float(teacher['mr']['Small']):.2f} | {float(teacher['mr']['Heavy']):.2f} | "
                 f"{float(teacher['ap50']):.3f} | — | — |")
    return lines


def ship(args, best: str, prefix: str, dest: Path = ROOT / "assets" / "checkpoints",
         kd_name: str = "student_kd") -> list[Path]:
    """The demo checkpoints of a pair (see the module doc); every one must have its val evaluation."""
    from hkd.models.checkpoint import update_metadata

    seed = args.seeds[0]
    label = dataset_label(args.data / "val")
    items = [(args.teacher, args.root / "teacher_eval", "teacher", None, "teacher"),
             (None, args.root / f"{NO_KD}_s{seed}", "student_baseline", None, "student without KD"),
             (None, args.root / f"{best}_s{seed}", kd_name, f"{prefix}teacher.safetensors", f"student + {best}")]
    items = [(Path(ckpt) if ckpt else folder / "checkpoints" / "final.safetensors", folder / "val_eval.json", *rest)
             for ckpt, folder, *rest in items]
    for path in (path for ckpt, evaluation, *_ in items for path in (ckpt, evaluation)):
        if not path.is_file():  # checked before anything is written: a pair ships whole or not at all
            raise SystemExit(f"--ship: {path} is missing "
                             "(shipping needs the trained runs and their val evaluation, not a record)")
    shipped = []
    for ckpt, evaluation, name, parent, role in items:
        result = json.loads(evaluation.read_text())
        metrics = {**{k: result[k] for k in ("mr", "ap", "ap50") if k in result}, "dataset": label}
        out = Path(dest) / f"{prefix}{name}.safetensors"
        if out.exists() and out.resolve() == ckpt.resolve():
            continue  # the teacher given is the shipped one already: its metadata stays as shipped
        changes = {"parent": parent} if parent else {}
        update_metadata(ckpt, out, metrics=metrics, notes=f"HKD Studio demo checkpoint ({role})", **changes)
        print(f"shipped {out}")
        shipped.append(out)
    return shipped


def best_variant(args, metrics: dict) -> str | None:
    complete = [v for v in args.variants if v != NO_KD and all(s in metrics.get(v, {}) for s in args.seeds)]
    return min(complete, key=lambda v: statistics.fmean(mr(metrics[v][s]) for s in args.seeds), default=None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="+", help="run names under --root without the _s<seed> suffix (no_kd first)")
    p.add_argument("--root", type=Path, default=ROOT / "runs" / "variants_long")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--teacher", type=Path, required=True, help="the teacher checkpoint the variants distilled from")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synthped", help="holds tune/ and val/")
    p.add_argument("--marker", default="two-stage", help="which table of docs/BENCHMARKS.md --write-docs replaces")
    p.add_argument("--full", default=FULL,
                   help="the variant that stands for full distillation on val beside no-KD and the best (default %(default)s)")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--ship", metavar="PREFIX", default=None,
                   help="copy teacher, no-KD and best student (first seed) to assets/checkpoints/<PREFIX>*.safetensors")
    p.add_argument("--kd-name", default="student_kd",
                   help="file name (without .safetensors) of the shipped distilled student (default %(default)s; "
                        "the two-stage demo's: student_hkd)")
    p.add_argument("--record", type=Path, default=None,
                   help="copy every run's status, config and evaluations (no checkpoints) here, e.g. "
                        "bench/records/variants_long: the table rebuilds from it with --root")
    args = p.parse_args()
    if NO_KD not in args.variants:
        p.error(f"the variants must include {NO_KD!r}: the gap is measured from the no-KD student")
    for split in ("tune", "val"):
        if not (args.data / split / "annotations.json").is_file():
            p.error(f"{args.data / split}: no such split (see `hkd synth`)")
    teacher_dir = args.root / "teacher_eval"
    tune, train_min = collect(args, "tune")
    teacher_tune = evaluate_checkpoint(args.teacher, args.data / "tune", teacher_dir, "tune")
    lines = [f"Tune split ({len(json.loads((args.data / 'tune' / 'annotations.json').read_text())['images'])} images), "
             f"seeds {', '.join(map(str, args.seeds))}; runs in {args.root.relative_to(ROOT) if args.root.is_relative_to(ROOT) else args.root}; "
             "MR⁻² Reasonable per seed; train min per seed and s/step (mean over seeds) are wall time, two trainings "
             "at a time on 1 thread each"
             + (", a distill run reading the teacher from its seed's cache where an earlier run of that seed "
                "filled it:" if used_teacher_cache(args) else ", every distill run computing its teacher itself:"),
             ""]
    lines += split_table(args, "tune", args.variants, tune, train_min, teacher_tune)
    best = best_variant(args, tune)
    if best is not None:
        val_variants = [v for v in dict.fromkeys([NO_KD, args.full, best]) if v in args.variants]
        saved = args.variants
        args.variants = val_variants
        val, val_min = collect(args, "val")
        args.variants = saved
        teacher_val = evaluate_checkpoint(args.teacher, args.data / "val", teacher_dir, "val")
        lines += ["", f"Best on tune: **{best}**; on the val split "
                      f"({len(json.loads((args.data / 'val' / 'annotations.json').read_text())['images'])} images) "
                      "beside no KD and full HKD, the same checkpoints:", ""]
        lines += split_table(args, "val", val_variants, val, val_min, teacher_val)
    else:
        lines += ["", "No distill variant has every seed finished yet: no val row."]
    text = "\n".join(lines)
    print(text)
    if args.record is not None:
        record([args.root / f"{v}_s{s}" for v in args.variants for s in args.seeds
                if succeeded(args.root / f"{v}_s{s}")] + [teacher_dir], args.record)
    if args.ship is not None:
        if best is None:
            raise SystemExit("--ship: no distill variant has every seed finished")
        ship(args, best, args.ship, kd_name=args.kd_name)
    if args.write_docs:
        begin, end = f"<!-- options-table:{args.marker}:begin -->", f"<!-- options-table:{args.marker}:end -->"
        docs = DOCS.read_text()
        if begin not in docs:
            raise SystemExit(f"{DOCS}: no {begin} … {end} markers")
        docs = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{text}\n{end}", docs, flags=re.S)
        DOCS.write_text(docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
