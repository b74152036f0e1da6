"""`hkd predict --gt` and `hkd eval --gt` take a dataset as it is distributed (a CityPersons .mat, a
Caltech folder …): the same numbers as through the converted COCO-style files."""
from __future__ import annotations

import json

import torch

from hkd.cli import main
from hkd.models.checkpoint import CheckpointMeta, save_checkpoint
from hkd.models.presets import build_detector
from tests.data.test_formats_official import write_citypersons
from tests.evaluation.test_official_layouts import _caltech_60


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_detector("hkd_frcnn_lite0.student", min_size=48, max_size=64).eval()
    return save_checkpoint(tmp_path / "s.safetensors", model,
                           CheckpointMeta(preset="hkd_frcnn_lite0.student", min_size=48, max_size=64))


def test_eval_of_a_citypersons_mat_equals_eval_of_its_converted_annotations(tmp_path, capsys):
    mat = write_citypersons(tmp_path / "cityscapes")
    assert main(["data", "convert", str(mat), "--out", str(tmp_path / "converted")]) == 0
    gt = json.loads((tmp_path / "converted" / "annotations.json").read_text())
    # detections on every pedestrian box, shifted a little, and one false alarm per image
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": [a["bbox"][0] + 1, *a["bbox"][1:]], "score": 0.9}
            for a in gt["annotations"] if not a["ignore"]]
    dets += [{"image_id": im["id"], "category_id": 1, "bbox": [1, 1, 10, 30], "score": 0.5} for im in gt["images"]]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    capsys.readouterr()
    results = []
    for source in (mat, tmp_path / "converted" / "annotations.json"):
        assert main(["eval", "--gt", str(source), "--dets", str(tmp_path / "dets.json"), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]["mr"]["All"] >= 0


def test_predict_on_a_caltech_folder_needs_no_images_folder(tmp_path, monkeypatch, capsys):
    import hkd.data.datasets as datasets

    monkeypatch.setenv("HKD_CACHE_DIR", str(tmp_path / "cache"))
    root = _caltech_60(tmp_path / "caltech")
    out = tmp_path / "dets.json"
    opens, real_open = [], datasets.open_dataset
    monkeypatch.setattr(datasets, "open_dataset", lambda path, **kw: opens.append(path) or real_open(path, **kw))
    assert main(["predict", "--checkpoint", str(_checkpoint(tmp_path)), "--gt", str(root), "--out", str(out),
                 "--score-thresh", "0.0", "--threads", "1"]) == 0
    assert len(opens) == 1  # one parse of the .vbb files for the frames folder and the GT ids
    monkeypatch.setattr(datasets, "open_dataset", real_open)
    dets = json.loads(out.read_text())
    assert dets and {d["image_id"] for d in dets} <= {1, 2}  # the two every-30th frames, ids as the GT gives them
    assert main(["eval", "--gt", str(root), "--dets", str(out), "--json"]) == 0
    assert "Reasonable" in capsys.readouterr().out


def test_a_folder_without_annotations_is_no_ground_truth(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "dets.json").write_text("[]")
    assert main(["eval", "--gt", str(tmp_path / "photos"), "--dets", str(tmp_path / "dets.json")]) == 2
    assert "no annotations to evaluate against" in capsys.readouterr().err
