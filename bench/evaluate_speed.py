"""The Evaluate page's dataset evaluation, measured as the app runs it.

    python bench/evaluate_speed.py [--dataset synthped:val] [--limit N] [--no-app]

Launches, through the page's own service (``app.services.evaluation``: one background
``hkd predict`` job per checkpoint, HKD_MAX_JOBS at a time, cached on disk under HKD_CACHE_DIR),
the predictions of the three shipped models (teacher, student_baseline, student_hkd) on the
dataset, and times: the wall time until all are done; page interactions of the other pages
while the jobs run (AppTest, as bench/quick_demo.py); then the Evaluate page opened with the
cached predictions, first in this process (the comparison computed from the cache files) and
again (Streamlit's in-process cache, as another browser session of the same server sees it).
Clear HKD_CACHE_DIR first to time a cold evaluation.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import machine  # noqa: E402
from quick_demo import page_timings_while  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthped:val")
    parser.add_argument("--limit", type=int, default=0, help="first N images (0: all)")
    parser.add_argument("--no-app", action="store_true", help="skip the page timings while the jobs run")
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    from app.services import datasets, evaluation

    choice = datasets.get(args.dataset)
    prepared = evaluation.prepare(choice, args.limit or None)
    picked = [c for c in evaluation.candidates() if c.default and c.source == "models folder"]
    start = time.perf_counter()
    states = [evaluation.launch(evaluation.prediction_state(c, prepared), prepared) for c in picked]
    cached = all(s.state == "ready" for s in states)
    jobs = [s.job_id for s in states if s.pending]
    print(f"{machine()}; {prepared.label}, {prepared.num_images} images; "
          f"{', '.join(s.label + ': ' + s.state for s in states)}", flush=True)
    queue = evaluation.queue()
    page_rows = []
    if jobs and not args.no_app:
        page_rows = page_timings_while(queue, jobs[0])
    while any(evaluation.prediction_state(c, prepared).pending for c in picked):
        queue.advance()
        time.sleep(2)
    wall = time.perf_counter() - start
    failed = [s for s in (evaluation.prediction_state(c, prepared) for c in picked) if s.state != "ready"]
    if failed:
        raise SystemExit("\n".join(f"{s.label}: {s.state}: {s.message}" for s in failed))
    timings = []
    for run in ("first open, comparison computed from the cache files", "open again (in-process cache)"):
        at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=900).run()
        at.switch_page("app_pages/evaluate.py")
        at.session_state["eval_dataset"] = args.dataset
        at.session_state["eval_limit"] = args.limit
        begin = time.perf_counter()
        at.run()
        if at.exception:
            raise SystemExit(at.exception[0].message)
        timings.append((run, time.perf_counter() - begin))
    print("\n| step | seconds | what |\n|---|---:|---|")
    what = "already cached before this run" if cached else \
        f"{len(picked)} predict jobs, one at a time, {evaluation.PREDICT_THREADS} thread(s) each"
    print(f"| predictions of {', '.join(c.label for c in picked)} | {wall:.0f} | {what} |")
    for step, seconds, note in page_rows:
        print(f"| {step}, while the predict jobs run | {seconds:.2f} | {note} |")
    for run, seconds in timings:
        print(f"| Evaluate page, {run} | {seconds:.2f} | table, curves, bins, gallery |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
