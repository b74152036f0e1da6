"""`hkd compare --gt GT.json --dets NAME=DETS.json ... [--score S] [--json] [--out DIR]`."""
from __future__ import annotations

import csv
import json

import pytest

from hkd.cli import main
from hkd.eval.compare import compare_models
from tests.eval.test_compare import DETS, GT, STUDENT, TEACHER


@pytest.fixture
def files(tmp_path):
    paths = {"gt": tmp_path / "gt.json", "teacher": tmp_path / "teacher.json", "student": tmp_path / "student.json"}
    paths["gt"].write_text(json.dumps(GT))
    paths["teacher"].write_text(json.dumps(TEACHER))
    paths["student"].write_text(json.dumps(STUDENT))
    return paths


def _args(files, *extra):
    return ["compare", "--gt", str(files["gt"]), "--dets", f"teacher={files['teacher']}",
            f"student={files['student']}", *extra]


def test_text_output_has_models_bins_and_disagreements(files, capsys):
    assert main(_args(files)) == 0
    out = capsys.readouterr().out
    assert "setup Reasonable" in out
    teacher_line = next(line for line in out.splitlines() if line.strip().startswith("teacher "))
    assert "0.720 fppi=0.1" in teacher_line  # the teacher's operating point
    for text in ("20-30", "120+", "<0.2", "0.9+", "100.0% (1/1)",
                 "teacher vs student: 3 found by teacher and missed by student, 1 false positives of teacher only",
                 "student vs teacher: 2 found by student and missed by teacher, 1 false positives of student only",
                 "Most confident disagreements (top 7 of 7)", "img_02.png [0, 0, 30, 60]"):
        assert text in out, text


def test_json_output_is_the_report(files, capsys):
    assert main(_args(files, "--json", "--score", "0.5")) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["models", "breakdown", "disagreements", "errors"]
    assert out == json.loads(json.dumps(compare_models(GT, DETS, score=0.5).to_dict()))
    assert out["models"]["teacher"]["operating_point"]["rule"] == "given"


def test_out_writes_csv_tables_and_the_plot(files, tmp_path, capsys):
    out_dir = tmp_path / "report"
    assert main(_args(files, "--out", str(out_dir), "--max-disagreements", "2")) == 0
    assert "wrote models.csv, breakdown.csv, disagreements.csv" in capsys.readouterr().out
    report = compare_models(GT, DETS, max_disagreements=2)

    def rows(name):
        with (out_dir / name).open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    models = rows("models.csv")
    assert [r["model"] for r in models] == ["teacher", "student"]
    assert float(models[0]["op_score"]) == 0.72 and models[0]["op_rule"] == "fppi=0.1"
    assert float(models[1]["mr_reasonable"]) == pytest.approx(report.models["student"]["mr"]["Reasonable"])
    breakdown = rows("breakdown.csv")
    assert len(breakdown) == 2 * (5 + 4)
    student_80 = next(r for r in breakdown if r["model"] == "student" and r["bin"] == "80-120")
    assert (student_80["gt"], student_80["missed"], float(student_80["miss_rate"])) == ("2", "1", 0.5)
    assert next(r for r in breakdown if r["bin"] == "120+")["high"] == ""  # open top
    disagreements = rows("disagreements.csv")
    # teacher: 3 found/missed capped at 2, 1 FP; student: 2 found/missed, 1 FP
    assert len(disagreements) == len(report.disagreements) == 6
    first, expected = disagreements[0], report.disagreements[0]
    assert (first["a"], first["kind"], first["file_name"]) == (expected["a"], expected["kind"], expected["file_name"])
    assert [float(first[k]) for k in ("x1", "y1", "x2", "y2")] == expected["box"]
    fp = next(r for r in disagreements if r["kind"] == "fp_of_a_only")
    assert fp["height"] == "" and fp["visibility"] == ""
    html = (out_dir / "fppi_miss_rate.html").read_text(encoding="utf-8")
    assert "plotly" in html and "teacher" in html and "student" in html
    assert (out_dir / "fppi_miss_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("dets", "message"),
    [
        (["teacher"], "--dets 'teacher': expected NAME=DETS.json"),
        (["teacher=a.json"], "give at least two models"),
        (["x=a.json", "x=b.json"], "model name 'x' is given twice"),
    ],
)
def test_bad_dets_arguments(files, capsys, dets, message):
    assert main(["compare", "--gt", str(files["gt"]), "--dets", *dets]) == 2
    assert message in capsys.readouterr().err


def test_bad_files_are_named(files, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    assert main(["compare", "--gt", str(files["gt"]), "--dets", f"teacher={files['teacher']}",
                 f"student={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"detections file {bad}" in err and "image_id=42, which is not in GT images" in err

    missing = tmp_path / "missing.json"
    assert main(["compare", "--gt", str(files["gt"]), "--dets", f"teacher={files['teacher']}",
                 f"student={missing}"]) == 2
    assert f"detections (student) file {missing} does not exist" in capsys.readouterr().err

    broken_gt = tmp_path / "gt_bad.json"
    broken_gt.write_text(json.dumps({**GT, "annotations": [{**GT["annotations"][0], "bbox": [0, 0, -1, 5]}]}))
    assert main(["compare", "--gt", str(broken_gt), "--dets", f"teacher={files['teacher']}",
                 f"student={files['student']}"]) == 2
    assert f"ground-truth file {broken_gt}" in capsys.readouterr().err

    assert main(_args(files, "--setup", "Heavy")) == 2
    assert "give a score" in capsys.readouterr().err

    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    assert main(_args(files, "--out", str(not_a_dir))) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_the_figure_is_log_log_with_one_trace_per_model_and_the_mr_band():
    from hkd.viz.plots import fppi_figure

    report = compare_models(GT, DETS)
    points = {name: m["operating_point"] for name, m in report.models.items()}
    curves = {**report.curves, "dense": {"fppi": [0.0, 0.0, 0.1, 0.1, 0.1, 0.2, 0.3], "miss_rate":
                                         [0.9, 0.8, 0.8, 0.7, 0.6, 0.6, 0.6]}}
    fig = fppi_figure(curves, mr={"teacher": 12.5}, operating_points=points)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    lines = [t for t in fig.data if t.mode == "lines"]
    assert [t.name for t in lines] == ["teacher (MR⁻² 12.5 %)", "student", "dense"]
    # FPPI 0 cannot sit on a log axis; within a run of equal FPPI only its first and last points matter
    assert list(lines[2].x) == [0.1, 0.1, 0.2, 0.3] and list(lines[2].y) == [0.8, 0.6, 0.6, 0.6]
    markers = [t for t in fig.data if t.mode == "markers"]
    assert [(m.x[0], m.y[0]) for m in markers] == [(pytest.approx(0.1), pytest.approx(2 / 3))]  # teacher's miss is 0
    (band,) = fig.layout.shapes
    assert (band.x0, band.x1) == (0.01, 1.0)
    with pytest.raises(ValueError, match="curve of 'bad' has 2 fppi values for 1 miss rates"):
        fppi_figure({"bad": {"fppi": [0.1, 0.2], "miss_rate": [0.5]}})


def test_json_has_errors_per_model_always(files, capsys):
    assert main(_args(files, "--json")) == 0
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert list(errors) == ["teacher", "student"]
    for model in errors.values():
        assert list(model) == ["counts", "counts_any_score", "mr_if_fixed", "thresholds", "false_positives"]
        assert list(model["counts"]) == list(model["mr_if_fixed"]) == [
            "duplicate", "crowd", "part_of_person", "localization", "background"]
    # the teacher's FP at its operating point (0.72, image 4) is nowhere near a person
    (fp,) = errors["teacher"]["false_positives"]
    assert (fp["image_id"], fp["file_name"], fp["type"], fp["score"]) == (4, "img_04.png", "background", 0.72)


def test_bootstrap_adds_intervals_differences_and_a_json_key(files, capsys):
    from hkd.eval.bootstrap import bootstrap_intervals

    assert main(_args(files, "--json", "--bootstrap", "30", "--seed", "3")) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["models", "breakdown", "disagreements", "errors", "bootstrap"]
    boot = out["bootstrap"]
    assert boot == json.loads(json.dumps(bootstrap_intervals(GT, DETS, resamples=30, seed=3).to_dict()))
    assert (boot["num_images"], boot["resamples"], boot["seed"], boot["level"]) == (10, 30, 3, 0.95)
    assert boot["metrics"] == ["Reasonable", "Small", "Heavy", "All", "ap50"]
    assert set(boot["models"]["teacher"]["Reasonable"]) == {"point", "low", "high"}
    assert boot["models"]["teacher"]["ap50"]["point"] == out["models"]["teacher"]["ap50"]
    (pair,) = boot["differences"]
    assert (pair["a"], pair["b"]) == ("teacher", "student")
    assert set(pair["metrics"]["All"]) == {"point", "low", "high", "within_noise"}
    assert pair["metrics"]["Heavy"] == {"point": None, "low": None, "high": None, "within_noise": None}

    assert main(_args(files, "--bootstrap", "30", "--seed", "3")) == 0
    text = capsys.readouterr().out
    reasonable = boot["models"]["student"]["Reasonable"]
    assert f"66.7 ({reasonable['low']:.1f}–{reasonable['high']:.1f})" in text
    assert "Paired differences a − b (95 % bootstrap interval, 30 resamples of 10 images, seed 3" in text
    line = next(x for x in text.splitlines() if "teacher − student" in x and " All " in x)
    assert line.endswith("within noise") == pair["metrics"]["All"]["within_noise"]
    assert "False positives at the operating point by error type" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bootstrap", "0"], "--bootstrap must be a number of resamples >= 1"),
        (["--seed", "3"], "--seed sets the bootstrap draws: give --bootstrap N too"),
        (["--bootstrap", "5", "--seed", "-1"], "--seed must be >= 0"),
    ],
)
def test_bad_bootstrap_arguments(files, capsys, extra, message):
    assert main(_args(files, *extra)) == 2
    assert message in capsys.readouterr().err
