"""The same command under torchrun trains and distills with DistributedDataParallel (2 CPU processes, gloo)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hkd.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hkd.models.presets import build_detector
from hkd.train.config import config_from_dict
from hkd.train.engine import train
from hkd.train.run_folder import RunFolder


def _torchrun(command, path, out):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "hkd", command,
         "--config", str(path), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return RunFolder(out)


@pytest.mark.slow
def test_torchrun_two_processes(tiny_dataset, tiny_config, tmp_path):
    cfg = tiny_config(tiny_dataset, steps=2, batch_size=1, checkpoint_every=0, device="cpu")  # gloo
    cfg["data"]["val"] = None
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = _torchrun("train", path, tmp_path / "run")
    status = run.read_status()
    assert status["state"] == "succeeded" and status["world_size"] == 2 and status["device"] == "cpu"
    lines = [m for m in run.read_metrics() if "loss" in m]
    assert [m["step"] for m in lines] == [1, 2]
    # each step saw batch_size × world images
    assert load_checkpoint(run.checkpoint("final")).meta.step == 2


@pytest.mark.slow
def test_torchrun_distillation_matches_one_process_with_the_same_global_batch(tiny_dataset, tiny_config, tmp_path):
    torch.manual_seed(0)
    teacher = build_detector("hkd_frcnn_lite2.teacher", min_size=96, max_size=128).eval()
    t_path = save_checkpoint(tmp_path / "teacher.safetensors", teacher,
                             CheckpointMeta(preset="hkd_frcnn_lite2.teacher", min_size=96, max_size=128))

    def config(batch_size):
        cfg = tiny_config(tiny_dataset, steps=2, batch_size=batch_size, checkpoint_every=0, device="cpu")
        cfg["data"]["val"] = None
        cfg["teacher"] = str(t_path)
        # P3 imitation through a least-squares adapter: deterministic given the batch, so one
        # process and two must agree once the adapter moments are summed over the ranks
        cfg["distill"] = {"levels": {"neck.p3": {"loss": "mse", "weight": 1.0},
                                     "roi.logits": {"loss": "kd_kl", "weight": 1.0, "temperature": 2.0}}}
        return cfg

    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config(1)))
    ddp = _torchrun("distill", path, tmp_path / "ddp")
    train(config_from_dict(config(2)), tmp_path / "one", progress=False)
    one = {m["step"]: m for m in RunFolder(tmp_path / "one").read_metrics()}
    two = {m["step"]: m for m in ddp.read_metrics()}
    assert ddp.read_status()["world_size"] == 2 and ddp.read_status()["mode"] == "distill"
    assert [m["step"] for m in ddp.read_metrics()] == [1, 2]  # rank 0 alone writes the metrics
    assert len(list(ddp.root.glob("events.out.tfevents.*"))) == 1  # and the TensorBoard events
    # step 1 runs on the initial weights: the same images, the same adapter (fitted on the global batch)
    assert two[1]["kd/neck.p3/mse"] == pytest.approx(one[1]["kd/neck.p3/mse"], rel=1e-4)
    # detection losses and the ROI terms depend on sampled anchors/proposals, drawn per process
    for key, rel in (("det/loss_objectness", 0.05), ("det/loss_classifier", 0.1), ("kd/roi.logits/kd_kl", 0.3)):
        assert two[1][key] == pytest.approx(one[1][key], rel=rel), key
    # after one update from the same global batch the runs are still close
    assert two[2]["kd/neck.p3/mse"] == pytest.approx(one[2]["kd/neck.p3/mse"], rel=0.1)
    assert load_checkpoint(ddp.checkpoint("final")).meta.parent == "teacher.safetensors"
