"""The training loop: run folder contents, determinism, resume, failure, config errors."""
import json

import pytest
import torch
import yaml

from hkd.cli import main
from hkd.models.checkpoint import load_checkpoint
from hkd.train.config import ConfigError, config_from_dict, load_config
from hkd.train.engine import TrainingError, batch_indices, place, train
from hkd.train.run_folder import RunFolder


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def test_run_folder_has_status_metrics_log_and_checkpoints(tiny_dataset, tiny_config, tmp_path):
    status = train(config_from_dict(tiny_config(tiny_dataset)), tmp_path / "run", progress=False)
    run = RunFolder(tmp_path / "run")
    assert status["state"] == "succeeded" and status["step"] == 4
    on_disk = json.loads(run.status_path.read_text())
    assert on_disk["state"] == "succeeded" and on_disk["total"] == 4
    metrics = run.read_metrics()
    train_lines = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_lines] == [1, 2, 3, 4]
    assert {"det/loss_classifier", "det/loss_box_reg", "det/loss_objectness", "det/loss_rpn_box_reg", "lr",
            "images_per_s"} <= set(train_lines[0])
    evals = [m for m in metrics if "eval" in m]
    assert evals and set(evals[-1]["eval"]["mr"]) == {"Reasonable", "Small", "Heavy", "All"}
    assert "run" in run.log_path.read_text()
    final = load_checkpoint(run.checkpoint("final"))
    assert final.meta.step == 4 and final.meta.train_config["train"]["steps"] == 4
    assert final.meta.metrics["mr"]  # final evaluation stored in the checkpoint
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_same_seed_same_weights_and_exact_resume(tiny_dataset, tiny_config, tmp_path):
    cfg = tiny_config(tiny_dataset, device="cpu")  # bit-exact on the CPU (CUDA kernels may use atomics)
    cfg["data"]["val"] = None
    train(config_from_dict(cfg), tmp_path / "a", progress=False)
    train(config_from_dict(cfg), tmp_path / "b", progress=False)
    a = _weights(RunFolder(tmp_path / "a").checkpoint("last"))
    b = _weights(RunFolder(tmp_path / "b").checkpoint("last"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # stop after 2 steps, resume to 4: identical to the straight run, also when two
    # DataLoader workers load the batches (each resumed from the step, not from saved state)
    half = dict(cfg, train={**cfg["train"], "steps": 4, "workers": 2})
    first = config_from_dict(half)
    first.train.steps = 2  # same schedule length matters: emulate an interrupted run
    import hkd.train.engine as engine

    class Stop(Exception):
        pass

    real_save = engine._save

    def save_then_stop(run, name, *args, **kwargs):
        real_save(run, name, *args, **kwargs)
        if name == "last" and args[3] == 2:  # step argument
            raise Stop()

    engine._save = save_then_stop
    try:
        with pytest.raises(Stop):
            train(config_from_dict(half), tmp_path / "c", progress=False)
    finally:
        engine._save = real_save
    assert RunFolder(tmp_path / "c").read_status()["state"] == "failed"
    train(config_from_dict(half), tmp_path / "c", resume=True, progress=False)
    c = _weights(RunFolder(tmp_path / "c").checkpoint("last"))
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=0, atol=0, msg=k)
    steps = [m["step"] for m in RunFolder(tmp_path / "c").read_metrics() if "loss" in m]
    assert steps == [1, 2, 3, 4]


def test_non_finite_loss_stops_with_a_clear_message(tiny_dataset, tiny_config, tmp_path):
    cfg = config_from_dict(tiny_config(tiny_dataset, lr=1e30, warmup_steps=0, grad_clip=0.0, steps=6))
    with pytest.raises(TrainingError, match="non-finite loss at step"):
        train(cfg, tmp_path / "nan", progress=False)
    status = RunFolder(tmp_path / "nan").read_status()
    assert status["state"] == "failed" and "non-finite loss" in status["message"]


def test_refuses_to_overwrite_a_run(tiny_dataset, tiny_config, tmp_path):
    cfg = tiny_config(tiny_dataset, steps=1)
    cfg["data"]["val"] = None
    train(config_from_dict(cfg), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config_from_dict(cfg), tmp_path / "r", progress=False)


def test_batches_shard_across_processes_without_overlap():
    a = batch_indices(3, n=100, batch_size=4, rank=0, world=2, seed=1)
    b = batch_indices(3, n=100, batch_size=4, rank=1, world=2, seed=1)
    assert not set(a) & set(b)
    seen = [i for s in range(25) for i in batch_indices(s, n=100, batch_size=4, rank=0, world=1, seed=1)]
    assert sorted(seen) == list(range(100))  # one epoch = a permutation


def test_config_typos_name_the_key_and_choices(tmp_path, tiny_dataset, tiny_config):
    bad = tiny_config(tiny_dataset)
    bad["train"]["setps"] = 3
    with pytest.raises(ConfigError, match="unknown key 'setps'; valid keys: .*steps"):
        config_from_dict(bad)
    bad = tiny_config(tiny_dataset)
    bad["train"]["optimizer"] = "adam"
    with pytest.raises(ConfigError, match="'adam' is not one of sgd, adamw"):
        config_from_dict(bad)
    bad = tiny_config(tiny_dataset)
    bad["model"]["preset"] = "hkd_frcnn_lite0.studnet"
    with pytest.raises(ConfigError, match="unknown preset"):
        config_from_dict(bad)
    path = tmp_path / "c.yaml"
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text(yaml.safe_dump(tiny_config(tiny_dataset)))
    assert load_config(path, ["train.steps=7"]).train.steps == 7


def test_train_cli_end_to_end(tiny_dataset, tiny_config, tmp_path, capsys):
    cfg = tiny_config(tiny_dataset, steps=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "done" in capsys.readouterr().out
    assert main(["distill", "--config", str(path), "--out", str(tmp_path / "run2")]) == 2
    assert "needs a `teacher:`" in capsys.readouterr().err


def test_device_and_precision_errors_name_the_problem(tiny_dataset, tiny_config, tmp_path):
    cases = [
        ({"device": "gpu"}, r"train.device: unknown device 'gpu'; valid devices: auto, cpu, cuda, cuda:N"),
        ({"device": "cuda:x"}, r"unknown device 'cuda:x'"),
        ({"amp": "fp32"}, r"train.amp: 'fp32' is not one of off, bf16, fp16"),
        ({"device": "cpu", "amp": "fp16"}, r"train.amp=fp16 needs a CUDA device .* use train.amp=bf16 or "
                                           r"train.amp=off on the CPU"),
        ({"channels_last": "yes"}, r"train.channels_last: expected true, false or null"),
    ]
    if not torch.cuda.is_available():  # this CPU machine: a GPU asked for is refused at load time
        cases += [
            ({"device": "cuda"}, r"train.device=cuda: CUDA was requested, but torch.cuda.is_available\(\) is False"
                                 r".*use train.device=cpu \(or auto\)"),
            ({"device": "cuda:1"}, r"train.device=cuda:1: CUDA was requested"),
            ({"amp": "fp16"}, r"train.amp=fp16 needs a CUDA device .* train.device=auto runs on the CPU here"),
        ]
    for train_keys, message in cases:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(tiny_config(tiny_dataset, **train_keys))
    # the YAML spelling `amp: off` (a boolean in YAML 1.1) and `--set train.device=CPU` are accepted
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_dataset)).replace("threads: 1", "threads: 1\n  amp: off"))
    cfg = load_config(path, ["train.device=CPU"])
    assert (cfg.train.amp, cfg.train.device) == ("off", "cpu")


def test_a_bad_device_is_refused_before_step_0_by_train_and_the_job_queue(tiny_dataset, tiny_config, tmp_path):
    from hkd.models.device import DeviceError, resolve_device
    from hkd.train.config import TrainConfig
    from hkd.cli.train_job import check_run
    from hkd.jobs import JobError

    cfg = config_from_dict(tiny_config(tiny_dataset))
    cfg.train.device = "tpu"  # set after validation: train() checks again before it writes anything
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(DeviceError, match="valid devices: auto, cpu, cuda, cuda:N"):
        resolve_device("metal")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_dataset)))
    with pytest.raises(JobError, match="train.device: unknown device 'npu'"):
        check_run("train", path, ["train.device=npu"], tmp_path / "job")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="torch.cuda.is_available\\(\\) is False"):
            resolve_device("cuda")
        with pytest.raises(JobError, match="train.device=cuda: CUDA was requested"):
            check_run("train", path, ["train.device=cuda"], tmp_path / "job")
        t = TrainConfig(device="cuda")
        with pytest.raises(ConfigError, match="CUDA was requested"):
            place(t)
    assert check_run("train", path, ["train.device=cpu"], tmp_path / "job").train.device == "cpu"


def test_bf16_autocast_on_the_cpu_trains_and_is_recorded(tiny_dataset, tiny_config, tmp_path):
    cfg = tiny_config(tiny_dataset, steps=3, checkpoint_every=0, amp="bf16", device="cpu")
    cfg["data"]["val"] = None
    status = train(config_from_dict(cfg), tmp_path / "bf16", progress=False)
    run = RunFolder(tmp_path / "bf16")
    assert status["state"] == "succeeded"
    assert json.loads(run.config_path.read_text())["train"]["amp"] == "bf16"
    assert run.read_status()["amp"] == "bf16" and run.read_status()["device"] == "cpu"
    lines = [m for m in run.read_metrics() if "loss" in m]
    assert [m["step"] for m in lines] == [1, 2, 3] and all(torch.isfinite(torch.tensor(m["loss"])) for m in lines)
    assert load_checkpoint(run.checkpoint("final")).meta.train_config["train"]["amp"] == "bf16"
    # autocast really ran in bfloat16: the losses differ from the float32 run of the same seed
    cfg["train"]["amp"] = "off"
    train(config_from_dict(cfg), tmp_path / "fp32", progress=False)
    fp32 = [m for m in RunFolder(tmp_path / "fp32").read_metrics() if "loss" in m]
    assert fp32[0]["loss"] != lines[0]["loss"]
    assert fp32[0]["loss"] == pytest.approx(lines[0]["loss"], rel=0.1)
