"""Issue #31 for `hkd predict`: no output over an input, atomic detections, one sentence for bad GT ids."""
import errno
import json
import os

import pytest

from hkd.cli import main
from tests.cli.test_predict_cli import _world


def _predict(ckpt, images, out, *extra):
    return main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out), *extra])


def test_out_equal_to_an_input_is_refused_and_the_input_survives(tmp_path, capsys):
    images, ckpt = _world(tmp_path)
    gt = tmp_path / "gt.json"
    ckpt_bytes, gt_text = ckpt.read_bytes(), gt.read_text()
    assert _predict(ckpt, images, ckpt) == 2
    assert "is the --checkpoint file" in capsys.readouterr().err
    assert _predict(ckpt, images, tmp_path / "." / "gt.json", "--gt", str(gt)) == 2
    assert "is the --gt file" in capsys.readouterr().err
    assert _predict(ckpt, images, images / "a.png") == 2
    assert "one of the --images" in capsys.readouterr().err
    assert _predict(ckpt, images, tmp_path) == 2
    assert "is a folder" in capsys.readouterr().err
    assert ckpt.read_bytes() == ckpt_bytes and gt.read_text() == gt_text


def test_a_full_disk_leaves_the_previous_detections_whole(tmp_path, capsys, monkeypatch):
    images, ckpt = _world(tmp_path)
    out = tmp_path / "dets.json"
    out.write_text("[]")  # the previous detections
    real_replace = os.replace

    def full(src, dst):
        if str(dst) == str(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    status = tmp_path / "status.json"
    assert _predict(ckpt, images, out, "--status", str(status)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "nothing was replaced" in err and "Traceback" not in err
    assert out.read_text() == "[]"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dets.json.")]  # no temp file left
    assert json.loads(status.read_text())["state"] == "failed"


@pytest.mark.parametrize("image_id, message", [("abc", "has id 'abc'"), (1.5, "has id 1.5"), (None, "has id None")])
def test_image_ids_that_are_not_whole_numbers_are_one_sentence(tmp_path, capsys, image_id, message):
    images, ckpt = _world(tmp_path)
    gt = json.loads((tmp_path / "gt.json").read_text())
    gt["images"][0]["id"] = image_id
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert _predict(ckpt, images, tmp_path / "d.json", "--gt", str(tmp_path / "gt.json")) == 2
    assert message in capsys.readouterr().err
