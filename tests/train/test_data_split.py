"""A run config trains on one split of a dataset folder that holds several (Caltech: train = set00-05)."""
from __future__ import annotations

import pytest

from hkd.train.config import ConfigError, config_from_dict
from hkd.train.run_setup import open_data
from tests.data.test_caltech import _pixels, _write_seq, _write_vbb


def _caltech(root, set_name):
    annotated = [[] for _ in range(30)]
    annotated[29] = [{"id": 1, "pos": [10, 5, 12, 40]}]
    _write_seq(root / set_name / "V000.seq", [_pixels(i % 4) for i in range(30)])
    _write_vbb(root / "annotations" / set_name / "V000.vbb", annotated, ["person"])


def test_the_config_names_a_split_and_training_opens_that_one(tmp_path):
    root = tmp_path / "caltech"
    _caltech(root, "set00")  # train
    _caltech(root, "set06")  # test
    cfg = config_from_dict({"model": {"preset": "hkd_frcnn_lite0.student"},
                            "data": {"train": str(root), "train_split": "train", "val": str(root)}})
    assert (cfg.data.train_split, cfg.data.val_split) == ("train", None)
    train = open_data(cfg.data.train, cfg.data.train_split)
    val = open_data(cfg.data.val, cfg.data.val_split)  # the reader's default: Caltech's test split
    assert train.file_names == ["set00/V000/I00029.jpg"] and val.file_names == ["set06/V000/I00029.jpg"]


def test_a_split_of_a_dataset_without_splits_is_refused_naming_it(tmp_path):
    import json

    from PIL import Image

    folder = tmp_path / "own"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(folder / "images" / "a.png")
    (folder / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}], "annotations": [],
        "categories": [{"id": 1, "name": "pedestrian"}]}))
    assert len(open_data(str(folder))) == 1
    with pytest.raises(ConfigError, match="split"):
        open_data(str(folder), "val")
