"""Paths in a run config: relative to the config file when written there, to the working directory on --set."""
import yaml

from hkd.train.config import load_config


def test_every_path_key_is_resolved_against_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    raw = {
        "model": {"preset": "hkd_frcnn_lite0.student", "init": "ckpt/init.safetensors"},
        "data": {"train": "../data/train", "val": "../data/val"},
        "train": {"teacher_cache": "../cache"},
        "teacher": "t.safetensors",
        "distill": {"levels": {"neck.p3": "mse"}, "aux": {"checkpoint": "aux.safetensors"}},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(folder / "run.yaml")
    assert cfg.model.init == str(folder / "ckpt/init.safetensors")
    assert cfg.data.train == str(tmp_path / "data/train") and cfg.data.val == str(tmp_path / "data/val")
    assert cfg.train.teacher_cache == str(tmp_path / "cache")
    assert cfg.teacher == str(folder / "t.safetensors")
    assert cfg.distill["aux"]["checkpoint"] == str(folder / "aux.safetensors")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(folder / "run.yaml", ["train.teacher_cache=here", "teacher=x.safetensors"])
    assert cfg.train.teacher_cache == str(tmp_path / "here") and cfg.teacher == str(tmp_path / "x.safetensors")
    del raw["teacher"], raw["train"]
    raw["online"] = {"init": "online/t.safetensors"}
    (folder / "online.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(folder / "online.yaml").online.init == str(folder / "online/t.safetensors")
