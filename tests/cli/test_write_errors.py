"""Issue #31: a full disk in `hkd export` and `hkd synth` is one sentence; export never overwrites its input."""
import errno
import json
import os

from hkd.cli import main


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/somewhere/file")


def test_export_refuses_its_own_checkpoint_and_a_full_disk_is_one_sentence(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"weights")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(ckpt)]) == 2
    assert "is the --checkpoint itself" in capsys.readouterr().err
    assert ckpt.read_bytes() == b"weights"
    import hkd.deploy.export as export_module

    monkeypatch.setattr(export_module, "export_onnx", _enospc)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "nothing was replaced" in err and "Traceback" not in err


def test_synth_on_a_full_disk_is_one_sentence_and_the_status_says_failed(tmp_path, capsys, monkeypatch):
    import hkd.data.synth as synth

    monkeypatch.setattr(synth, "generate", _enospc)
    status = tmp_path / "status.json"
    assert main(["synth", "--out", str(tmp_path / "s"), "--num", "2", "--status", str(status)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert json.loads(status.read_text())["state"] == "failed"
