"""`hkd distill` end to end on a tiny dataset, with the shipped distill config files."""
import yaml

from hkd.cli import main
from hkd.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hkd.models.presets import build_detector
from hkd.train.run_folder import RunFolder


def test_distill_cli_with_a_config_file(tiny_dataset, tiny_config, tmp_path, capsys):
    teacher = build_detector("hkd_frcnn_lite2.teacher", min_size=96, max_size=128).eval()
    t_path = save_checkpoint(tmp_path / "teacher.safetensors", teacher,
                             CheckpointMeta(preset="hkd_frcnn_lite2.teacher", min_size=96, max_size=128))
    cfg = tiny_config(tiny_dataset, steps=3, checkpoint_every=0)
    cfg["data"]["val"] = None
    cfg["model"]["train_min_sizes"] = [80, 96]  # multi-scale student, single-scale teacher
    cfg["teacher"] = str(t_path)
    cfg["distill"] = str((__import__("pathlib").Path(__file__).parents[2] / "assets/configs/distill_full.yaml"))
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["distill", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0, \
        capsys.readouterr().err
    run = RunFolder(tmp_path / "run")
    lines = [m for m in run.read_metrics() if "loss" in m]
    assert any(k.startswith("kd/neck.p3/") for k in lines[0])  # features from step 0 (schedule stage 1)
    assert not any(k.startswith("kd/roi.") for k in lines[0])
    final = load_checkpoint(run.checkpoint("final"))
    assert final.meta.parent == "teacher.safetensors"
    assert "levels" in str(final.meta.train_config["distill"])  # the distill config is recorded inline


def test_distill_config_typo_is_a_clear_cli_error(tiny_dataset, tiny_config, tmp_path, capsys):
    teacher = build_detector("hkd_frcnn_lite0.student", min_size=96, max_size=128).eval()
    t_path = save_checkpoint(tmp_path / "t.safetensors", teacher,
                             CheckpointMeta(preset="hkd_frcnn_lite0.student", min_size=96, max_size=128))
    cfg = tiny_config(tiny_dataset, steps=1)
    cfg["teacher"] = str(t_path)
    cfg["distill"] = {"levels": {"neck.p9": "mse"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["distill", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "neck.p9" in err and "neck.p3" in err
