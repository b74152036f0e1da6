"""Models page: both models side by side, costs, latency, adapters, and every bad-checkpoint path."""
from __future__ import annotations

import pytest

import torch
from streamlit.testing.v1 import AppTest

from hkd.models.presets import DEFAULT_STUDENT as STUDENT
from hkd.models.presets import DEFAULT_TEACHER as TEACHER
from tests.app.studio import APP, TIMEOUT, copy_models, no_exceptions


def _text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def test_models_page_shows_both_models_costs_and_adapters(app):
    no_exceptions(app)
    assert not app.error
    assert app.selectbox(key="models_teacher").value.endswith("teacher.safetensors")
    assert app.selectbox(key="models_student").value.endswith("student_hkd.safetensors")
    text = _text(app)
    assert TEACHER in text and STUDENT in text and "fewer parameters" in text
    assert len(app.get("plotly_chart")) == 2  # params and FLOPs per hierarchy
    adapters = app.table[-1].value
    assert {"neck.p3", "backbone.c3", "roi.features"} <= set(adapters["level"])
    assert any("1×1 conv" in str(a) for a in adapters["adapter"])
    metrics = [str(v) for df in app.table for v in df.value.get("metric", [])]
    assert "mr_reasonable" in metrics


@pytest.mark.slow
def test_latency_compares_teacher_and_student_in_the_same_runtime_with_the_spread(app, monkeypatch):
    from types import SimpleNamespace

    from app.services import finetune

    app.number_input(key="models_latency_runs").set_value(2)
    running = [SimpleNamespace(name="busy-run", id="j9", state="running", kind="predict", threads=1)]
    monkeypatch.setattr(finetune.JobQueue, "list", lambda self, advance=True: running)
    app.button(key="models_latency").click().run()
    no_exceptions(app)
    table = next(t.value for t in app.table if "runtime" in t.value.columns)
    # one row per runtime, teacher and student side by side in it: the ONNX student is its own row
    assert list(table["runtime"]) == ["PyTorch", "onnxruntime"]
    assert all("ms (min " in str(v) and "max " in str(v) for v in list(table["teacher"]) + list(table["student"]))
    assert all(str(v).endswith("×") for v in table["student speed-up"]) and list(table["runs"]) == ["2", "2"]
    assert not [m for m in app.metric if "Speed-up" in m.label]  # no PyTorch ÷ onnxruntime headline
    assert any("busy-run (j9)" in w.value for w in app.warning)  # measured beside a running job: said so


def test_latency_rows_divide_within_one_runtime():
    from app.services.compute import latency_note, latency_rows

    def timed(median):
        return {"median_s": median, "min_s": median * 0.9, "max_s": median * 1.2, "runs": 3}

    measured = {"results": {"teacher": {"pytorch": timed(0.8), "onnxruntime": timed(0.4)},
                            "student": {"pytorch": timed(0.2), "onnxruntime": timed(0.05)}},
                "jobs": [], "load": 0.1, "cores": 2}
    rows = latency_rows(measured)
    assert [r["student speed-up"] for r in rows] == ["4.0×", "8.0×"]  # not 0.8 / 0.05 = 16×
    assert rows[0]["teacher"] == "800 ms (min 720, max 960)"
    assert latency_note(measured) is None
    assert "load average 1.5 on 2 cores" in latency_note({**measured, "load": 1.5})


def test_corrupt_checkpoint_is_reported_and_the_others_still_load(studio_world, monkeypatch, tmp_path):
    folder = copy_models(studio_world, tmp_path / "models")
    (folder / "broken.safetensors").write_bytes(b"\x00garbage" * 100)
    monkeypatch.setenv("HKD_MODELS_DIR", str(folder))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    no_exceptions(at)
    assert any("broken.safetensors" in e.value for e in at.error)
    assert len(at.get("plotly_chart")) == 2  # the good pair still loads and is compared


@pytest.mark.slow
def test_foreign_weights_need_a_preset_and_the_wrong_one_is_a_clear_error(studio_world, monkeypatch, tmp_path):
    folder = copy_models(studio_world, tmp_path / "models")
    from hkd.models.checkpoint import load_checkpoint

    state = load_checkpoint(folder / "student_hkd.safetensors").model.state_dict()
    torch.save({"model": state}, folder / "foreign_student.pth")
    monkeypatch.setenv("HKD_MODELS_DIR", str(folder))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.selectbox(key="models_student").set_value(str((folder / "foreign_student.pth").resolve())).run()
    preset = at.selectbox(key="models_student_preset")
    preset.set_value("fasterrcnn_resnet50_fpn.coco_person").run()
    no_exceptions(at)
    assert any("do not fit preset" in e.value for e in at.error)
    at.selectbox(key="models_student_preset").set_value(STUDENT).run()
    no_exceptions(at)
    assert not at.error
    assert len(at.get("plotly_chart")) == 2


def test_uploaded_checkpoint_that_is_corrupt_is_an_error(app):
    app.file_uploader(key="models_upload").upload("weights.safetensors", b"not a checkpoint").run()
    no_exceptions(app)
    assert any("weights" in e.value and "cannot be used" in e.value for e in app.error)
    assert len(app.get("plotly_chart")) == 2


def test_uploaded_checkpoint_can_be_chosen(app, studio_world):
    data = (studio_world["models"] / "student_hkd.safetensors").read_bytes()
    app.file_uploader(key="models_upload").upload("my_student.safetensors", data).run()
    options = app.selectbox(key="models_student").options
    uploaded = [o for o in options if "my_student" in o]
    assert uploaded, options
    app.selectbox(key="models_student").set_value(
        next(p for p in app.selectbox(key="models_student").options if "my_student" in p)).run()
    no_exceptions(app)
    assert not app.error


def test_empty_models_folder_says_what_to_do(studio_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HKD_MODELS_DIR", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    no_exceptions(at)
    assert any("No usable checkpoints" in w.value and "HKD_MODELS_DIR" in w.value for w in at.warning)
    at.switch_page("app_pages/detections.py").run()
    no_exceptions(at)
    assert any("No usable checkpoints" in w.value for w in at.warning)


def test_models_folder_outside_the_allowed_roots_is_refused(app):
    app.text_input(key="models_folder_input").set_value("/etc").run()
    no_exceptions(app)
    assert any("outside the folders" in e.value for e in app.error)


@pytest.mark.slow
def test_models_page_is_drawn_from_checkpoint_headers_without_torch(tmp_path):
    """The first page must not wait for torch (~8 s to import on a small CPU): it reads headers only."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "probe.py"
    script.write_text(
        "import json, sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(APP)!r}, default_timeout=120).run()\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'charts': len(at.get('plotly_chart')),\n"
        "                  'errors': [e.value for e in at.error], 'exceptions': [e.message for e in at.exception],\n"
        "                  'adapters': list(at.table[-1].value['adapter'])}))\n")
    env = {**os.environ, "HKD_MODELS_DIR": str(root / "assets" / "checkpoints"), "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["exceptions"] == [] and out["errors"] == []
    assert out["charts"] == 2 and any("1×1 conv" in a for a in out["adapters"])
    assert out["torch"] is False


def _fake_finished_job(studio_env, monkeypatch, tmp_path):
    """A finished fine-tune "my-ft" (job j1) whose final checkpoint is a copy of the tiny student."""
    import shutil
    from types import SimpleNamespace

    from app.services import finetune

    final = tmp_path / "jobs" / "j1" / "run" / "checkpoints" / "final.safetensors"
    final.parent.mkdir(parents=True)
    shutil.copy(studio_env["models"] / "student_hkd.safetensors", final)
    job = SimpleNamespace(name="my-ft", id="j1", kind="distill", total=2, state="succeeded")
    monkeypatch.setattr(finetune, "finished_checkpoints", lambda jobs_queue=None: [(job, final)])
    return str(final)


def test_a_fine_tune_is_named_after_its_job_everywhere_and_the_sidebar_follows_the_pick(
        studio_env, monkeypatch, tmp_path):
    final = _fake_finished_job(studio_env, monkeypatch, tmp_path)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    sidebar = lambda: "\n".join(c.value for c in at.sidebar.caption)  # noqa: E731
    assert "student_hkd.safetensors" in sidebar()
    at.selectbox(key="models_student").set_value(final).run()
    no_exceptions(at)
    assert "job my-ft (j1)" in sidebar() and "final.safetensors" not in sidebar()  # right after the pick
    for page in ("detections", "features", "attention"):
        at.switch_page(f"app_pages/{page}.py").run()
        no_exceptions(at)
        headings = [h.value for h in at.subheader]
        assert "Student · job my-ft (j1)" in headings, (page, headings)
        assert "job my-ft (j1)" in sidebar()


def test_pickers_list_their_role_and_family_first_and_the_rest_one_click_away(studio_env, monkeypatch, tmp_path):
    from pathlib import Path

    from tests.app.studio import write_retina_pair

    folder = copy_models(studio_env, tmp_path / "models")
    write_retina_pair(folder, ("retina_teacher", "retina_student"))
    monkeypatch.setenv("HKD_MODELS_DIR", str(folder))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    no_exceptions(at)
    student = at.selectbox(key="models_student")
    listed = [o.split(" · ")[0] for o in student.options]
    assert listed == ["student_hkd.safetensors"]  # no teacher, no single-stage student beside the two-stage teacher
    teacher = [o.split(" · ")[0] for o in at.selectbox(key="models_teacher").options]
    assert set(teacher) == {"teacher.safetensors", "retina_teacher.safetensors"}
    at.checkbox(key="models_student_all").check().run()
    no_exceptions(at)
    listed = [o.split(" · ")[0] for o in at.selectbox(key="models_student").options]
    assert set(listed) == {"student_hkd.safetensors", "teacher.safetensors", "retina_teacher.safetensors",
                           "retina_student.safetensors"}

    # the Distill form lists the preset's family and the picker's role
    distill = at.switch_page("app_pages/distill.py").run()
    no_exceptions(distill)
    assert [o.split(" · ")[0] for o in distill.selectbox(key="distill_student").options] == ["student_hkd.safetensors"]
    assert [o.split(" · ")[0] for o in distill.selectbox(key="distill_teacher").options] == ["teacher.safetensors"]
