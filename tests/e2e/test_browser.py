"""HKD Studio in a real browser: upload an image, see both models' detections, then their feature maps."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.server import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WAIT_MS = 240_000  # first forwards of both models on a busy 2-core CPU


def wait_idle(page) -> None:
    """Until the script run is over: the app says it is not running, with no spinner and no 'running'
    status widget. A widget's rerun starts only when the server answers, so first a short pause in
    which a rerun just asked for can begin (as Streamlit's own browser tests do)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " return app && app.getAttribute('data-test-script-state') !== 'running' &&"
        " app.getAttribute('data-test-script-state') !== 'rerunRequested' &&"
        " !document.querySelector('[data-testid=\"stSpinner\"]') &&"
        " !document.querySelector('[data-testid=\"stStatusWidget\"] [data-testid=\"stStatusWidgetRunningIcon\"]') }",
        timeout=WAIT_MS, polling=250)


def go_to(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.get_by_role("heading", name=title, level=1).wait_for(timeout=WAIT_MS)


def loaded_images(page) -> int:
    return page.evaluate("() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                         ".filter(img => img.complete && img.naturalWidth > 0).length")


def upload_image(tmp_path):
    """A real frame from the checkout if there is one, else a generated street."""
    real = sorted((REPO / "assets" / "samples" / "real").glob("*.jpg"))
    if real:
        return real[0]
    rng = np.random.default_rng(3)
    pixels = np.full((240, 320, 3), 170, np.uint8)
    pixels[60:200, 40:90] = rng.integers(10, 60, 3)
    pixels[80:220, 200:250] = rng.integers(10, 60, 3)
    path = tmp_path / "crossing.png"
    Image.fromarray(pixels).save(path)
    return path


def wait_for_results(page, count: int) -> None:
    wait_idle(page)
    page.wait_for_function(f"() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                           f".filter(i => i.complete && i.naturalWidth > 0).length >= {count}")


def test_upload_detect_and_look_at_features(studio_server, studio_world, browser, artifacts, tmp_path):
    upload = upload_image(tmp_path)
    # the page adds a third model by default: the no-KD student beside an HKD one, where the models
    # folder has one (HKD_E2E_MODELS_DIR=assets/checkpoints does)
    models = Path(os.environ.get("HKD_E2E_MODELS_DIR") or studio_world["models"])
    shown = 3 if any(models.glob("student_baseline*.safetensors")) else 2
    page = browser.new_page(viewport={"width": 1440, "height": 1800})
    page.set_default_timeout(WAIT_MS)
    page.goto(studio_server)
    page.get_by_role("heading", name="Models", level=1).wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    wait_idle(page)
    page.screenshot(path=str(artifacts / "models.png"), full_page=True)

    go_to(page, "Detections")
    page.get_by_text("Agreement").first.wait_for()
    wait_for_results(page, 3)
    page.screenshot(path=str(artifacts / "detections.png"), full_page=True)

    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(upload))
    page.get_by_text(f"Image {upload.name}").wait_for()
    # the result captions name the image they were computed on: wait for fresh ones, not stale
    # elements of the previous run that Streamlit keeps on screen during a rerun
    fresh = page.locator('[data-testid="stCaptionContainer"]', has_text=f"for {upload.name}")
    fresh.nth(shown - 1).wait_for()
    wait_for_results(page, 3)
    timings = fresh.all_inner_texts()
    assert len(timings) == shown and all(" ms " in t for t in timings), timings
    page.screenshot(path=str(artifacts / "detections_upload.png"), full_page=True)

    go_to(page, "Features")
    page.get_by_text(f"Image {upload.name}").wait_for()  # the upload stays the current image
    page.locator(".js-plotly-plot").first.wait_for()
    wait_idle(page)
    assert loaded_images(page) >= 3  # teacher map, student map, difference
    assert page.locator('[data-testid="stCaptionContainer"]', has_text="one cell =").count() == 2
    page.screenshot(path=str(artifacts / "features.png"), full_page=True)

    go_to(page, "Attention")
    page.get_by_text("Attention-transfer maps per level").wait_for()
    wait_idle(page)
    assert loaded_images(page) >= 4
    page.screenshot(path=str(artifacts / "attention.png"), full_page=True)
    page.close()


def test_detections_one_model_at_a_time_at_full_width(studio_server, browser, artifacts):
    page = browser.new_page(viewport={"width": 1440, "height": 1600})
    page.set_default_timeout(WAIT_MS)
    page.goto(studio_server)
    page.get_by_role("heading", name="Models", level=1).wait_for()
    go_to(page, "Detections")
    page.get_by_text("Agreement").first.wait_for()
    wait_for_results(page, 3)
    side_by_side = page.evaluate("() => document.querySelector('[data-testid=\"stImage\"] img').clientWidth")
    page.get_by_text("one at a time, full width").click()
    page.get_by_role("tab", name="Student · student_hkd").wait_for()
    wait_for_results(page, 3)
    widths = page.evaluate("() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                           ".filter(i => i.clientWidth > 0).map(i => i.clientWidth)")
    assert widths[0] > 1.6 * side_by_side, (side_by_side, widths)  # the teacher's tab: the page's full width
    page.get_by_role("tab", name="Student · student_hkd").click()
    page.screenshot(path=str(artifacts / "detections_one_at_a_time.png"), full_page=True)
    # the agreement table has its columns in view and empty cells empty
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for()
    assert table.bounding_box()["width"] > 900
    page.close()
