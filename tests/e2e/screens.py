"""README's screenshots of HKD Studio on the shipped checkpoints, taken in headless chromium.

    python -m tests.e2e.screens [evaluate] [detections] [distill] [--out runs/screens]

Each page gets its own ``streamlit run`` (``python -m app.serve``, 127.0.0.1, no file watcher) with
``HKD_MODELS_DIR=assets/checkpoints`` and its jobs and cache under ``OUT``; PNGs are written to
``OUT`` (README's JPEGs are made from them after a look):

* ``evaluate``: the three shipped models on SynthPed val (``data/synthped/val``), first 100 images:
  predictions and diagnoses as the page's background jobs; ``evaluate_full.png`` is the whole page,
  ``evaluate.png`` its content from the title to the first row of the failure gallery (the "missed"
  view) with the FPPI curves and miss-rate bars hidden (README's shot);
* ``detections``: teacher, no-KD and HKD student side by side on an uploaded real frame
  (``assets/samples/real/vtest_0250.jpg``);
* ``distill``: the quick demo (shipped teacher → no-KD student) launched from the page, its data
  generated from the page at ``HKD_SYNTHPED_SIZES=train_small=60,val=20`` (in ``OUT/synthped``),
  shot while the job runs (the page reloaded: the form folded, the job's live view) with 12+ loss points.

Cached predictions, diagnoses and generated data under ``OUT`` are reused: a second run takes seconds.
"""
from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

from playwright.sync_api import expect

from tests.e2e.server import REPO, launch_chromium, start_server, stop_server, wait_healthy
from tests.e2e.test_browser import go_to, wait_idle, wait_for_results

# 100 images × 3 models, twice (predict, diagnose), on a busy 2-core CPU
LONG_MS = int(os.environ.get("HKD_SCREENS_TIMEOUT_MS", 1_800_000))
LIMIT = 100
HIDDEN_FOR_README = ".st-key-eval_curves, .st-key-eval_height_bars, .st-key-eval_visibility_bars, " \
                    ".st-key-eval_csv_table, .st-key-eval_csv_breakdown, .st-key-eval_html_curves, " \
                    ".st-key-eval_png_curves { display: none !important; }"


def _server(out: Path, name: str, **env):
    base = {"HKD_MODELS_DIR": str(REPO / "assets" / "checkpoints"), "HKD_CACHE_DIR": str(out / "cache"),
            "HKD_JOBS_DIR": str(out / f"jobs_{name}"), "HKD_SYNTHPED_DIR": str(REPO / "data" / "synthped")}
    proc, url = start_server({**base, **env}, out / f"streamlit-{name}.log")
    wait_healthy(url, proc)
    return proc, url


def _open(browser, url: str, height: int):
    page = browser.new_page(viewport={"width": 1440, "height": height})
    page.set_default_timeout(LONG_MS)
    page.goto(url)
    page.get_by_role("heading", name="Models", level=1).wait_for()
    return page


def evaluate(browser, out: Path) -> None:
    proc, url = _server(out, "evaluate")
    try:
        page = _open(browser, url, 6000)  # the whole page in the viewport: Streamlit scrolls inside it
        go_to(page, "Evaluate")
        wait_idle(page)
        dataset = page.locator('[data-testid="stSelectbox"]', has_text="Dataset").first
        if "SynthPed val" not in dataset.inner_text():  # the page's default when data/synthped/val exists
            dataset.click()
            page.get_by_role("option", name="SynthPed val").click()
            wait_idle(page)
        limit = page.get_by_label("First N images (0 = all)")
        limit.fill(str(LIMIT))
        limit.press("Enter")
        wait_idle(page)
        page.wait_for_url(re.compile(f"eval_limit={LIMIT}"))
        wait_idle(page)
        # the button of this N (a stale one of N = 0 may still be on screen), or the results if all are cached
        run = page.get_by_role("button", name=re.compile(rf"^Run predictions for \d checkpoint\(s\) on {LIMIT} images"))
        run.or_(page.get_by_text(f"{LIMIT} images. MR")).first.wait_for()
        if run.is_visible():
            run.click()
        page.get_by_role("heading", name="Where the misses are lost").wait_for(timeout=LONG_MS)
        wait_idle(page)
        diagnose = page.get_by_role("button", name="Diagnose")
        diagnose.or_(page.locator('[data-testid="stAlertContentInfo"]').filter(has_text=" finds")).first.wait_for()
        if diagnose.is_visible():
            diagnose.click()
        page.locator('[data-testid="stAlertContentInfo"]').filter(has_text=" finds").first.wait_for(timeout=LONG_MS)
        page.wait_for_function("() => ![...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                               ".some(p => p.innerText.includes('Diagnosing'))", timeout=LONG_MS, polling=1000)
        page.get_by_role("heading", name="Failure gallery").wait_for()
        wait_idle(page)
        page.wait_for_timeout(3000)  # plotly draws after the script run
        page.screenshot(path=str(out / "evaluate_full.png"), full_page=True)
        # README's shot: the page's content from its title to the first row of the gallery; the curves and
        # the miss-rate bars (README's text describes them) are hidden, so that it stays readable in one image
        page.add_style_tag(content=HIDDEN_FOR_README)
        page.wait_for_timeout(1500)
        main = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()
        top = page.get_by_role("heading", name="Evaluate", level=1).bounding_box()["y"] - 24
        first_row = [page.locator(f".st-key-eval_open_{i}").bounding_box() for i in range(4)]  # the cards' buttons
        bottom = max(box["y"] + box["height"] for box in first_row) + 24
        left = max(0, main["x"] + 40)  # the page's content, without the sidebar
        right = main["x"] + main["width"] - 40
        page.screenshot(path=str(out / "evaluate.png"),
                        clip={"x": left, "y": top, "width": right - left, "height": bottom - top})
        page.close()
    finally:
        stop_server(proc)


def detections(browser, out: Path) -> None:
    proc, url = _server(out, "detections")
    upload = REPO / "assets" / "samples" / "real" / "vtest_0250.jpg"
    try:
        page = _open(browser, url, 1500)
        go_to(page, "Detections")
        page.get_by_text("Agreement").first.wait_for()
        wait_for_results(page, 3)
        page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(upload))
        page.get_by_text(f"Image {upload.name}").wait_for()
        fresh = page.locator('[data-testid="stCaptionContainer"]', has_text=f"for {upload.name}")
        fresh.nth(2).wait_for()
        wait_for_results(page, 3)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out / "detections_upload.png"), full_page=True)
        page.close()
    finally:
        stop_server(proc)


def distill(browser, out: Path) -> None:
    proc, url = _server(out, "distill", HKD_SYNTHPED_DIR=str(out / "synthped"),
                        HKD_SYNTHPED_SIZES="train_small=60,val=20")
    try:
        page = _open(browser, url, 1800)
        go_to(page, "Distill")
        wait_idle(page)
        launch = page.get_by_role("button", name="Launch")
        for split, size in (("train_small", 60), ("val", 20)):
            if not (out / "synthped" / split / "annotations.json").is_file():
                page.get_by_role("button", name=f"Generate it ({size} images").click()
                page.wait_for_timeout(3000)
        expect(launch).to_be_enabled(timeout=LONG_MS)
        name = page.get_by_label("Job name")
        name.fill("quick-demo")
        name.press("Enter")
        wait_idle(page)
        launch.click()
        page.get_by_text("quick-demo · ").first.wait_for()
        # the page as a user coming back to it sees it: the form folded (a fine-tune exists), the job's live view
        page.goto(url)
        page.get_by_role("heading", name="Models", level=1).wait_for()
        go_to(page, "Distill")
        page.get_by_text("quick-demo · ").first.wait_for()
        page.wait_for_function("() => { const p = document.querySelector('.js-plotly-plot');"
                               " return p && p.data && p.data.length && p.data[0].x.length >= 12 }", timeout=LONG_MS)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / "distill.png"), full_page=True)
        page.close()
    finally:
        stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="*", default=["evaluate", "detections", "distill"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "screens")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            for name in args.pages:
                started = time.monotonic()
                try:
                    {"evaluate": evaluate, "detections": detections, "distill": distill}[name](browser, out)
                except Exception:
                    for context in browser.contexts:  # what the page showed when it went wrong
                        for i, page in enumerate(context.pages):
                            page.screenshot(path=str(out / f"{name}_error_{i}.png"), full_page=True)
                    raise
                print(f"{name}: {time.monotonic() - started:.0f} s → {out}", flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
