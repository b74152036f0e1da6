"""bench/gpu_check.sh on a machine without a GPU: the checks that need none run, the GPU ones are
skipped with "no CUDA device", exit status 3; the command lines of the GPU checks parse with hkd's
own CLI parser (and torchrun's), so a misspelt flag fails here rather than on the GPU server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.scripts import BENCH, bench_module

CPU_CHECKS = ["env", "data", "commands"]
GPU_CHECKS = ["cuda_tests", "amp_teacher_bf16", "amp_teacher_fp16", "amp_student_bf16", "amp_student_fp16",
              "info_teacher", "info_student", "ddp_distill", "throughput_teacher", "throughput_student"]


@pytest.fixture(scope="module")
def gpu_check():
    return bench_module("gpu_check")


@pytest.fixture(scope="module")
def checks(gpu_check, tmp_path_factory):
    args = gpu_check.build_parser().parse_args(["--num", "2", "--steps", "1"])
    return {c.name: c for c in gpu_check.plan(args, tmp_path_factory.mktemp("work"))}


def test_without_cuda_it_runs_to_the_first_gpu_check_and_exits_3(tmp_path):
    out = tmp_path / "summary" / "gpu_check.json"
    # CUDA hidden: the same path on a GPU machine as on this one
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--out", str(out), "--work", str(tmp_path / "work"),
                           "--num", "2", "--steps", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no CUDA device: torch" in proc.stdout and "every check from cuda_tests on is skipped" in proc.stdout
    summary = json.loads(out.read_text())
    assert (summary["result"], summary["exit_code"]) == ("no CUDA device", 3)
    assert list(summary["checks"]) == CPU_CHECKS + GPU_CHECKS
    for name, check in summary["checks"].items():
        assert {"status", "seconds", "figures"} <= set(check), name
        assert "log_tail" not in check, name
    for name in CPU_CHECKS:
        assert summary["checks"][name]["status"] == "ok", summary["checks"][name]
    for name in GPU_CHECKS:
        assert (summary["checks"][name]["status"], summary["checks"][name]["reason"]) == ("skipped", "no CUDA device")
    assert "-m hkd distill" in summary["checks"]["ddp_distill"]["command"]  # what it would have run
    env_figures = summary["checks"]["env"]["figures"]
    assert env_figures["cuda_available"] is False and env_figures["gpus"] == [] and env_figures["torch"]
    assert summary["checks"]["data"]["figures"]["images"] == 2
    assert (tmp_path / "work" / "synthped" / "annotations.json").is_file()
    assert summary["checks"]["commands"]["figures"] == {"hkd_commands": 9, "configs_loaded": 7}


def test_bad_arguments_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--throughput-steps", "3"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--throughput-steps must be at least" in proc.stderr


def test_the_gpu_command_lines_parse_with_the_hkd_cli(gpu_check, checks):
    from hkd.cli import build_parser

    for role, command in (("teacher", "train"), ("student", "distill")):
        for amp in ("bf16", "fp16"):
            argv = gpu_check.hkd_argv(checks[f"amp_{role}_{amp}"].command)
            args = build_parser(argv).parse_args(argv)
            assert args.command == command and Path(args.config) == gpu_check.TRAININGS[role][1]
            assert {"train.device=cuda", f"train.amp={amp}", "train.steps=1", "data.val=null"} <= set(args.overrides)
        argv = gpu_check.hkd_argv(checks[f"throughput_{role}"].command)
        assert "train.steps=30" in build_parser(argv).parse_args(argv).overrides
    for role in ("teacher", "student"):
        argv = gpu_check.hkd_argv(checks[f"info_{role}"].command)
        args = build_parser(argv).parse_args(argv)
        assert (args.command, args.bench, args.device, args.json) == ("info", True, "cuda", True)
        assert Path(args.checkpoint).is_file()
    assert checks["ddp_distill"].gpus == 2
    assert all(checks[name].gpus >= 1 for name in GPU_CHECKS)


def test_the_ddp_command_is_torchrun_of_hkd_distill(gpu_check, checks):
    from hkd.cli import build_parser

    command = checks["ddp_distill"].command
    rdzv = gpu_check.parse_torchrun(command)
    assert (rdzv.standalone, rdzv.nproc_per_node, rdzv.module, rdzv.training_script) == (True, "2", True, "hkd")
    args = build_parser(rdzv.training_script_args).parse_args(rdzv.training_script_args)
    assert args.command == "distill" and "train.device=cuda" in args.overrides


def test_a_misspelt_flag_or_key_fails_the_commands_check(gpu_check, checks):
    good = checks["amp_student_bf16"]
    with pytest.raises(gpu_check.CheckFailed, match="unrecognized arguments: --no-progess"):
        gpu_check.parse_hkd([a.replace("--no-progress", "--no-progess") for a in good.command])
    bad_key = gpu_check.Check("bad", [a.replace("train.log_every", "train.log_evry") for a in good.command])
    with pytest.raises(gpu_check.CheckFailed, match="log_evry"):
        gpu_check.check_commands([bad_key])
    no_tests = gpu_check.Check("cuda_tests", gpus=1, inline=gpu_check.no_cuda_tests)  # no command line to parse
    assert gpu_check.check_commands([no_tests]) == {"hkd_commands": 0, "configs_loaded": 0}
    torchrun = checks["ddp_distill"].command
    with pytest.raises(gpu_check.CheckFailed, match="torchrun"):
        gpu_check.parse_torchrun([a.replace("--nproc_per_node", "--nprocs_per_node") for a in torchrun])


def test_the_cuda_cases_of_the_suite_are_found(gpu_check, checks):
    ids = gpu_check.cuda_test_ids()
    assert "tests/train/test_engine.py::test_device_and_precision_errors_name_the_problem" in ids
    assert not any(i.startswith(gpu_check.THIS_TEST) for i in ids)  # this file would run the script again
    for node in ids:
        path, _, name = node.partition("::")
        assert f"def {name.split('::')[-1]}(" in (gpu_check.REPO / path).read_text()
    assert checks["cuda_tests"].command[-len(ids):] == ids


def test_a_parametrisation_on_cuda_counts(gpu_check, tmp_path, monkeypatch):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('device', ['cpu', 'cuda'])\ndef test_a(device):\n    pass\n\n"
        "def test_b():\n    pass\n\nclass TestC:\n    def test_d(self):\n        assert 'cuda'\n")
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    assert gpu_check.cuda_test_ids(tmp_path / "tests") == ["tests/test_x.py::test_a", "tests/test_x.py::TestC::test_d"]


def test_steps_per_second_leaves_out_the_warmup(gpu_check):
    # steps 1-4 are slow (warm-up); from step 5 on one step per 0.5 s
    records = [{"step": s, "time": 10.0 * s if s < 5 else 40.0 + 0.5 * (s - 5), "loss": 1.0} for s in range(1, 11)]
    records.insert(6, {"step": 6, "eval": {"mr": {}}})
    assert gpu_check.steps_per_second(records, warmup=5) == {"steps_per_s": 2.0, "timed_steps": 5}
    with pytest.raises(gpu_check.CheckFailed, match="at least 2"):
        gpu_check.steps_per_second(records[:5], warmup=5)


def test_a_timeout_stops_the_process_group_and_keeps_the_log_tail(gpu_check, tmp_path):
    # the child starts a grandchild that would outlive a kill of the child alone
    script = ("import subprocess, sys, time; print('started', flush=True); "
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    check = gpu_check.Check("sleeper", [sys.executable, "-c", script])
    start = time.perf_counter()
    result = gpu_check.run_check(check, tmp_path, timeout_s=2)
    assert time.perf_counter() - start < 20
    assert (result["status"], result["reason"]) == ("failed", "timed out after 2 s")
    assert "started" in result["log_tail"]
    failing = gpu_check.run_check(gpu_check.Check("boom", [sys.executable, "-c", "raise SystemExit('boom')"]),
                                  tmp_path, timeout_s=30)
    assert (failing["status"], failing["reason"]) == ("failed", "exit status 1") and "boom" in failing["log_tail"]


def test_the_exit_status_and_the_budget(gpu_check, tmp_path):
    ok = {"status": "ok", "seconds": 1.0, "figures": {}}
    one_gpu = {"status": "skipped", "seconds": 0.0, "figures": {}, "reason": "1 GPU(s); it needs 2"}
    no_cuda = {"status": "skipped", "seconds": 0.0, "figures": {}, "reason": "no CUDA device"}
    failed = {"status": "failed", "seconds": 1.0, "figures": {}, "reason": "exit status 1"}
    assert gpu_check.exit_code({"env": ok, "ddp_distill": one_gpu}) == 0
    assert gpu_check.exit_code({"env": ok, "cuda_tests": no_cuda}) == 3
    assert gpu_check.exit_code({"data": failed, "cuda_tests": no_cuda}) == 1
    # a check not started for want of time is a failure, not a skip
    late = gpu_check.Check("late", [sys.executable, "-c", "pass"])
    assert gpu_check.run_all([late], out=tmp_path / "s.json", work=tmp_path, budget_s=1) == 1
    assert "budget was spent" in json.loads((tmp_path / "s.json").read_text())["checks"]["late"]["reason"]
