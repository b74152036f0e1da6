"""The distillation benchmark: teacher, no-KD student, full HKD student and one
ablation per hierarchy, trained on SynthPed and evaluated on a held-out SynthPed
split with `hkd predict` + `hkd eval` (so the table is reproducible by hand).

    python bench/distill_table.py                      # everything (resumes what is done)
    python bench/distill_table.py --only teacher       # one run
    python bench/distill_table.py --table-only --write-docs

Each run is a subprocess of the public CLI writing runs/bench/<name>/; finished
runs are skipped, interrupted ones resumed. Students share steps and seeds.
``--jobs`` trainings run at once, each with ``--threads`` torch threads
(default: 2 jobs × 1 thread, which on a 2-core machine is ~1.5× the throughput
of one 2-thread job: small CPU convolutions do not scale across threads, and
oversubscribing cores makes OpenMP spin). The teacher and the no-KD students
start first (they need no teacher); the distilled students wait for the teacher.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "assets" / "configs"
PY = sys.executable


def runs(teacher_ckpt: Path, seeds: list[int], *, teacher_given: bool = False) -> list[dict]:
    """name, command, config, seed and extra overrides of every run, in training order.

    ``teacher_given``: ``teacher_ckpt`` is an existing checkpoint (``--teacher-checkpoint``);
    the teacher run is then not trained, and its row evaluates that file.
    """
    teacher = {"name": "teacher", "cmd": "train", "config": "teacher.yaml", "seed": 0, "role": "teacher"}
    if teacher_given:
        teacher["given"] = teacher_ckpt
    out = [teacher]
    for seed in seeds:
        out.append({"name": f"student_baseline_s{seed}", "cmd": "train", "config": "student_baseline.yaml",
                    "seed": seed, "role": "student (no KD)"})
        out.append({"name": f"student_hkd_s{seed}", "cmd": "distill", "config": "student_hkd.yaml",
                    "seed": seed, "role": "student + HKD (all hierarchies)", "teacher": teacher_ckpt})
    # one seed per ablation: seed 1, where full HKD and the no-KD student differ most, so that
    # the ablations show which hierarchy is responsible for that difference
    for part in ("backbone", "fpn", "rpn", "roi"):
        out.append({"name": f"ablation_{part}_s1", "cmd": "distill", "config": f"student_hkd_{part}.yaml",
                    "seed": 1, "role": f"student + KD on {part} only", "teacher": teacher_ckpt})
    return out


def sh(cmd: list[str], log: Path | None = None) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if log:
        with open(log, "a") as fh:
            subprocess.run([str(c) for c in cmd], check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)
    else:
        subprocess.run([str(c) for c in cmd], check=True, env=env)


def ensure_data(args) -> None:
    for split, num, seed in (("train", args.train_images, 0), ("val", args.val_images, 1000)):
        out = args.data / split
        if (out / "annotations.json").exists():
            continue
        sh([PY, "-m", "hkd", "synth", "--out", out, "--num", num, "--seed", seed, "--no-progress"])


def train_run(run: dict, args) -> None:
    if "given" in run:
        return
    is_teacher = run["role"] == "teacher"
    steps = args.teacher_steps if is_teacher else args.student_steps
    threads = args.teacher_threads if is_teacher else args.threads
    overrides = [f"teacher={run['teacher']}"] if "teacher" in run else []
    cmd = train_command(run["cmd"], CONFIGS / run["config"], args.root / run["name"], steps=steps,
                        seed=run["seed"], train_data=args.data / "train", threads=threads, overrides=overrides)
    run_training(cmd, args.root / run["name"])


def run_training(cmd: list, out: Path) -> None:
    """Run ``cmd`` (a :func:`train_command` writing into run folder ``out``) unless that run
    succeeded already; an interrupted run is resumed. Console output: ``out.console.log`` beside it."""
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").exists() else {}
    if status.get("state") == "succeeded":
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    sh(cmd + (["--resume"] if status else []), out.parent / f"{out.name}.console.log")


def train_command(command: str, config: Path, out: Path, *, steps: int, seed: int, train_data: Path,
                  threads: int, overrides: list[str] = ()) -> list:
    """The ``hkd train|distill`` command line of one benchmark run (no validation during training)."""
    cmd = [PY, "-m", "hkd", command, "--config", config, "--out", out, "--no-progress",
           "--set", f"train.steps={steps}", "--set", f"train.seed={seed}",
           "--set", f"data.train={train_data}", "--set", "data.val=null", "--set", f"train.threads={threads}"]
    for override in overrides:
        cmd += ["--set", override]
    return cmd


def evaluate_run(run: dict, args) -> dict | None:
    out = args.root / run["name"]
    ckpt = Path(run.get("given") or out / "checkpoints" / "final.safetensors")
    if not ckpt.exists():
        return None
    metrics = evaluate_checkpoint(ckpt, args.data / "val", out, "val")
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").exists() else {}
    return {**run, "metrics": metrics, "train_seconds": status.get("seconds"), "ckpt": str(ckpt)}


def evaluate_checkpoint(ckpt: Path, split: Path, out: Path, name: str, threads: int = 2) -> dict:
    """``hkd predict`` + ``hkd eval --json`` of ``ckpt`` on the dataset folder ``split``, kept as
    ``out/<name>_dets.json`` and ``out/<name>_eval.json`` (redone only when the checkpoint is newer)."""
    out.mkdir(parents=True, exist_ok=True)
    dets = out / f"{name}_dets.json"
    result = out / f"{name}_eval.json"
    if not result.exists() or result.stat().st_mtime < ckpt.stat().st_mtime:
        sh([PY, "-m", "hkd", "predict", "--checkpoint", ckpt, "--images", split / "images",
            "--gt", split / "annotations.json", "--out", dets, "--threads", threads])
        proc = subprocess.run([PY, "-m", "hkd", "eval", "--gt", split / "annotations.json",
                               "--dets", dets, "--json"], check=True, capture_output=True, text=True)
        result.write_text(proc.stdout)
    return json.loads(result.read_text())


def cost(ckpt: str, cache: dict) -> dict:
    import torch

    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.profile import cpu_latency, flops_by_hierarchy, params_by_hierarchy

    from hkd.models.optimize import prepare_for_inference

    loaded = load_checkpoint(ckpt)
    key = loaded.meta.preset
    if key not in cache:
        torch.set_num_threads(2)
        # parameters and FLOPs of the model as trained; latency as every inference path runs it
        cache[key] = {"params": params_by_hierarchy(loaded.model)["total"],
                      "flops": flops_by_hierarchy(loaded.model)["total"]}
        model = prepare_for_inference(loaded.model)
        cache[key]["latency_ms"] = cpu_latency(model, threads=2, runs=9)["median_s"] * 1000
    return cache[key]


def table(rows: list[dict], args) -> str:
    cache: dict = {}
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"date {time.strftime('%Y-%m-%d')}; SynthPed train {args.train_images} images (seed 0), "
        f"val {args.val_images} images (seed 1000); teacher {args.teacher_steps} steps, "
        f"every student {args.student_steps} steps, batch 2. Trainings ran {args.jobs} at a time with "
        f"{args.threads} torch thread(s) each"
        + (f" ({args.teacher_threads} for the teacher)" if args.teacher_threads != args.threads else "")
        + " (\"train min\" is wall time under that sharing); latency is "
        "the median of 9 eval forwards at 640×480 on 2 threads, models prepared for inference "
        "(frozen norms folded, channels-last), on an otherwise idle machine."
        + (f" The teacher was not trained by this run: every student distils from the existing checkpoint "
           f"`{_shown(args.teacher_checkpoint)}` (`--teacher-checkpoint`), which the teacher row evaluates."
           if args.teacher_checkpoint else ""),
        "",
        "| run | role | MR⁻² Reasonable | Small | Heavy | All | AP50 | params | GFLOPs 640×480 | CPU ms 640×480 | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = cost(r["ckpt"], cache)
        mr = r["metrics"]["mr"]
        minutes = f"{r['train_seconds'] / 60:.0f}" if r.get("train_seconds") else "—"
        lines.append(
            f"| {r['name']} | {r['role']} | {mr['Reasonable']:.2f} | {mr['Small']:.2f} | {mr['Heavy']:.2f} | "
            f"{mr['All']:.2f} | {r['metrics']['ap50']:.3f} | {c['params'] / 1e6:.2f} M | {c['flops'] / 1e9:.1f} | "
            f"{c['latency_ms']:.0f} | {minutes} |")
    base = [r for r in rows if r["name"].startswith("student_baseline")]
    hkd = [r for r in rows if r["name"].startswith("student_hkd")]
    teacher = [r for r in rows if r["name"] == "teacher"]
    if base and hkd and teacher:
        b = sum(r["metrics"]["mr"]["Reasonable"] for r in base) / len(base)
        h = sum(r["metrics"]["mr"]["Reasonable"] for r in hkd) / len(hkd)
        t = teacher[0]["metrics"]["mr"]["Reasonable"]
        closed = (b - h) / (b - t) if b != t else float("nan")
        lines += ["", f"Mean MR⁻² Reasonable: no-KD student {b:.2f} ({len(base)} seeds), HKD student {h:.2f} "
                      f"({len(hkd)} seeds), teacher {t:.2f}: HKD gains {b - h:.2f} points and closes "
                      f"{100 * closed:.0f}% of the student→teacher gap."]
        by_seed = {r["seed"]: r["metrics"]["mr"]["Reasonable"] for r in base}
        paired = [f"seed {r['seed']}: {by_seed[r['seed']] - r['metrics']['mr']['Reasonable']:+.2f}"
                  for r in hkd if r["seed"] in by_seed]
        if paired:
            lines.append(f"Paired by seed (same data order, augmentation and head init), points HKD gains: "
                         f"{', '.join(paired)}.")
        floors = {"gain ≥ 3 points": b - h >= 3, "closes ≥ 50% of the gap": closed >= 0.5}
        lines.append("Floors: " + "; ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in floors.items())
                     + ".")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


SHIPPED = {"teacher": "teacher", "student_baseline_s0": "student_baseline", "student_hkd_s0": "student_hkd"}


def dataset_label(split_dir: Path) -> str:
    """``SynthPed val (500 images, seed 1000)``: what a split is, from its annotations' ``info``."""
    info = json.loads((Path(split_dir) / "annotations.json").read_text()).get("info", {})
    name = (info.get("description") or "").split(":")[0].strip() or "dataset"
    seed = f", seed {info['seed']}" if "seed" in info else ""
    return f"{name} {Path(split_dir).name} ({info.get('num_images', '?')} images{seed})"


def ship(rows: list[dict], dataset: str, dest: Path = ROOT / "assets" / "checkpoints") -> None:
    """Copy the demo checkpoints to ``dest`` (assets/checkpoints/) with their metrics on ``dataset``
    (see ``dataset_label``); a distilled student names the shipped teacher file as its parent."""
    from hkd.models.checkpoint import load_checkpoint, read_meta, update_metadata
    from hkd.models.profile import flops_by_hierarchy, params_by_hierarchy

    for r in rows:
        if r["name"] in SHIPPED:
            out = Path(dest) / f"{SHIPPED[r['name']]}.safetensors"
            if Path(r["ckpt"]).resolve() == out.resolve():
                continue  # a given teacher that is already the shipped one
            out.parent.mkdir(parents=True, exist_ok=True)
            metrics = {**r["metrics"], "dataset": dataset}
            changes = {}
            if "teacher" in r:  # name the parent as shipped, not as the run folder's final.safetensors
                changes["parent"] = f"{SHIPPED['teacher']}.safetensors"
            if not read_meta(r["ckpt"]).cost:  # runs from before checkpoints recorded their cost
                model = load_checkpoint(r["ckpt"]).model
                changes["cost"] = {"params": params_by_hierarchy(model), "flops": flops_by_hierarchy(model, 640, 480),
                                   "flops_size": [640, 480]}
            update_metadata(r["ckpt"], out, metrics=metrics, notes=f"HKD Studio demo checkpoint ({r['role']})",
                            **changes)
            print(f"shipped {out}")


def write_docs(text: str) -> None:
    docs = ROOT / "docs" / "BENCHMARKS.md"
    begin, end = "<!-- distill-table:begin -->", "<!-- distill-table:end -->"
    body = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in body:
        body = body[: body.index(begin)] + block + body[body.index(end) + len(end):]
    else:
        body += "\n" + block + "\n"
    docs.write_text(body)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT / "runs" / "bench")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "synthped")
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--teacher-steps", type=int, default=400)
    p.add_argument("--student-steps", type=int, default=400)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the no-KD / full-HKD student pair (the ablations use seed 1)")
    p.add_argument("--teacher-checkpoint", type=Path,
                   help="distil from this existing teacher checkpoint instead of training one")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per student training")
    p.add_argument("--teacher-threads", type=int, default=None,
                   help="torch threads of the teacher's training (default: --threads); the teacher is the "
                        "longest run and the students that need it wait for it, so it may deserve more")
    p.add_argument("--only", nargs="*", help="run names to train (default: all)")
    p.add_argument("--table-only", action="store_true", help="only evaluate finished runs and print the table")
    p.add_argument("--write-docs", action="store_true", help="put the table into docs/BENCHMARKS.md")
    p.add_argument("--ship", action="store_true", help="copy the demo checkpoints to assets/checkpoints/")
    args = p.parse_args()
    if args.teacher_threads is None:
        args.teacher_threads = args.threads
    ensure_data(args)
    teacher_ckpt = args.teacher_checkpoint or args.root / "teacher" / "checkpoints" / "final.safetensors"
    plan = runs(Path(teacher_ckpt).resolve(), args.seeds, teacher_given=args.teacher_checkpoint is not None)
    if not args.table_only:
        chosen = [run for run in plan if not args.only or run["name"] in args.only]

        def timed(run: dict) -> None:
            start = time.time()
            train_run(run, args)
            print(f"{run['name']}: {(time.time() - start) / 60:.1f} min", flush=True)

        teacher_done = threading.Event()
        if not any(r["role"] == "teacher" for r in chosen):
            teacher_done.set()

        def job(run: dict) -> None:
            if "teacher" in run:
                teacher_done.wait()  # the distilled students need the teacher's final checkpoint
            try:
                timed(run)
            finally:
                if run["role"] == "teacher":
                    teacher_done.set()

        # the teacher first, then the runs without a teacher, so they train beside it
        order = sorted(chosen, key=lambda r: (r["role"] != "teacher", "teacher" in r))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for future in [pool.submit(job, r) for r in order]:
                future.result()
    rows = [r for r in (evaluate_run(run, args) for run in plan) if r]
    text = table(rows, args)
    print(text)
    (args.root / "table.md").write_text(text + "\n")
    if args.write_docs:
        write_docs(text)
    if args.ship:
        ship(rows, dataset_label(args.data / "val"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
