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
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from hkd.data.datasets import DatasetError
from hkd.models.checkpoint import (CheckpointError, CheckpointMeta, atomic_write, load_backbone_weights, load_checkpoint,
                                   save_checkpoint)
from hkd.models.device import DeviceError, check_device_spec, resolve_device
from hkd.models.presets import build_detector, get_preset
from hkd.train.config import ConfigError, RunConfig, check_placement
from hkd.train.data import batch_indices, detection_targets, train_loader  # noqa: F401  (public here too)
from hkd.train.run_folder import RunFolder, RunFolderError

log = logging.getLogger("hkd.train")


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (non-finite loss, bad data…)."""


class Cancelled(Exception):
    pass


# ---------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------
def init_distributed(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world_size); initialises the process group under torchrun (nccl for CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world


def place(train_cfg, world: int = 1) -> torch.device:
    """The device of this process for ``train.device`` (under torchrun: ``auto``/``cuda`` → ``cuda:LOCAL_RANK``).

    Raises:
        ConfigError: a misspelt device, a GPU that is not there, fp16 on the CPU, bf16 on a
            GPU without bf16, ``cuda:N`` under several processes.
    """
    check_placement(train_cfg)
    kind, index = check_device_spec(train_cfg.device)
    if world > 1 and kind in ("auto", "cuda") and torch.cuda.is_available():
        if index is not None:
            raise ConfigError(f"train.device={train_cfg.device} would put all {world} processes on one GPU; "
                              "use train.device=cuda (each process takes the GPU of its LOCAL_RANK)")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} GPU(s); "
                              "start at most that many processes per node")
        torch.cuda.set_device(local)
    try:
        device = resolve_device(train_cfg.device)
    except DeviceError as exc:
        raise ConfigError(f"train.device: {exc}") from None
    if train_cfg.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"train.amp=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                          "use train.amp=fp16 or off")
    return device


AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    """The autocast context of ``train.amp`` on ``device`` (a no-op for ``off``)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def uses_channels_last(train_cfg, device: torch.device) -> bool:
    """``train.channels_last``, or by default: on for CUDA with amp (tensor-core convolutions)."""
    if train_cfg.channels_last is not None:
        return bool(train_cfg.channels_last)
    return device.type == "cuda" and train_cfg.amp != "off"


class _OnDevice(nn.Module):
    """Feeds CPU images to a detector on another device (for the evaluation during training)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, images, targets=None):
        return self.model([image.to(self.device) for image in images])


def _open(path: str):
    from hkd.data.datasets import open_dataset

    try:
        return open_dataset(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"dataset {path}: {exc}") from None


# ---------------------------------------------------------------------------
# model / step
# ---------------------------------------------------------------------------
def build_student(cfg: RunConfig) -> tuple[nn.Module, str | None]:
    """The model to train and its parent checkpoint (if it starts from one)."""
    if cfg.model.init:
        loaded = load_checkpoint(cfg.model.init)
        if loaded.meta.preset != cfg.model.preset:
            raise ConfigError(f"model.init {cfg.model.init} holds {loaded.meta.preset}, not {cfg.model.preset}")
        if cfg.model.train_min_sizes:
            set_train_sizes(loaded.model, cfg.model.train_min_sizes)
        return loaded.model, Path(cfg.model.init).name
    sizes = {k: v for k, v in (("min_size", cfg.model.min_size), ("max_size", cfg.model.max_size)) if v}
    model = build_detector(cfg.model.preset, pretrained_backbone=cfg.model.pretrained_backbone, **sizes)
    if cfg.model.init_backbone:
        try:
            load_backbone_weights(model, cfg.model.init_backbone)
        except CheckpointError as exc:
            raise ConfigError(f"model.init_backbone: {exc}") from None
    if cfg.model.train_min_sizes:
        set_train_sizes(model, cfg.model.train_min_sizes)
    return model, None


def set_train_sizes(model: nn.Module, sizes: list[int]) -> None:
    """Multi-scale training: torchvision picks one of ``min_size`` per batch in train
    mode and uses the last one in eval mode, so the inference size goes last."""
    final = model.transform.min_size[-1]
    model.transform.min_size = tuple(s for s in sizes if s != final) + (final,)


def build_step(cfg: RunConfig, student: nn.Module, device: torch.device | None = None,
               channels_last: bool = False) -> tuple[nn.Module, Callable]:
    """(module whose parameters train, step ``(module, images, targets, step) -> loss dict``).

    The step receives the module to call (the trainable one, or its DDP wrapper).
    ``student`` is already on ``device``; the teacher is put there too, in the
    half precision of ``train.amp`` if any (it only runs forward, so it needs no
    float32 master copy, and autocast would otherwise cast its weights at every step).
    """
    if not cfg.distills:
        def detection_step(module, images, targets, step):
            return {f"det/{k}": v for k, v in module(images, targets).items()}

        return student, detection_step
    from hkd.distill.config import ConfigError as DistillConfigError
    from hkd.distill.distiller import Distiller

    options = {}
    if cfg.online is not None:  # a teacher that learns in this run, in float32 like the student
        teacher_model, teacher_preset = build_online_teacher(cfg), cfg.online.teacher_preset
        teacher_dtype = torch.float32
        options = {"online": True, "kd_after": cfg.online.kd_after}
    else:
        # the teacher only runs forward (eval, no grad): prepared for inference, ~1.2× faster on CPU
        teacher = load_checkpoint(cfg.teacher, inference=True)
        teacher_model, teacher_preset = teacher.model, teacher.meta.preset
        teacher_dtype = AMP_DTYPES[cfg.train.amp] or torch.float32
        if cfg.train.teacher_cache:  # keyed by the checkpoint's bytes: a retrained teacher never hits
            from hkd.distill.teacher_cache import TeacherCache

            options = {"teacher_cache": TeacherCache(cfg.train.teacher_cache, teacher_id=teacher.sha256,
                                                     dtype=cfg.train.teacher_cache_dtype)}
    if device is not None:
        teacher_model.to(device=device, dtype=teacher_dtype)
        if channels_last:
            teacher_model.to(memory_format=torch.channels_last)
    t_spec = get_preset(teacher_preset).hierarchy
    s_spec = get_preset(cfg.model.preset).hierarchy
    try:
        distiller = Distiller.build(teacher_model, t_spec, student, s_spec, cfg.distill or {}, **options)
    except DistillConfigError as exc:
        raise ConfigError(f"distill: {exc}") from None
    cfg.distill = distiller.config.to_dict()  # the run folder and checkpoints record it inline
    return distiller, lambda module, images, targets, step: module(images, targets, step=step)


def build_online_teacher(cfg: RunConfig) -> nn.Module:
    """The teacher of online distillation: from ``online.init`` or its preset (ImageNet backbone),
    with the student's multi-scale sizes so both see every batch at one size."""
    online = cfg.online
    if online.init:
        loaded = load_checkpoint(online.init)
        if loaded.meta.preset != online.teacher_preset:
            raise ConfigError(f"online.init {online.init} holds {loaded.meta.preset}, not {online.teacher_preset}")
        model = loaded.model
    else:
        # the student's inference size too (model.min_size / max_size), so both are evaluated alike
        sizes = {k: v for k, v in (("min_size", cfg.model.min_size), ("max_size", cfg.model.max_size)) if v}
        model = build_detector(online.teacher_preset, pretrained_backbone=online.pretrained_backbone, **sizes)
    if cfg.model.train_min_sizes:
        set_train_sizes(model, cfg.model.train_min_sizes)
    return model


def param_groups(trainable: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by model (``student``; ``teacher`` for online distillation)."""
    groups = getattr(trainable, "parameter_groups", None)
    if groups is not None:
        return groups()
    return {"student": [p for p in trainable.parameters() if p.requires_grad]}


def make_optimizer(cfg: RunConfig, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD/AdamW and the warm-up + schedule of ``train``. ``params``: parameters, or
    :func:`param_groups`'s dict (an online teacher's group gets ``train.lr × online.lr_scale``)."""
    t = cfg.train
    if isinstance(params, dict):
        scale = {"teacher": cfg.online.lr_scale if cfg.online is not None else 1.0}
        params = [{"params": group, "lr": t.lr * scale.get(name, 1.0)} for name, group in params.items() if group]
    else:
        params = [p for p in params if p.requires_grad]
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return 0.001 + (1 - 0.001) * step / max(1, t.warmup_steps)
        if t.schedule == "constant":
            return 1.0
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        if t.schedule == "step":
            return 0.1 if progress >= 0.75 else 1.0
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ---------------------------------------------------------------------------
# the loop
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
    main_process = rank == 0
    run = RunFolder(out)
    t = cfg.train
    # one writer per run folder: rank 0 holds RUN/.lock until the run has ended
    writer = contextlib.ExitStack()
    if main_process:
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
        _attach_log(run)
    with writer:
        return _train(cfg, run, device, rank, world, resume=resume, progress=progress)


def _train(cfg: RunConfig, run: RunFolder, device: torch.device, rank: int, world: int, *, resume: bool,
           progress: bool | None) -> dict:
    main_process = rank == 0
    t = cfg.train
    # a supervised job's training gets SIGTERM when its supervisor dies (hkd.jobs): told
    # apart from a user's cancel by the parent having changed since the start
    parent_pid = os.getppid()
    # a finished run whose --resume is refused (e.g. a damaged train_state.pt) keeps its own state
    keep_state = resume and main_process and run.read_status().get("state") == "succeeded"
    if progress is None:
        progress = sys.stderr.isatty()
    torch.set_num_threads(max(1, t.threads))
    cancelled = {"flag": False}
    previous_handler = None
    if main_process and hasattr(signal, "SIGTERM"):
        try:
            previous_handler = signal.signal(signal.SIGTERM, lambda *_: cancelled.__setitem__("flag", True))
        except ValueError:  # not the main thread (tests)
            previous_handler = None
    status: dict = {}
    metrics: MetricsLog | None = None
    batches = None
    try:
        torch.manual_seed(t.seed)
        student, parent = build_student(cfg)
        if not cfg.model.init and cfg.model.pretrained_backbone is False:
            log.info("student starts from random init")
        channels_last = uses_channels_last(t, device)
        student.to(device)
        if channels_last:
            student.to(memory_format=torch.channels_last)
        trainable, step_fn = build_step(cfg, student, device, channels_last)
        trainable.train()
        train_set = _open(cfg.data.train)  # augmented per sample by the loader (hkd.train.data)
        val_set = _open(cfg.data.val) if cfg.data.val else None
        ddp_module = trainable
        if world > 1:
            ddp_module = nn.parallel.DistributedDataParallel(
                trainable, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.distills)
        groups = param_groups(trainable)
        opt, sched = make_optimizer(cfg, groups)
        scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
        start = 0
        if resume:
            start = _restore(run, student, trainable, opt, sched, scaler)
            if main_process:
                run.truncate_metrics(start)
        if main_process:
            config_text = json.dumps(cfg.to_dict(), indent=2)
            atomic_write(run.config_path, lambda tmp: Path(tmp).write_text(config_text))
            metrics = MetricsLog(run, first_step=start + 1 if resume else None)
            keep_state = False
            run.write_status("running", step=start, total=t.steps, pid=os.getpid(), started=time.time(),
                             message="", world_size=world, mode=run_mode(cfg),
                             device=str(device), amp=t.amp)
            log.info("run %s: %s for %d steps (batch %d × %d processes) on %s (amp %s, %d workers), "
                     "%d training images", run.root, cfg.model.preset, t.steps, t.batch_size, world, device,
                     t.amp, t.workers, len(train_set))
        loader = train_loader(train_set, cfg.data.augment, t, start=start, rank=rank, world=world,
                              pin_memory=device.type == "cuda")
        batches = iter(loader)
        bar = tqdm(total=t.steps, initial=start, disable=not (progress and main_process), unit="step")
        window_start, window_images = time.perf_counter(), 0
        # wall time of earlier segments of a resumed run, so "seconds" covers the whole run
        run_start = time.perf_counter() - (float(run.read_status().get("seconds", 0.0)) if resume else 0.0)
        step = start
        last_eval: dict | None = None
        # clipped per model: an online teacher's gradients do not scale down the student's
        clip_groups = [group for group in groups.values() if group]
        for step in range(start, t.steps):
            if cancelled["flag"]:
                raise Cancelled()
            images, targets = next(batches)
            images = [image.to(device, non_blocking=True) for image in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in target.items()} for target in targets]
            torch.manual_seed(t.seed * 1_000_003 + step)  # multi-scale size, proposal sampling
            with autocast(device, t.amp):
                losses = step_fn(ddp_module, images, targets, step)
                total = sum(losses.values())
            if not torch.isfinite(total):
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                raise TrainingError(f"non-finite loss at step {step}: {', '.join(bad) or 'total'} — "
                                    "lower train.lr or check the data")
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if t.grad_clip:
                scaler.unscale_(opt)
                for group in clip_groups:
                    torch.nn.utils.clip_grad_norm_(group, t.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            window_images += len(images) * world
            bar.update(1)
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                values = _mean_over_ranks({"loss": total, **losses}, world)  # every rank takes part
                if main_process:
                    now = time.perf_counter()
                    rate = window_images / max(1e-9, now - window_start)
                    record = {"step": done, "time": round(now - run_start, 3), "lr": sched.get_last_lr()[0],
                              **values, "images_per_s": round(rate, 3)}
                    metrics.append(record)
                    eta = (t.steps - done) * t.batch_size * world / max(rate, 1e-9)
                    run.write_status("running", step=done, total=t.steps, eta_s=round(eta, 1),
                                     seconds=round(now - run_start, 1))
                    bar.set_postfix(loss=f"{values['loss']:.3f}")
                    window_start, window_images = now, 0
            if main_process and t.checkpoint_every and done % t.checkpoint_every == 0 and done < t.steps:
                _save(run, "last", student, cfg, parent, done, opt, sched, metrics=last_eval, trainable=trainable,
                      scaler=scaler)
            if main_process and val_set is not None and t.eval_every and done % t.eval_every == 0 and done < t.steps:
                last_eval = _evaluate(metrics, student, val_set, cfg, done, device)
                student.train()
        bar.close()
        teacher_cache = getattr(trainable, "teacher_cache", None)
        if main_process and teacher_cache is not None:
            log.info("%s", teacher_cache.summary())
        if main_process:
            final = _evaluate(metrics, student, val_set, cfg, t.steps, device) if val_set is not None else None
            if cfg.online is not None:
                teacher_eval = (_evaluate(metrics, trainable.teacher, val_set, cfg, t.steps, device, key="teacher_eval")
                                if val_set is not None else None)
                _save_teacher(run, "teacher_final", trainable.teacher, cfg, t.steps, teacher_eval)
            _save(run, "final", student, cfg, parent, t.steps, opt, sched, metrics=final)
            _save(run, "last", student, cfg, parent, t.steps, opt, sched, metrics=final, trainable=trainable,
                  scaler=scaler)
            status = run.write_status("succeeded", step=t.steps, total=t.steps, eta_s=0,
                                      seconds=round(time.perf_counter() - run_start, 1),
                                      metrics=final, checkpoint=str(run.checkpoint("final")))
            log.info("done: %s", run.checkpoint("final"))
        else:
            status = {"state": "succeeded", "step": t.steps, "total": t.steps, "rank": rank}
    except Cancelled:
        if main_process:
            try:
                _save(run, "last", student, cfg, parent, step, opt, sched, metrics=None, trainable=trainable,
                      scaler=scaler)
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
            else:
                status = run.write_status("cancelled", step=step, message="cancelled by the user (SIGTERM)")
                log.warning("cancelled at step %d; resume with --resume", step)
    except DatasetError as exc:  # an image that does not match its annotations, found mid-run
        error = TrainingError(f"data: {_dataset_message(exc)}")
        if main_process:
            _mark_failed(run, str(error), keep_state)
        raise error from None
    except OSError as exc:  # a full disk, a file that cannot be read: one sentence, not a traceback
        error = _write_error(exc, run)
        if main_process:
            _mark_failed(run, str(error), keep_state)
        raise error from exc
    except BaseException as exc:
        if main_process:
            _mark_failed(run, f"{type(exc).__name__}: {exc}", keep_state)
        raise
    finally:
        del batches  # stops the loader's workers
        if metrics is not None:
            metrics.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        _detach_log()
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
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


def scalars(record: dict, prefix: str = "") -> list[tuple[str, float]]:
    """A metrics record's numbers as ``(tag, value)``, nested keys joined by ``/`` (``eval/mr/Reasonable``)."""
    out = []
    for key, value in record.items():
        if not prefix and key == "step":
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((tag, float(value)))
    return out


class MetricsLog:
    """``metrics.jsonl`` plus TensorBoard event files in the run folder, with the same keys.

    ``tensorboard --logdir runs/`` then shows every run, and in it every loss term
    under its ``det/`` / ``kd/<level>/`` key. ``first_step``: a resumed run drops the
    events from that step on, as it drops those lines of ``metrics.jsonl``.
    """

    def __init__(self, run: RunFolder, *, first_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.writer = SummaryWriter(log_dir=str(run.root), purge_step=first_step, flush_secs=30)

    def append(self, record: dict) -> None:
        self.run.append_metrics(record)
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step=record["step"])

    def close(self) -> None:
        self.writer.close()


def run_mode(cfg: RunConfig) -> str:
    """``train``, ``distill`` or ``online`` (distillation with a teacher trained in the run)."""
    return "online" if cfg.online is not None else "distill" if cfg.teacher else "train"


def _evaluate(metrics: MetricsLog, student: nn.Module, val_set, cfg: RunConfig, step: int,
              device: torch.device, key: str = "eval") -> dict:
    from hkd.train.evaluate import evaluate_model

    start = time.perf_counter()
    model = student if device.type == "cpu" else _OnDevice(student, device)
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
    ckpt = run.checkpoint("last")
    if not ckpt.exists() or not run.state_path.exists():
        raise ConfigError(f"{run.root}: nothing to resume (no checkpoints/last.safetensors or train_state.pt)")
    loaded = load_checkpoint(ckpt)
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


_handler: logging.Handler | None = None


def _attach_log(run: RunFolder) -> None:
    global _handler
    _detach_log()
    _handler = _RunLogHandler(run.log_path)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("hkd")
    root.addHandler(_handler)
    root.setLevel(logging.INFO)


class _RunLogHandler(logging.FileHandler):
    """The run's log.txt. A line that cannot be written (a full disk) is dropped without
    logging's own traceback: the error that matters reaches the user as the run's failure."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


def _detach_log() -> None:
    global _handler
    if _handler is not None:
        logging.getLogger("hkd").removeHandler(_handler)
        _handler.close()
        _handler = None
