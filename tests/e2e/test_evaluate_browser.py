"""Evaluate in a real browser: predictions as a background job, the table and a curve, a gallery click to Features."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.services.eval_gallery import PAGE_SIZE
from tests.app.test_evaluation_service import counted, make_dataset
from tests.e2e.server import start_server, stop_server, wait_healthy
from tests.e2e.test_browser import WAIT_MS, go_to, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LIMIT = 4


def make_world(studio_world, root: Path, limit: int = LIMIT) -> dict:
    """Its own jobs, cache and data roots: a 6-image SynthPed split, and the teacher's predictions on
    its first 4 images already cached (every counted GT at 0.9, so the gallery has failures of the
    random-init student); the student's predictions are left to the page's background job."""
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
        prepared = evaluation.prepare(choice, limit)
        path = evaluation.predictions_path(file_sha256(studio_world["models"] / "teacher.safetensors"), prepared)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
                                    for a in counted(prepared.gt)]))
    return {"env": env, "label": choice.label, "folder": folder}


@pytest.fixture(scope="module")
def evaluate_world(studio_world, tmp_path_factory):
    return make_world(studio_world, tmp_path_factory.mktemp("evaluate"))


@pytest.fixture(scope="module")
def evaluate_server(evaluate_world, artifacts):
    proc, url = start_server(evaluate_world["env"], artifacts / "streamlit-evaluate.log")
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_server(proc)


def evaluate_page(browser, server: str, dataset_label: str, limit: int):
    """A fresh page on Evaluate with ``dataset_label`` picked, its first ``limit`` images, and the
    one missing checkpoint's predictions started (the others are cached by the world)."""
    page = browser.new_page(viewport={"width": 1440, "height": 3400})
    page.set_default_timeout(WAIT_MS)
    page.goto(server)
    page.get_by_role("heading", name="Models", level=1).wait_for()
    go_to(page, "Evaluate")
    wait_idle(page)
    page.locator('[data-testid="stSelectbox"]', has_text="Dataset").first.click()
    page.get_by_role("option", name=dataset_label).click()
    wait_idle(page)
    field = page.get_by_label("First N images (0 = all)")
    field.fill(str(limit))
    field.press("Enter")
    run = page.get_by_role("button", name="Run predictions for 1 checkpoint(s)")
    run.wait_for()
    run.click()
    return page


def test_evaluate_then_open_a_failure_in_features(evaluate_server, evaluate_world, browser, artifacts):
    page = evaluate_page(browser, evaluate_server, evaluate_world["label"], LIMIT)
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


# -- issue #28: a case's stages, the case on Features, and back to the gallery where it was -------------
WHY_LIMIT = 6  # every image of the split: enough cases for two gallery pages and successes to place one among


@pytest.fixture(scope="module")
def why_world(studio_world, tmp_path_factory):
    """A world of its own with three checkpoints: teacher and student_hkd with predictions written by hand
    (the teacher finds every counted GT, the student every third, so that the pair has failures for two
    gallery pages and successes for the divergence: random-init models find nothing), and student_baseline
    (student_hkd's weights, other metadata, so another file) left to the page's predict job."""
    from hkd.models.checkpoint import update_metadata
    from hkd.models.meta import file_sha256

    root = tmp_path_factory.mktemp("evaluate_why")
    models = root / "checkpoints"
    models.mkdir()
    for name in ("teacher", "student_hkd"):
        shutil.copy(studio_world["models"] / f"{name}.safetensors", models)
    update_metadata(models / "student_hkd.safetensors", models / "student_baseline.safetensors",
                    notes="random init for tests: the no-KD partner")
    world = make_world({**studio_world, "models": models}, root, limit=WHY_LIMIT)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in world["env"].items():
            patch.setenv(name, value)
        from app.services import datasets, evaluation

        (choice,) = [c for c in datasets.choices() if Path(c.path).resolve() == world["folder"].resolve()]
        prepared = evaluation.prepare(choice, WHY_LIMIT)
        path = evaluation.predictions_path(file_sha256(models / "student_hkd.safetensors"), prepared)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.8}
                                    for a in counted(prepared.gt)[::3]]))
    return world


@pytest.fixture(scope="module")
def why_server(why_world, artifacts):
    proc, url = start_server(why_world["env"], artifacts / "streamlit-evaluate-why.log")
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_server(proc)


INTERVAL = re.compile(r"\d+\.\d+ \(\d+\.\d+–\d+\.\d+\)")
STAGE_TEXT = re.compile(r"^(found|lost at (rpn|roi_score|nms|localization|dense_head)\b)")


def gallery_state(page) -> dict:
    """What the gallery shows: the chosen view, the page number, and each card's caption and stage line."""
    return page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        const checked = main.querySelector('[data-testid="stRadio"] input[type="radio"]:checked');
        const pageBox = [...main.querySelectorAll('[data-testid="stNumberInput"]')]
            .find(n => n.innerText.startsWith('Page (of'));
        return {
            view: checked ? checked.closest('label').innerText.trim() : null,
            page: pageBox ? pageBox.querySelector('input').value : null,
            captions: [...main.querySelectorAll('[data-testid="stImageCaption"]')].map(c => c.innerText.trim()),
            stages: [...main.querySelectorAll('[data-testid="stMarkdownContainer"] small')]
                .map(s => s.innerText.trim()),
        };
    }""")


CELLS_JS = ("() => [...document.querySelectorAll('[data-testid=\"stDataFrame\"] [role=gridcell]')]"
            ".map(c => c.textContent.trim())")


def table_cells(page, pattern: re.Pattern | None = None) -> list[str]:
    """The text of every cell of the page's tables (the grid's accessible copy of its canvas).

    The grid fills that copy a moment after the page goes idle, so with ``pattern`` this first waits (up to
    WAIT_MS) until some cell matches it, then reads the cells; the caller's assert still decides."""
    if pattern is not None:
        page.wait_for_function(
            "re => [...document.querySelectorAll('[data-testid=\"stDataFrame\"] [role=gridcell]')]"
            ".some(c => new RegExp(re).test(c.textContent.trim()))", arg=pattern.pattern, polling=250)
    return page.evaluate(CELLS_JS)


def has_case_profile() -> bool:
    """The Features page draws a case's per-level percentile profile when the app has it (issue #28, item 4)."""
    try:
        from app.services import case_profile
    except ImportError:
        return False
    return callable(getattr(case_profile, "profile", None))


def test_a_case_stages_features_and_back_to_the_same_gallery_page(why_server, why_world, browser, artifacts):
    page = evaluate_page(browser, why_server, why_world["label"], WHY_LIMIT)  # runs student_baseline's
    page.get_by_role("heading", name="Failure gallery").wait_for()
    wait_idle(page)
    # the Scores table's values come with their 95 % interval, and the page says on how many images
    page.get_by_text(f"{WHY_LIMIT} images").first.wait_for()
    page.get_by_text("the 95 % interval over").first.wait_for()
    cells = table_cells(page, INTERVAL)
    assert any(INTERVAL.fullmatch(c) for c in cells), cells  # e.g. 82.55 (70.00–95.12)
    cells = table_cells(page, re.compile(r"^(within noise|a better|b better)$"))
    assert {"within noise", "a better", "b better"} & set(cells), cells  # the paired differences' verdicts

    # where the misses are lost: the three models diagnosed by background jobs, then a headline and stacked bars
    page.get_by_role("button", name=re.compile(r"^Diagnose 3 checkpoint\(s\)")).click()
    headline = page.locator('[data-testid="stAlertContentInfo"]').filter(
        has_text=re.compile(r"pedestrians teacher finds and student_hkd misses|misses no pedestrian"))
    headline.first.wait_for()
    page.wait_for_function("() => ![...document.querySelectorAll('[data-testid=\"stProgress\"]')]"
                           ".some(p => p.innerText.includes('Diagnosing'))", polling=1000)  # all three done
    wait_idle(page)
    expect(page.get_by_role("button", name=re.compile(r"^Diagnose"))).to_have_count(0)
    stacked = page.evaluate("() => { const p = document.querySelector('.st-key-eval_stages_chart .js-plotly-plot');"
                            " return p ? {mode: p.layout.barmode, models: p.data[0].x, stages: p.data.map(d => d.name)}"
                            " : null }")
    assert stacked and stacked["mode"] == "stack", stacked  # each model's misses stacked by the stage that lost them
    assert set(stacked["models"]) == {"teacher", "student_baseline", "student_hkd"}, stacked
    assert {"rpn", "roi_score", "nms", "localization"} <= set(stacked["stages"]), stacked

    # the divergence over the dataset: its successes are the norm a case is placed in on Features
    page.get_by_role("button", name="Measure divergence").click()
    measured = page.get_by_text(re.compile(r"\d+ failure cases · \d+ success cases \(cached on disk\)"))
    measured.wait_for()
    wait_idle(page)
    successes = int(re.search(r"(\d+) success cases", measured.inner_text()).group(1))
    assert successes >= 3, measured.inner_text()  # enough to place a case among them

    # the "missed" view, page 2 of the gallery: every card says where each model lost its pedestrian
    page.get_by_role("radio", name="teacher finds, student_hkd misses").check(force=True)
    wait_idle(page)
    pager = page.get_by_label(re.compile(r"^Page \(of 2; \d+ cases\)"))
    cases = int(re.search(r"(\d+) cases", page.get_by_text(re.compile(r"^Page \(of 2;")).inner_text()).group(1))
    pager.fill("2")
    pager.press("Enter")
    # the rerun has drawn page 2 when the page's cards are the rest of the cases (stale cards stay meanwhile)
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=\"stImageCaption\"]').length"
                           f" === {cases - PAGE_SIZE}")
    wait_idle(page)
    before = gallery_state(page)
    assert before["view"] == "teacher finds, student_hkd misses" and before["page"] == "2", before
    assert len(before["captions"]) == cases - PAGE_SIZE and len(before["stages"]) == len(before["captions"]), before
    for line in before["stages"]:
        parts = dict(part.split(": ", 1) for part in line.split(" · "))
        assert set(parts) == {"teacher", "student_baseline", "student_hkd"}, line
        assert all(STAGE_TEXT.match(stage) for stage in parts.values()), line
        assert parts["student_hkd"].startswith("lost at"), line  # the view is the student's misses
    page.screenshot(path=str(artifacts / "evaluate_diagnosis.png"), full_page=True)

    # the first case of page 2, in Features: its image, its box, what it is, and how far it is per level
    page.get_by_role("button", name="Open in Features").first.click()
    page.get_by_role("heading", name="Features", level=1).wait_for()
    assert "case=" in page.url
    described = page.locator('[data-testid="stAlertContentInfo"]').filter(has_text="box from Evaluate").first
    described.wait_for()
    text = described.inner_text()
    assert "teacher finds, student_hkd misses" in text and before["stages"][0] in text, (text, before["stages"][0])
    page.get_by_text(re.compile(r"Image \d{6}\.jpg")).first.wait_for()
    page.get_by_text("7×7 pooled cells").first.wait_for()
    wait_idle(page)
    page.screenshot(path=str(artifacts / "evaluate_case_in_features.png"), full_page=True)
    if has_case_profile():  # the case's percentile per level among the successes (issue #28, item 4)
        page.get_by_role("heading", name="This case against the norm").wait_for()
        wait_idle(page)
        said = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="success").all_inner_texts()
        assert page.locator(".st-key-feat_case_profile .js-plotly-plot").count() == 1, said
        assert any(f"{successes} successes of {why_world['label']} (Evaluate)" in line for line in said), said

    # back: the same view, page and cards, with the stages, and nothing recomputed
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name="Back to the gallery").click()
    page.get_by_role("heading", name="Evaluate", level=1).wait_for()
    page.get_by_role("heading", name="Failure gallery").wait_for()
    wait_idle(page)
    expect(page.get_by_role("button", name=re.compile(r"^(Run predictions|Diagnose)"))).to_have_count(0)
    after = gallery_state(page)
    assert after == before, (before, after)
    page.screenshot(path=str(artifacts / "evaluate_back_to_gallery.png"), full_page=True)
    page.close()
