"""Evaluate answers "why" and keeps its place: intervals, the diagnosis jobs, stages on the gallery's cards,
and every choice back after another page or a reload (session state and query parameters)."""
from __future__ import annotations

import pytest

import json

from streamlit.testing.v1 import AppTest

from tests.app.studio import APP, TIMEOUT, captions, no_exceptions
from tests.app.test_evaluate_page import LIMIT, open_evaluate, run_predictions, seed_teacher, world  # noqa: F401
from tests.app.test_evaluation_service import wait_for_jobs


def _markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


@pytest.mark.slow
def test_intervals_diagnosis_and_stages_on_the_cards(world):  # noqa: F811
    seed_teacher(world)
    at = run_predictions(open_evaluate(world), world)
    no_exceptions(at)
    (scores,) = [df.value for df in at.dataframe if "MR⁻² Reasonable" in df.value.columns]
    cell = scores.set_index("model").loc["student_hkd", "MR⁻² Reasonable"]
    assert "(" in cell and "–" in cell, cell  # 82.55 (70.00–95.12): a 95 % interval beside the value
    (diffs,) = [df.value for df in at.dataframe if "pair (a − b)" in df.value.columns]
    assert set(diffs["MR⁻² verdict"]) <= {"within noise", "a better", "b better"}
    assert f"{LIMIT} images" in captions(at) and "within noise" in captions(at)

    # the teacher's file was written by hand: only the student can be diagnosed, in a background job
    assert at.button(key="eval_diagnose").label.startswith("Diagnose 2 checkpoint(s)")
    at.button(key="eval_diagnose").click().run()
    jobs = [j for j in wait_for_jobs(world["root"] / "jobs") if j.kind == "diagnose"]
    assert len(jobs) == 2 and all(j.state == "succeeded" for j in jobs), [(j.name, j.message) for j in jobs]
    at.run()
    no_exceptions(at)
    assert "eval_diagnose" not in [b.key for b in at.button]
    assert [c for c in at.get("plotly_chart") if c.proto.id and "eval_stages_chart" in str(c.proto.id)] or \
        any("Where the misses are lost" in json.dumps(json.loads(c.proto.spec)) for c in at.get("plotly_chart"))
    assert any(("lost at" in i.value or "misses no pedestrian" in i.value) for i in at.info)
    at.radio(key="eval_view").set_value("missed").run()
    assert "lost at" in _markdown(at)  # each card says where the compared model lost its pedestrian
    stages = {s for s in ("rpn", "roi_score", "nms", "localization") if f"lost at {s}" in _markdown(at)}
    at.selectbox(key="eval_stage").set_value(sorted(stages)[0]).run()
    no_exceptions(at)
    shown = _markdown(at)
    assert f"student_hkd: lost at {sorted(stages)[0]}" in shown
    diagnosis = list((world["root"] / "cache" / "diagnosis").rglob("diagnosis.json"))
    assert len(diagnosis) == 2 and {"operating_point", "cases", "summary", "pairs"} <= set(
        json.loads(diagnosis[0].read_text()))


@pytest.mark.slow
def test_the_page_keeps_its_place_across_pages_and_a_reload(world):  # noqa: F811
    seed_teacher(world)
    at = run_predictions(open_evaluate(world), world)
    at.radio(key="eval_view").set_value("found").run()
    at.select_slider(key="eval_fppi").set_value(0.3).run()
    no_exceptions(at)
    kept = dict(at.query_params)
    assert json.loads(kept["eval_limit"][0] if isinstance(kept["eval_limit"], list) else kept["eval_limit"]) == LIMIT

    at.switch_page("app_pages/models.py").run()
    at.switch_page("app_pages/evaluate.py").run()
    no_exceptions(at)
    assert at.number_input(key="eval_limit").value == LIMIT
    assert at.select_slider(key="eval_fppi").value == 0.3
    assert at.radio(key="eval_view").value == "found"
    assert set(at.multiselect(key="eval_models").value) == {"teacher", "student_hkd"}

    # a reload: a new session with the same URL
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for key, value in kept.items():
        fresh.query_params[key] = value[0] if isinstance(value, list) else value
    fresh.run()
    fresh.switch_page("app_pages/evaluate.py").run()
    no_exceptions(fresh)
    assert fresh.number_input(key="eval_limit").value == LIMIT and fresh.radio(key="eval_view").value == "found"


@pytest.mark.slow
def test_a_case_opened_in_detections_is_drawn_named_and_has_a_way_back(world):  # noqa: F811
    seed_teacher(world)
    at = run_predictions(open_evaluate(world), world)
    at.radio(key="eval_view").set_value("missed").run()
    at.segmented_control(key="eval_target").set_value("Detections").run()
    at.button(key="eval_open_0").click().run()
    no_exceptions(at)
    assert at.title[0].value == "Detections"
    (note,) = [i.value for i in at.info if i.value.startswith("The case:")]
    assert "finds" in note and "misses" in note  # what the case is, in words
    case = at.query_params["case"]
    case = case[0] if isinstance(case, list) else case
    assert case.count("|") == 3 and case.split("|")[2].endswith((".jpg", ".png"))  # the case's URL
    links = [e for e in at.sidebar if getattr(e, "proto", None) is not None and "Back to the gallery" in str(e.proto)]
    assert links, "no way back to the gallery"

    at.switch_page("app_pages/evaluate.py").run()
    no_exceptions(at)
    assert at.radio(key="eval_view").value == "missed" and at.segmented_control(key="eval_target").value == "Detections"

    # the same URL in a fresh session (a reload, or a shared link) opens the same case
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params["case"] = case
    fresh.run()
    no_exceptions(fresh)
    assert fresh.session_state["focus"]["box"] == at.session_state["focus"]["box"]


def test_an_image_name_that_leaves_the_dataset_is_refused_on_the_page(world, tmp_path):  # noqa: F811
    from app.services import eval_gallery, evaluation
    from hkd.data.datasets import DatasetError
    from tests.app.test_evaluate_page import dataset_choice

    outside = tmp_path / "outside.png"
    outside.write_bytes(b"not read")
    prepared = evaluation.prepare(dataset_choice(world["dataset"]), LIMIT)
    for name in ("../../outside.png", str(outside)):
        try:
            eval_gallery.image_path(prepared, name)
        except DatasetError as exc:
            assert "leaves the images folder" in str(exc)
        else:
            raise AssertionError(f"{name} was accepted")
    link = world["dataset"] / "images" / "link.png"
    link.symlink_to(outside)
    try:
        eval_gallery.image_path(prepared, "link.png")
    except DatasetError as exc:
        assert "outside the images folder" in str(exc)
    else:
        raise AssertionError("a symlink out of the images folder was accepted")


@pytest.mark.slow
def test_a_full_disk_does_not_cost_the_comparison(world, monkeypatch):  # noqa: F811
    import errno

    from app.services import evaluation
    from hkd.results import store as result_store

    seed_teacher(world)
    at = run_predictions(open_evaluate(world), world)
    evaluation._compare.clear()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(result_store, "write_atomic", full)
    at.select_slider(key="eval_fppi").set_value(0.3).run()  # a comparison not cached yet
    no_exceptions(at)
    assert any("MR⁻² Reasonable" in df.value.columns for df in at.dataframe)
    assert "not cached on disk" in _markdown(at) and "No space left on device" in _markdown(at)


def test_a_negative_difference_is_shown_with_its_interval():
    from app.services.diagnosis import _cell

    assert _cell({"point": -3.49, "low": -6.1, "high": -1.2}, difference=True) == "-3.49 (-6.10–-1.20)"
    assert _cell({"point": -100.0, "low": -100.0, "high": -100.0}) == "—"  # MR⁻² -100: no value


def test_the_scores_csv_keeps_every_column_and_adds_the_interval_bounds(world):  # noqa: F811
    from app import evaluate_sections
    from app.services import eval_scores, evaluation
    from tests.app.test_evaluate_page import dataset_choice

    seed_teacher(world)
    run_predictions(open_evaluate(world), world)
    prepared = evaluation.prepare(dataset_choice(world["dataset"]), LIMIT)
    ready = [s for s in (evaluation.prediction_state(c, prepared) for c in evaluation.candidates()
                         if c.label in ("teacher", "student_hkd")) if s.state == "ready"]
    result = evaluation.compare(prepared, ready)
    refs = {s.label: s.candidate.ref for s in ready}
    plain = eval_scores.table_rows(result, refs, {})
    rows = evaluate_sections._plain_rows(result, refs)
    assert [{k: v for k, v in r.items() if not k.endswith((" low", " high"))} for r in rows] == plain
    row = rows[0]
    assert row["MR⁻² Reasonable low"] <= row["MR⁻² Reasonable"] <= row["MR⁻² Reasonable high"]
    assert row["AP50 low"] <= row["AP50"] <= row["AP50 high"]
