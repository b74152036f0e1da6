"""Evaluate page: predictions as background jobs, the table equal to `hkd eval`, curves, bars, gallery, divergence."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.services import eval_gallery, evaluation
from hkd.models.meta import file_sha256
from tests.app.studio import APP, TIMEOUT, captions, images, no_exceptions
from tests.app.test_evaluation_service import counted, hkd_eval, make_dataset, wait_for_jobs

LIMIT = 4  # the first 4 images of the split


@pytest.fixture()
def world(studio_world, tmp_path, monkeypatch):
    """The tiny studio checkpoints, a 6-image SynthPed split under HKD_DATA_ROOTS, empty jobs and cache."""
    monkeypatch.setenv("HKD_MODELS_DIR", str(studio_world["models"]))
    monkeypatch.setenv("HKD_SAMPLES_DIR", str(studio_world["samples"]))
    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.setenv("HKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HKD_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("HKD_SYNTHPED_DIR", str(tmp_path / "synthped"))  # no SynthPed val on disk
    folder = make_dataset(tmp_path / "data" / "pedestrians")
    return {**studio_world, "root": tmp_path, "dataset": folder}


def dataset_choice(folder: Path):
    from app.services import datasets

    found = [c for c in datasets.choices() if Path(c.path).resolve() == folder.resolve()]
    assert found, f"{folder} is not offered: {[c.path for c in datasets.choices()]}"
    return found[0]


def open_evaluate(world) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("app_pages/evaluate.py").run()
    no_exceptions(at)
    choice = dataset_choice(world["dataset"])
    at.selectbox(key="eval_dataset").set_value(choice.key)
    at.number_input(key="eval_limit").set_value(LIMIT).run()
    no_exceptions(at)
    return at


def seed_teacher(world) -> tuple[Path, dict]:
    """The teacher's cached predictions, written by hand: every counted GT at score 0.9 (a random-init
    model finds next to nothing, and the gallery needs pedestrians one model finds and the other misses)."""
    prepared = evaluation.prepare(dataset_choice(world["dataset"]), LIMIT)
    teacher = world["models"] / "teacher.safetensors"
    path = evaluation.predictions_path(file_sha256(teacher), prepared)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
                                for a in counted(prepared.gt)]))
    return path, prepared


def run_predictions(at: AppTest, world) -> AppTest:
    at.button(key="eval_predict").click().run()
    no_exceptions(at)
    jobs = wait_for_jobs(world["root"] / "jobs")
    assert all(job.state == "succeeded" for job in jobs), [(j.name, j.message) for j in jobs]
    return at.run()


def _leading_number(cell):
    """``12.8 (11.1–14.6)`` → 12.8; "—" (no value) → NaN; numbers pass through."""
    if isinstance(cell, str):
        return float("nan") if cell.strip() in ("—", "") else float(cell.split(" ")[0])
    return cell


def table(at: AppTest):
    """The Scores table with each cell's point value (the table shows a 95 % interval beside it)."""
    (frame,) = [df for df in at.dataframe if "MR⁻² Reasonable" in df.value.columns]
    shown = frame.value.set_index("model")
    for column in shown.columns:
        if column.startswith("MR⁻²") or column in ("AP50", "CPU latency (ms)"):
            shown[column] = shown[column].map(_leading_number)
    return shown


@pytest.mark.slow
def test_predictions_run_as_jobs_and_the_table_equals_hkd_eval(world, capsys):
    at = open_evaluate(world)
    assert set(at.multiselect(key="eval_models").value) == {"teacher", "student_hkd"}
    assert at.button(key="eval_predict").label.startswith(f"Run predictions for 2 checkpoint(s) on {LIMIT} images")
    assert not at.dataframe  # nothing to show before the predictions exist
    at = run_predictions(at, world)
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    jobs = wait_for_jobs(world["root"] / "jobs")
    assert sorted(j.kind for j in jobs) == ["predict", "predict"]

    prepared = evaluation.prepare(dataset_choice(world["dataset"]), LIMIT)
    assert prepared.num_images == LIMIT
    shown = table(at)
    for label in ("teacher", "student_hkd"):
        path = evaluation.predictions_path(file_sha256(world["models"] / f"{label}.safetensors"), prepared)
        expected = hkd_eval(prepared.gt_path, path, capsys)
        for setup, value in expected["mr"].items():
            cell = shown.loc[label, f"MR⁻² {setup}"]
            # as shown: 2 decimals (NaN: no GT)
            assert (value < 0 and cell != cell) or cell == pytest.approx(value, abs=0.0051), (label, setup)
        assert shown.loc[label, "AP50"] == pytest.approx(expected["ap50"], abs=0.00051) or expected["ap50"] < 0
    assert len(at.get("plotly_chart")) >= 3  # curves, miss rate by height and by visibility
    assert {b.label for b in at.get("download_button")} >= {"Scores (CSV)", "Breakdowns (CSV)", "Curves (HTML)",
                                                            "Curves (PNG)"}
    assert shown["CPU latency (ms)"].isna().all()  # the test checkpoints record none
    at.button(key="eval_measure_latency").click().run()
    no_exceptions(at)
    assert (table(at)["CPU latency (ms)"].astype(float) > 0).all()

    # a second session: served from the disk cache, no new job
    again = open_evaluate(world)
    assert "eval_predict" not in [b.key for b in again.button]
    assert len(table(again)) == 2 and len(wait_for_jobs(world["root"] / "jobs")) == 2


@pytest.mark.slow
def test_a_gallery_click_opens_features_on_that_image_with_the_box(world):
    seed_teacher(world)
    at = open_evaluate(world)
    assert at.button(key="eval_predict").label.startswith("Run predictions for 1 checkpoint(s)")  # the student's
    at = run_predictions(at, world)
    no_exceptions(at)
    at.radio(key="eval_view").set_value("missed").run()
    shown = [c for c in captions(at).splitlines() if "teacher: 0.90" in c]
    assert shown, captions(at)
    assert len(images(at)) == min(eval_gallery.PAGE_SIZE, len(shown))

    at.button(key="eval_open_0").click().run()
    no_exceptions(at)
    focus = at.session_state["focus"]
    assert focus["source"] == "evaluate" and focus["image_key"].startswith("file:")
    assert Path(focus["image_key"][len("file:"):]).parent == world["dataset"] / "images"
    assert at.session_state["image_key"] == focus["image_key"]
    assert at.title[0].value == "Features"
    assert at.selectbox(key="feat_level").value == "roi.features"  # the box's region, selected
    assert at.selectbox(key="feat_box").value == "focus"
    assert any("box from Evaluate" in i.value for i in at.info)


@pytest.mark.slow
def test_bins_filter_the_gallery_and_divergence_is_cached(world):
    seed_teacher(world)
    at = run_predictions(open_evaluate(world), world)
    at.radio(key="eval_view").set_value("missed").run()
    pages, cases = map(int, re.fullmatch(r"Page \(of (\d+); (\d+) cases\)", at.number_input(key="eval_page").label)
                       .groups())
    assert pages == 2 and eval_gallery.PAGE_SIZE < cases <= 2 * eval_gallery.PAGE_SIZE
    at.number_input(key="eval_page").set_value(2).run()
    assert len(images(at)) == cases - eval_gallery.PAGE_SIZE and at.button(key=f"eval_open_{eval_gallery.PAGE_SIZE}")

    def heights() -> list[float]:
        return [float(h) for h in re.findall(r"· h (\d+) px", captions(at))]

    everything = heights()
    at.selectbox(key="eval_height_bin").set_value("30-50").run()
    no_exceptions(at)
    assert heights() and all(30 <= h < 50 for h in heights())
    assert len(heights()) < len(everything) or all(30 <= h < 50 for h in everything)
    at.selectbox(key="eval_visibility_bin").set_value("0.9+").run()
    assert all(float(v) >= 0.9 for v in re.findall(r"vis (\d\.\d+)", captions(at)))
    at.selectbox(key="eval_height_bin").set_value(None)
    at.selectbox(key="eval_visibility_bin").set_value(None).run()
    assert at.button(key="eval_open_0").label == "Open in Features"
    at.segmented_control(key="eval_target").set_value("Detections").run()
    assert at.button(key="eval_open_0").label == "Open in Detections"

    at.slider(key="eval_div_cases").set_value(4).run()
    at.button(key="eval_divergence").click().run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    assert "failure cases" in captions(at) and "(cached on disk)" in captions(at)
    assert list((world["root"] / "cache" / "divergence").glob("*.json"))
    again = open_evaluate(world)
    again.radio(key="eval_view").set_value("missed")
    again.slider(key="eval_div_cases").set_value(4).run()
    assert "eval_divergence" not in [b.key for b in again.button]  # drawn from the disk cache
    assert "(cached on disk)" in captions(again)

    again.segmented_control(key="eval_target").set_value("Attention").run()
    again.button(key="eval_open_1").click().run()
    no_exceptions(again)
    assert again.title[0].value == "Attention" and again.session_state["focus"]["source"] == "evaluate"


def test_bad_inputs_are_named_and_the_rest_goes_on(world):
    from hkd.models.checkpoint import update_metadata

    update_metadata(world["models"] / "teacher.safetensors", world["root"] / "data" / "cars.safetensors",
                    classes=["background", "car"])
    path, prepared = seed_teacher(world)
    rows = json.loads(path.read_text())
    path.write_text(json.dumps(rows + [{"image_id": 4242, "category_id": 1, "bbox": [1, 1, 9, 30], "score": 0.5}]))
    at = open_evaluate(world)
    st_models = at.multiselect(key="eval_models")
    assert "cars" not in st_models.options  # not in the models folder: upload it …
    at.session_state["uploaded_checkpoints"] = [str(world["root"] / "data" / "cars.safetensors")]
    at.run()
    at.multiselect(key="eval_models").select("cars").run()
    no_exceptions(at)
    errors = "\n".join(e.value for e in at.error)
    assert "cars.safetensors" in errors and "do not include pedestrians" in errors
    # the teacher's file has a detection on an image the GT does not have: skipped, named, the rest scored
    body = "\n".join(m.value for m in at.markdown)
    assert f"{path}: 1 detection(s) on images that are not in the ground truth (image_id 4242)" in body
    assert "teacher" in table(at).index


@pytest.mark.slow
def test_a_broken_box_and_an_unreadable_image_are_named(world):
    folder = make_dataset(world["root"] / "data" / "broken", num=3, seed=11)
    annotations = json.loads((folder / "annotations.json").read_text())
    annotations["annotations"][0]["bbox"][2] = -5  # a negative width
    (folder / "annotations.json").write_text(json.dumps(annotations))
    unreadable = folder / "images" / annotations["images"][1]["file_name"]
    unreadable.write_bytes(b"\x00 not a JPEG")

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("app_pages/evaluate.py").run()
    at.selectbox(key="eval_dataset").set_value(dataset_choice(folder).key).run()
    no_exceptions(at)
    warnings = "\n".join(w.value for w in at.warning)
    assert str(folder / "annotations.json") in warnings and "dropped 1 of" in warnings
    assert "non-positive width or height" in warnings
    at.multiselect(key="eval_models").set_value(["student_hkd"]).run()
    at.button(key="eval_predict").click().run()
    (job,) = wait_for_jobs(world["root"] / "jobs")
    assert job.state == "failed"
    at.run()
    no_exceptions(at)
    errors = "\n".join(e.value for e in at.error)
    assert "student_hkd" in errors and unreadable.name in errors
    assert at.button(key="eval_predict").label.startswith("Run predictions for 1 checkpoint(s)")  # can be retried


def test_a_synthped_split_not_on_disk_offers_its_generation(world):
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("app_pages/evaluate.py").run()
    no_exceptions(at)
    assert at.selectbox(key="eval_dataset").value == "synthped:val"  # the default, not generated here
    assert any("is not on disk yet" in i.value for i in at.info)
    assert at.button(key="eval_generate").label == "Generate it now (background job)"
    assert not at.dataframe and "eval_models" not in [m.key for m in at.multiselect]
