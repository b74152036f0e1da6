"""The Distill page under AppTest: launch a real (tiny) fine-tune job, see it finish, pick its checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
from hkd.models.presets import build_detector
from hkd.jobs import JobQueue
from hkd.train.run_folder import RunFolder
from tests.app.studio import APP, TIMEOUT, copy_models, no_exceptions
from tests.train.conftest import write_tiny_dataset


@pytest.fixture()
def distill_env(studio_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HKD_JOBS_DIR", str(tmp_path / "jobs"))
    synthped = tmp_path / "synthped"
    write_tiny_dataset(synthped / "train_small", n=4)
    write_tiny_dataset(synthped / "val", n=10, seed=1)
    monkeypatch.setenv("HKD_SYNTHPED_DIR", str(synthped))
    return {**studio_env, "jobs": tmp_path / "jobs", "tmp": tmp_path}


def open_distill() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    return at.switch_page("app_pages/distill.py").run()


def wait_done(queue: JobQueue, timeout: float = 300) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = queue.list()
        if jobs and all(j.finished for j in jobs):
            return jobs
        time.sleep(1)
    raise AssertionError("jobs still running: " + "\n".join(queue.log_tail(j.id) for j in queue.list()))


@pytest.mark.slow
def test_quick_demo_launches_a_job_whose_checkpoint_joins_the_pickers(distill_env):
    at = open_distill()
    no_exceptions(at)
    assert at.selectbox(key="distill_preset").value.startswith("Quick demo")
    assert any("No fine-tunes yet" in i.value for i in at.info)
    yaml_text = "\n".join(c.value for c in at.code)
    assert "teacher:" in yaml_text and "roi.logits" in yaml_text and "init:" in yaml_text
    at.number_input(key="distill_steps").set_value(2)
    at.number_input(key="distill_val_images").set_value(10)
    at.number_input(key="distill_threads").set_value(1)
    at.text_input(key="distill_name").set_value("tiny-demo")
    at.button(key="distill_launch").click().run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    assert any("is running" in s.value or "is queued" in s.value for s in at.success)
    queue = JobQueue(distill_env["jobs"])
    (job,) = wait_done(queue)
    assert job.state == "succeeded", queue.log_tail(job.id)
    assert job.kind == "distill" and job.name == "tiny-demo"
    at.run()
    no_exceptions(at)
    assert any("tiny-demo · succeeded" in h.value for h in at.subheader)
    assert at.get("plotly_chart")  # the loss curves
    # the finished checkpoint is offered on Models, named after its job, with its provenance
    models = at.switch_page("app_pages/models.py").run()
    no_exceptions(models)
    student_box = models.selectbox(key="models_student")
    assert any(f"job tiny-demo ({job.id})" in label for label in student_box.options), student_box.options
    student_box.set_value(str(RunFolder(job.run).checkpoint("final")))
    models.run()
    no_exceptions(models)
    tables = "\n".join(str(t.value) for t in models.table)
    assert f"tiny-demo ({job.id})" in tables and "teacher.safetensors" in tables


def test_a_pair_that_cannot_be_distilled_is_refused_before_launch(distill_env, tmp_path, monkeypatch):
    models = copy_models(distill_env, tmp_path / "models")
    odd = build_detector("hkd_frcnn_lite2.teacher", min_size=96, max_size=128).eval()
    save_checkpoint(models / "teacher.safetensors", odd,
                    CheckpointMeta(preset="hkd_frcnn_lite2.teacher", classes=["background", "car"], min_size=96,
                                   max_size=128))
    monkeypatch.setenv("HKD_MODELS_DIR", str(models))
    at = open_distill()
    at.button(key="distill_launch").click().run()
    no_exceptions(at)
    assert any("Not launched" in e.value and "share its classes" in e.value for e in at.error)
    assert JobQueue(distill_env["jobs"]).ids() == []


def test_a_missing_dataset_offers_to_generate_it(distill_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HKD_SYNTHPED_DIR", str(tmp_path / "empty"))
    at = open_distill()
    no_exceptions(at)
    assert any("not generated yet" in w.value for w in at.warning)
    assert at.button(key="distill_launch").disabled
    assert at.button(key="distill_generate_synthped:train_small")


@pytest.mark.slow
def test_generating_the_data_keeps_the_form_open_and_then_enables_launch(distill_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HKD_SYNTHPED_DIR", str(tmp_path / "empty"))
    # enough images that the first generation is still running (and the second queued behind it) when the
    # page is read after the two clicks, however slow the page's own runs are on a busy CPU
    monkeypatch.setenv("HKD_SYNTHPED_SIZES", "train_small=150,val=3")
    at = open_distill()
    (form,) = [e for e in at.expander if e.label == "New fine-tune"]
    assert form.proto.expanded
    assert any("first 150 images" in o for o in at.selectbox(key="distill_train").options)
    at.button(key="distill_generate_synthped:train_small").click().run()
    no_exceptions(at)
    at.button(key="distill_generate_synthped:val").click().run()
    no_exceptions(at)
    (form,) = [e for e in at.expander if e.label == "New fine-tune"]
    assert form.proto.expanded  # a generation job is no fine-tune: the form and its progress stay in view
    assert at.button(key="distill_launch").disabled
    bars = [p.proto.text for p in at.get("progress")]
    assert any("synthped" in t.lower() or "SynthPed" in t for t in bars), bars
    assert not any("update" in t and "done" in t for t in bars)  # no promise of a later update: it is live
    queue = JobQueue(distill_env["jobs"])
    deadline = time.monotonic() + 600  # two generations, each loading SynthPed's resources, on a busy CPU
    while time.monotonic() < deadline and not all(j.finished for j in queue.list()):
        time.sleep(1)  # list() advances the queue: the second generation starts after the first
    assert [j.state for j in queue.list()] == ["succeeded", "succeeded"], [queue.log_tail(j) for j in queue.ids()]
    at.run()
    no_exceptions(at)
    assert not at.button(key="distill_launch").disabled
    assert not any("not generated yet" in w.value for w in at.warning)


def test_the_app_leaves_running_jobs_their_cores(monkeypatch):
    from types import SimpleNamespace

    from app.services import finetune

    jobs = [SimpleNamespace(state="running", threads=1), SimpleNamespace(state="succeeded", threads=4)]
    monkeypatch.setattr(finetune.JobQueue, "list", lambda self, advance=True: jobs)
    monkeypatch.setattr(finetune.os, "cpu_count", lambda: 4)
    assert finetune.app_threads() == 3
    jobs.append(SimpleNamespace(state="running", threads=8))
    assert finetune.app_threads() == 1  # never fewer than one


def shown_config(at: AppTest) -> dict:
    import yaml

    (text,) = [c.value for c in at.code if "model:" in c.value]
    return yaml.safe_load(text)


def pick_preset(at: AppTest, prefix: str) -> AppTest:
    box = at.selectbox(key="distill_preset")
    (label,) = [o for o in box.options if o.startswith(prefix)]
    box.set_value(label).run()
    no_exceptions(at)
    return at


def checked(cfg: dict, tmp_path, name: str) -> None:
    """The page's config passes every check a launch makes (without starting a process)."""
    from hkd.cli.train_job import check_run

    path = tmp_path / f"{name}.yaml"
    path.write_text(__import__("yaml").safe_dump(cfg))
    check_run("distill", path, [], tmp_path / f"{name}_run")


def test_trust_in_the_teacher_is_a_switch_on_every_soft_target_term(distill_env):
    at = open_distill()
    at.number_input(key="distill_steps").set_value(7).run()
    at = pick_preset(at, "HKD + trust")
    assert at.number_input(key="distill_steps").value == 800  # the fields start again from the new preset
    levels = shown_config(at)["distill"]["levels"]
    assert levels["roi.logits"]["trust"] == "label" and levels["roi.logits"]["wrong_weight"] == 0.0
    assert levels["rpn.objectness"]["trust"] == "label"
    assert "trust" not in levels["roi.deltas"]  # a regression term takes no trust
    at.selectbox(key="distill_trust").set_value("iou").run()
    no_exceptions(at)
    levels = shown_config(at)["distill"]["levels"]
    assert levels["roi.logits"]["trust"] == "iou" and "wrong_weight" not in levels["roi.logits"]
    at.selectbox(key="distill_trust").set_value("none").run()
    levels = shown_config(at)["distill"]["levels"]
    assert "trust" not in levels["roi.logits"] and "trust" not in levels["rpn.objectness"]
    # and on the full-HKD preset, which ships without it
    at = pick_preset(at, "Full HKD")
    at.selectbox(key="distill_trust").set_value("confidence").run()
    assert shown_config(at)["distill"]["levels"]["rpn.objectness"]["trust"] == "confidence"
    checked(shown_config(at), distill_env["tmp"], "trust")


def test_aux_heads_are_a_switch_and_their_checkpoint_resolves(distill_env):
    at = pick_preset(open_distill(), "HKD + self-supervised aux")
    cfg = shown_config(at)
    aux = cfg["distill"]["aux"]
    assert Path(aux["checkpoint"]).is_absolute() and Path(aux["checkpoint"]).name == "teacher_aux.safetensors"
    assert Path(aux["checkpoint"]).is_file()
    checked(cfg, distill_env["tmp"], "aux")
    at.number_input(key="distill_aux_scale").set_value(0.5).run()
    assert shown_config(at)["distill"]["aux"]["weight_kl"] == pytest.approx(0.5 * aux["weight_kl"])
    at.toggle(key="distill_aux").set_value(False).run()
    no_exceptions(at)
    assert "aux" not in shown_config(at)["distill"]


def test_online_needs_no_teacher_checkpoint(distill_env):
    at = pick_preset(open_distill(), "Online")
    assert not [s for s in at.selectbox if s.key == "distill_teacher"]  # no teacher picker
    at.number_input(key="distill_steps").set_value(40).run()
    no_exceptions(at)
    cfg = shown_config(at)
    assert "teacher" not in cfg and cfg["online"]["teacher_preset"] == "hkd_frcnn_lite2.teacher"
    assert 0 <= cfg["online"]["kd_after"] < 40
    assert cfg["model"].get("init") is None  # the online student starts from ImageNet backbones by default
    checked(cfg, distill_env["tmp"], "online")


def test_the_single_stage_preset_picks_the_single_stage_pair_and_its_hierarchies(distill_env, tmp_path, monkeypatch):
    from tests.app.studio import write_retina_pair

    models = copy_models(distill_env, tmp_path / "models")  # the two-stage pair the Models page starts with
    write_retina_pair(models, ("retina_teacher", "retina_student_baseline"))
    monkeypatch.setenv("HKD_MODELS_DIR", str(models))
    at = open_distill()
    assert Path(at.selectbox(key="distill_teacher").value).name == "teacher.safetensors"
    toggles = [t.label for t in at.toggle if t.key.startswith("distill_on_")]
    assert toggles == ["Backbone", "FPN", "RPN", "ROI head"]

    at = pick_preset(at, "Single-stage pair")
    assert Path(at.selectbox(key="distill_teacher").value).name == "retina_teacher.safetensors"
    assert Path(at.selectbox(key="distill_student").value).name == "retina_student_baseline.safetensors"
    toggles = [t.label for t in at.toggle if t.key.startswith("distill_on_")]
    assert toggles == ["Backbone", "FPN", "dense head"]  # no RPN or ROI head in a single-stage detector
    cfg = shown_config(at)
    assert cfg["model"]["preset"] == "hkd_retina_lite0.student"
    assert Path(cfg["teacher"]).name == "retina_teacher.safetensors"
    assert cfg["distill"]["levels"]["head.cls_logits"]["loss"] == "focal_kd"
    checked(cfg, distill_env["tmp"], "retina")
    at.toggle(key="distill_on_head").set_value(False).run()
    no_exceptions(at)
    assert "head.cls_logits" not in shown_config(at)["distill"]["levels"]

    at = pick_preset(at, "Full HKD")  # and back to the two-stage pair
    assert Path(at.selectbox(key="distill_teacher").value).name == "teacher.safetensors"
    assert shown_config(at)["model"]["preset"] == "hkd_frcnn_lite0.student"
    checked(shown_config(at), distill_env["tmp"], "two_stage")


def test_the_quick_demo_starts_from_the_no_kd_student_and_its_row_names_the_parent(distill_env, tmp_path, monkeypatch):
    import shutil

    models = copy_models(distill_env, tmp_path / "models")
    shutil.copy(models / "student_hkd.safetensors", models / "student_baseline.safetensors")
    monkeypatch.setenv("HKD_MODELS_DIR", str(models))
    at = open_distill()
    no_exceptions(at)
    assert Path(at.selectbox(key="distill_student").value).name == "student_baseline.safetensors"
    assert Path(shown_config(at)["model"]["init"]).name == "student_baseline.safetensors"
    notes = "\n".join(c.value for c in at.caption)
    assert "Starts from `student_baseline.safetensors`, as the config says" in notes
    at.selectbox(key="distill_student").set_value(str(models / "student_hkd.safetensors")).run()
    assert "the config itself starts from `student_baseline.safetensors`" in "\n".join(c.value for c in at.caption)
    at.selectbox(key="distill_student").set_value(str(models / "student_baseline.safetensors")).run()
    at.number_input(key="distill_steps").set_value(2)
    at.number_input(key="distill_val_images").set_value(10)
    at.number_input(key="distill_threads").set_value(1)
    at.button(key="distill_launch").click().run()
    no_exceptions(at)
    queue = JobQueue(distill_env["jobs"])
    try:
        at.run()
        table = next(d.value for d in at.dataframe if "starts from" in d.value.columns)
        assert list(table["starts from"]) == ["student_baseline.safetensors"]
    finally:
        for job in queue.list():
            if job.active:
                queue.cancel(job.id)
        wait_done(queue)
