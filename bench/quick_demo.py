"""The Distill page's quick demo, measured as the app runs it: background jobs, one at a time.

    python bench/quick_demo.py [--root runs/bench_quick] [--set KEY=VALUE ...] [--no-app]

Runs, through the job queue (``hkd.jobs``, HKD_MAX_JOBS=1, the default thread budget of
all cores but one), the quick-demo HKD fine-tune of the shipped no-KD student
(``assets/configs/quick_demo.yaml``) and a plain fine-tune of the same length and data
(``--set teacher=null --set distill=null``), then scores the student before and both results
after with ``hkd predict`` + ``hkd eval`` on the whole SynthPed val split (500 images; the
jobs' own end-of-run check uses its first 100). While the HKD job runs, it times page
interactions of HKD Studio in-process (AppTest, as in bench/app_speed.py): a detection compare
on a new 640×480 upload, a threshold change, a feature-level switch. Prints markdown rows for
docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from distill_table import evaluate_checkpoint  # noqa: E402
from eval_speed import machine  # noqa: E402

CONFIG = REPO / "assets" / "configs" / "quick_demo.yaml"
BEFORE = REPO / "assets" / "checkpoints" / "student_baseline.safetensors"
VAL = REPO / "data" / "synthped" / "val"


def steps_per_s(metrics: list[dict]) -> float:
    """Steps per second over the logged training steps after the first log line (start-up excluded)."""
    lines = [m for m in metrics if "loss" in m]
    if len(lines) < 2:
        return float("nan")
    return (lines[-1]["step"] - lines[0]["step"]) / max(1e-9, lines[-1]["time"] - lines[0]["time"])


def page_timings_while(queue, job_id: str) -> list[tuple[str, float, str]]:
    """Page interactions timed in-process while the job runs (the app's own torch threads: 2)."""
    from app_speed import test_image, timed
    from streamlit.testing.v1 import AppTest

    rows: list[tuple[str, float, str]] = []
    work = Path(tempfile.mkdtemp(prefix="hkd-quick-bench-"))
    image = test_image(work)
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=900)

    def check(at):
        if at.exception:
            raise RuntimeError(at.exception[0].message)
        return at

    at.run()
    at.switch_page("app_pages/detections.py")
    check(at.run())  # warm: both models loaded (a page visit before the job started would have done it)
    while (job := queue.get(job_id)).active and job.step < 2:  # time the pages beside training steps
        time.sleep(1)
    at.file_uploader(key="det_upload").upload(image.name, image.read_bytes(), "image/png")
    timed(rows, "Detection compare, 640×480 upload", "decode + both models + matching, cold", lambda: check(at.run()))
    at.slider(key="det_score").set_value(0.3)
    timed(rows, "Detections rerun, threshold change", "cached detections", lambda: check(at.run()))
    at.switch_page("app_pages/features.py")
    timed(rows, "Features page, first level", "maps + difference + similarity profile, cold", lambda: check(at.run()))
    at.selectbox(key="feat_level").set_value("neck.p4")
    timed(rows, "Feature level switch (c2 → p4)", "after the first computation", lambda: check(at.run()))
    job = queue.get(job_id)
    note = f"job {job.state} at step {job.step}/{job.total} when the timings ended"
    return [(step, seconds, f"{what}; {note}") for step, seconds, what in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench_quick")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra overrides of the quick-demo config, for both runs")
    parser.add_argument("--no-app", action="store_true", help="skip the page timings")
    args = parser.parse_args()
    os.environ["HKD_MAX_JOBS"] = "1"
    from hkd.jobs import JobQueue

    queue = JobQueue(args.root / "jobs")
    variants = {"quick HKD": ("distill", args.overrides),
                "plain fine-tune": ("train", [*args.overrides, "teacher=null", "distill=null"])}
    jobs, page_rows = {}, []
    for label, (kind, overrides) in variants.items():
        job = queue.submit_run(kind, CONFIG, overrides=overrides, name=label)
        jobs[label] = job.id
        print(f"{label}: job {job.id} ({job.state})", flush=True)
    if not args.no_app:
        while queue.get(jobs["quick HKD"]).state == "queued":
            time.sleep(1)
        os.environ["HKD_JOBS_DIR"] = str(queue.root)
        page_rows = page_timings_while(queue, jobs["quick HKD"])
    while any(queue.get(j).active for j in jobs.values()):
        queue.advance()
        time.sleep(2)
    rows = []
    before = evaluate_checkpoint(BEFORE, VAL, args.root / "eval", "before")
    rows.append(("student_baseline (before)", None, None, before))
    for label, job_id in jobs.items():
        job = queue.get(job_id)
        if job.state != "succeeded":
            raise SystemExit(f"{label}: {job.state}: {job.message}\n{queue.log_tail(job_id)}")
        result = evaluate_checkpoint(Path(job.outputs["checkpoint"]), VAL, args.root / "eval", job_id)
        wall = (job.ended or job.updated) - (job.started or job.created)
        rows.append((label, wall, steps_per_s(queue.metrics(job_id)), result))
    print(f"\n{machine()}; {time.strftime('%Y-%m-%d')}; config {CONFIG.relative_to(REPO)} "
          f"{' '.join(args.overrides)}; val = {VAL.relative_to(REPO)} (500 images)\n")
    print("| student | job wall time (s) | steps/s | MR⁻² Reasonable | Small | Heavy | All | AP50 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, wall, rate, result in rows:
        mr = result["mr"]
        print(f"| {label} | {'—' if wall is None else f'{wall:.0f}'} | {'—' if rate is None else f'{rate:.3f}'} | "
              f"{mr['Reasonable']:.2f} | {mr['Small']:.2f} | {mr['Heavy']:.2f} | {mr['All']:.2f} | "
              f"{result['ap50']:.3f} |")
    if page_rows:
        print("\n| page interaction while the quick HKD job runs | seconds | what |\n|---|---:|---|")
        for step, seconds, what in page_rows:
            print(f"| {step} | {seconds:.2f} | {what} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    (args.root / "summary.json").write_text(json.dumps(
        {label: {"wall_s": wall, "steps_per_s": rate, "eval": result} for label, wall, rate, result in rows}, indent=2))


if __name__ == "__main__":
    main()
