"""A real HKD Studio server (streamlit run) on a free localhost port, and a headless chromium page."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.server import REPO, launch_chromium, start_server, stop_server, wait_healthy


@pytest.fixture(scope="module")
def artifacts() -> Path:
    path = Path(os.environ.get("HKD_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path = path if path.is_absolute() else REPO / path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def studio_server(studio_world, artifacts):
    """Base URL of a running HKD Studio on the tiny studio world; always torn down."""
    # the shipped samples when the checkout has them (nicer screenshots); HKD_E2E_MODELS_DIR=assets/checkpoints
    # takes the screenshots with the demo checkpoints instead of the tiny random-init ones (slower)
    shipped = REPO / "assets" / "samples"
    samples = shipped if (shipped / "synthped" / "annotations.json").is_file() else studio_world["samples"]
    models = os.environ.get("HKD_E2E_MODELS_DIR") or str(studio_world["models"])
    proc, url = start_server({"HKD_MODELS_DIR": models, "HKD_SAMPLES_DIR": str(samples)},
                             artifacts / "streamlit-e2e.log")
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a browser test fails, what each open page reads goes into the report (and so into the
    CI log, where the screenshots are out of reach): the alerts and errors it shows first."""
    outcome = yield
    report = outcome.get_result()
    browser = item.funcargs.get("browser") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or browser is None:
        return
    for number, page in enumerate(p for context in browser.contexts for p in context.pages):
        try:
            alerts = page.locator('[data-testid="stAlert"], [data-testid="stException"]').all_inner_texts()
            body = page.inner_text("body", timeout=5_000)
        except Exception as exc:  # a closed or crashed page: say so instead of hiding the test's own error
            report.sections.append((f"page {number}", f"could not be read: {exc}"))
            continue
        text = "\n".join([f"url: {page.url}", "alerts:", *alerts, "body:", body[:6000]])
        report.sections.append((f"page {number}", text))
