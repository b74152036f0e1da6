"""`hkd compare --data DATASET --checkpoints NAME=CK ... [--images-limit N]`: predictions made once
and kept in the result store, then the same report as `--gt/--dets` on those files."""
from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from hkd.cli import main
from hkd.evaluation import workflow
from hkd.results import ResultStore

BOXES = {1: [[10, 8, 30, 70], [80, 6, 28, 80]], 2: [[5, 10, 26, 64]], 3: [[60, 4, 30, 90]]}  # Reasonable: h ≥ 50


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A dataset folder (annotations.json + images/), two checkpoints, and a stand-in for `hkd predict`
    that copies each model's prepared detections to the store (a real subprocess, no model)."""
    monkeypatch.setenv("HKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HKD_JOBS_DIR", str(tmp_path / "jobs"))
    data = tmp_path / "city"
    (data / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id, boxes in BOXES.items():
        name = f"img_{image_id:02d}.png"
        Image.new("RGB", (160, 120), (90, 90, 90)).save(data / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": 160, "height": 120})
        annotations += [{"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": box,
                         "iscrowd": 0, "area": box[2] * box[3]} for box in boxes]
    (data / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pedestrian"}]}))
    dets = {}
    for name, shift, miss in (("teacher", 0, ()), ("student", 2, (2,))):
        rows = [{"image_id": i, "category_id": 1, "bbox": [b[0] + shift, b[1], b[2], b[3]], "score": 0.9 - 0.1 * k}
                for i, boxes in BOXES.items() if i not in miss for k, b in enumerate(boxes)]
        rows.append({"image_id": 1, "category_id": 1, "bbox": [120, 10, 25, 60], "score": 0.5})
        dets[name] = tmp_path / f"{name}_dets.json"
        dets[name].write_text(json.dumps(rows))
    checkpoints = {}
    for name in dets:
        checkpoints[name] = tmp_path / f"{name}.onnx"
        checkpoints[name].write_bytes(f"not really an onnx model: {name}".encode())
    calls = []

    def fake_predict(ck, gt, out, threads):
        calls.append((ck.name, gt.limit))
        return _copy(dets[ck.name], gt, out)

    monkeypatch.setattr(workflow, "predict_command", fake_predict)
    return {"data": data, "dets": dets, "checkpoints": checkpoints, "calls": calls, "root": tmp_path}


# as `hkd predict --gt` does: detections on the GT's images only
COPY = ("import json, sys; ids = {im['id'] for im in json.load(open(sys.argv[2]))['images']}; "
        "rows = [d for d in json.load(open(sys.argv[1])) if d['image_id'] in ids]; "
        "json.dump(rows, open(sys.argv[3], 'w'))")


def _copy(dets, gt, out) -> list[str]:
    return [sys.executable, "-c", COPY, str(dets), str(gt.gt_path), str(out)]


def _data_args(world, *extra):
    return ["compare", "--data", str(world["data"]), "--checkpoints",
            *[f"{name}={path}" for name, path in world["checkpoints"].items()], *extra]


def test_data_prints_what_gt_dets_prints_on_the_same_predictions(world, capsys):
    assert main(_data_args(world, "--bootstrap", "20")) == 0
    captured = capsys.readouterr()
    assert sorted(world["calls"]) == [("student", None), ("teacher", None)]
    assert "predicting 3 images" in captured.err
    gt = workflow.ground_truth(world["data"])  # the store's GT and entries: read, not made again
    files = {name: workflow.prediction_entry(ResultStore(), workflow.checkpoint(name, path).sha256, gt).path
             for name, path in world["checkpoints"].items()}
    assert json.loads(files["teacher"].read_text()) == json.loads(world["dets"]["teacher"].read_text())
    teacher_file, student_file, gt_file = files["teacher"], files["student"], gt.gt_path
    assert main(["compare", "--gt", str(gt_file), "--dets", f"teacher={teacher_file}", f"student={student_file}",
                 "--bootstrap", "20"]) == 0
    assert capsys.readouterr().out == captured.out
    assert "teacher vs student:" in captured.out and "Paired differences" in captured.out


def test_a_second_run_reuses_the_cached_predictions(world, capsys, monkeypatch):
    assert main(_data_args(world, "--json")) == 0
    first = capsys.readouterr().out
    monkeypatch.setattr(workflow, "predict_command", lambda *a: pytest.fail("predicted again"))
    assert main(_data_args(world, "--json")) == 0
    captured = capsys.readouterr()
    assert captured.out == first
    assert captured.err.count("cached predictions") == 2
    assert not list((world["root"] / "cache" / "predictions").glob("*/*.job"))  # the file alone says ready


def test_images_limit_predicts_and_caches_the_first_n_images(world, capsys):
    assert main(_data_args(world, "--images-limit", "2", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(world["calls"]) == [("student", 2), ("teacher", 2)]
    assert all(p.name.split("-")[-2] == "2" for p in (world["root"] / "cache" / "predictions").glob("*/*.json"))
    gt = json.loads(next((world["root"] / "cache" / "gt").glob("*-2.json")).read_text())
    assert [im["id"] for im in gt["images"]] == [1, 2]
    assert report["models"]["teacher"]["num_detections"] > 0


@pytest.mark.parametrize("make, expected", [
    (lambda root: root / "nowhere", "no such file or folder"),
    (lambda root: (root / "plain").mkdir() or root / "plain", "without annotations.json"),
])
def test_a_bad_dataset_is_one_sentence(world, capsys, make, expected):
    bad = make(world["root"])
    args = ["compare", "--data", str(bad), "--checkpoints",
            *[f"{n}={p}" for n, p in world["checkpoints"].items()]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hkd compare: error: dataset {bad}") and expected in err and "\n" not in err
    assert not world["calls"]


def test_a_broken_annotation_file_names_it(world, capsys):
    (world["data"] / "annotations.json").write_text("{not json")
    assert main(_data_args(world)) == 2
    err = capsys.readouterr().err.strip()
    assert "annotations.json" in err and "\n" not in err


def test_a_failed_prediction_names_the_checkpoint_and_why_and_is_retried(world, capsys, monkeypatch):
    def failing(ck, gt, out, threads):
        if ck.name == "student":
            return [sys.executable, "-c", "import sys; print('ImageError: img_02.png is broken'); sys.exit(1)"]
        return _copy(world["dets"]["teacher"], gt, out)

    monkeypatch.setattr(workflow, "predict_command", failing)
    assert main(_data_args(world)) == 2
    err = capsys.readouterr().err
    assert "predictions of student" in err and "img_02.png is broken" in err and "exited with code 1" in err
    # the teacher's predictions stay cached; the student's are made again on the next run
    calls = []
    monkeypatch.setattr(workflow, "predict_command",
                        lambda ck, gt, out, threads: calls.append(ck.name) or _copy(world["dets"][ck.name], gt, out))
    assert main(_data_args(world)) == 0
    assert calls == ["student"]


@pytest.mark.parametrize("extra, message", [
    (["--gt", "x.json"], "two ways of giving the inputs"),
    (["--images-limit", "0"], "--images-limit must be a positive number"),
])
def test_mixed_or_bad_options_are_refused(world, capsys, extra, message):
    assert main(_data_args(world, *extra)) == 2
    assert message in capsys.readouterr().err


def test_checkpoints_without_data_or_a_missing_checkpoint_are_refused(world, capsys):
    assert main(["compare", "--checkpoints", "a=x.onnx", "b=y.onnx"]) == 2
    assert "--data and --checkpoints go together" in capsys.readouterr().err
    assert main(["compare", "--data", str(world["data"]), "--checkpoints", "a=missing.onnx", "b=y.onnx"]) == 2
    assert "checkpoint a=" in capsys.readouterr().err
    assert main(["compare"]) == 2
    assert "give --gt GT.json with --dets" in capsys.readouterr().err


def test_predictions_another_process_is_making_are_waited_for_not_made_again(world, capsys, monkeypatch):
    import subprocess

    from hkd.jobs.process import identify

    gt = workflow.ground_truth(world["data"])
    entry = workflow.prediction_entry(ResultStore(), workflow.checkpoint("teacher", world["checkpoints"]["teacher"])
                                      .sha256, gt)
    entry.folder.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5); " + COPY,
                              str(world["dets"]["teacher"]), str(gt.gt_path), str(entry.path)])
    entry.record(identify(other.pid))  # as another `hkd compare --data` run does
    calls = []
    monkeypatch.setattr(workflow, "predict_command",
                        lambda ck, gt, out, threads: calls.append(ck.name) or _copy(world["dets"][ck.name], gt, out))
    try:
        assert main(_data_args(world)) == 0
    finally:
        other.wait()
    assert calls == ["student"]
    err = capsys.readouterr().err
    assert f"teacher: waiting for process {other.pid} (running) to make" in err and "teacher: cached predictions" in err
