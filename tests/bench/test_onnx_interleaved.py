"""bench/onnx_interleaved.py: every round runs each model once, in order, after the warm-ups."""
from __future__ import annotations

import sys

import pytest

from tests.bench.scripts import bench_module


@pytest.fixture
def module():
    return bench_module("onnx_interleaved")


def test_rounds_interleave_the_models_after_their_warmups(module):
    calls = []

    def fake(name):
        def run(images):
            assert len(images) == 1 and tuple(images[0].shape) == (3, 48, 64)
            calls.append(name)
        return run

    times = module.interleaved({"a": fake("a"), "b": fake("b")}, 64, 48, rounds=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_two_models_of_one_file_name_are_refused(module, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["onnx_interleaved.py", str(tmp_path / "x" / "m.onnx"), str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit):
        module.main()
    assert "different file names" in capsys.readouterr().err
