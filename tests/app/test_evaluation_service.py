"""The Evaluate page's service: prediction cache and jobs, the comparison, gallery crops, divergence."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from app.services import eval_divergence, eval_gallery, eval_scores, evaluation, settings
from hkd.cli import main as hkd_main

JOB_TIMEOUT = 240  # a tiny model's `hkd predict` subprocess on a busy 2-core CPU (torch import included)


# -- helpers the page and browser tests share ---------------------------------------------
def make_dataset(folder: Path, num: int = 6, seed: int = 7) -> Path:
    """A small SynthPed split (320 × 240, annotations.json + images/) at ``folder``."""
    from hkd.data.synth import SynthConfig, generate

    generate(folder, num, seed, SynthConfig.from_dict({"width": 320, "height": 240}), workers=1, progress=False)
    return folder


def wait_for_jobs(root: Path, timeout: float = JOB_TIMEOUT) -> list:
    """Poll the queue at ``root`` until no job is queued or running; returns the jobs."""
    from hkd.jobs import JobQueue

    queue = JobQueue(root=root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = queue.list()
        if jobs and all(job.finished for job in jobs):
            return jobs
        time.sleep(0.5)
    raise TimeoutError(f"jobs in {root} still running after {timeout} s: {[(j.id, j.state) for j in queue.list()]}")


def hkd_eval(gt: Path, dets: Path, capsys) -> dict:
    """What ``hkd eval --gt GT --dets DETS --json`` prints."""
    capsys.readouterr()
    assert hkd_main(["eval", "--gt", str(gt), "--dets", str(dets), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture()
def eval_env(studio_world, tmp_path, monkeypatch):
    monkeypatch.setenv("HKD_MODELS_DIR", str(studio_world["models"]))
    monkeypatch.setenv("HKD_SAMPLES_DIR", str(studio_world["samples"]))
    monkeypatch.setenv("HKD_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.setenv("HKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HKD_JOBS_DIR", str(tmp_path / "jobs"))
    return {**studio_world, "root": tmp_path}


@pytest.fixture()
def prepared(eval_env):
    """The GT of a 6-image split, as the page prepares it (without the app's dataset list)."""
    from hkd.data.datasets import open_dataset

    folder = make_dataset(eval_env["root"] / "data" / "val")
    gt = open_dataset(folder).coco_gt()
    gt_path = eval_env["root"] / "gt.json"
    gt_path.write_text(json.dumps(gt))
    return evaluation.prepared_from("test:val", "test val", None, gt, gt_path, folder / "images")


def counted(gt: dict) -> list[dict]:
    """The GTs compare_models counts: not ignored, at least 20 px tall."""
    return [a for a in gt["annotations"] if not a["ignore"] and a["height"] >= 20]


def far_box(gt: dict, image_id: int) -> list[float]:
    """An [x, y, w, h] box of image ``image_id`` that overlaps none of its annotations."""
    boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image_id]
    image = next(im for im in gt["images"] if im["id"] == image_id)
    for x in range(0, image["width"] - 20, 10):
        for y in range(0, image["height"] - 50, 10):
            if all(x + 20 <= bx or bx + bw <= x or y + 50 <= by or by + bh <= y for bx, by, bw, bh in boxes):
                return [float(x), float(y), 20.0, 50.0]
    raise AssertionError(f"no free spot in image {image_id}")


def ready_states(root: Path, gt: dict) -> tuple[list, dict]:
    """Hand-made predictions: the teacher finds every counted GT; the student every other one and
    makes one confident false positive on the first image."""
    people = counted(gt)
    teacher = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in people]
    student = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.8} for a in people[::2]]
    first = gt["images"][0]["id"]
    student.append({"image_id": first, "category_id": 1, "bbox": far_box(gt, first), "score": 0.95})
    states, files = [], {}
    for label, dets in (("teacher", teacher), ("student", student)):
        files[label] = root / f"{label}.json"
        files[label].write_text(json.dumps(dets))
        candidate = evaluation.Candidate(label, {"path": str(files[label]), "preset": None}, "models folder")
        states.append(evaluation.PredictionState(candidate, files[label], "ready"))
    return states, files


# -- the comparison -----------------------------------------------------------------------
def test_the_comparison_equals_hkd_eval_and_the_gallery_lists_each_disagreement(eval_env, prepared, capsys):
    states, files = ready_states(eval_env["root"], prepared.gt)
    result = evaluation.compare(prepared, states, fppi=0.3)
    for label, path in files.items():
        expected = hkd_eval(prepared.gt_path, path, capsys)
        assert result.report["models"][label]["mr"] == expected["mr"]
        assert result.report["models"][label]["ap50"] == pytest.approx(expected["ap50"])
    assert result.report["models"]["teacher"]["mr"]["All"] == 0.0
    assert result.report["models"]["student"]["mr"]["All"] > 0.0

    people = counted(prepared.gt)
    missed = eval_gallery.gallery(result, "teacher", "student", "missed")
    assert len(missed) == len(people[1::2])  # exactly the GTs left out of the student's file
    assert {tuple(r["box"]) for r in missed} == {(a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                   a["bbox"][1] + a["bbox"][3]) for a in people[1::2]}
    assert eval_gallery.gallery(result, "teacher", "student", "found") == []
    (fp,) = eval_gallery.gallery(result, "teacher", "student", "false_positive")
    assert fp["score_a"] == pytest.approx(0.95) and fp["image_id"] == prepared.gt["images"][0]["id"]

    tall = eval_gallery.gallery(result, "teacher", "student", "missed", height_bin="50-80")
    assert tall and all(50 <= r["height"] < 80 for r in tall) and len(tall) < len(missed)
    assert eval_gallery.gallery(result, "teacher", "student", "false_positive", visibility_bin="0.9+") == []

    crop = eval_gallery.case_crop(prepared, result, missed[0], "teacher", "student")
    assert crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[0] >= 200
    assert "teacher: 0.90" in eval_gallery.case_caption(missed[0], result)
    assert "student: 0.95" in eval_gallery.case_caption(fp, result) and "IoU with a GT 0.00" in eval_gallery.case_caption(
        fp, result)
    focus = eval_gallery.open_case(prepared, missed[0])
    assert focus["image_key"] == "file:" + (prepared.images_dir / missed[0]["file_name"]).resolve().as_posix()
    assert focus["box"] == missed[0]["box"] and focus["source"] == "evaluate"


def test_table_breakdowns_and_exports(eval_env, prepared):
    from hkd.models.checkpoint import update_metadata

    states, _ = ready_states(eval_env["root"], prepared.gt)
    # the table reads parameters (and a recorded latency) from the checkpoint headers
    costly = update_metadata(eval_env["models"] / "teacher.safetensors", eval_env["root"] / "data" / "costly.safetensors",
                             cost={"params": {"total": 2_500_000}, "flops": {"total": 10**9}, "flops_size": [640, 480],
                                   "latency": {"median_s": 0.25, "runs": 3, "threads": 2}})
    states[0].candidate.ref["path"] = str(costly)
    states[1].candidate.ref["path"] = str(eval_env["models"] / "student_hkd.safetensors")  # records no cost
    result = evaluation.compare(prepared, states, fppi=0.3)
    refs = {s.label: s.candidate.ref for s in states}
    from app.services import models

    rows = eval_scores.table_rows(result, refs, {models.info(refs["student"]).key: 0.0123})
    assert [r["model"] for r in rows] == ["teacher", "student"]
    assert rows[0]["MR⁻² All"] == result.report["models"]["teacher"]["mr"]["All"]
    assert rows[0]["params (M)"] == pytest.approx(2.5) and rows[1]["params (M)"] is None
    assert rows[0]["CPU latency (ms)"] == pytest.approx(250.0)  # recorded
    assert rows[1]["CPU latency (ms)"] == pytest.approx(12.3)  # measured in the session
    text = eval_scores.to_csv(rows)
    assert text.splitlines()[0].startswith("model,MR⁻² Reasonable,MR⁻² Small,MR⁻² Heavy,MR⁻² All,AP50,params (M)")
    assert len(text.splitlines()) == 3 and text.splitlines()[1].startswith("teacher,")
    breakdown = eval_scores.breakdown_rows(result)
    assert {r["by"] for r in breakdown} == {"height", "visibility"}
    student_height = [r for r in breakdown if r["model"] == "student" and r["by"] == "height"]
    assert sum(r["missed"] for r in student_height) == len(counted(prepared.gt)[1::2])
    bars = eval_scores.breakdown_figure(result, "height")
    assert [t.name for t in bars.data] == ["teacher", "student"]
    assert list(bars.data[1].y) == [r["miss_rate"] for r in student_height]
    curves = eval_scores.curves_figure(result)
    assert curves.layout.xaxis.type == "log" and curves.layout.yaxis.type == "log"
    assert "<html>" in eval_scores.figure_html(curves)
    assert eval_scores.curves_png(result)[:8] == b"\x89PNG\r\n\x1a\n"


# -- bad input ---------------------------------------------------------------------------
def test_detections_on_unknown_images_and_malformed_entries_are_skipped_by_name(eval_env, prepared, capsys):
    states, files = ready_states(eval_env["root"], prepared.gt)
    good = json.loads(files["student"].read_text())
    extra = [{"image_id": 999, "category_id": 1, "bbox": [1, 1, 10, 30], "score": 0.5},
             {"image_id": prepared.gt["images"][0]["id"], "category_id": 1, "bbox": [1, 1, -4, 30], "score": 0.5},
             {"image_id": prepared.gt["images"][0]["id"], "bbox": [1, 1, 10, 30]}]
    files["student"].write_text(json.dumps(good + extra))
    result = evaluation.compare(prepared, states, fppi=0.3)
    lines = "\n".join(result.skipped)
    assert f"{files['student']}: 1 detection(s) on images that are not in the ground truth (image_id 999)" in lines
    assert f"{files['student']}: 2 malformed detection(s) skipped" in lines
    files["student"].write_text(json.dumps(good))  # the rest is scored exactly as the clean file
    assert result.report["models"]["student"]["mr"] == hkd_eval(prepared.gt_path, files["student"], capsys)["mr"]

    files["teacher"].write_text('{"not": "a list"}')
    again = evaluation.compare(prepared, states, fppi=0.3)
    assert again.labels == ["student"]
    assert f"{files['teacher']}: not a COCO results list; teacher left out" in again.skipped


def test_a_checkpoint_without_pedestrians_is_refused_by_name(eval_env, prepared):
    from hkd.models.checkpoint import update_metadata

    cars = update_metadata(eval_env["models"] / "teacher.safetensors", eval_env["root"] / "data" / "cars.safetensors",
                           classes=["background", "car"])
    state = evaluation.prediction_state(evaluation.Candidate("cars", {"path": str(cars), "preset": None}, "upload"),
                                        prepared)
    assert state.state == "refused"
    assert str(cars) in state.message and "['background', 'car']" in state.message and "pedestrian" in state.message
    assert evaluation.launch(state, prepared) is state  # nothing is submitted
    assert not (eval_env["root"] / "jobs").exists() or not list((eval_env["root"] / "jobs").iterdir())


def test_a_broken_ground_truth_names_its_file(eval_env, prepared):
    gt = json.loads(prepared.gt_path.read_text())
    gt["annotations"][0]["bbox"] = [1, 2, "wide", 4]
    with pytest.raises(evaluation.EvaluationError, match=r"gt\.json.*annotations\[0\]"):
        evaluation.check_gt(gt, prepared.gt_path, "the test set")


# -- the prediction cache ------------------------------------------------------------------
def test_predictions_are_cached_per_checkpoint_dataset_and_n(eval_env, prepared):
    from hkd.models.meta import file_sha256

    teacher = eval_env["models"] / "teacher.safetensors"
    sha = file_sha256(teacher)
    path = evaluation.predictions_path(sha, prepared)
    assert path.is_relative_to(settings.cache_dir() / "predictions" / sha)
    first3 = evaluation.prepared_from(prepared.key, prepared.label, 3, prepared.gt, prepared.gt_path,
                                      prepared.images_dir)
    other = evaluation.prepared_from("test:other", prepared.label, None, prepared.gt, prepared.gt_path,
                                     prepared.images_dir)
    names = {path, evaluation.predictions_path(sha, first3), evaluation.predictions_path(sha, other),
             evaluation.predictions_path("0" * 64, prepared)}
    assert len(names) == 4
    assert evaluation.predictions_path(sha, prepared) == path  # stable


@pytest.mark.slow
def test_one_predict_job_per_entry_and_every_session_finds_its_result(eval_env, prepared):
    candidate = evaluation.Candidate("teacher", {"path": str(eval_env["models"] / "teacher.safetensors"),
                                                 "preset": None}, "models folder")
    small = evaluation.prepared_from(prepared.key, prepared.label, 2, prepared.gt, prepared.gt_path,
                                     prepared.images_dir)
    state = evaluation.prediction_state(candidate, small)
    assert state.state == "missing"
    started = evaluation.launch(state, small)
    assert started.pending and started.job_id
    again = evaluation.launch(evaluation.prediction_state(candidate, small), small)  # a second click, another session
    assert again.job_id == started.job_id
    jobs = wait_for_jobs(eval_env["root"] / "jobs")
    assert [j.state for j in jobs] == ["succeeded"], [evaluation._log_tail(j.id) for j in jobs]
    assert jobs[0].kind == "predict" and "--limit" in jobs[0].command
    done = evaluation.prediction_state(candidate, small)
    assert done.state == "ready" and done.path == started.path
    dets = evaluation.read_predictions(done.path)
    assert {d["image_id"] for d in dets} <= {im["id"] for im in prepared.gt["images"][:2]}
    assert evaluation.launch(done, small) == done  # ready: nothing more is started
    assert len(wait_for_jobs(eval_env["root"] / "jobs")) == 1


@pytest.mark.slow
def test_a_failed_job_reports_why_and_can_be_started_again(eval_env, prepared):
    candidate = evaluation.Candidate("teacher", {"path": str(eval_env["models"] / "teacher.safetensors"),
                                                 "preset": None}, "models folder")
    small = evaluation.prepared_from(prepared.key, prepared.label, 1, prepared.gt, prepared.gt_path,
                                     prepared.images_dir)
    first = prepared.images_dir / prepared.gt["images"][0]["file_name"]
    original = first.read_bytes()
    first.write_bytes(b"not an image at all")
    try:
        started = evaluation.launch(evaluation.prediction_state(candidate, small), small)
        wait_for_jobs(eval_env["root"] / "jobs")
        failed = evaluation.prediction_state(candidate, small)
        assert failed.state == "failed" and first.name in failed.message
    finally:
        first.write_bytes(original)
    retried = evaluation.launch(failed, small)
    assert retried.job_id != started.job_id
    wait_for_jobs(eval_env["root"] / "jobs")
    assert evaluation.prediction_state(candidate, small).state == "ready"


# -- checkpoints ----------------------------------------------------------------------------
def test_candidates_list_the_folder_and_finished_finetunes(eval_env, monkeypatch, tmp_path):
    from hkd.jobs import Job

    finetune = eval_env["models"] / "student_hkd.safetensors"

    def job(job_id, kind, state, outputs):
        return Job(id=job_id, kind=kind, name=f"run {job_id}", state=state, command=[], run="", created=0.0,
                   updated=0.0, outputs=outputs)

    class Queue:  # the queue's listing only: a real fine-tune takes minutes
        def list(self):
            return [job("a", "distill", "succeeded", {"checkpoint": str(finetune)}),
                    job("b", "distill", "running", {"checkpoint": str(finetune)}),
                    job("c", "predict", "succeeded", {"dets": str(tmp_path / "x.json")})]

    monkeypatch.setattr(evaluation, "queue", Queue)
    found = evaluation.candidates()
    labels = [c.label for c in found]
    assert labels == ["teacher", "student_hkd"]  # teacher first; the finished fine-tune is the same file: listed once
    finetune_copy = eval_env["root"] / "data" / "run" / "final.safetensors"
    finetune_copy.parent.mkdir(parents=True)
    finetune_copy.write_bytes(finetune.read_bytes())
    Queue.list = lambda self: [job("a", "distill", "succeeded", {"checkpoint": str(finetune_copy)})]
    found = {c.label: c for c in evaluation.candidates()}
    assert found["run a"].source == "fine-tune" and found["run a"].default
    assert found["teacher"].default and found["student_hkd"].default


# -- divergence ----------------------------------------------------------------------------
def test_divergence_of_failures_and_successes_is_measured_once_and_cached_on_disk(eval_env, prepared, monkeypatch):
    import hkd.analysis.divergence as divergence
    from app.services import models

    states, _ = ready_states(eval_env["root"], prepared.gt)
    result = evaluation.compare(prepared, states, fppi=0.3)
    cases = eval_divergence.divergence_cases(prepared, result, "teacher", "student", per_group=3)
    people = counted(prepared.gt)
    groups = [c.group for c in cases]
    assert groups == ["failure"] * 3 + ["success"] * 3
    failures = {c.box for c in cases if c.group == "failure"}
    successes = {c.box for c in cases if c.group == "success"}
    as_xyxy = lambda a: (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3])  # noqa: E731
    assert failures <= {as_xyxy(a) for a in people[1::2]}  # the student's file leaves these out
    assert successes <= {as_xyxy(a) for a in people[::2]}  # both find these
    assert all(Path(c.image_path).is_file() for c in cases)

    refs = {"teacher": {"path": str(eval_env["models"] / "teacher.safetensors"), "preset": None},
            "student": {"path": str(eval_env["models"] / "student_hkd.safetensors"), "preset": None}}
    path = eval_divergence.divergence_path(prepared, result, refs, "teacher", "student", per_group=3)
    assert path.is_relative_to(settings.cache_dir() / "divergence") and eval_divergence.read_divergence(path) is None
    assert path != eval_divergence.divergence_path(prepared, result, refs, "teacher", "student", per_group=4)
    calls = []
    data = eval_divergence.compute_divergence(path, models.load(refs["teacher"]), models.load(refs["student"]), cases,
                                         progress=lambda done, total: calls.append((done, total)))
    images = len({c.image_path for c in cases})
    assert calls[-1] == (images, images) and len(calls) == images  # one batch (both models' forwards) per image
    assert data["cases"] == {"failure": 3, "success": 3}
    levels = {r["level"] for r in data["rows"]}
    assert {"backbone.c3", "neck.p3", "roi.features"} <= levels
    assert {(r["level"], r["group"]) for r in data["rows"]} == {(lv, g) for lv in levels for g in ("failure", "success")}
    assert all(r["n"] <= 3 for r in data["rows"])
    # the same measure as the Features page's per-case profile, with an interval, and the successes kept as its norm
    assert all(r["low"] <= r["mean"] <= r["high"] for r in data["rows"] if r["mean"] == r["mean"])
    assert set(data["successes"]) == levels and all(len(v) <= 3 for v in data["successes"].values())

    monkeypatch.setattr(divergence, "distances_over_cases", lambda *a, **k: pytest.fail("measured twice"))
    again = eval_divergence.read_divergence(path)  # another session, a later visit: from the disk
    np.testing.assert_equal(again["rows"], data["rows"])  # NaN (a region without variance) equals NaN here
    chart = divergence.distance_chart(again["rows"])
    assert {t.name for t in chart.data} == {"failure", "success"}


def test_a_finished_finetune_in_the_model_pickers_is_listed_once_under_its_job_name(eval_env, monkeypatch):
    """models.available() offers finished fine-tunes too (as `job …` entries): Evaluate lists each once, named
    after its job, selected by default — not as the run folder's `final` checkpoint of the models folder."""
    from app.services import models
    from hkd.jobs import Job

    run = eval_env["root"] / "jobs" / "j1" / "run" / "checkpoints"
    run.mkdir(parents=True)
    final = run / "final.safetensors"
    final.write_bytes((eval_env["models"] / "student_hkd.safetensors").read_bytes())
    job = Job(id="j1", kind="distill", name="quick", state="succeeded", command=[], run=str(run.parent), created=0.0,
              updated=0.0, outputs={"checkpoint": str(final)})
    monkeypatch.setattr(evaluation.finetune.JobQueue, "list", lambda self, advance=True: [job])
    assert any(e.source == "job" and e.path == str(final) for e in models.available()[0])
    found = [c for c in evaluation.candidates() if c.ref["path"] == str(final)]
    assert [(c.label, c.source, c.default) for c in found] == [("quick", "fine-tune", True)]
