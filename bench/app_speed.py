"""How fast HKD Studio feels on this machine, at 640×480.

    python bench/app_speed.py [--no-browser]
    python bench/app_speed.py --cold-start-only --repeat 3

Uses the demo checkpoints in assets/checkpoints when they are there, else
random-init default presets (timings then include the full proposal budget of
untrained heads, which is the worst case; the output says so). Times, wall
clock, one run each:

* the pages through ``streamlit.testing.v1.AppTest`` (script runs as a user
  sees them, caches starting cold in this process): detection compare of both
  models, its rerun after a slider change, the Features page, a level switch
  after the first computation, the Attention page (Grad-CAM of both models);
* the underlying calls (detect, level views, Grad-CAM) without Streamlit;
* a cold start: ``python -m app.serve`` (as scripts/app.sh) launched until the
  Models page is drawn and usable in a fresh headless chromium: both checkpoint
  pickers and model cards (from the checkpoint headers), the cost charts and
  the level table, no spinner. The page needs no model weights; the other pages
  load them (their first visit is the "cold" rows above).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_speed import machine  # noqa: E402
from PIL import Image  # noqa: E402

DEMO = ("teacher.safetensors", "student_hkd.safetensors")
SIZE = (640, 480)


def checkpoints(work: Path) -> tuple[Path, str]:
    """A models folder with a teacher and a student, and a note on what they are."""
    demo = REPO / "assets" / "checkpoints"
    if all((demo / name).is_file() for name in DEMO):
        return demo, "demo checkpoints (assets/checkpoints)"
    import torch

    from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
    from hkd.models.presets import DEFAULT_STUDENT, DEFAULT_TEACHER, build_detector

    folder = work / "checkpoints"
    torch.manual_seed(0)
    for name, preset in zip(DEMO, (DEFAULT_TEACHER, DEFAULT_STUDENT)):
        save_checkpoint(folder / name, build_detector(preset).eval(), CheckpointMeta(preset=preset))
    return folder, "RANDOM-INIT default presets (no demo checkpoints in assets/checkpoints)"


def test_image(work: Path) -> Path:
    """A 640×480 PNG: a real sample frame resized if there is one, else a drawn street."""
    real = sorted((REPO / "assets" / "samples" / "real").glob("*.jpg"))
    if real:
        image = Image.open(real[0]).convert("RGB").resize(SIZE)
    else:
        rng = np.random.default_rng(0)
        pixels = np.full((SIZE[1], SIZE[0], 3), 150, np.uint8)
        for _ in range(6):
            h = int(rng.integers(60, 220))
            x, y = int(rng.integers(0, SIZE[0] - h // 3)), int(rng.integers(100, SIZE[1] - h))
            pixels[y:y + h, x:x + h // 3] = rng.integers(10, 90, 3)
        image = Image.fromarray(pixels)
    path = work / "bench_640x480.png"
    image.save(path)
    return path


def timed(rows: list, step: str, note: str, fn):
    start = time.perf_counter()
    out = fn()
    rows.append((step, time.perf_counter() - start, note))
    print(f"  {step}: {rows[-1][1]:.2f} s", flush=True)
    return out


def page_timings(rows: list, image: Path) -> None:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=900)

    def check(at):
        if at.exception:
            raise RuntimeError(at.exception[0].message)
        return at

    timed(rows, "Models page, first run", "load both checkpoints, params + FLOPs", lambda: check(at.run()))
    at.switch_page("app_pages/detections.py")
    timed(rows, "Detections page, sample image", "both models, cold", lambda: check(at.run()))
    at.file_uploader(key="det_upload").upload(image.name, image.read_bytes(), "image/png")
    timed(rows, "Detection compare, 640×480 upload", "decode + both models + matching, cold",
          lambda: check(at.run()))
    at.slider(key="det_score").set_value(0.3)
    timed(rows, "Detections rerun, threshold change", "cached detections", lambda: check(at.run()))
    at.switch_page("app_pages/features.py")
    timed(rows, "Features page, first level", "maps + difference + similarity profile, cold",
          lambda: check(at.run()))
    for level, step in (("neck.p4", "Feature level switch (c2 → p4)"), ("backbone.c2", "Feature level switch back")):
        at.selectbox(key="feat_level").set_value(level)
        timed(rows, step, "after the first computation", lambda: check(at.run()))
    at.switch_page("app_pages/attention.py")
    timed(rows, "Attention page", "Grad-CAM of both models at neck.p3 + attention maps, cold",
          lambda: check(at.run()))
    at.radio(key="att_method").set_value("EigenCAM")
    timed(rows, "Attention, switch to EigenCAM", "both models", lambda: check(at.run()))


def call_timings(rows: list, folder: Path, image: Path) -> None:
    from hkd.data.images import load_image
    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.inference import detect
    from hkd.models.presets import get_preset
    from hkd.viz.cam import detection_cam
    from hkd.viz.featmaps import level_views

    pixels = load_image(image)
    for role, name in zip(("teacher", "student"), DEMO):
        loaded = timed(rows, f"load_checkpoint ({role})", name, lambda: load_checkpoint(folder / name, inference=True))
        spec = get_preset(loaded.meta.preset).hierarchy
        detect(loaded.model, [pixels])  # warm-up
        timed(rows, f"detect ({role})", "warm, 2 threads", lambda: detect(loaded.model, [pixels]))
        timed(rows, f"level_views, 8 backbone/FPN levels ({role})", "one backbone forward",
              lambda: level_views(loaded.model, spec, pixels, [lv.name for lv in spec
                                                                 if lv.kind == "map"]))
        for step, kwargs in ((f"Grad-CAM neck.p3, all boxes ≥ 0.5 ({role})", {}),
                             (f"Grad-CAM neck.p3, full forward ({role})", {"restrict_proposals": False})):
            what = timed(rows, step, "", lambda: _cam(detection_cam, loaded.model, spec, pixels, **kwargs))
            rows[-1] = (*rows[-1][:2], f"{what}; {'restrict_proposals=False, for comparison' if kwargs else 'gradient through the explained proposals only'}")


def _cam(detection_cam, model, spec, pixels, **kwargs):
    try:
        result = detection_cam(model, spec, pixels, method="gradcam", level="neck.p3", **kwargs)
        return f"{len(result.boxes)} boxes"
    except ValueError:  # nothing to explain at 0.5: time EigenCAM's forward instead
        detection_cam(model, spec, pixels, method="eigencam", level="neck.p3")
        return "no box ≥ 0.5: EigenCAM timed instead"


def cold_start(rows: list, folder: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tests.e2e.server import launch_chromium, start_server, stop_server, wait_healthy

    start = time.perf_counter()
    proc, url = start_server({"HKD_MODELS_DIR": str(folder)}, Path(tempfile.gettempdir()) / "hkd-bench-streamlit.log")
    try:
        wait_healthy(url, proc, timeout=300)
        rows.append(("Cold start: server healthy", time.perf_counter() - start, "python -m app.serve → /_stcore/health"))
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.get_by_role("heading", name="Models", level=1).wait_for()
            page.locator("[data-testid=stSelectbox]").first.wait_for()
            page.locator(".js-plotly-plot").nth(1).wait_for()
            page.locator("[data-testid=stTable]").last.wait_for()
            page.wait_for_function("() => !document.querySelector('[data-testid=\"stSpinner\"]')", polling=200)
            rows.append(("Cold start: Models page interactive", time.perf_counter() - start,
                         "launch → Models page drawn: both model cards, cost charts, level table (chromium)"))
            browser.close()
    finally:
        stop_server(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-browser", action="store_true", help="skip the cold start in chromium")
    parser.add_argument("--cold-start-only", action="store_true", help="only the cold start in chromium")
    parser.add_argument("--repeat", type=int, default=1, help="cold starts to time (a new server and browser each)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hkd-app-bench-"))
    try:
        folder, note = checkpoints(work)
        os.environ["HKD_MODELS_DIR"] = str(folder)
        image = test_image(work)
        print(f"machine: {machine()}\nmodels: {note}\nimage: {image.name} ({SIZE[0]}×{SIZE[1]})", flush=True)
        rows: list[tuple[str, float, str]] = []
        if not args.cold_start_only:
            page_timings(rows, image)
            call_timings(rows, folder, image)
        if not args.no_browser:
            for _ in range(max(1, args.repeat)):
                cold_start(rows, folder)
        print(f"\n| step | seconds | what |\n|---|---:|---|")
        for step, seconds, what in rows:
            print(f"| {step} | {seconds:.2f} | {what} |")
        print(f"\nmachine: {machine()}; models: {note}; load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
