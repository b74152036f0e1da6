"""Distill in a real browser: launch a tiny fine-tune, watch its loss curve gain points, find its
checkpoint in the Models picker."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from tests.e2e.server import start_server, stop_server, wait_healthy
from tests.e2e.test_browser import WAIT_MS, go_to, wait_idle
from tests.train.conftest import write_tiny_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 24


@pytest.fixture(scope="module")
def distill_root(tmp_path_factory):
    return tmp_path_factory.mktemp("distill_e2e")


@pytest.fixture(scope="module")
def distill_server(studio_world, distill_root, artifacts):
    root = distill_root
    write_tiny_dataset(root / "synthped" / "train_small", n=4)
    write_tiny_dataset(root / "synthped" / "val", n=10, seed=1)
    env = {"HKD_MODELS_DIR": str(studio_world["models"]), "HKD_SAMPLES_DIR": str(studio_world["samples"]),
           "HKD_JOBS_DIR": str(root / "jobs"), "HKD_SYNTHPED_DIR": str(root / "synthped"),
           "HKD_CACHE_DIR": str(root / "cache")}
    proc, url = start_server(env, artifacts / "streamlit-e2e-distill.log")
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_server(proc)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def pick_preset(page, prefix: str) -> None:
    page.get_by_label("Start from", exact=True).click()
    page.get_by_role("option", name=prefix).click()
    wait_idle(page)


def curve_points(page) -> int:
    """Points of the first trace of the loss chart, read from plotly's own data."""
    return page.evaluate("() => { const p = document.querySelector('.js-plotly-plot');"
                         " return p && p.data && p.data.length ? p.data[0].x.length : 0 }")


def fine_tune_records(jobs: Path) -> int:
    """Train/distill job records in the jobs folder (the server got the Launch click)."""
    return sum(json.loads(p.read_text()).get("kind") in ("train", "distill") for p in jobs.glob("*/job.json"))


def launch(page, name: str, jobs: Path) -> None:
    """Click Launch and wait for the job's heading (or fail with the app's refusal). A click the
    browser sends while an earlier rerun is still in flight can be lost before the server sees it;
    then no job record exists, and it is clicked once more."""
    heading = page.get_by_text(f"{name} · ").first
    refused = page.get_by_text("Not launched")
    for attempt in range(2):
        page.get_by_role("button", name="Launch").click()
        try:
            heading.or_(refused).first.wait_for(timeout=60_000 if attempt == 0 else WAIT_MS)
            break
        except PlaywrightTimeout:
            if attempt or fine_tune_records(jobs):
                raise
            wait_idle(page)
    expect(refused).to_have_count(0)
    heading.wait_for()


def test_launch_watch_and_pick_the_fine_tuned_student(distill_server, distill_root, browser, artifacts):
    page = browser.new_page(viewport={"width": 1440, "height": 1800})
    page.set_default_timeout(WAIT_MS)
    page.goto(distill_server)
    page.get_by_role("heading", name="Models", level=1).wait_for()
    go_to(page, "Distill")
    page.get_by_text("No fine-tunes yet").wait_for()
    wait_idle(page)
    # another preset shows its own values in the browser (not the previous preset's), trust included
    set_number(page, "Steps", 7)
    pick_preset(page, "HKD + trust")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("800")
    expect(page.get_by_label("Trust in the teacher", exact=True)).to_have_value("label: drop KD where its class is wrong")
    page.screenshot(path=str(artifacts / "distill_trust_preset.png"), full_page=True)
    pick_preset(page, "Quick demo")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("60")
    set_number(page, "Steps", STEPS)
    set_number(page, "Validation images", 10)
    set_number(page, "Threads", 1)
    name = page.get_by_label("Job name")
    name.fill("e2e-demo")
    name.press("Enter")
    wait_idle(page)
    launch(page, "e2e-demo", distill_root / "jobs")
    # the live view polls without a reload: the curve gains points while the job runs
    page.wait_for_function("() => { const p = document.querySelector('.js-plotly-plot');"
                           " return p && p.data && p.data.length && p.data[0].x.length >= 2 }", timeout=WAIT_MS)
    first = curve_points(page)
    page.screenshot(path=str(artifacts / "distill_running.png"), full_page=True)
    page.get_by_text("e2e-demo · succeeded").wait_for(timeout=WAIT_MS)
    page.wait_for_function(f"() => {{ const p = document.querySelector('.js-plotly-plot');"
                           f" return p && p.data && p.data.length && p.data[0].x.length > {first} }}")
    assert curve_points(page) > first
    page.screenshot(path=str(artifacts / "distill_done.png"), full_page=True)
    # the finished checkpoint is offered in the Models page's student picker
    go_to(page, "Models")
    wait_idle(page)
    page.get_by_text("Student checkpoint").first.wait_for()
    page.locator('[data-testid="stSelectbox"]').nth(1).click()
    page.get_by_role("option", name="job e2e-demo").first.wait_for()
    page.get_by_role("option", name="job e2e-demo").first.click()
    wait_idle(page)
    page.get_by_text("fine-tune job").first.wait_for()
    page.screenshot(path=str(artifacts / "models_job_checkpoint.png"), full_page=True)
    page.close()


@pytest.fixture(scope="module")
def empty_data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("distill_data_e2e")


@pytest.fixture(scope="module")
def empty_data_server(studio_world, empty_data_root, artifacts):
    """The app on a machine with no SynthPed split yet, generating small ones (HKD_SYNTHPED_SIZES)."""
    root = empty_data_root
    env = {"HKD_MODELS_DIR": str(studio_world["models"]), "HKD_SAMPLES_DIR": str(studio_world["samples"]),
           "HKD_JOBS_DIR": str(root / "jobs"), "HKD_SYNTHPED_DIR": str(root / "synthped"),
           "HKD_CACHE_DIR": str(root / "cache"), "HKD_SYNTHPED_SIZES": "train_small=60,val=20"}
    proc, url = start_server(env, artifacts / "streamlit-e2e-distill-data.log")
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_server(proc)


def test_generate_the_quick_demos_data_then_launch_without_a_reload(empty_data_server, empty_data_root, browser,
                                                                    artifacts):
    page = browser.new_page(viewport={"width": 1440, "height": 1800})
    page.set_default_timeout(WAIT_MS)
    page.goto(empty_data_server)
    page.get_by_role("heading", name="Models", level=1).wait_for()
    go_to(page, "Distill")
    page.get_by_text("not generated yet").first.wait_for()
    wait_idle(page)
    button = page.get_by_role("button", name="Launch")
    expect(button).to_be_disabled()
    page.evaluate("() => { window.hkdNoReload = true }")  # gone if the page reloads
    page.get_by_role("button", name="Generate it (60 images").click()
    # the form stays open: its live progress and the other split's button are in view
    page.get_by_text("Generating SynthPed train, first 60 images").or_(
        page.get_by_text("first 60 images (seed 0; the quick demo's): queued")).first.wait_for()
    page.get_by_role("button", name="Generate it (20 images").click()
    page.screenshot(path=str(artifacts / "distill_generating.png"), full_page=True)
    expect(button).to_be_enabled(timeout=WAIT_MS)  # by itself, once both splits are on disk
    assert page.evaluate("() => window.hkdNoReload === true")
    expect(page.get_by_text("not generated yet")).to_have_count(0)
    set_number(page, "Steps", 2)
    set_number(page, "Validation images", 10)
    set_number(page, "Threads", 1)
    name = page.get_by_label("Job name")
    name.fill("e2e-fresh")
    name.press("Enter")
    wait_idle(page)
    launch(page, "e2e-fresh", empty_data_root / "jobs")
    page.screenshot(path=str(artifacts / "distill_after_generation.png"), full_page=True)
    page.get_by_text("e2e-fresh · succeeded").wait_for(timeout=WAIT_MS)
    page.close()
