"""Issue #31, bounded inputs and one-sentence errors: YAML aliases refused before anything is built
(checked under a memory bound), values quoted short, --num capped, configs that are not text."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hkd.cli import main
from hkd.configfile import ConfigFileError, quote, read_config_file
from hkd.train.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def alias_bomb(levels: int = 12) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "model:\n  preset: hkd_frcnn_lite0.student\n  pretrained_backbone: " \
        + f"*a{levels - 1}\n" + "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_within_a_small_memory_bound(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())  # 10^12 strings once expanded; a few hundred bytes on disk
    script = textwrap.dedent(f"""
        import resource, sys
        from hkd.train.config import ConfigError, load_config
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # 4 GiB: torch's import fits, the bomb does not
        try:
            load_config({str(bomb)!r})
        except ConfigError as exc:
            print(len(str(exc)), str(exc))
            sys.exit(0)
        sys.exit(1)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    length, message = out.stdout.split(" ", 1)
    assert int(length) < 600 and "alias" in message and "bomb.yaml" in message


def test_anchors_aliases_and_bad_overrides_are_one_sentence(tmp_path, tiny_dataset, tiny_config):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_config(tiny_dataset)))
    anchored = tmp_path / "anchor.yaml"
    anchored.write_text("model: &m\n  preset: hkd_frcnn_lite0.student\n")
    with pytest.raises(ConfigError, match="anchor &m is not accepted"):
        load_config(anchored)
    with pytest.raises(ConfigError, match=r"override train.steps: '\[1,' is not a valid YAML value"):
        load_config(good, ["train.steps=[1,"])
    with pytest.raises(ConfigError, match="alias"):
        load_config(good, ["train.steps=*x"])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(binary)
    with pytest.raises(ConfigError, match="a folder, not a config file"):
        load_config(tmp_path)
    with pytest.raises(ConfigFileError, match="no such config file"):
        read_config_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.lr=-0.01", r"train.lr: -0.01 is not usable; expected a learning rate > 0"),
    ("train.lr=.nan", r"train.lr: nan is not usable"),
    ("model.min_size=-5", r"model.min_size: -5 is not usable"),
    ("model.min_size=abc", r"model.min_size: 'abc' is not usable"),
    ("train.momentum=2", r"train.momentum: 2.0 is not usable"),
    ("data.val_images=0", r"data.val_images: 0 is not usable"),
])
def test_numbers_out_of_range_are_refused_on_load(tmp_path, tiny_dataset, tiny_config, override, message):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_config(tiny_dataset)))
    with pytest.raises(ConfigError, match=message):
        load_config(good, [override])


def test_long_values_are_quoted_short(tmp_path, tiny_dataset, tiny_config):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_config(tiny_dataset)))
    with pytest.raises(ConfigError) as info:
        load_config(good, ["train.optimizer=" + "x" * 100_000])
    assert len(str(info.value)) < 500 and "100002 characters" in str(info.value)
    assert quote("y" * 10) == repr("y" * 10)


def test_distill_that_is_a_folder_and_a_negative_lr_are_one_sentence_in_the_cli(tmp_path, tiny_dataset, tiny_config,
                                                                                 capsys):
    cfg = tiny_config(tiny_dataset)
    cfg["teacher"] = str(tmp_path / "t.safetensors")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r"), "--set", "train.lr=-1"]) == 2
    assert "train.lr: -1.0 is not usable" in capsys.readouterr().err
    assert main(["distill", "--config", str(config), "--out", str(tmp_path / "r2"), "--set", f"distill={tmp_path}"]) == 2
    assert "is a folder; name a distill config file" in capsys.readouterr().err
    assert main(["distill", "--config", str(config), "--out", str(tmp_path / "r2"),
                 "--set", f"distill={tmp_path / 'none.yaml'}"]) == 2
    assert "error:" in capsys.readouterr().err  # one sentence (here: the teacher file is missing first)


def test_synth_num_is_capped_before_anything_is_generated(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "s"), "--num", "99999999999999999999"]) == 2
    assert "at most 1,000,000 images" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
