"""The training loop for `hkd train` (detector alone) and `hkd distill` (student + teacher).

Runs on one process, or under ``torchrun --nproc_per_node N`` with
DistributedDataParallel (gloo on CPU, nccl on GPUs, one GPU per process), on
``train.device`` with optional mixed precision (``train.amp``). Batches come
from a DataLoader (:mod:`hkd.train.data`, ``train.workers`` processes).
Deterministic on CPU for a given seed: the batch order and every random draw of
step ``s`` are seeded from ``(seed, s)`` (augmentation per sample from its
position in the stream), which is also what makes ``--resume`` exact.

Rank 0 alone writes the run folder: status, ``metrics.jsonl`` (losses averaged
over the ranks), TensorBoard event files with the same keys beside it, the log
and the checkpoints.

A run, in the order :func:`train` calls its pieces:

    _setup(ctx)          model, step, data, DDP wrapper, optimiser (hkd.train.run_setup)
    _begin(ctx)          --resume (_restore), config.json, metrics log, status "running"
    train_steps(ctx)     the loop: _one_step, _log_step, _checkpoint (periodic checkpoint and evaluation)
    _finish(ctx)         final evaluation and checkpoints, status "succeeded"
    _stopped(ctx)        on SIGTERM: checkpoints/last, status "cancelled" (or "failed" if the supervisor died)
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from hkd.data.datasets import DatasetError
from hkd.models.checkpoint import CheckpointMeta, atomic_write, load_checkpoint, save_checkpoint
from hkd.models.presets import get_preset
from hkd.train.config import ConfigError, RunConfig
from hkd.train.data import batch_indices, detection_targets, train_loader  # noqa: F401  (public here too)
from hkd.train.metrics_log import MetricsLog, attach_log, detach_log, scalars  # noqa: F401  (public here too)
from hkd.train.run_folder import RunFolder, RunFolderError
from hkd.train.run_setup import (AMP_DTYPES, OnDevice, autocast, build_online_teacher,  # noqa: F401
                                 build_step, build_student, init_distributed, make_optimizer, open_data,
                                 param_groups, place, set_train_sizes, uses_channels_last)

log = logging.getLogger("hkd.train")


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (non-finite loss, bad data…)."""


class Cancelled(Exception):
    pass


@dataclass
class TrainContext:
    """One run's state between its pieces: what :func:`_setup` and :func:`_begin` set up, and the loop's progress."""

    cfg: RunConfig
    run: RunFolder
    device: torch.device
    rank: int
    world: int
    resume: bool
    keep_state: bool = False  # a refused --resume of a finished run leaves its status as it was
    student: nn.Module | None = None
    parent: str | None = None  # the checkpoint the student started from
    trainable: nn.Module | None = None  # the student, or the Distiller around it
    step_fn: Callable | None = None
    ddp_module: nn.Module | None = None  # what the step calls: ``trainable`` or its DDP wrapper
    groups: dict[str, list[nn.Parameter]] = field(default_factory=dict)
    opt: Any = None
    sched: Any = None
    scaler: torch.amp.GradScaler | None = None
    train_set: Any = None
    val_set: Any = None
    metrics: MetricsLog | None = None
    batches: Any = None  # the loader's iterator (dropping it stops the workers)
    start: int = 0
    step: int = 0
    last_eval: dict | None = None
    run_start: float = 0.0
    window_start: float = 0.0
    window_images: int = 0

    @property
    def main_process(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def train(cfg: RunConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool | None = None) -> dict:
    """Train according to ``cfg`` into run folder ``out``; returns the final status dict.

    Raises:
        ConfigError: before anything is written, for a device, precision or worker count
            this machine cannot give (and for a run folder that already holds a run).
        TrainingError: a non-finite loss.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = place(cfg.train, world)
    rank, world = init_distributed(device)
    run = RunFolder(out)
    # one writer per run folder: rank 0 holds RUN/.lock until the run has ended
    writer = contextlib.ExitStack()
    if rank == 0:
        try:
            writer.enter_context(run.writer())
            run.check_new(resume=resume)
            run.create()
        except RunFolderError as exc:
            writer.close()
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            writer.close()
            raise ConfigError(f"{out}: cannot create the run folder ({exc.strerror or exc})") from None
        attach_log(run)
    with writer:
        return _train(TrainContext(cfg, run, device, rank, world, resume), progress=progress)


def _train(ctx: TrainContext, *, progress: bool | None) -> dict:
    """The pieces of a run in order, with what a stop or a failure leaves in the run folder."""
    run = ctx.run
    # a supervised job's training gets SIGTERM when its supervisor dies (hkd.jobs): told
    # apart from a user's cancel by the parent having changed since the start
    parent_pid = os.getppid()
    # a finished run whose --resume is refused (e.g. a damaged train_state.pt) keeps its own state
    ctx.keep_state = ctx.resume and ctx.main_process and run.read_status().get("state") == "succeeded"
    if progress is None:
        progress = sys.stderr.isatty()
    torch.set_num_threads(max(1, ctx.cfg.train.threads))
    cancelled = {"flag": False}
    previous_handler = None
    if ctx.main_process and hasattr(signal, "SIGTERM"):
        try:
            previous_handler = signal.signal(signal.SIGTERM, lambda *_: cancelled.__setitem__("flag", True))
        except ValueError:  # not the main thread (tests)
            previous_handler = None
    status: dict = {}
    try:
        _setup(ctx)
        _begin(ctx)
        train_steps(ctx, lambda: cancelled["flag"], progress)
        status = _finish(ctx)
    except Cancelled:
        status = _stopped(ctx, parent_pid)
    except DatasetError as exc:  # an image that does not match its annotations, found mid-run
        error = TrainingError(f"data: {_dataset_message(exc)}")
        if ctx.main_process:
            _mark_failed(run, str(error), ctx.keep_state)
        raise error from None
    except OSError as exc:  # a full disk, a file that cannot be read: one sentence, not a traceback
        error = _write_error(exc, run)
        if ctx.main_process:
            _mark_failed(run, str(error), ctx.keep_state)
        raise error from exc
    except BaseException as exc:
        if ctx.main_process:
            _mark_failed(run, f"{type(exc).__name__}: {exc}", ctx.keep_state)
        raise
    finally:
        ctx.batches = None  # stops the loader's workers
        if ctx.metrics is not None:
            ctx.metrics.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        detach_log()
        if ctx.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return status


def _setup(ctx: TrainContext) -> None:
    """The student (on the device), the trained module and its step, the datasets, DDP and the optimiser."""
    cfg, t = ctx.cfg, ctx.cfg.train
    torch.manual_seed(t.seed)
    ctx.student, ctx.parent = build_student(cfg)
    if not cfg.model.init and cfg.model.pretrained_backbone is False:
        log.info("student starts from random init")
    channels_last = uses_channels_last(t, ctx.device)
    ctx.student.to(ctx.device)
    if channels_last:
        ctx.student.to(memory_format=torch.channels_last)
    ctx.trainable, ctx.step_fn = build_step(cfg, ctx.student, ctx.device, channels_last)
    ctx.trainable.train()
    ctx.train_set = open_data(cfg.data.train, cfg.data.train_split)  # augmented per sample by the loader
    ctx.val_set = open_data(cfg.data.val, cfg.data.val_split) if cfg.data.val else None
    ctx.ddp_module = ctx.trainable
    if ctx.world > 1:
        ctx.ddp_module = nn.parallel.DistributedDataParallel(
            ctx.trainable, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=cfg.distills)
    ctx.groups = param_groups(ctx.trainable)
    ctx.opt, ctx.sched = make_optimizer(cfg, ctx.groups)
    ctx.scaler = torch.amp.GradScaler(ctx.device.type, enabled=t.amp == "fp16")


def _begin(ctx: TrainContext) -> None:
    """Continue from the run folder's state (``--resume``), then record the run's start (rank 0)."""
    cfg, t, run = ctx.cfg, ctx.cfg.train, ctx.run
    if ctx.resume:
        ctx.start = _restore(run, ctx.student, ctx.trainable, ctx.opt, ctx.sched, ctx.scaler)
        if ctx.main_process:
            run.truncate_metrics(ctx.start)
    if not ctx.main_process:
        return
    config_text = json.dumps(cfg.to_dict(), indent=2)
    atomic_write(run.config_path, lambda tmp: Path(tmp).write_text(config_text))
    ctx.metrics = MetricsLog(run, first_step=ctx.start + 1 if ctx.resume else None)
    ctx.keep_state = False
    run.write_status("running", step=ctx.start, total=t.steps, pid=os.getpid(), started=time.time(),
                     message="", world_size=ctx.world, mode=run_mode(cfg), device=str(ctx.device), amp=t.amp)
    log.info("run %s: %s for %d steps (batch %d × %d processes) on %s (amp %s, %d workers), "
             "%d training images", run.root, cfg.model.preset, t.steps, t.batch_size, ctx.world, ctx.device,
             t.amp, t.workers, len(ctx.train_set))


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------
def train_steps(ctx: TrainContext, cancelled: Callable[[], bool], progress: bool) -> None:
    """Steps ``ctx.start`` … ``train.steps - 1``: an optimiser step each, then logging and the periodic
    checkpoint and evaluation. Raises :class:`Cancelled` at the first step after a SIGTERM."""
    cfg, t = ctx.cfg, ctx.cfg.train
    ctx.batches = iter(train_loader(ctx.train_set, cfg.data.augment, t, start=ctx.start, rank=ctx.rank,
                                    world=ctx.world, pin_memory=ctx.device.type == "cuda"))
    bar = tqdm(total=t.steps, initial=ctx.start, disable=not (progress and ctx.main_process), unit="step")
    ctx.window_start, ctx.window_images = time.perf_counter(), 0
    # wall time of earlier segments of a resumed run, so "seconds" covers the whole run
    ctx.run_start = time.perf_counter() - (float(ctx.run.read_status().get("seconds", 0.0)) if ctx.resume else 0.0)
    ctx.step = ctx.start
    for step in range(ctx.start, t.steps):
        ctx.step = step
        if cancelled():
            raise Cancelled()
        images, targets = next(ctx.batches)
        total, losses = _one_step(ctx, images, targets, step)
        ctx.window_images += len(images) * ctx.world
        bar.update(1)
        done = step + 1
        if done % t.log_every == 0 or done == t.steps:
            _log_step(ctx, done, total, losses, bar)
        _checkpoint(ctx, done)
    bar.close()


def _one_step(ctx: TrainContext, images, targets, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward, backward and optimiser step on one batch: (total loss, loss terms)."""
    t, device = ctx.cfg.train, ctx.device
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in target.items()} for target in targets]
    torch.manual_seed(t.seed * 1_000_003 + step)  # multi-scale size, proposal sampling
    with autocast(device, t.amp):
        losses = ctx.step_fn(ctx.ddp_module, images, targets, step)
        total = sum(losses.values())
    if not torch.isfinite(total):
        bad = [k for k, v in losses.items() if not torch.isfinite(v)]
        raise TrainingError(f"non-finite loss at step {step}: {', '.join(bad) or 'total'} — "
                            "lower train.lr or check the data")
    ctx.opt.zero_grad(set_to_none=True)
    ctx.scaler.scale(total).backward()
    if t.grad_clip:
        ctx.scaler.unscale_(ctx.opt)
        # clipped per model: an online teacher's gradients do not scale down the student's
        for group in (group for group in ctx.groups.values() if group):
            torch.nn.utils.clip_grad_norm_(group, t.grad_clip)
    ctx.scaler.step(ctx.opt)
    ctx.scaler.update()
    ctx.sched.step()
    return total, losses


def _log_step(ctx: TrainContext, done: int, total: torch.Tensor, losses: dict[str, torch.Tensor], bar) -> None:
    """The losses averaged over the ranks (every rank takes part) into metrics and status (rank 0)."""
    t = ctx.cfg.train
    values = _mean_over_ranks({"loss": total, **losses}, ctx.world)
    if not ctx.main_process:
        return
    now = time.perf_counter()
    rate = ctx.window_images / max(1e-9, now - ctx.window_start)
    record = {"step": done, "time": round(now - ctx.run_start, 3), "lr": ctx.sched.get_last_lr()[0],
              **values, "images_per_s": round(rate, 3)}
    ctx.metrics.append(record)
    eta = (t.steps - done) * t.batch_size * ctx.world / max(rate, 1e-9)
    ctx.run.write_status("running", step=done, total=t.steps, eta_s=round(eta, 1),
                         seconds=round(now - ctx.run_start, 1))
    bar.set_postfix(loss=f"{values['loss']:.3f}")
    ctx.window_start, ctx.window_images = now, 0


def _checkpoint(ctx: TrainContext, done: int) -> None:
    """The periodic ``checkpoints/last`` and evaluation after step ``done`` (rank 0; those after the
    last step are :func:`_finish`'s)."""
    t = ctx.cfg.train
    if not ctx.main_process or done >= t.steps:
        return
    if t.checkpoint_every and done % t.checkpoint_every == 0:
        _save(ctx.run, "last", ctx.student, ctx.cfg, ctx.parent, done, ctx.opt, ctx.sched, metrics=ctx.last_eval,
              trainable=ctx.trainable, scaler=ctx.scaler)
    if ctx.val_set is not None and t.eval_every and done % t.eval_every == 0:
        ctx.last_eval = _evaluate(ctx.metrics, ctx.student, ctx.val_set, ctx.cfg, done, ctx.device)
        ctx.student.train()


# ---------------------------------------------------------------------------
# the end
# ---------------------------------------------------------------------------
def _finish(ctx: TrainContext) -> dict:
    """Final evaluation(s), ``checkpoints/final`` and ``last`` (and an online teacher's), status ``succeeded``."""
    cfg, steps, run = ctx.cfg, ctx.cfg.train.steps, ctx.run
    if not ctx.main_process:
        return {"state": "succeeded", "step": steps, "total": steps, "rank": ctx.rank}
    teacher_cache = getattr(ctx.trainable, "teacher_cache", None)
    if teacher_cache is not None:
        log.info("%s", teacher_cache.summary())
    final = _evaluate(ctx.metrics, ctx.student, ctx.val_set, cfg, steps, ctx.device) if ctx.val_set is not None \
        else None
    if cfg.online is not None:
        teacher_eval = (_evaluate(ctx.metrics, ctx.trainable.teacher, ctx.val_set, cfg, steps, ctx.device,
                                  key="teacher_eval") if ctx.val_set is not None else None)
        _save_teacher(run, "teacher_final", ctx.trainable.teacher, cfg, steps, teacher_eval)
    _save(run, "final", ctx.student, cfg, ctx.parent, steps, ctx.opt, ctx.sched, metrics=final)
    _save(run, "last", ctx.student, cfg, ctx.parent, steps, ctx.opt, ctx.sched, metrics=final,
          trainable=ctx.trainable, scaler=ctx.scaler)
    status = run.write_status("succeeded", step=steps, total=steps, eta_s=0,
                              seconds=round(time.perf_counter() - ctx.run_start, 1),
                              metrics=final, checkpoint=str(run.checkpoint("final")))
    log.info("done: %s", run.checkpoint("final"))
    return status


def _stopped(ctx: TrainContext, parent_pid: int) -> dict:
    """After SIGTERM (rank 0): ``checkpoints/last`` at the step reached, and why the run stopped."""
    if not ctx.main_process:
        return {}
    run, step = ctx.run, ctx.step
    try:
        _save(run, "last", ctx.student, ctx.cfg, ctx.parent, step, ctx.opt, ctx.sched, metrics=None,
              trainable=ctx.trainable, scaler=ctx.scaler)
    except OSError as exc:
        error = _write_error(exc, run)
        _mark_failed(run, f"stopped at step {step} but could not save its last checkpoint: {error}")
        raise error from exc
    if os.getppid() != parent_pid:
        status = run.write_status(
            "failed", step=step,
            message=f"its job supervisor (pid {parent_pid}) died, so the run stopped at step {step} with "
                    "checkpoints/last saved; continue it with `hkd jobs resume` or --resume")
        log.warning("supervisor %d gone: stopped at step %d; resume with --resume", parent_pid, step)
        return status
    status = run.write_status("cancelled", step=step, message="cancelled by the user (SIGTERM)")
    log.warning("cancelled at step %d; resume with --resume", step)
    return status


def _dataset_message(exc: Exception) -> str:
    """The sentence of a DatasetError, also when a DataLoader worker wrapped it with its traceback."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(exc):
        return lines[-1].split("DatasetError: ", 1)[-1]
    return lines[0] if lines else type(exc).__name__


def _write_error(exc: OSError, run: RunFolder) -> TrainingError:
    """An OSError as one sentence naming the file (ENOSPC: the disk is full)."""
    where = exc.filename or run.root
    why = exc.strerror or str(exc)
    hint = "; free some space and continue with --resume" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return TrainingError(f"{where}: {why}{hint}")


def _mark_failed(run: RunFolder, message: str, keep_state: bool = False) -> None:
    """Record a failed run when the folder can still be written (a full disk may refuse even that);
    ``keep_state``: only log it (a refused resume of a finished run leaves that run as it was)."""
    if keep_state or not run.root.is_dir():
        log.error("failed: %s", message)
        return
    try:
        run.write_status("failed", message=message)
    except OSError:
        pass
    log.error("failed: %s", message)


def _mean_over_ranks(losses: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Each loss averaged over the ranks (each rank's loss is a mean over its share of the batch)."""
    names = list(losses)
    stacked = torch.stack([losses[k].detach().float() for k in names])
    if world > 1:
        dist.all_reduce(stacked)
        stacked /= world
    return dict(zip(names, stacked.tolist()))


# ---------------------------------------------------------------------------
# evaluation and checkpoints
# ---------------------------------------------------------------------------
def run_mode(cfg: RunConfig) -> str:
    """``train``, ``distill`` or ``online`` (distillation with a teacher trained in the run)."""
    return "online" if cfg.online is not None else "distill" if cfg.teacher else "train"


def _evaluate(metrics: MetricsLog, student: nn.Module, val_set, cfg: RunConfig, step: int,
              device: torch.device, key: str = "eval") -> dict:
    from hkd.train.evaluate import evaluate_model

    start = time.perf_counter()
    model = student if device.type == "cpu" else OnDevice(student, device)
    result = evaluate_model(model, val_set, max_images=cfg.data.val_images)
    result["seconds"] = round(time.perf_counter() - start, 1)
    metrics.append({"step": step, key: result})
    metrics.writer.flush()
    log.info("%s @%d: MR-2 %s, AP50 %.3f", key, step,
             ", ".join(f"{k} {v:.2f}" for k, v in result["mr"].items()), result["ap50"])
    return result


def _provenance(cfg: RunConfig) -> str:
    if cfg.online is not None:
        return (f"distilled online from a {cfg.online.teacher_preset} trained in the same run "
                f"(KD from step {cfg.online.kd_after})")
    return "distilled from " + Path(cfg.teacher).name if cfg.teacher else ""


def _save_teacher(run: RunFolder, name: str, teacher: nn.Module, cfg: RunConfig, step: int,
                  metrics: dict | None) -> None:
    """An online teacher's checkpoint (``teacher_final`` / ``teacher_last``), self-describing like the student's."""
    preset = get_preset(cfg.online.teacher_preset)
    meta = CheckpointMeta(preset=preset.name, classes=list(preset.classes),
                          min_size=teacher.transform.min_size[-1], max_size=teacher.transform.max_size, train_config=cfg.to_dict(), metrics=metrics or {},
                          parent=Path(cfg.online.init).name if cfg.online.init else None, step=step,
                          notes=f"online teacher, trained beside {cfg.model.preset}")
    dtype = torch.float16 if cfg.train.save_dtype == "float16" and name == "teacher_final" else torch.float32
    save_checkpoint(run.checkpoint(name), teacher, meta, dtype=dtype)


def _save(run: RunFolder, name: str, student, cfg: RunConfig, parent, step: int, opt, sched, metrics,
          trainable: nn.Module | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    preset = get_preset(cfg.model.preset)
    meta = CheckpointMeta(preset=cfg.model.preset, classes=list(preset.classes),
                          min_size=cfg.model.min_size or preset.min_size, max_size=cfg.model.max_size or preset.max_size, train_config=cfg.to_dict(), metrics=metrics or {},
                          parent=parent or (Path(cfg.teacher).name if cfg.teacher else None), step=step,
                          notes=_provenance(cfg))
    if name == "final":
        from hkd.models.profile import flops_by_hierarchy, params_by_hierarchy

        # counted on a CPU copy: the profiler feeds CPU images
        on_cpu = student if next(student.parameters()).device.type == "cpu" else copy.deepcopy(student).cpu()
        meta.cost = {"params": params_by_hierarchy(student), "flops": flops_by_hierarchy(on_cpu, 640, 480),
                     "flops_size": [640, 480]}
    dtype = torch.float16 if cfg.train.save_dtype == "float16" and name == "final" else torch.float32
    save_checkpoint(run.checkpoint(name), student, meta, dtype=dtype)
    if name == "last" and getattr(trainable, "online", False):
        _save_teacher(run, "teacher_last", trainable.teacher, cfg, step, None)
    if name == "last":
        state = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
        adapters = getattr(trainable, "adapters", None)
        if adapters is not None:  # distillation adapters train too; the checkpoint holds only the student
            state["adapters"] = adapters.state_dict()
        aux = getattr(trainable, "aux_student", None)
        if aux is not None:  # the student's aux heads (distill.aux) likewise: training-only
            state["aux"] = aux.state_dict()
        if scaler is not None and scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        atomic_write(run.state_path, lambda tmp: torch.save(state, tmp))


def _restore(run: RunFolder, student: nn.Module, trainable: nn.Module, opt, sched,
             scaler: torch.amp.GradScaler | None = None) -> int:
    if not run.can_resume:
        raise ConfigError(f"{run.root}: nothing to resume (no checkpoints/last.safetensors or train_state.pt)")
    loaded = load_checkpoint(run.checkpoint("last"))
    student.load_state_dict(loaded.model.state_dict())
    if getattr(trainable, "online", False):
        teacher_ckpt = run.checkpoint("teacher_last")
        if not teacher_ckpt.exists():
            raise ConfigError(f"{run.root}: an online run without checkpoints/teacher_last.safetensors cannot resume")
        trainable.teacher.load_state_dict(load_checkpoint(teacher_ckpt).model.state_dict())
    try:
        state = torch.load(run.state_path, map_location="cpu", weights_only=True)
        step = int(state["step"])
        optimizer_state, scheduler_state = state["optimizer"], state["scheduler"]
    except Exception as exc:  # truncated, foreign or pickled objects: torch says it in many ways
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{run.state_path}: not a readable training state ({first}); the run cannot be resumed "
                          "from it — start a new run in another --out (checkpoints/last.safetensors can seed "
                          "it as model.init)") from None
    if "adapters" in state and getattr(trainable, "adapters", None) is not None:
        trainable.adapters.load_state_dict(state["adapters"])
    if "aux" in state and getattr(trainable, "aux_student", None) is not None:
        trainable.aux_student.load_state_dict(state["aux"])
    opt.load_state_dict(optimizer_state)
    sched.load_state_dict(scheduler_state)
    if scaler is not None and scaler.is_enabled() and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    log.info("resumed from step %d", step)
    return step
