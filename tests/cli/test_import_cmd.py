"""`hkd import`: foreign weights (torchvision's format, wrappers, DDP prefixes, safetensors) become
self-describing HKD checkpoints; pickled code is refused; what does not fit is reported readably."""
import argparse
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from hkd.cli import main
from hkd.models.checkpoint import CheckpointError, import_checkpoint, load_checkpoint, read_meta
from hkd.models.presets import build_detector
from tests.conftest import one_torch_thread

TEACHER = "hkd_frcnn_r50.teacher"
STUDENT = "hkd_frcnn_r18.student"


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def coco_pth(tmp_path_factory):
    """torchvision's Faster R-CNN R50-FPN with its 91 COCO classes, saved as torchvision saves it."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def student_state():
    torch.manual_seed(1)
    return build_detector(STUDENT).state_dict()


def _same_weights(model, state):
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_torchvision_two_class_checkpoint_imports_and_loads_without_a_preset(tmp_path, capsys):
    torch.manual_seed(2)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    source = tmp_path / "mine.pth"
    torch.save(tv.state_dict(), source)  # plain BatchNorm2d: num_batches_tracked counters included
    out = tmp_path / "teacher.safetensors"
    assert main(["import", str(source), "--preset", TEACHER, "--out", str(out)]) == 0
    assert "41.30M parameters" in capsys.readouterr().out
    meta = read_meta(out)
    assert meta.preset == TEACHER and meta.parent == "mine.pth" and meta.classes == ["background", "pedestrian"]
    assert "imported from mine.pth" in meta.notes and meta.cost["params"]["total"] > 41e6
    loaded = load_checkpoint(out)
    _same_weights(loaded.model, {k: v for k, v in tv.state_dict().items()})


@pytest.mark.parametrize("wrap", ["ddp", "model", "state_dict", "reference_script", "safetensors"])
def test_wrapped_weights_import(tmp_path, student_state, wrap):
    source = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pth")
    if wrap == "ddp":
        torch.save({f"module.{k}": v for k, v in student_state.items()}, source)
    elif wrap in ("model", "state_dict"):
        torch.save({wrap: student_state, "epoch": 7}, source)
    elif wrap == "reference_script":  # torchvision's references/detection/train.py: argparse options beside the model
        torch.save({"model": student_state, "optimizer": {"state": {}}, "epoch": 25,
                    "args": argparse.Namespace(lr=0.02, data_path="/coco", epochs=26)}, source)
    else:
        save_file({k: v.contiguous() for k, v in student_state.items()}, str(source))
    imported = import_checkpoint(source, STUDENT, tmp_path / "out.safetensors")
    assert imported.changes == []
    _same_weights(load_checkpoint(imported.path).model, student_state)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["HKD_PWNED"],))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HKD_PWNED", str(marker))
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"model": _Exploit()}, fh)
    assert main(["import", str(evil), "--preset", STUDENT, "--out", str(tmp_path / "out.safetensors")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_a_wrong_preset_gives_the_key_report(tmp_path, student_state, capsys):
    source = tmp_path / "student.pth"
    torch.save(student_state, source)
    assert main(["import", str(source), "--preset", TEACHER, "--out", str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"weights do not fit preset '{TEACHER}'" in err
    assert "shape mismatches (e.g. backbone.body.layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in err
    assert "missing tensors (e.g. backbone.body.layer1.0.conv3.weight" in err
    assert "more)" in err  # counts, then only the first few names
    assert not (tmp_path / "t.safetensors").exists()


def test_a_coco_head_is_explained_then_cut_to_person_or_reset(tmp_path, coco_pth, capsys):
    out = tmp_path / "t.safetensors"
    assert main(["import", str(coco_pth), "--preset", TEACHER, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "roi_heads.box_predictor.cls_score.weight: file (91, 1024) vs model (2, 1024)" in err
    assert "91 classes in the file (torchvision COCO layout) and 2 in the preset" in err
    assert "--coco-person" in err and "--reset-head" in err
    assert not out.exists()

    coco = torch.load(coco_pth, weights_only=True)
    assert main(["import", str(coco_pth), "--preset", TEACHER, "--coco-person", "--out", str(out)]) == 0
    person = load_checkpoint(out).model.roi_heads.box_predictor
    torch.testing.assert_close(person.cls_score.weight, coco["roi_heads.box_predictor.cls_score.weight"][[0, 1]])
    torch.testing.assert_close(person.bbox_pred.weight, coco["roi_heads.box_predictor.bbox_pred.weight"][:8])
    assert "COCO head" in read_meta(out).notes

    imported = import_checkpoint(coco_pth, TEACHER, tmp_path / "reset.safetensors", head="reset")
    assert imported.changes and "reset" in imported.changes[0]
    model = load_checkpoint(imported.path).model
    assert model.roi_heads.box_predictor.cls_score.weight.shape == (2, 1024)
    torch.testing.assert_close(model.backbone.body.layer1[0].conv1.weight, coco["backbone.body.layer1.0.conv1.weight"])
    capsys.readouterr()


def test_reset_head_does_not_excuse_other_mismatches(tmp_path, coco_pth):
    with pytest.raises(CheckpointError, match="weights do not fit preset 'hkd_frcnn_r18.student'"):
        import_checkpoint(coco_pth, STUDENT, tmp_path / "s.safetensors", head="reset")


def test_coco_person_needs_a_coco_head(tmp_path, student_state):
    state = dict(student_state)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 256)
    state["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(3)
    source = tmp_path / "three.pth"
    torch.save(state, source)
    with pytest.raises(CheckpointError, match="3 classes, not torchvision's COCO 91.*--reset-head"):
        import_checkpoint(source, STUDENT, tmp_path / "s.safetensors", head="coco_person")


def test_json_output_and_output_checks(tmp_path, student_state, capsys):
    source = tmp_path / "s.pth"
    torch.save(student_state, source)
    out = tmp_path / "s.safetensors"
    assert main(["import", str(source), "--preset", STUDENT, "--out", str(out), "--min-size", "320",
                 "--max-size", "480", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["meta"]["preset"] == STUDENT and data["meta"]["min_size"] == 320 and data["path"] == str(out)
    assert load_checkpoint(out).model.transform.min_size == (320,)
    assert main(["import", str(source), "--preset", STUDENT, "--out", str(tmp_path / "s.pth")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert main(["import", str(source), "--preset", "yolo.teacher", "--out", str(out)]) == 2
    assert "unknown preset 'yolo.teacher'" in capsys.readouterr().err
