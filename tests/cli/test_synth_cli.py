"""``hkd synth`` command line: generation, --stats, --contact-sheet and user errors."""
from __future__ import annotations

import json

import pytest

from hkd.cli import main

# no vtest.avi needed: procedural people on photos and streets only, small images (fast)
FAST = {"real_fraction": 0.0, "background_mix": [1.0, 0.0, 1.0]}


@pytest.fixture()
def fast_config(tmp_path):
    path = tmp_path / "fast.json"
    path.write_text(json.dumps(FAST))
    return path


def test_generate_stats_and_contact_sheet(tmp_path, fast_config, capsys):
    out = tmp_path / "ds"
    code = main(["synth", "--out", str(out), "--num", "2", "--seed", "4", "--width", "320", "--height", "240",
                 "--workers", "1", "--config", str(fast_config), "--no-progress"])
    assert code == 0
    assert "wrote 2 images" in capsys.readouterr().out
    coco = json.loads((out / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["000000.jpg", "000001.jpg"]
    assert all((out / "images" / im["file_name"]).is_file() for im in coco["images"])
    assert coco["images"][0]["width"] == 320 and coco["info"]["config"]["real_fraction"] == 0.0
    assert main(["synth", "--stats", str(out), "--json", "--contact-sheet", str(tmp_path / "sheet.jpg")]) == 0
    printed = capsys.readouterr().out
    stats = json.loads(printed[:printed.rindex("}") + 1])
    assert stats == coco["info"]["stats"]
    assert (tmp_path / "sheet.jpg").stat().st_size > 1000
    assert main(["synth", "--stats", str(out)]) == 0
    assert "CityPersons setups" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--num", "0"], "--num must be a positive"),
    (["--num", "1", "--width", "50"], "too small"),
    (["--num", "1", "--workers", "0"], "--workers must be >= 1"),
])
def test_user_errors(tmp_path, args, message, capsys):
    assert main(["synth", "--out", str(tmp_path / "x"), *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_non_empty_out_dir_needs_overwrite(tmp_path, fast_config, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["synth", "--out", str(tmp_path), "--num", "1", "--config", str(fast_config), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_config_and_missing_dataset(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"crowd_sise": [1, 2]}))
    assert main(["synth", "--out", str(tmp_path / "y"), "--config", str(bad)]) == 2
    assert "crowd_sise" in capsys.readouterr().err
    assert main(["synth", "--stats", str(tmp_path / "nowhere")]) == 2
    assert "annotations.json" in capsys.readouterr().err


def test_config_as_an_inline_json_object(tmp_path, capsys):
    out = tmp_path / "ds"
    inline = json.dumps({**FAST, "free_scale_prob": 1.0})
    assert main(["synth", "--out", str(out), "--num", "1", "--width", "320", "--height", "240", "--workers", "1",
                 "--config", inline, "--no-progress"]) == 0
    assert json.loads((out / "annotations.json").read_text())["info"]["config"]["free_scale_prob"] == 1.0
    assert main(["synth", "--out", str(tmp_path / "z"), "--config", '{"free_scale_prob": }']) == 2
    assert "--config" in capsys.readouterr().err
