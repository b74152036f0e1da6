"""GPU and cluster, ready to run: does this machine train and distil HKD's detectors on its GPUs?

    bash bench/gpu_check.sh [--out gpu_check.json] [--work DIR] [--num 16] [--steps 3]
                            [--throughput-steps 30] [--workers N] [--budget 450]

The checks, in order; each is a subprocess with its own timeout, and all of them together
stay within ``--budget`` seconds (default 450: the whole script ends within 8 minutes):

==============================  ====================================================================
``env``                         python, torch, CUDA / cuDNN / NCCL versions, the GPUs torch.cuda sees
``data``                        a small SynthPed split: ``hkd synth --out WORK/synthped --num N``
``commands``                    every hkd command line below parsed by :func:`hkd.cli.build_parser`
                                (the torchrun one by torchrun's parser too) and its ``--set``
                                overrides loaded with the config, device and precision swapped to
                                ``cpu`` / ``off``: a misspelt flag or key fails here, on any machine
``cuda_tests``                  the test suite's cases whose source mentions ``cuda``, run by pytest
                                (on a GPU they take their CUDA branches)
``amp_{teacher,student}_{bf16,fp16}``
                                ``--steps`` steps of ``hkd train`` (``teacher.yaml``,
                                hkd_frcnn_lite2.teacher) and of ``hkd distill``
                                (``student_wide_hkd_trust.yaml``, hkd_frcnn_lite0.student_wide) with
                                ``train.device=cuda`` and ``train.amp=bf16`` / ``fp16``
``info_{teacher,student}``      ``hkd info --bench --device cuda`` of the shipped checkpoints
``ddp_distill``                 ``torchrun --standalone --nproc_per_node 2 -m hkd distill …`` (nccl),
                                ``--steps`` steps; skipped with "N GPU(s)" on a machine with fewer than 2
``throughput_{teacher,student}``  steps/s of ``--throughput-steps`` bf16 steps, timed after the first
                                :data:`WARMUP_STEPS` (cuDNN autotuning, allocator growth)
==============================  ====================================================================

The first three need no GPU. Without a CUDA device the script says so and every check from
``cuda_tests`` on is ``skipped`` with reason ``no CUDA device``.

It writes one JSON summary to ``--out`` (default ``$OUT/gpu_check.json``, else
``./gpu_check.json``), rewritten after every check so that an interrupted run still leaves one::

    {"result": "ok" | "failed" | "no CUDA device", "exit_code": 0, "seconds": 312.4, "budget_s": 450,
     "checks": {"env": {"status": "ok" | "failed" | "skipped", "seconds": 4.1,
                        "figures": {...}, "command": "...",
                        "reason": "...",     # failed or skipped: why
                        "log_tail": "..."},  # failed: the last lines of its output
                ...}}

Exit status (:func:`exit_code`):

- 0: every check that ran passed (``ddp_distill`` may be skipped: one GPU);
- 1: a check failed, timed out, or was not started because the budget was spent;
- 2: bad arguments;
- 3: no CUDA device: the checks that need no GPU passed, every GPU check is skipped.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "assets" / "configs"
CHECKPOINTS = REPO / "assets" / "checkpoints"
# the two-stage pair: `hkd train` for the teacher, `hkd distill` for the HKD student
TRAININGS = {
    "teacher": ("train", CONFIGS / "teacher.yaml"),
    "student": ("distill", CONFIGS / "student_wide_hkd_trust.yaml"),
}
INFO_CHECKPOINTS = {"teacher": CHECKPOINTS / "teacher.safetensors", "student": CHECKPOINTS / "student_hkd.safetensors"}
PRECISIONS = ("bf16", "fp16")
THROUGHPUT_AMP = "bf16"
WARMUP_STEPS = 5
TAIL_LINES = 40
KILL_GRACE_S = 10  # after a timeout: SIGTERM (a run saves its last checkpoint), then SIGKILL
NO_CUDA = "no CUDA device"
THIS_TEST = "tests/bench/test_gpu_check.py"  # mentions cuda, but runs this script: never one of cuda_tests

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3


class CheckFailed(Exception):
    """A check ran but what it produced is wrong; the message says what."""


@dataclass
class Check:
    """One line of the summary: a subprocess (``command``) or work done in this process (``inline``)."""

    name: str
    command: list[str] | None = None
    timeout_s: float = 60.0
    gpus: int = 0  # GPUs it needs; 0: runs on any machine
    # the figures of a finished command, from its output (raises CheckFailed when they show a failure)
    figures: Callable[[str], dict] = lambda output: {}
    inline: Callable[[], dict] | None = None
    run_dir: Path | None = None  # a run folder it creates: removed first, so --work can be reused


# ---------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------
def hkd(*args) -> list[str]:
    return [sys.executable, "-m", "hkd", *map(str, args)]


def hkd_argv(command: list[str]) -> list[str]:
    """The arguments hkd's own parser gets in ``command`` (those after ``-m hkd``)."""
    for i in range(len(command) - 1):
        if command[i:i + 2] == ["-m", "hkd"]:
            return command[i + 2:]
    raise ValueError(f"not an hkd command line: {shlex.join(command)}")


def training_command(role: str, data: Path, out: Path, *, steps: int, amp: str, workers: int) -> list[str]:
    """``hkd train`` (role ``teacher``) or ``hkd distill`` (``student``) of its shipped config on ``data``,
    on ``cuda`` with ``amp``: no validation, no periodic checkpoints, a metrics line every step."""
    name, config = TRAININGS[role]
    overrides = [f"data.train={data}", "data.val=null", f"train.steps={steps}", "train.log_every=1",
                 "train.checkpoint_every=0", "train.eval_every=0", f"train.workers={workers}",
                 "train.device=cuda", f"train.amp={amp}"]
    return hkd(name, "--config", config, "--out", out, "--no-progress", *[a for o in overrides for a in ("--set", o)])


def torchrun_command(nproc: int, command: list[str]) -> list[str]:
    """``command`` (an hkd one) under torchrun on this node: ``--standalone`` picks a free rendezvous port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "hkd", *hkd_argv(command)]


def cuda_test_ids(tests: Path = REPO / "tests") -> list[str]:
    """pytest node ids (relative to the repository) of the test functions whose source, decorators
    included, mentions ``cuda``: those that branch on ``torch.cuda.is_available()``, or are marked or
    parametrised on a CUDA device."""
    ids = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == THIS_TEST:
            continue
        source = path.read_text()
        if "cuda" not in source:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:  # pytest will say what is wrong with it
            ids.append(rel)
            continue
        scopes = [("", tree.body)] + [(f"{node.name}::", node.body) for node in tree.body
                                      if isinstance(node, ast.ClassDef) and node.name.startswith("Test")]
        lines = source.splitlines()
        for prefix, body in scopes:
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                    # decorators included: a parametrisation or a mark on cuda counts too
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    if "cuda" in "\n".join(lines[first - 1:node.end_lineno]):
                        ids.append(f"{rel}::{prefix}{node.name}")
    return ids


# ---------------------------------------------------------------------------
# figures read from what a check left
# ---------------------------------------------------------------------------
def steps_per_second(records: list[dict], *, warmup: int = WARMUP_STEPS) -> dict:
    """Training speed from ``metrics.jsonl`` records (one per step): the steps after ``warmup`` over
    their wall time (``time`` is seconds since the run started)."""
    timed = [(r["step"], r["time"]) for r in records if "eval" not in r and "time" in r and r["step"] >= warmup]
    if len(timed) < 2 or timed[-1][1] <= timed[0][1]:
        raise CheckFailed(f"metrics.jsonl has {len(timed)} step line(s) from step {warmup} on; "
                          "at least 2 are needed to time the steps")
    (first, start), (last, end) = timed[0], timed[-1]
    return {"steps_per_s": round((last - first) / (end - start), 3), "timed_steps": last - first}


def run_figures(run: Path, *, amp: str, world: int = 1, throughput: bool = False) -> dict:
    """The figures of a finished training run in folder ``run``; a run that did not succeed, or did not
    run on CUDA with ``amp`` in ``world`` processes, fails the check."""
    status_path = run / "status.json"
    if not status_path.is_file():
        raise CheckFailed(f"{status_path} was not written")
    status = json.loads(status_path.read_text())
    if status.get("state") != "succeeded":
        raise CheckFailed(f"the run ended {status.get('state')!r}: {status.get('message', '')}")
    placed = (str(status.get("device")), status.get("amp"), status.get("world_size", 1))
    if not placed[0].startswith("cuda") or placed[1:] != (amp, world):
        raise CheckFailed(f"the run recorded device {placed[0]}, amp {placed[1]}, {placed[2]} process(es); "
                          f"expected cuda, {amp}, {world}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    figures = {"device": placed[0], "amp": amp, "world_size": world, "steps": status.get("step"),
               "seconds": status.get("seconds"), "last_loss": losses[-1] if losses else None}
    if throughput:
        config = json.loads((run / "config.json").read_text())
        speed = steps_per_second(records)
        figures.update(speed, images_per_s=round(speed["steps_per_s"] * config["train"]["batch_size"] * world, 3))
    return figures


def pytest_figures(output: str) -> dict:
    """Counts from pytest's closing line (``3 passed, 1 skipped in 9.1s``)."""
    last = next((line for line in reversed(output.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", line)),
                "")
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}


def info_figures(output: str) -> dict:
    """The latency that ``hkd info --json --bench`` printed; it must have been measured on a GPU."""
    start = re.search(r"^\{", output, re.M)
    if start is None:
        raise CheckFailed("hkd info printed no JSON")
    info, _ = json.JSONDecoder().raw_decode(output[start.start():])
    latency = info.get("latency") or {}
    if not str(latency.get("device", "")).startswith("cuda"):
        raise CheckFailed(f"the latency was measured on {latency.get('device')!r}, not on a CUDA device")
    return {"preset": info["meta"]["preset"], "latency": latency}


def data_figures(data: Path) -> dict:
    annotations = json.loads((data / "annotations.json").read_text())
    return {"path": str(data), "images": len(annotations["images"]), "people": len(annotations["annotations"])}


# ---------------------------------------------------------------------------
# the environment (run in a subprocess: a broken driver may hang CUDA's start)
# ---------------------------------------------------------------------------
def probe_environment() -> dict:
    """Versions and the GPUs torch sees; ``gpus`` is empty when ``cuda_available`` is false."""
    import platform

    import torch
    import torch.distributed as dist

    info = {"python": platform.python_version(), "host": platform.node(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpus": []}
    if info["cuda_available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        if dist.is_available() and dist.is_nccl_available():
            version = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        info["bf16"] = torch.cuda.is_bf16_supported()
        for index in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(index)
            info["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                 "memory_gib": round(p.total_memory / 2 ** 30, 1)})
    return info


def env_figures(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise CheckFailed("the environment probe printed no JSON")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------
def plan(args, work: Path) -> list[Check]:
    """Every check of this run, in order."""
    data, runs = work / "synthped", work / "runs"
    checks = [
        Check("env", [sys.executable, str(Path(__file__).resolve()), "--probe"], timeout_s=90, figures=env_figures),
        Check("data", hkd("synth", "--out", data, "--num", args.num, "--seed", 0, "--overwrite", "--no-progress"),
              timeout_s=90, figures=lambda output: data_figures(data)),
    ]
    test_ids = cuda_test_ids()
    gpu_checks = [
        Check("cuda_tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *test_ids],
              timeout_s=180, gpus=1, figures=pytest_figures) if test_ids else
        # pytest without node ids would run the whole suite
        Check("cuda_tests", gpus=1, inline=no_cuda_tests),
    ]
    for role in TRAININGS:
        for amp in PRECISIONS:
            run = runs / f"{role}_{amp}"
            gpu_checks.append(Check(
                f"amp_{role}_{amp}", training_command(role, data, run, steps=args.steps, amp=amp, workers=args.workers),
                timeout_s=120, gpus=1, run_dir=run, figures=lambda output, run=run, amp=amp: run_figures(run, amp=amp)))
    for role, checkpoint in INFO_CHECKPOINTS.items():
        gpu_checks.append(Check(f"info_{role}", hkd("info", checkpoint, "--bench", "--device", "cuda", "--json"),
                                timeout_s=90, gpus=1, figures=info_figures))
    ddp_run = runs / "ddp_distill"
    gpu_checks.append(Check(
        "ddp_distill", torchrun_command(2, training_command("student", data, ddp_run, steps=args.steps,
                                                            amp=THROUGHPUT_AMP, workers=args.workers)),
        timeout_s=150, gpus=2, run_dir=ddp_run,
        figures=lambda output: run_figures(ddp_run, amp=THROUGHPUT_AMP, world=2)))
    for role in TRAININGS:
        run = runs / f"throughput_{role}"
        gpu_checks.append(Check(
            f"throughput_{role}", training_command(role, data, run, steps=args.throughput_steps, amp=THROUGHPUT_AMP,
                                                   workers=args.workers),
            timeout_s=150, gpus=1, run_dir=run,
            figures=lambda output, run=run: run_figures(run, amp=THROUGHPUT_AMP, throughput=True)))
    commands = Check("commands", inline=lambda: check_commands(gpu_checks))
    return checks + [commands] + gpu_checks


def no_cuda_tests() -> dict:
    raise CheckFailed("no test under tests/ mentions cuda")


def parse_hkd(command: list[str]) -> argparse.Namespace:
    """``command``'s arguments parsed as ``hkd`` would; a bad flag raises CheckFailed with argparse's message."""
    from hkd.cli import build_parser

    argv = hkd_argv(command)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser(argv).parse_args(argv)
    except SystemExit:
        raise CheckFailed(f"hkd {' '.join(argv[:1])}: {stderr.getvalue().strip().splitlines()[-1]}") from None


def parse_torchrun(command: list[str]) -> argparse.Namespace:
    from torch.distributed.run import get_args_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return get_args_parser().parse_args(command[3:])  # after `python -m torch.distributed.run`
    except SystemExit:
        raise CheckFailed(f"torchrun: {stderr.getvalue().strip().splitlines()[-1]}") from None


def on_the_cpu(overrides: list[str]) -> list[str]:
    """``--set`` overrides with the device and precision this machine can load (cpu, no autocast)."""
    swapped = {"train.device": "cpu", "train.amp": "off"}
    return [f"{key}={swapped[key]}" if key in swapped else f"{key}={value}"
            for key, _, value in (o.partition("=") for o in overrides)]


def check_commands(checks: list[Check]) -> dict:
    """Parse every hkd command line of ``checks`` (and torchrun's); load each run config with its overrides."""
    from hkd.train.config import ConfigError, load_config

    parsed = configs = 0
    for check in checks:
        if not check.command:
            continue
        if "torch.distributed.run" in check.command:
            rdzv = parse_torchrun(check.command)
            if (rdzv.module, rdzv.training_script) != (True, "hkd"):
                raise CheckFailed(f"{check.name}: torchrun does not run `-m hkd`")
        if "hkd" not in check.command:
            continue
        args = parse_hkd(check.command)
        parsed += 1
        if args.command in ("train", "distill"):
            try:
                load_config(args.config, on_the_cpu(args.overrides))
            except ConfigError as exc:
                raise CheckFailed(f"{check.name}: {exc}") from None
            configs += 1
    return {"hkd_commands": parsed, "configs_loaded": configs}


# ---------------------------------------------------------------------------
# running them
# ---------------------------------------------------------------------------
def run_process(command: list[str], log: Path, timeout_s: float) -> int | None:
    """Run ``command`` in its own process group with stdout and stderr in ``log``; its exit status,
    or None after a timeout (the whole group stopped: torchrun's workers too)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            stop_group(proc)
            return None
        except BaseException:  # Ctrl-C: leave nothing running
            stop_group(proc)
            raise


def stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_check(check: Check, logs: Path, timeout_s: float) -> dict:
    """Run one check within ``timeout_s``; its summary entry."""
    result = {"status": "ok", "seconds": 0.0, "figures": {}}
    if check.command:
        result["command"] = shlex.join(check.command)
    start = time.perf_counter()
    output = ""
    try:
        if check.inline is not None:
            result["figures"] = check.inline()
        else:
            if check.run_dir is not None:
                shutil.rmtree(check.run_dir, ignore_errors=True)
            log = logs / f"{check.name}.log"
            rc = run_process(check.command, log, timeout_s)
            output = log.read_text(errors="replace")
            if rc is None:
                raise CheckFailed(f"timed out after {timeout_s:.0f} s")
            if rc != 0:
                raise CheckFailed(f"exit status {rc}")
            result["figures"] = check.figures(output)
    except CheckFailed as exc:
        result.update(status="failed", reason=str(exc), log_tail=tail(output))
    except Exception as exc:  # a bug here, or a file a command did not write: one failed check, not a crash
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}", log_tail=tail(output))
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def skipped(check: Check, reason: str) -> dict:
    """A check not run; its command line is kept, to show what it would have run."""
    result = {"status": "skipped", "seconds": 0.0, "figures": {}, "reason": reason}
    if check.command:
        result["command"] = shlex.join(check.command)
    return result


def exit_code(results: dict[str, dict]) -> int:
    """0 all ran checks passed; 1 one failed; 3 no CUDA device (GPU checks skipped, the rest passed)."""
    if any(r["status"] == "failed" for r in results.values()):
        return EXIT_FAILED
    if any(r["status"] == "skipped" and r["reason"] == NO_CUDA for r in results.values()):
        return EXIT_NO_CUDA
    return EXIT_OK


def summary(results: dict[str, dict], *, budget_s: float, started: float, work: Path) -> dict:
    code = exit_code(results)
    return {"result": {EXIT_OK: "ok", EXIT_FAILED: "failed", EXIT_NO_CUDA: NO_CUDA}[code], "exit_code": code,
            "seconds": round(time.perf_counter() - started, 1), "budget_s": budget_s, "work": str(work),
            "checks": results}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def describe(name: str, result: dict) -> str:
    figures = result["figures"]
    if name == "env":
        gpus = ", ".join(g["name"] for g in figures.get("gpus", [])) or "none"
        note = f"torch {figures.get('torch')} (CUDA build {figures.get('torch_cuda')}), GPUs: {gpus}"
    elif "steps_per_s" in figures:
        note = f"{figures['steps_per_s']} steps/s, {figures['images_per_s']} images/s"
    elif "latency" in figures:
        note = f"median {figures['latency'].get('median_s', 0) * 1000:.1f} ms"
    elif name == "data" and figures:
        note = f"{figures['images']} images, {figures['people']} people"
    elif name == "commands" and figures:
        note = f"{figures['hkd_commands']} hkd command lines parsed, {figures['configs_loaded']} run configs loaded"
    elif "passed" in figures:
        note = ", ".join(f"{n} {kind}" for kind, n in figures.items())
    elif result["status"] == "failed":
        note = result.get("reason", "")
    else:
        note = ""
    status = result["status"] + (f": {result['reason']}" if result["status"] == "skipped" else "")
    return f"{name:<20} {status:<32} {result['seconds']:7.1f} s  {note}"


def run_all(checks: list[Check], *, out: Path, work: Path, budget_s: float) -> int:
    started = time.perf_counter()
    deadline = started + budget_s
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    gpus = 0
    for check in checks:
        if check.gpus and gpus == 0:
            if not any(r.get("reason") == NO_CUDA for r in results.values()):
                env = results["env"]["figures"]
                print(f"{NO_CUDA}: torch {env.get('torch', '?')} sees no GPU (torch.cuda.is_available() is False, "
                      f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}); every check from {check.name} "
                      f"on is skipped (exit status {EXIT_NO_CUDA})", flush=True)
            results[check.name] = skipped(check, NO_CUDA)
        elif check.gpus > gpus:
            results[check.name] = skipped(check, f"{gpus} GPU(s); it needs {check.gpus}")
        elif deadline - time.perf_counter() < 5:
            results[check.name] = {"status": "failed", "seconds": 0.0, "figures": {},
                                   "reason": f"not started: the {budget_s:.0f} s budget was spent"}
        else:
            results[check.name] = run_check(check, logs, min(check.timeout_s, deadline - time.perf_counter()))
        if check.name == "env" and results["env"]["status"] == "ok":
            env = results["env"]["figures"]
            gpus = len(env["gpus"]) if env.get("cuda_available") else 0
        print(describe(check.name, results[check.name]), flush=True)
        write_json(out, summary(results, budget_s=budget_s, started=started, work=work))
    final = summary(results, budget_s=budget_s, started=started, work=work)
    print(f"gpu_check: {final['result']} after {final['seconds']:.0f} s (exit status {final['exit_code']}); "
          f"summary in {out}")
    return final["exit_code"]


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON summary (default $OUT/gpu_check.json, else ./gpu_check.json)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the SynthPed split, run folders and logs, kept (default: a temporary one, removed)")
    p.add_argument("--num", type=int, default=16, help="SynthPed images to generate (default 16)")
    p.add_argument("--steps", type=int, default=3, help="steps of each bf16/fp16 and DDP run (default 3)")
    p.add_argument("--throughput-steps", type=int, default=30,
                   help=f"steps of each throughput run; the first {WARMUP_STEPS} are not timed (default 30)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="train.workers of the training runs (default min(4, CPU cores))")
    p.add_argument("--budget", type=float, default=450, help="seconds for all checks together (default 450)")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # the env check's subprocess
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe_environment()))
        return 0
    if args.num < 1 or args.steps < 1 or args.workers < 0 or args.budget <= 0:
        parser.error("--num and --steps must be at least 1, --workers at least 0, --budget positive")
    if args.throughput_steps < WARMUP_STEPS + 2:
        parser.error(f"--throughput-steps must be at least {WARMUP_STEPS + 2}: the first {WARMUP_STEPS} are not timed")
    out = (args.out or default_out()).resolve()
    with contextlib.ExitStack() as stack:
        work = args.work.resolve() if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="gpu_check_")))
        return run_all(plan(args, work), out=out, work=work, budget_s=args.budget)


if __name__ == "__main__":
    raise SystemExit(main())
