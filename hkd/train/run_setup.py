"""What a training run is built from: its device and process group, the model, the step and the optimiser.

:func:`hkd.train.engine.train` calls these before its first step; they write nothing.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from hkd.models.checkpoint import PICKLE_SUFFIXES, CheckpointError, load_backbone_weights, load_checkpoint
from hkd.models.device import DeviceError, check_device_spec, resolve_device
from hkd.models.presets import build_detector, get_preset
from hkd.train.config import ConfigError, RunConfig, check_placement


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


class OnDevice(nn.Module):
    """Feeds CPU images to a detector on another device (for the evaluation during training)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, images, targets=None):
        return self.model([image.to(self.device) for image in images])


def open_data(path: str, split: str | None = None):
    """The dataset at ``path`` (``split`` of a folder that holds several); :class:`ConfigError` when it
    cannot be opened."""
    from hkd.data.datasets import open_dataset

    try:
        return open_dataset(path, split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"dataset {path}: {exc}") from None


# ---------------------------------------------------------------------------
# model / step
# ---------------------------------------------------------------------------
def build_student(cfg: RunConfig) -> tuple[nn.Module, str | None]:
    """The model to train and its parent checkpoint (if it starts from one)."""
    if cfg.model.init:
        # foreign weights (a torchvision .pth) are for model.preset; `hkd import` makes them an HKD checkpoint
        foreign = Path(cfg.model.init).suffix.lower() in PICKLE_SUFFIXES
        loaded = load_checkpoint(cfg.model.init, preset=cfg.model.preset if foreign else None)
        if loaded.meta.preset != cfg.model.preset:
            raise ConfigError(f"model.init {cfg.model.init} holds {loaded.meta.preset}, not {cfg.model.preset}")
        if cfg.model.train_min_sizes:
            set_train_sizes(loaded.model, cfg.model.train_min_sizes)
        return loaded.model, Path(cfg.model.init).name
    sizes = {k: v for k, v in (("min_size", cfg.model.min_size), ("max_size", cfg.model.max_size)) if v}
    if cfg.model.backbone_weights:  # the ResNet presets' ImageNet file (config validation checked the preset)
        sizes["backbone_weights"] = cfg.model.backbone_weights
    try:
        model = build_detector(cfg.model.preset, pretrained_backbone=cfg.model.pretrained_backbone, **sizes)
    except CheckpointError as exc:
        raise ConfigError(f"model.backbone_weights: {exc}") from None
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

        if cfg.train.repulsion:  # the detector's losses and RepGT, from one written-out forward
            from hkd.train.repulsion import RepulsionTraining

            return RepulsionTraining(student, cfg.train.repulsion, cfg.train.repulsion_sigma), detection_step
        return student, detection_step
    from hkd.distill.config import ConfigError as DistillConfigError
    from hkd.distill.distiller import Distiller

    options = {}
    if cfg.online is not None:  # a teacher that learns in this run, in float32 like the student
        teacher_model, teacher_preset = build_online_teacher(cfg), cfg.online.teacher_preset
        teacher_dtype = torch.float32
        options = {"online": True, "kd_after": cfg.online.kd_after}
    else:
        if Path(cfg.teacher).suffix.lower() in PICKLE_SUFFIXES:
            raise ConfigError(f"teacher: {cfg.teacher} does not say which architecture it holds; make it an HKD "
                              f"checkpoint first: hkd import {cfg.teacher} --preset NAME --out teacher.safetensors")
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
