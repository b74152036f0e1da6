"""The distillation benchmark scripts' planning: which runs, which command lines, what is skipped."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from tests.bench.scripts import bench_module


@pytest.fixture(scope="module")
def scripts():
    return bench_module("distill_table"), bench_module("distill_variants")


def _set(cmd: list) -> dict[str, str]:
    """The ``--set key=value`` overrides of a command line."""
    out = {}
    for flag, value in zip(cmd, cmd[1:]):
        if flag == "--set":
            key, _, val = str(value).partition("=")
            out[key] = val
    return out


def test_plan_has_every_run_of_the_table(scripts, tmp_path):
    table, _ = scripts
    plan = table.runs(tmp_path / "t.safetensors", [0, 1])
    names = [r["name"] for r in plan]
    assert names == ["teacher", "student_baseline_s0", "student_hkd_s0", "student_baseline_s1", "student_hkd_s1",
                     "ablation_backbone_s1", "ablation_fpn_s1", "ablation_rpn_s1", "ablation_roi_s1"]
    distilled = [r for r in plan if "teacher" in r]
    assert {r["teacher"] for r in distilled} == {tmp_path / "t.safetensors"}
    assert all(r["cmd"] == "distill" for r in distilled)
    assert "given" not in plan[0]
    assert table.runs(tmp_path / "t.safetensors", [0], teacher_given=True)[0]["given"] == tmp_path / "t.safetensors"


def test_teacher_and_students_get_their_own_steps_and_threads(scripts, tmp_path, monkeypatch):
    table, _ = scripts
    calls = []
    monkeypatch.setattr(table, "run_training", lambda cmd, out: calls.append((cmd, out)))
    args = SimpleNamespace(teacher_steps=1500, student_steps=800, threads=1, teacher_threads=2,
                           root=tmp_path, data=tmp_path / "data")
    teacher, _, hkd = table.runs(tmp_path / "t.safetensors", [0])[:3]
    table.train_run(teacher, args)
    table.train_run(hkd, args)
    (t_cmd, t_out), (s_cmd, s_out) = calls
    assert _set(t_cmd)["train.steps"] == "1500" and _set(t_cmd)["train.threads"] == "2"
    assert _set(s_cmd)["train.steps"] == "800" and _set(s_cmd)["train.threads"] == "1"
    assert _set(s_cmd)["teacher"] == str(tmp_path / "t.safetensors")
    assert _set(s_cmd)["data.val"] == "null" and _set(s_cmd)["train.seed"] == "0"
    assert (t_out, s_out) == (tmp_path / "teacher", tmp_path / "student_hkd_s0")
    calls.clear()
    table.train_run(table.runs(tmp_path / "t.safetensors", [0], teacher_given=True)[0], args)
    assert calls == [], "a given teacher is not trained"


def test_run_training_skips_finished_runs_and_resumes_interrupted_ones(scripts, tmp_path, monkeypatch):
    table, _ = scripts
    ran = []
    monkeypatch.setattr(table, "sh", lambda cmd, log=None: ran.append(list(cmd)))
    out = tmp_path / "run"
    table.run_training(["hkd", "train"], out)
    assert ran == [["hkd", "train"]], "a new run starts from scratch"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"state": "cancelled", "step": 200}))
    table.run_training(["hkd", "train"], out)
    assert ran[-1] == ["hkd", "train", "--resume"]
    (out / "status.json").write_text(json.dumps({"state": "succeeded", "step": 800}))
    table.run_training(["hkd", "train"], out)
    assert len(ran) == 2, "a succeeded run is not trained again"


def test_variants_of_another_length_get_their_own_folder(scripts):
    _, variants = scripts
    assert variants.default_root(400).name == "variants"
    assert variants.default_root(800).name == "variants800"
    assert variants.variant_name("none") == "no_kd"
    assert variants.variant_name("bench/variants/hints_x10.yaml") == "hints_x10"


def test_ship_copies_the_demo_runs_with_metrics_and_the_shipped_parent(scripts, tmp_path):
    from hkd.models.checkpoint import CheckpointMeta, read_meta, save_checkpoint
    from hkd.models.presets import build_detector

    table, _ = scripts
    student = build_detector("hkd_frcnn_lite0.student", min_size=96, max_size=128).eval()
    rows = []
    for name, teacher in (("student_baseline_s0", None), ("student_hkd_s0", tmp_path / "run/teacher/final.safetensors"),
                          ("student_hkd_s1", tmp_path / "run/teacher/final.safetensors")):
        ckpt = save_checkpoint(tmp_path / "run" / name / "final.safetensors", student,
                               CheckpointMeta(preset="hkd_frcnn_lite0.student", min_size=96, max_size=128,
                                              parent="final.safetensors" if teacher else None,
                                              cost={"params": {"total": 1}}))
        row = {"name": name, "role": "r", "ckpt": str(ckpt), "metrics": {"mr": {"Reasonable": 30.0}, "ap50": 0.5}}
        if teacher:
            row["teacher"] = teacher
        rows.append(row)
    table.ship(rows, "SynthPed val (500 images, seed 1000)", dest=tmp_path / "shipped")
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == ["student_baseline.safetensors",
                                                                         "student_hkd.safetensors"]
    hkd = read_meta(tmp_path / "shipped" / "student_hkd.safetensors")
    assert hkd.parent == "teacher.safetensors"
    assert hkd.metrics["mr"]["Reasonable"] == 30.0 and hkd.metrics["dataset"].startswith("SynthPed val")
    assert read_meta(tmp_path / "shipped" / "student_baseline.safetensors").parent is None


def test_dataset_label_reads_the_split_info(scripts, tmp_path):
    import json

    table, _ = scripts
    (tmp_path / "val").mkdir()
    info = {"description": "SynthPed: generated pedestrian benchmark (hkd synth)", "seed": 1000, "num_images": 500}
    (tmp_path / "val" / "annotations.json").write_text(json.dumps({"info": info, "images": []}))
    assert table.dataset_label(tmp_path / "val") == "SynthPed val (500 images, seed 1000)"
    (tmp_path / "cp").mkdir()
    (tmp_path / "cp" / "annotations.json").write_text(json.dumps({"images": []}))
    assert table.dataset_label(tmp_path / "cp") == "dataset cp (? images)"


def test_variants_share_a_teacher_cache_per_seed(scripts, tmp_path, monkeypatch):
    _, variants = scripts
    calls = []
    monkeypatch.setattr(variants, "run_training", lambda cmd, out: calls.append(cmd))
    args = SimpleNamespace(root=tmp_path, seed=3, steps=10, data=tmp_path, teacher=tmp_path / "t.safetensors",
                           teacher_cache=tmp_path / "cache", baseline_config=tmp_path / "base.yaml",
                           base_config=tmp_path / "kd.yaml")
    variants.train_variant("none", args)
    variants.train_variant(str(tmp_path / "distill_x.yaml"), args)
    assert "train.teacher_cache" not in _set(calls[0])  # the no-KD student has no teacher
    assert _set(calls[1])["train.teacher_cache"] == str((tmp_path / "cache" / "s3").resolve())
    # the configs the runs start from (the single-stage pair passes its own)
    assert calls[0][calls[0].index("--config") + 1] == (tmp_path / "base.yaml").resolve()
    assert calls[1][calls[1].index("--config") + 1] == (tmp_path / "kd.yaml").resolve()


def test_options_table_pairs_the_gap_by_seed_and_picks_the_best_on_tune(tmp_path, monkeypatch, capsys):
    options = bench_module("options_table")
    data = tmp_path / "data"
    for split, n in (("tune", 3), ("val", 5)):
        (data / split).mkdir(parents=True)
        (data / split / "annotations.json").write_text(json.dumps({"images": [{}] * n}))
    root = tmp_path / "runs"
    # MR⁻² by (split, run): teacher 10; no KD 30 / 20 by seed; "b" is best on tune but not finished for seed 1
    table = {("tune", "no_kd_s0"): 30, ("tune", "no_kd_s1"): 20, ("tune", "distill_full_s0"): 20,
             ("tune", "distill_full_s1"): 15, ("tune", "a_s0"): 18, ("tune", "a_s1"): 16, ("tune", "b_s0"): 11,
             ("val", "no_kd_s0"): 40, ("val", "no_kd_s1"): 30, ("val", "distill_full_s0"): 25,
             ("val", "distill_full_s1"): 20, ("val", "a_s0"): 24, ("val", "a_s1"): 22}
    for (split, name), value in table.items():
        run = root / name
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "final.safetensors").write_bytes(b"x")
        (run / "status.json").write_text(json.dumps({"state": "succeeded", "seconds": 600}))
    (root / "b_s1").mkdir()
    (root / "b_s1" / "status.json").write_text(json.dumps({"state": "running"}))

    def evaluate(ckpt, split, out, name):
        value = 10.0 if out.name == "teacher_eval" else float(table[(name, out.name)])
        return {"mr": {"Reasonable": value, "Small": value, "Heavy": 2 * value}, "ap50": 0.5}

    monkeypatch.setattr(options, "evaluate_checkpoint", evaluate)
    monkeypatch.setattr(sys, "argv", ["options_table.py", "--root", str(root), "--data", str(data),
                                      "--teacher", str(tmp_path / "t.safetensors"), "no_kd", "distill_full", "a", "b"])
    assert options.main() == 0
    text = capsys.readouterr().out
    tune, val = text.split("Best on tune")
    # full HKD on tune: seed 0 closes (30-20)/(30-10) = 50 %, seed 1 (20-15)/(20-10) = 50 %
    assert "| distill_full | 20.00 | 15.00 | 17.50 | 50 % (50 / 50) |" in tune
    assert "| a | 18.00 | 16.00 | 17.00 | 50 % (60 / 40) |" in tune
    assert "| b | 11.00 | — | — | — |" in tune  # unfinished: no mean, never a number
    assert val.startswith(": **a**")  # the best with every seed, chosen on tune
    assert "| a | 24.00 | 22.00 | 23.00 | 47 % (53 / 40) |" in val
    assert "| no_kd | 40.00 | 30.00 | 35.00 | — |" in val


def test_options_table_rebuilds_from_a_record_without_checkpoints(tmp_path, monkeypatch, capsys):
    options = bench_module("options_table")
    data = tmp_path / "data"
    for split in ("tune", "val"):
        (data / split).mkdir(parents=True)
        (data / split / "annotations.json").write_text(json.dumps({"images": [{}] * 4}))
    root, rec = tmp_path / "runs", tmp_path / "record"
    values = {"no_kd_s0": 30.0, "distill_full_s0": 20.0}
    for name in values:
        (root / name / "checkpoints").mkdir(parents=True)
        (root / name / "checkpoints" / "final.safetensors").write_bytes(b"x")
        (root / name / "status.json").write_text(json.dumps({"state": "succeeded", "seconds": 600}))

    def evaluate(ckpt, split, out, name):  # like the real one: keeps <name>_eval.json in out
        value = 10.0 if out.name == "teacher_eval" else values[out.name] + (name == "val")
        result = {"mr": {"Reasonable": value, "Small": value, "Heavy": value}, "ap50": 0.5}
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}_eval.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(options, "evaluate_checkpoint", evaluate)
    common = ["--data", str(data), "--seeds", "0", "--teacher", str(tmp_path / "t.safetensors"), "no_kd", "distill_full"]
    monkeypatch.setattr(sys, "argv", ["options_table.py", "--root", str(root), "--record", str(rec), *common])
    assert options.main() == 0
    first = capsys.readouterr().out
    assert "| distill_full | 21.00 | 21.00 | 48 % (48) |" in first.split("Best on tune")[1]
    assert not list(rec.rglob("*.safetensors"))  # a record holds no weights
    assert sorted(p.name for p in (rec / "distill_full_s0").iterdir()) == ["status.json", "tune_eval.json", "val_eval.json"]

    def no_student_evaluation(ckpt, split, out, name):
        assert out.name == "teacher_eval", f"{out}: a recorded run must not be evaluated again"
        return evaluate(ckpt, split, out, name)

    monkeypatch.setattr(options, "evaluate_checkpoint", no_student_evaluation)
    monkeypatch.setattr(sys, "argv", ["options_table.py", "--root", str(rec), *common])
    assert options.main() == 0
    assert capsys.readouterr().out.replace(str(rec), "R") == first.replace(str(root), "R")
    (rec / "no_kd_s0" / "tune_eval.json").unlink()  # neither a checkpoint nor an evaluation: not a number
    assert options.main() == 0
    assert "| no_kd | — | — |" in capsys.readouterr().out


def test_online_table_reads_the_curve_and_refuses_unfinished_runs(tmp_path):
    online = bench_module("online_table")
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 100, "time": 60.0, "loss": 1.0}, {"step": 100, "eval": {"mr": {"Reasonable": 50.0}}},
               {"step": 200, "time": 150.0, "loss": 0.9}, {"step": 200, "eval": {"mr": {"Reasonable": 40.0}}},
               {"step": 200, "teacher_eval": {"mr": {"Reasonable": 20.0}}}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert online._curve(run) == [(100, 1.0, 50.0), (200, 2.5, 40.0)]
    (run / "status.json").write_text(json.dumps({"state": "running", "seconds": 30}))
    with pytest.raises(SystemExit, match="not succeeded"):
        online._minutes(run)
    (run / "status.json").write_text(json.dumps({"state": "succeeded", "seconds": 120}))
    assert online._minutes(run) == 2.0


def test_options_table_full_names_the_pairs_full_distillation_on_val(tmp_path, monkeypatch, capsys):
    """The single-stage pair has no distill_full: --full says which variant stands beside the best on val."""
    options = bench_module("options_table")
    data = tmp_path / "data"
    for split in ("tune", "val"):
        (data / split).mkdir(parents=True)
        (data / split / "annotations.json").write_text(json.dumps({"images": [{}] * 4}))
    root = tmp_path / "runs"
    values = {"no_kd_s0": 40.0, "focal_s0": 30.0, "focal_only_s0": 25.0}
    for name in values:
        (root / name / "checkpoints").mkdir(parents=True)
        (root / name / "checkpoints" / "final.safetensors").write_bytes(b"x")
        (root / name / "status.json").write_text(json.dumps({"state": "succeeded", "seconds": 600}))
    monkeypatch.setattr(options, "evaluate_checkpoint", lambda ckpt, split, out, name: {
        "mr": dict.fromkeys(("Reasonable", "Small", "Heavy"), 20.0 if out.name == "teacher_eval" else values[out.name]),
        "ap50": 0.5})
    common = ["options_table.py", "--root", str(root), "--data", str(data), "--seeds", "0",
              "--teacher", str(tmp_path / "t.safetensors"), "no_kd", "focal", "focal_only"]
    monkeypatch.setattr(sys, "argv", common)
    assert options.main() == 0
    val = capsys.readouterr().out.split("Best on tune")[1]
    assert "| focal_only |" in val and "| focal |" not in val  # no distill_full among these variants
    monkeypatch.setattr(sys, "argv", [*common, "--full", "focal"])
    assert options.main() == 0
    val = capsys.readouterr().out.split("Best on tune")[1]
    assert "| no_kd |" in val and "| focal | 30.00 |" in val and "| focal_only | 25.00 |" in val


def test_options_table_ships_the_pair_with_val_metrics_and_the_shipped_parent(tmp_path):
    from hkd.models.checkpoint import CheckpointMeta, read_meta, save_checkpoint
    from hkd.models.presets import build_detector

    options = bench_module("options_table")
    (tmp_path / "data" / "val").mkdir(parents=True)
    (tmp_path / "data" / "val" / "annotations.json").write_text(json.dumps(
        {"info": {"description": "SynthPed: synthetic", "num_images": 5, "seed": 1000}, "images": []}))
    root = tmp_path / "runs"
    model = build_detector("hkd_retina_lite0.student", min_size=96, max_size=128).eval()
    meta = dict(preset="hkd_retina_lite0.student", min_size=96, max_size=128)
    teacher = save_checkpoint(tmp_path / "t" / "final.safetensors", model, CheckpointMeta(**meta))
    for folder, value in (("teacher_eval", 10.0), ("no_kd_s0", 40.0), ("focal_s0", 30.0)):
        (root / folder).mkdir(parents=True)
        if folder != "teacher_eval":
            save_checkpoint(root / folder / "checkpoints" / "final.safetensors", model,
                            CheckpointMeta(**meta, parent="final.safetensors" if folder == "focal_s0" else None))
        (root / folder / "val_eval.json").write_text(json.dumps({"mr": {"Reasonable": value}, "ap50": 0.5, "other": 1}))
    args = SimpleNamespace(seeds=[0, 1], data=tmp_path / "data", teacher=teacher, root=root)
    shipped = options.ship(args, "focal", "retina_", dest=tmp_path / "shipped")
    assert [p.name for p in shipped] == ["retina_teacher.safetensors", "retina_student_baseline.safetensors",
                                         "retina_student_kd.safetensors"]
    kd = read_meta(shipped[2])
    assert kd.parent == "retina_teacher.safetensors" and kd.metrics["mr"]["Reasonable"] == 30.0
    assert kd.metrics["dataset"] == "SynthPed val (5 images, seed 1000)" and "other" not in kd.metrics
    assert read_meta(shipped[0]).metrics["mr"]["Reasonable"] == 10.0 and read_meta(shipped[1]).parent is None
    (root / "focal_s0" / "val_eval.json").unlink()  # no val evaluation: nothing to ship it with
    with pytest.raises(SystemExit, match="val_eval.json is missing"):
        options.ship(args, "focal", "retina_", dest=tmp_path / "again")
    assert not (tmp_path / "again").exists()  # nothing half-shipped


def test_options_table_ships_a_two_stage_pair_under_its_demo_names_and_keeps_the_shipped_teacher(tmp_path):
    from hkd.models.checkpoint import CheckpointMeta, read_meta, save_checkpoint
    from hkd.models.presets import build_detector

    options = bench_module("options_table")
    (tmp_path / "data" / "val").mkdir(parents=True)
    (tmp_path / "data" / "val" / "annotations.json").write_text(json.dumps(
        {"info": {"description": "SynthPed: synthetic", "num_images": 5, "seed": 1000}, "images": []}))
    root, dest = tmp_path / "runs", tmp_path / "shipped"
    model = build_detector("hkd_frcnn_lite0.student", min_size=96, max_size=128).eval()
    meta = dict(preset="hkd_frcnn_lite0.student", min_size=96, max_size=128)
    # the teacher given is the shipped file itself, with its own metrics: shipping must not rewrite it
    teacher = save_checkpoint(dest / "teacher.safetensors", model,
                              CheckpointMeta(**meta, metrics={"mr": {"Reasonable": 11.0}, "dataset": "shipped"}))
    before = teacher.read_bytes()
    for folder, value in (("teacher_eval", 11.0), ("no_kd_s0", 26.0), ("distill_trust_s0", 17.0)):
        (root / folder).mkdir(parents=True)
        if folder != "teacher_eval":
            save_checkpoint(root / folder / "checkpoints" / "final.safetensors", model, CheckpointMeta(**meta))
        (root / folder / "val_eval.json").write_text(json.dumps({"mr": {"Reasonable": value}, "ap50": 0.5}))
    args = SimpleNamespace(seeds=[0, 1], data=tmp_path / "data", teacher=teacher, root=root)
    shipped = options.ship(args, "distill_trust", "", dest=dest, kd_name="student_hkd")
    assert [p.name for p in shipped] == ["student_baseline.safetensors", "student_hkd.safetensors"]
    assert teacher.read_bytes() == before
    hkd = read_meta(dest / "student_hkd.safetensors")
    assert hkd.parent == "teacher.safetensors" and hkd.metrics["mr"]["Reasonable"] == 17.0
    assert "distill_trust" in hkd.notes


def test_options_table_names_the_teacher_cache_only_where_a_run_used_one(tmp_path):
    options = bench_module("options_table")
    args = SimpleNamespace(root=tmp_path, variants=["no_kd", "trust"], seeds=[0, 1])
    for name, cache in (("no_kd_s0", None), ("trust_s0", None), ("trust_s1", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"train": {"teacher_cache": cache}}))
    assert not options.used_teacher_cache(args)
    (tmp_path / "trust_s1" / "config.json").write_text(json.dumps({"train": {"teacher_cache": "/c/s1"}}))
    assert options.used_teacher_cache(args)
