"""Checkpoints round-trip, load without being told their architecture, and fail clearly."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hkd.cli import main
from hkd.models.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    load_foreign_weights,
    read_meta,
    save_checkpoint,
)
from hkd.models.presets import build_detector

STUDENT = "hkd_frcnn_lite0.student"


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(1)
    return build_detector(STUDENT).eval()


@pytest.fixture()
def saved(tmp_path, student):
    meta = CheckpointMeta(preset=STUDENT, train_config={"steps": 3}, metrics={"mr_reasonable": 12.5}, parent="teacher.safetensors")
    return save_checkpoint(tmp_path / "student.safetensors", student, meta)


def test_round_trip_restores_weights_and_metadata(saved, student):
    loaded = load_checkpoint(saved)
    assert loaded.meta.preset == STUDENT
    assert loaded.meta.metrics == {"mr_reasonable": 12.5}
    assert loaded.meta.train_config == {"steps": 3}
    assert loaded.meta.parent == "teacher.safetensors"
    assert loaded.meta.library_version and loaded.meta.created
    assert not loaded.model.training
    for (k, a), b in zip(student.state_dict().items(), loaded.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    x = [torch.rand(3, 128, 160)]
    with torch.no_grad():
        torch.testing.assert_close(student(x)[0]["scores"], loaded.model(x)[0]["scores"])


def test_float16_storage_loads_as_float32(tmp_path, student):
    path = save_checkpoint(tmp_path / "half.safetensors", student, CheckpointMeta(preset=STUDENT), dtype=torch.float16)
    loaded = load_checkpoint(path)
    assert loaded.meta.dtype == "float16"
    w = loaded.model.backbone.body.conv_stem.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, student.backbone.body.conv_stem.weight, rtol=1e-3, atol=1e-3)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, saved):
    assert [p.name for p in tmp_path.iterdir()] == ["student.safetensors"]


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("these are my notes, not weights")
    with pytest.raises(CheckpointError, match="notes.safetensors: not a safetensors checkpoint"):
        load_checkpoint(bad)


def test_truncated_file(tmp_path, saved):
    data = saved.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.safetensors: truncated"):
        load_checkpoint(cut)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_unknown_preset_in_metadata(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"hkd": json.dumps({"preset": "yolo_v99.teacher"})})
    with pytest.raises(CheckpointError, match="odd.safetensors: unknown preset 'yolo_v99.teacher'; available: "):
        read_meta(path)


def test_weights_of_another_architecture(tmp_path, student):
    path = tmp_path / "liar.safetensors"
    state = {k: v.contiguous() for k, v in student.state_dict().items()}
    meta = CheckpointMeta(preset="hkd_frcnn_lite2.teacher")
    save_file(state, str(path), metadata={"hkd": meta.to_json()})
    with pytest.raises(CheckpointError, match="weights do not fit preset 'hkd_frcnn_lite2.teacher': .*shape mismatches"):
        load_checkpoint(path)


def test_safetensors_without_metadata_needs_a_preset(tmp_path, student):
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="without HKD metadata"):
        load_checkpoint(path)
    assert load_checkpoint(path, preset=STUDENT).meta.preset == STUDENT


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch " + os.environ["HKD_PWNED"],))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HKD_PWNED", str(marker))
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Exploit()}, fh)
    torch.save({"x": _Exploit()}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="refused to load"):
            load_checkpoint(path, preset=STUDENT)
    assert not marker.exists()


def test_pth_needs_an_explicit_preset(tmp_path, student):
    path = tmp_path / "student.pth"
    torch.save(student.state_dict(), path)
    with pytest.raises(CheckpointError, match="give the preset explicitly"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, preset=STUDENT)
    torch.testing.assert_close(loaded.model.rpn.head.conv[0][0].weight, student.rpn.head.conv[0][0].weight)


def test_torchvision_coco_weights_keep_only_person(tmp_path):
    """A 91-class COCO state dict (as torchvision ships it) loads into the person-only preset."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    coco = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = tmp_path / "coco.pth"
    torch.save({"model": coco.state_dict()}, path)
    model = load_foreign_weights(path, "fasterrcnn_mobilenet_v3_large_320_fpn.coco_person")
    cls = model.roi_heads.box_predictor.cls_score.weight
    torch.testing.assert_close(cls, coco.roi_heads.box_predictor.cls_score.weight[[0, 1]])
    box = model.roi_heads.box_predictor.bbox_pred.weight
    torch.testing.assert_close(box, coco.roi_heads.box_predictor.bbox_pred.weight[:8])


def test_info_cli_json(saved, capsys):
    assert main(["info", str(saved), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["preset"] == STUDENT
    assert info["params"]["total"] == sum(p.numel() for p in build_detector(STUDENT).parameters())
    assert info["flops"]["total"] > info["flops"]["backbone"] > 0
    assert {"backbone", "neck", "rpn", "roi"} <= set(info["flops"])


def test_info_cli_bench_names_its_device(saved, capsys):
    assert main(["info", str(saved), "--json", "--bench", "--device", "cpu", "--size", "96x64", "--threads", "1"]) == 0
    latency = json.loads(capsys.readouterr().out)["latency"]
    assert latency["device"] == "cpu" and latency["median_s"] > 0 and latency["threads"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_info_cli_bench_on_a_missing_gpu_is_a_clear_error(saved, capsys):
    assert main(["info", str(saved), "--bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "torch.cuda.is_available() is False" in err


def test_info_cli_bad_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x00" * 10)
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "hkd info: error:" in err and "x.safetensors" in err


def test_update_metadata_keeps_the_weights(tmp_path, saved):
    from hkd.models.checkpoint import update_metadata

    out = update_metadata(saved, tmp_path / "shipped.safetensors", metrics={"ap50": 0.5}, notes="demo")
    a, b = load_checkpoint(saved), load_checkpoint(out)
    assert b.meta.metrics == {"ap50": 0.5} and b.meta.notes == "demo" and b.meta.preset == a.meta.preset
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(v, b.model.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(KeyError, match="unknown metadata fields"):
        update_metadata(saved, tmp_path / "x.safetensors", accuracy=1.0)
