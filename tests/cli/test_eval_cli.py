"""`hkd eval --gt GT.json --dets DETS.json [--json]`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hkd.cli import main

ROOT = Path(__file__).resolve().parents[2]
P1, P2 = [0, 0, 40, 100], [200, 0, 40, 100]


@pytest.fixture
def files(tmp_path):
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "pedestrian"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": P1, "height": 100, "vis_ratio": 1.0, "ignore": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": P2, "height": 100, "vis_ratio": 0.5, "ignore": 0},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": P1, "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": P2, "score": 0.8},
    ]
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(dets))
    return gt_path, dets_path


def test_json_output_has_exactly_the_public_keys(files, capsys):
    gt, dets = files
    assert main(["eval", "--gt", str(gt), "--dets", str(dets), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["mr", "ap50", "ap"]
    assert list(out["mr"]) == ["Reasonable", "Small", "Heavy", "All"]
    # Both people found with no FP. Reasonable: person 2 (visibility 0.5) is
    # ignored, person 1 found -> 0. Small: both are 100 px -> no GT -> -100.
    # Heavy: only person 2 counts and is found -> 0. All: both found -> 0.
    assert out["mr"] == {"Reasonable": 0.0, "Small": -100.0, "Heavy": 0.0, "All": 0.0}
    assert out["ap50"] == pytest.approx(1.0) and out["ap"] == pytest.approx(1.0)


def test_text_output(files, capsys):
    gt, dets = files
    assert main(["eval", "--gt", str(gt), "--dets", str(dets)]) == 0
    out = capsys.readouterr().out
    for name in ("Reasonable", "Small", "Heavy", "All", "AP50", "AP "):
        assert name in out
    assert "no ground truth in this setup" in out  # Small


def test_missing_file_names_it(files, tmp_path, capsys):
    gt, _ = files
    missing = tmp_path / "nope.json"
    assert main(["eval", "--gt", str(gt), "--dets", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"detections file {missing} does not exist" in err


def test_invalid_json_names_the_file(files, capsys):
    gt, dets = files
    gt.write_text("{not json")
    assert main(["eval", "--gt", str(gt), "--dets", str(dets)]) == 2
    assert f"ground-truth file {gt} is not valid JSON" in capsys.readouterr().err


def test_malformed_detection_names_file_and_entry(files, capsys):
    gt, dets = files
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}]))
    assert main(["eval", "--gt", str(gt), "--dets", str(dets)]) == 2
    err = capsys.readouterr().err
    assert f"detections file {dets}: detection [0] has bbox=[0, 0, 1]" in err


def test_python_dash_m_hkd_eval(files):
    gt, dets = files
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "hkd", "eval", "--gt", str(gt), "--dets", str(dets), "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mr"]["All"] == 0.0
