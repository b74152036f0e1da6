"""Run configs: plain data (YAML without anchors or aliases, or JSON; :mod:`hkd.configfile`), validated on load.

A run config has these sections (every key optional except ``model.preset``
and ``data.train``)::

    model:   {preset: hkd_frcnn_lite0.student, pretrained_backbone: true, init: null, init_backbone: null,
              backbone_weights: null, min_size: 480, max_size: 640, train_min_sizes: [352, 384, 416, 448, 480]}
    teacher: assets/checkpoints/teacher.safetensors      # `hkd distill` only
    online:  {teacher_preset: hkd_frcnn_lite2.teacher,    # `hkd distill` without a teacher checkpoint:
              pretrained_backbone: true, init: null,      #   teacher and student learn together
              kd_after: 200, lr_scale: 1.0}
    data:    {train: data/synthped/train, val: data/synthped/val, val_images: 200,
              train_split: null, val_split: null,       # COCO / CityPersons / Caltech folders: which split
              augment: {flip: 0.5, scale: [0.75, 1.25], color: 0.2}}
    train:   {steps: 2000, batch_size: 2, optimizer: sgd, lr: 0.02, momentum: 0.9,
              weight_decay: 1e-4, warmup_steps: 100, schedule: cosine, seed: 0,
              grad_clip: 10.0, log_every: 10, eval_every: 500, checkpoint_every: 250,
              threads: 2, workers: 0, save_dtype: float16,
              device: auto, amp: off, channels_last: null,
              teacher_cache: null, teacher_cache_dtype: null,
              repulsion: 0.0, repulsion_sigma: 0.5}       # RepGT on the box head (hkd.train.repulsion)
    distill: {...}  or  distill_full.yaml                 # see hkd.distill.config

Where and how the ``train`` section runs:

- ``batch_size`` is per process: under ``torchrun --nproc_per_node N`` a step sees
  ``batch_size × N`` images (every process its own share, no overlap).
- ``device``: ``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu``, ``cuda``
  or ``cuda:N``. Teacher and student run on the same device; under torchrun
  ``auto``/``cuda`` put each process on its own GPU (``LOCAL_RANK``) and use nccl
  (gloo on the CPU). Asking for a GPU where none exists is an error at load time.
- ``amp``: ``off``, ``bf16`` (autocast; on CUDA and on the CPU) or ``fp16``
  (autocast with a gradient scaler; CUDA only). With either, the teacher, which
  only runs forward, is stored in that half precision too.
- ``channels_last``: ``null`` (on for CUDA with ``amp``, where tensor-core
  convolutions want it; off otherwise), ``true`` or ``false``.
- ``workers``: DataLoader worker processes that read and augment images
  (0: in the training process; at most the number of CPU cores). Every sample's
  augmentation is seeded from ``(seed, its position in the sample stream)``, so
  the losses do not depend on ``workers``; on CUDA batches come from pinned memory.
- ``threads``: torch threads of the training process (workers use one each).
- ``teacher_cache``: a folder (``hkd distill`` with a ``teacher`` checkpoint only) where
  the frozen teacher's image-level outputs (backbone, FPN, RPN / dense head) are stored
  per batch and read back when a batch comes again (:mod:`hkd.distill.teacher_cache`):
  runs of one seed, data, batch size and augmentation see the same batches, so a sweep
  of distill configs computes those once; only the teacher's ROI head runs at every
  step. The losses equal an uncached run's bit for bit. The cost is disk: one entry per
  step of 22 MB for the shipped pair (hkd_frcnn_lite2.teacher, batch 2 at 640×480;
  ~44 GB for 2000 steps), 11 MB with ``teacher_cache_dtype: float16``. hkd never cleans
  the folder: delete it when the sweep is done. The run log ends with its hits and misses.
- ``teacher_cache_dtype``: ``null`` (the teacher's own precision: bit-exact), ``float16``
  (half the disk; the teacher's outputs rounded, so the losses differ slightly from an
  uncached run's but not between runs sharing the folder) or ``float32``. Under
  ``amp`` the teacher's outputs are half precision already: keep ``null``.

Online distillation (``online:`` instead of ``teacher:``): the conventional pipeline
trains a teacher, then distils it; with ``online`` one run trains both. The teacher
(``teacher_preset``, from ImageNet weights or from the checkpoint ``init``) learns the
task with its own detection losses (``teacher/det/…`` in the metrics) on the same
batches as the student; the student learns its own task from step 0 and the
``distill`` terms from step ``kd_after`` on (the warm-up in which the teacher learns
alone; the distill section's ``schedule`` counts its steps from there). The teacher's
learning rate is ``train.lr × lr_scale`` under the same schedule. The run folder
holds the student's checkpoints as usual and the teacher's as
``checkpoints/teacher_final.safetensors`` (``teacher_last`` for ``--resume``).

Paths written in the config file are relative to the config file; paths given
on the command line (``--set teacher=runs/t/final.safetensors``) are relative to
the working directory, like any other command-line path. A misspelt key is an
error that names the key and lists the valid ones.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hkd.configfile import ConfigFileError, parse_value, quote, read_config_file


class ConfigError(ValueError):
    """A run config is invalid; the message names the key and the valid choices."""


@dataclass
class ModelConfig:
    preset: str = ""
    pretrained_backbone: bool = True
    init: str | None = None  # checkpoint to start from (fine-tunes)
    # the backbone + FPN (its backbone.* tensors) of another HKD checkpoint on the same body,
    # e.g. the single-stage teacher from the two-stage teacher; the heads start fresh
    init_backbone: str | None = None
    # the ResNet presets' ImageNet weights: a local torchvision file (default: torch's hub cache, if there)
    backbone_weights: str | None = None
    min_size: int | None = None  # inference resize of the shorter side (default: the preset's)
    max_size: int | None = None
    # multi-scale training: the shorter side is resized to one of these per batch
    # (torchvision's GeneralizedRCNNTransform); evaluation uses min_size
    train_min_sizes: list | None = None


@dataclass
class AugmentConfig:
    flip: float = 0.5
    scale: tuple[float, float] = (0.75, 1.25)
    color: float = 0.2


@dataclass
class DataConfig:
    train: str = ""
    val: str | None = None
    # the split of a dataset folder that holds several (COCO, CityPersons; Caltech: train = set00-05,
    # test = set06-10): hkd.data.open_dataset's split=
    train_split: str | None = None
    val_split: str | None = None
    val_images: int = 200
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 2
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"
    seed: int = 0
    grad_clip: float = 10.0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 250
    threads: int = 2
    workers: int = 0
    save_dtype: str = "float16"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (see hkd.models.device)
    amp: str = "off"
    channels_last: bool | None = None  # None: on for CUDA with amp
    teacher_cache: str | None = None  # folder of the teacher's cached image-level outputs (never cleaned)
    teacher_cache_dtype: str | None = None  # None: the teacher's own dtype (bit-exact) | float16 | float32
    repulsion: float = 0.0  # weight of the box head's RepGT term (hkd.train.repulsion); 0: off
    repulsion_sigma: float = 0.5  # its Smooth_ln threshold, in [0, 1)


@dataclass
class OnlineConfig:
    """Online distillation: the teacher trains in the same run (see the module docstring)."""

    teacher_preset: str = ""  # default: the HKD teacher preset
    pretrained_backbone: bool = True
    init: str | None = None  # a teacher checkpoint to start from
    kd_after: int = 200
    lr_scale: float = 1.0


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: str | None = None
    distill: dict | str | None = None  # section or file; validated by hkd.distill.config against both presets
    online: OnlineConfig | None = None  # teacher trained in this run instead of a `teacher` checkpoint
    source: str | None = None

    @property
    def distills(self) -> bool:
        """Whether this run distils (a teacher checkpoint, or an online teacher)."""
        return bool(self.teacher) or self.online is not None

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("source")
        return out


_CHOICES = {
    ("train", "optimizer"): ("sgd", "adamw"),
    ("train", "schedule"): ("cosine", "step", "constant"),
    ("train", "save_dtype"): ("float16", "float32"),
    ("train", "amp"): ("off", "bf16", "fp16"),
}
# YAML 1.1 reads a bare `off` / `no` as false
_ALIASES = {("train", "amp"): {False: "off"}}


def _build(cls, raw: Any, where: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    valid = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {quote(key)}; valid keys: {', '.join(sorted(valid))}")
        f = valid[key]
        aliases = _ALIASES.get((where.split(".")[-1], key), {})
        if isinstance(value, bool) and value in aliases:
            value = aliases[value]
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if hasattr(default, "__dataclass_fields__"):
            value = _build(type(default), value, f"{where}.{key}")
        else:
            value = _coerce(value, default, f"{where}.{key}")
        choices = _CHOICES.get((where.split(".")[-1], key))
        if choices and value not in choices:
            raise ConfigError(f"{where}.{key}: {quote(value)} is not one of {', '.join(choices)}")
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {quote(value)}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {quote(value)}")
        if isinstance(default, int) and not isinstance(default, bool):
            if float(value) != int(value):
                raise ConfigError(f"{where}: expected an integer, got {quote(value)}")
            return int(value)
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"{where}: expected a list of {len(default)} numbers, got {quote(value)}")
        return tuple(float(v) for v in value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {quote(value)}")
    return value


def config_from_dict(raw: dict, *, base_dir: Path | None = None, source: str | None = None) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'config'}: the top level must be a mapping")
    if base_dir is not None:  # a copy: the caller's mapping keeps its own paths
        raw = copy.deepcopy(raw)
        resolve_paths(raw, Path(base_dir))
    valid = {"model", "data", "train", "teacher", "distill", "online"}
    for key in raw:
        if key not in valid:
            raise ConfigError(f"unknown top-level key {quote(key)}; valid keys: {', '.join(sorted(valid))}")
    cfg = RunConfig(
        model=_build(ModelConfig, raw.get("model"), "model"),
        data=_build(DataConfig, raw.get("data"), "data"),
        train=_build(TrainConfig, raw.get("train"), "train"),
        teacher=raw.get("teacher"),
        distill=raw.get("distill"),
        online=_build(OnlineConfig, raw["online"], "online") if raw.get("online") is not None else None,
        source=source,
    )
    if not cfg.model.preset:
        raise ConfigError("model.preset is required (see `hkd presets`)")
    from hkd.models.presets import get_preset

    try:
        get_preset(cfg.model.preset)
    except KeyError as exc:
        raise ConfigError(f"model.preset: {exc.args[0]}") from None
    if cfg.model.backbone_weights and not get_preset(cfg.model.preset).backbone_file:
        from hkd.models.presets import PRESETS

        raise ConfigError(f"model.backbone_weights: {cfg.model.preset} does not take a backbone weights file "
                          f"(its ImageNet weights: {get_preset(cfg.model.preset).backbone_weights}); presets that "
                          f"do: {', '.join(n for n, p in PRESETS.items() if p.backbone_file)}")
    if cfg.model.backbone_weights and (cfg.model.init or cfg.model.pretrained_backbone is False):
        raise ConfigError("model.backbone_weights is set, but " + ("model.init already holds the whole model"
                          if cfg.model.init else "model.pretrained_backbone is false") + "; remove one of them")
    if cfg.model.init and cfg.model.init_backbone:
        raise ConfigError("model.init and model.init_backbone are both set: init already holds the whole "
                          "model (backbone included); remove one of them")
    if not cfg.data.train:
        raise ConfigError("data.train is required: a dataset folder (e.g. one made by `hkd synth`)")
    if cfg.train.steps <= 0 or cfg.train.batch_size <= 0:
        raise ConfigError("train.steps and train.batch_size must be positive")
    _check_ranges(cfg)
    check_placement(cfg.train)
    _check_teacher_cache(cfg)
    _check_repulsion(cfg)
    sizes = cfg.model.train_min_sizes
    if sizes is not None and (not isinstance(sizes, list) or not sizes
                              or not all(isinstance(v, int) and 32 <= v <= 4096 for v in sizes)):
        raise ConfigError(f"model.train_min_sizes: expected a list of pixel sizes like [384, 416, 448], got {quote(sizes)}")
    if cfg.online is not None:
        _check_online(cfg)
    if cfg.distill is not None and not isinstance(cfg.distill, (dict, str)):
        raise ConfigError("distill: expected a mapping, or the path of a distill config file")
    if isinstance(cfg.distill, str) and Path(cfg.distill).is_dir():
        raise ConfigError(f"distill: {quote(cfg.distill)} is a folder; name a distill config file "
                          "(e.g. assets/configs/distill_full.yaml) or write the section inline")
    return cfg


# (section, key): (test, what is accepted) for numbers whose type alone does not make them usable
_RANGES = {
    ("train", "lr"): (lambda v: v > 0, "a learning rate > 0, e.g. 0.01"),
    ("train", "momentum"): (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("train", "weight_decay"): (lambda v: v >= 0, "a number >= 0"),
    ("train", "warmup_steps"): (lambda v: v >= 0, "a number of steps >= 0"),
    ("train", "grad_clip"): (lambda v: v >= 0, "a gradient norm >= 0 (0: no clipping)"),
    ("train", "log_every"): (lambda v: v >= 1, "a number of steps >= 1"),
    ("train", "eval_every"): (lambda v: v >= 0, "a number of steps >= 0 (0: only at the end)"),
    ("train", "checkpoint_every"): (lambda v: v >= 0, "a number of steps >= 0 (0: only at the end)"),
    ("train", "repulsion"): (lambda v: v >= 0, "a loss weight >= 0 (0: off; the paper's 0.5)"),
    ("train", "repulsion_sigma"): (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("data", "val_images"): (lambda v: v >= 1, "a number of images >= 1"),
    ("model", "min_size"): (lambda v: 32 <= v <= 4096, "a size in pixels from 32 to 4096, or null"),
    ("model", "max_size"): (lambda v: 32 <= v <= 8192, "a size in pixels from 32 to 8192, or null"),
}


def _check_ranges(cfg: RunConfig) -> None:
    """Numbers of the right type but outside what training accepts (a negative lr, a NaN, size -5)."""
    for (section, key), (ok, accepted) in _RANGES.items():
        value = getattr(getattr(cfg, section), key)
        if value is None and section == "model":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not ok(value):
            raise ConfigError(f"{section}.{key}: {quote(value)} is not usable; expected {accepted}")
    aug = cfg.data.augment
    if not 0 <= aug.flip <= 1:
        raise ConfigError(f"data.augment.flip: {quote(aug.flip)} is not a probability in [0, 1]")
    if not 0 <= aug.color:
        raise ConfigError(f"data.augment.color: {quote(aug.color)} must be >= 0")
    if not 0 < aug.scale[0] <= aug.scale[1]:
        raise ConfigError(f"data.augment.scale: {quote(list(aug.scale))} must be [low, high] with 0 < low <= high")


def _check_online(cfg: RunConfig) -> None:
    from hkd.models.presets import DEFAULT_TEACHER, get_preset

    online = cfg.online
    if cfg.teacher:
        raise ConfigError("online: the teacher is trained in this run, so `teacher:` (a trained teacher's "
                          "checkpoint) must not be set too; remove one of them")
    online.teacher_preset = online.teacher_preset or DEFAULT_TEACHER
    try:
        preset = get_preset(online.teacher_preset)
    except KeyError as exc:
        raise ConfigError(f"online.teacher_preset: {exc.args[0]}") from None
    if preset.family != get_preset(cfg.model.preset).family:
        raise ConfigError(f"online.teacher_preset {online.teacher_preset} is a {preset.family} detector and "
                          f"model.preset {cfg.model.preset} a {get_preset(cfg.model.preset).family} one: "
                          "distil within one family")
    if not 0 <= online.kd_after < cfg.train.steps:
        raise ConfigError(f"online.kd_after: {online.kd_after} must be between 0 and train.steps - 1 "
                          f"({cfg.train.steps - 1}): the student learns from the teacher from that step on")
    if online.lr_scale <= 0:
        raise ConfigError(f"online.lr_scale: expected a positive number, got {online.lr_scale}")


def _check_repulsion(cfg: RunConfig) -> None:
    from hkd.models.presets import get_preset

    if not cfg.train.repulsion:
        return
    if cfg.teacher or cfg.online is not None:
        raise ConfigError("train.repulsion is a term of `hkd train` (a detector trained alone); a distillation "
                          "run does not take it yet — remove train.repulsion or the teacher")
    if get_preset(cfg.model.preset).family != "two_stage":
        raise ConfigError(f"train.repulsion acts on a two-stage detector's box head; {cfg.model.preset} is a "
                          f"{get_preset(cfg.model.preset).family} detector — remove train.repulsion")


def _check_teacher_cache(cfg: RunConfig) -> None:
    t = cfg.train
    if t.teacher_cache is not None and (not isinstance(t.teacher_cache, str) or not t.teacher_cache):
        raise ConfigError(f"train.teacher_cache: expected the path of a folder (or null), got {quote(t.teacher_cache)}")
    if t.teacher_cache_dtype not in (None, "float16", "float32"):
        raise ConfigError(f"train.teacher_cache_dtype: {quote(t.teacher_cache_dtype)} is not one of float16, float32 "
                          "or null (the teacher's own precision)")
    if t.teacher_cache and not cfg.teacher:
        raise ConfigError("train.teacher_cache stores a frozen teacher checkpoint's outputs, but this run has "
                          + ("an online teacher, which learns at every step" if cfg.online is not None
                             else "no `teacher:`") + "; remove train.teacher_cache")


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_placement(t: TrainConfig) -> None:
    """``train.device``, ``amp``, ``channels_last`` and ``workers``: spelling, and what this machine has.

    torch is imported only to look for a GPU when one is asked for (``cuda``, or
    ``auto`` with ``fp16``), so validating a CPU config stays cheap.
    """
    from hkd.models.device import DeviceError, check_device_spec, cuda_problem

    try:
        kind, index = check_device_spec(t.device)
    except DeviceError as exc:
        raise ConfigError(f"train.device: {exc}") from None
    t.device = kind if index is None else f"{kind}:{index}"
    if kind == "cuda":
        problem = cuda_problem(index)
        if problem:
            raise ConfigError(f"train.device={t.device}: {problem}; use train.device=cpu (or auto) on this machine")
    if t.amp == "fp16":
        if kind == "cpu" or (kind == "auto" and cuda_problem() is not None):
            raise ConfigError(f"train.amp=fp16 needs a CUDA device (half-precision autocast with a gradient "
                              f"scaler), but train.device={t.device} runs on the CPU here; "
                              "use train.amp=bf16 or train.amp=off on the CPU")
    if t.channels_last is not None and not isinstance(t.channels_last, bool):
        raise ConfigError(f"train.channels_last: expected true, false or null (auto), got {quote(t.channels_last)}")
    cores = cpu_cores()
    if t.workers < 0 or t.workers > cores:
        raise ConfigError(f"train.workers: {t.workers} is not between 0 (load in the training process) and "
                          f"{cores} (the CPU cores of this machine)")
    if t.threads < 1:
        raise ConfigError(f"train.threads: expected at least 1, got {t.threads}")


# the keys that hold paths, as (section, key) or (key,)
PATH_KEYS = (("data", "train"), ("data", "val"), ("model", "init"), ("model", "init_backbone"),
             ("model", "backbone_weights"), ("teacher",), ("distill",), ("online", "init"),
             ("train", "teacher_cache"), ("distill", "aux", "checkpoint"))


def _resolve(path: Any, base_dir: Path) -> Any:
    if not isinstance(path, str) or not path:
        return path
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else (base_dir / expanded).resolve())


def resolve_paths(raw: dict, base_dir: Path) -> None:
    """Resolve the path keys of a raw config mapping against ``base_dir`` in place."""
    for key in PATH_KEYS:
        node = raw
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key[-1]), str):
            node[key[-1]] = _resolve(node[key[-1]], base_dir)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML/JSON run config; ``overrides`` like ``train.steps=50`` win over the file."""
    path = Path(path)
    try:
        raw = read_config_file(path)
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    # the file's own paths are relative to the file; the command line's to the working directory
    resolve_paths(raw, path.parent.resolve())
    cwd = Path.cwd()
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {quote(item)} must look like section.key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {quote(item)}: {quote(part)} is not a section")
            node = child
        try:
            node[parts[-1]] = parse_value(value, f"override {key}")
        except ConfigFileError as exc:
            raise ConfigError(str(exc)) from None
        if tuple(parts) in PATH_KEYS and isinstance(node[parts[-1]], str):
            node[parts[-1]] = _resolve(node[parts[-1]], cwd)
    return config_from_dict(raw, source=str(path))
