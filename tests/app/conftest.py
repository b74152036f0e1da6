"""AppTest fixtures: the app pointed at the tiny studio world (see tests/conftest.py)."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.studio import APP, TIMEOUT


@pytest.fixture()
def studio_env(studio_world, monkeypatch, tmp_path):
    monkeypatch.setenv("HKD_MODELS_DIR", str(studio_world["models"]))
    monkeypatch.setenv("HKD_SAMPLES_DIR", str(studio_world["samples"]))
    monkeypatch.delenv("HKD_DATA_ROOTS", raising=False)
    # jobs, caches (predictions, comparisons, ONNX exports) of this test only
    monkeypatch.setenv("HKD_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("HKD_CACHE_DIR", str(tmp_path / "cache"))
    return studio_world


@pytest.fixture()
def app(studio_env) -> AppTest:
    """The app, run once (Models page)."""
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()


@pytest.fixture()
def open_page(studio_env):
    """``open_page("detections")`` → an AppTest showing that page."""

    def open_(name: str) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
        return at.switch_page(f"app_pages/{name}.py").run()

    return open_
