"""The same command under torchrun trains with DistributedDataParallel (2 CPU processes, gloo)."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

from hkd.models.checkpoint import load_checkpoint
from hkd.train.run_folder import RunFolder


def test_torchrun_two_processes(tiny_dataset, tiny_config, tmp_path):
    cfg = tiny_config(tiny_dataset, steps=2, batch_size=1, checkpoint_every=0)
    cfg["data"]["val"] = None
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "hkd", "train",
         "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = RunFolder(tmp_path / "run")
    status = run.read_status()
    assert status["state"] == "succeeded" and status["world_size"] == 2
    lines = [m for m in run.read_metrics() if "loss" in m]
    assert [m["step"] for m in lines] == [1, 2]
    # each step saw batch_size × world images
    assert load_checkpoint(run.checkpoint("final")).meta.step == 2
