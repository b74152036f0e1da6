"""Evaluate in a real browser: predictions as a background job, the table and a curve, a gallery click to Features."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.app.test_evaluation_service import counted, make_dataset
from tests.e2e.server import start_server, stop_server, wait_healthy
from tests.e2e.test_browser import WAIT_MS, go_to, wait_idle

pytestmark = pytest.mark.e2e

LIMIT = 4


@pytest.fixture(scope="module")
def evaluate_world(studio_world, tmp_path_factory):
    """Its own jobs, cache and data roots: a 6-image SynthPed split, and the teacher's predictions on
    its first 4 images already cached (every counted GT at 0.9, so the gallery has failures of the
    random-init student); the student's predictions are left to the page's background job."""
    root = tmp_path_factory.mktemp("evaluate")
    env = {"HKD_MODELS_DIR": str(studio_world["models"]), "HKD_SAMPLES_DIR": str(studio_world["samples"]),
           "HKD_DATA_ROOTS": str(root / "data"), "HKD_CACHE_DIR": str(root / "cache"),
           "HKD_JOBS_DIR": str(root / "jobs"), "HKD_SYNTHPED_DIR": str(root / "synthped")}
    folder = make_dataset(root / "data" / "crossing")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        from app.services import datasets, evaluation
        from hkd.models.meta import file_sha256

        (choice,) = [c for c in datasets.choices() if Path(c.path).resolve() == folder.resolve()]
        prepared = evaluation.prepare(choice, LIMIT)
        path = evaluation.predictions_path(file_sha256(studio_world["models"] / "teacher.safetensors"), prepared)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
                                    for a in counted(prepared.gt)]))
    return {"env": env, "label": choice.label, "folder": folder}


@pytest.fixture(scope="module")
def evaluate_server(evaluate_world, artifacts):
    proc, url = start_server(evaluate_world["env"], artifacts / "streamlit-evaluate.log")
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_server(proc)


def test_evaluate_then_open_a_failure_in_features(evaluate_server, evaluate_world, browser, artifacts):
    page = browser.new_page(viewport={"width": 1440, "height": 3400})
    page.set_default_timeout(WAIT_MS)
    page.goto(evaluate_server)
    page.get_by_role("heading", name="Models", level=1).wait_for()
    go_to(page, "Evaluate")
    wait_idle(page)

    page.locator('[data-testid="stSelectbox"]', has_text="Dataset").first.click()
    page.get_by_role("option", name=evaluate_world["label"]).click()
    wait_idle(page)
    limit = page.get_by_label("First N images (0 = all)")
    limit.fill(str(LIMIT))
    limit.press("Enter")
    run = page.get_by_role("button", name="Run predictions for 1 checkpoint(s)")
    run.wait_for()
    run.click()
    # the job runs in the background; the page polls it and shows the results when it ends
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    page.get_by_role("heading", name="Failure gallery").wait_for()
    wait_idle(page)
    assert page.locator(".js-plotly-plot").count() >= 3  # curves, miss rate by height and by visibility
    opens = page.get_by_role("button", name="Open in Features")
    assert opens.count() >= 1
    page.screenshot(path=str(artifacts / "evaluate.png"), full_page=True)

    opens.first.click()
    page.get_by_role("heading", name="Features", level=1).wait_for()
    page.get_by_text("box from Evaluate").first.wait_for()
    wait_idle(page)
    # the dataset's image is the current one, and its region is what roi.features shows
    page.get_by_text(re.compile(r"Image \d{6}\.jpg")).first.wait_for()
    page.get_by_text("7×7 pooled cells").first.wait_for()  # both models' maps of that box's region
    page.screenshot(path=str(artifacts / "evaluate_to_features.png"), full_page=True)
    page.close()
