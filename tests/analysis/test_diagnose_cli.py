"""`hkd diagnose`: its JSON keys (a public interface), its files, and bad input named in one sentence."""
from __future__ import annotations

import json

import pytest

from hkd.cli import main
from tests.analysis.conftest import CHECKPOINTS


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["diagnose", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_keys_files_and_pairs(synth_split, tmp_path, capsys):
    code, out, _ = run(capsys, "--checkpoint", f"hkd={CHECKPOINTS / 'student_hkd.safetensors'}",
                       "--checkpoint", f"nokd={CHECKPOINTS / 'student_baseline.safetensors'}",
                       "--gt", synth_split["gt_path"], "--images", synth_split["images"], "--limit", 3,
                       "--setup", "All", "--json", "--out", tmp_path / "report", "--threads", 1)
    assert code == 0
    result = json.loads(out)
    assert {"operating_point", "cases", "summary", "pairs"} <= set(result)
    assert set(result["cases"]) == {"hkd", "nokd"} and len(result["pairs"]) == 2
    op = result["operating_point"]["hkd"]
    assert op["rule"] == "fppi=0.1" and op["setup"] == "Reasonable"  # as hkd compare fixes it
    case = result["cases"]["hkd"][0]
    assert {"image_id", "box", "stage", "best_proposal", "best_score_before_nms", "suppressor", "detection",
            "nearby"} <= set(case)
    assert json.loads((tmp_path / "report" / "diagnosis.json").read_text()) == result
    lines = (tmp_path / "report" / "cases.csv").read_text().splitlines()
    assert lines[0].startswith("model,image_id") and len(lines) == 1 + sum(map(len, result["cases"].values()))


def test_text_report_names_every_stage(synth_split, capsys):
    code, out, _ = run(capsys, "--checkpoint", CHECKPOINTS / "student_hkd.safetensors", "--gt",
                       synth_split["gt_path"], "--images", synth_split["images"], "--limit", 2, "--score", 0.5)
    assert code == 0
    assert "student_hkd: score >= 0.500 (given)" in out
    for stage in ("rpn", "roi_score", "nms", "localization"):
        assert stage in out


def test_bad_inputs_are_one_sentence(synth_split, tmp_path, capsys):
    student = CHECKPOINTS / "student_hkd.safetensors"
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**synth_split["gt"], "annotations": []}))
    code, _, err = run(capsys, "--checkpoint", student, "--gt", empty, "--images", synth_split["images"])
    assert code == 2 and str(empty) in err and "no annotations" in err

    from hkd.models.checkpoint import update_metadata

    cars = update_metadata(student, tmp_path / "cars.safetensors", classes=["background", "car"])
    code, _, err = run(capsys, "--checkpoint", cars, "--gt", synth_split["gt_path"], "--images",
                       synth_split["images"], "--limit", 1)
    assert code == 2 and "cars.safetensors" in err and "not a pedestrian" in err

    other = tmp_path / "other.json"
    gt = synth_split["gt"]
    other.write_text(json.dumps({**gt, "images": [{**gt["images"][0], "file_name": "../../etc/hostname"}]}))
    code, _, err = run(capsys, "--checkpoint", student, "--gt", other, "--images", synth_split["images"])
    assert code == 2 and "leaves the images folder" in err

    code, _, err = run(capsys, "--checkpoint", student, "--gt", synth_split["gt_path"], "--images", tmp_path)
    assert code == 2 and "is not there" in err and "--images" in err


@pytest.mark.parametrize("spec", ["=x.safetensors", "a=", ])
def test_checkpoint_names_must_be_whole(spec, synth_split, capsys):
    code, _, err = run(capsys, "--checkpoint", spec, "--gt", synth_split["gt_path"], "--images",
                       synth_split["images"])
    assert code == 2 and "NAME=CK" in err


def test_a_symlink_out_of_the_images_folder_is_refused(synth_split, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    first = synth_split["gt"]["images"][0]
    (images / first["file_name"]).symlink_to(synth_split["images"] / first["file_name"])  # points outside
    gt = tmp_path / "gt.json"
    keep = [a for a in synth_split["gt"]["annotations"] if a["image_id"] == first["id"]]
    gt.write_text(json.dumps({**synth_split["gt"], "images": [first], "annotations": keep}))
    code, _, err = run(capsys, "--checkpoint", CHECKPOINTS / "student_hkd.safetensors", "--gt", gt, "--images", images)
    assert code == 2 and "outside the images folder" in err and "HKD_ALLOW_SYMLINKS" in err
