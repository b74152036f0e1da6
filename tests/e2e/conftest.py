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
