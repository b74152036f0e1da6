"""Self-supervised augmented distillation at every hierarchy (HSAKD, Yang et al. 2021/2022).

An auxiliary head on an intermediate feature level learns a *joint* distribution over
(class × self-supervised transform): region crops of the training images — ground-truth
pedestrians (class 1) and background squares (class 0) — each in 4 rotations
(0°/90°/180°/270°), joint label ``class · 4 + rotation``. The teacher's heads are fitted
first, on the frozen teacher (:func:`hkd.train.aux_heads.train_teacher_aux`, ``hkd train-aux``); during
distillation the student's heads match the teacher's joint distributions level by level
(KL with temperature) and learn the joint label (CE), and their gradients reach the
student's backbone and FPN. The detection losses are not touched: the crops run through
``model.backbone`` apart from the detection step.

    from hkd.train.aux_heads import train_teacher_aux                # the training loop: the train wing
    fitted = train_teacher_aux(teacher, spec, dataset, steps=200)   # .heads, .metrics, .probe
    save_aux_heads("teacher_aux.safetensors", fitted.heads, AuxMeta(...), fitted.probe)
    loaded = load_aux_heads("teacher_aux.safetensors")      # heads, meta, probe

Crops (:func:`sample_crops`) are cut from the *input images* (float [0, 1], before the
detector transform, in the targets' pixel coordinates) with ``roi_align`` (bilinear,
2×2 samples per output pixel), so they do not depend on the transform's (multi-scale)
resize; they are normalised with the model's own ``transform.normalize``. Every crop is a
square: a ground-truth box becomes the square of side max(w, h) around its centre
(moved inside the image where it fits), so that a rotation keeps the crop's shape and
the person is not squashed; a background square has a side log-uniform in
[short side / 16, short side / 2] and an IoU below :data:`BACKGROUND_IOU` with the
square of every ground-truth (and ignore) box. Per image at most ``boxes`` ground-truth
boxes (a random subset) and ``boxes`` background squares are used.

A head (:class:`AuxHeads`) is 1×1 conv C→hidden, ReLU, average pool to a ``grid``×``grid``
layout (2×2: where things are, which is what a rotation changes), linear
hidden·grid²→hidden, ReLU, linear → 8 logits.

The checkpoint of the teacher's heads is safetensors with JSON metadata
(:class:`AuxMeta`, ``kind="aux_heads"``): the teacher checkpoint it belongs to (file
name, sha256, preset, step), the levels and their channels, the crop size, the
transforms, the head architecture, how it was trained and its accuracy. It also holds
the teacher's pooled features on a fixed probe image (``probe/<level>``), by which the
distiller recognises heads made for another teacher (:func:`check_probe`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, roi_align

import hkd
from hkd.distill.adapters import adapter_key
from hkd.distill.config import AuxConfig, ConfigError, feature_levels
from hkd.models.hierarchy import HierarchySpec
from hkd.models.meta import (
    META_KEY,
    CheckpointError,
    existing,
    read_safetensors_header,
    read_safetensors_tensors,
    write_safetensors,
)
from hkd.models.taps import Tap

FORMAT = "hkd-aux-heads/1"
KIND = "aux_heads"
CLASSES = ("background", "pedestrian")
ROTATIONS = (0, 90, 180, 270)
TRANSFORMS = tuple(f"rot{angle}" for angle in ROTATIONS)
NUM_JOINT = len(CLASSES) * len(ROTATIONS)
# a background square overlaps the square of every ground-truth / ignore box by less than this
BACKGROUND_IOU = 0.1
# background candidates drawn per wanted background square (the rest fall on people)
_CANDIDATES = 16
# the levels `hkd train-aux` fits by default (those the teacher has)
DEFAULT_LEVELS = ("backbone.c3", "backbone.c4", "backbone.c5", "neck.p3", "neck.p4", "neck.p5")
PROBE_SEED = 17
PROBE_PREFIX = "probe/"
# relative L2 difference of the probe features above which a teacher is "another teacher"
# (a bf16 or BN-folded copy of the same weights differs by ≤ 3% on the tiny random teacher; another init by ~100%)
PROBE_TOLERANCE = 0.15


# ---------------------------------------------------------------------------
# levels
# ---------------------------------------------------------------------------
def default_levels(spec: HierarchySpec) -> list[str]:
    """:data:`DEFAULT_LEVELS` that ``spec`` has, else all its feature levels."""
    names = [name for name in DEFAULT_LEVELS if name in feature_levels(spec)]
    return names or feature_levels(spec)


def check_levels(spec: HierarchySpec, levels: Iterable[str], *, what: str = "levels", model: str = "teacher") -> list[str]:
    """``levels`` as a list; raises :class:`ConfigError` for one that is not a feature level of ``spec``."""
    levels = list(dict.fromkeys(levels))
    choices = feature_levels(spec)
    if not levels:
        raise ConfigError(f"{what}: no level given; feature levels of the {model}: {', '.join(choices)}")
    for name in levels:
        if name not in choices:
            raise ConfigError(f"{what}: {name!r} is not a feature level of the {model}; "
                              f"feature levels: {', '.join(choices)}")
    return levels


# ---------------------------------------------------------------------------
# the heads
# ---------------------------------------------------------------------------
class AuxHeads(nn.Module):
    """One auxiliary classifier per feature level: 8 joint (class × rotation) logits.

    Args:
        spec: the model's hierarchy spec, or ``{level: channels}``.
        levels: the levels to put a head on (feature levels, ``(N, C, H, W)``).
        hidden: width of the head.
        grid: the map is average-pooled to ``grid``×``grid`` before the MLP.
        seed: initialise the weights from this seed without touching the global RNG
            (``None``: from the global RNG, as ``nn.Module`` constructors do).

    ``heads(features)`` maps ``{level: (N, C, H, W)}`` to ``{level: (N, 8)}``.
    """

    def __init__(self, spec: HierarchySpec | Mapping[str, int], levels: Sequence[str], *, hidden: int = 128,
                 grid: int = 2, seed: int | None = None) -> None:
        super().__init__()
        if isinstance(spec, HierarchySpec):
            channels = {name: spec[name].channels for name in levels}
        else:
            channels = {name: int(spec[name]) for name in levels}
        self.levels = list(levels)
        self.channels = channels
        self.hidden, self.grid = int(hidden), int(grid)
        self.crop: int | None = None  # crop side the heads were fitted at (set from their checkpoint)
        self._frozen = False
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            self.heads = nn.ModuleDict({adapter_key(name): self._head(channels[name]) for name in self.levels})

    def _head(self, channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, self.hidden, 1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(self.grid), nn.Flatten(),
            nn.Linear(self.hidden * self.grid * self.grid, self.hidden), nn.ReLU(inplace=True),
            nn.Linear(self.hidden, NUM_JOINT),
        )

    @property
    def arch(self) -> dict:
        """The head architecture, as the checkpoint records it."""
        return {"hidden": self.hidden, "grid": self.grid, "outputs": NUM_JOINT,
                "layers": "conv1x1-relu-avgpool(grid)-linear-relu-linear"}

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.heads[adapter_key(name)](features[name]) for name in self.levels if name in features}

    def freeze(self) -> "AuxHeads":
        """Eval mode for good (``train()`` leaves it in eval) and no gradients: a teacher's heads."""
        self._frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "AuxHeads":
        return super().train(False if self._frozen else mode)


# ---------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------
def _squares(boxes: Tensor, width: int, height: int) -> Tensor:
    """(K, 4) xyxy boxes → squares of side max(w, h) around their centres, moved inside the image where they fit."""
    if boxes.numel() == 0:
        return boxes.reshape(0, 4)
    side = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1).clamp(min=4.0)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    limit = torch.tensor([width, height], dtype=boxes.dtype)
    low = centre - side[:, None] / 2
    # inside the image where the square fits, centred on the image where it does not
    room = limit - side[:, None]
    low = torch.where(room >= 0, low.clamp(min=0).minimum(room.clamp(min=0)), room / 2)
    return torch.cat([low, low + side[:, None]], dim=1)


def sample_regions(boxes: Tensor, width: int, height: int, *, count: int, generator: torch.Generator,
                   ignore: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Square regions of one image and their classes (1: pedestrian, 0: background).

    Args:
        boxes: (G, 4) xyxy ground-truth pedestrian boxes (CPU).
        width, height: the image size in pixels.
        count: at most ``count`` ground-truth boxes (a random subset) and ``count`` background squares.
        generator: a CPU generator; the draws depend only on it and the inputs.
        ignore: (I, 4) boxes that are neither (background squares avoid them too).
    Returns:
        ``(squares (K, 4) xyxy float32, classes (K,) int64)``, ground truth first.
    """
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    if boxes.shape[0] > count:
        boxes = boxes[torch.randperm(boxes.shape[0], generator=generator)[:count].sort().values]
    positives = _squares(boxes, width, height)
    avoid = positives
    if ignore is not None and ignore.numel():
        avoid = torch.cat([positives, _squares(ignore.detach().float().cpu().reshape(-1, 4), width, height)])
    short = float(min(width, height))
    n = count * _CANDIDATES
    lo, hi = math.log(max(4.0, short / 16)), math.log(max(4.0, short / 2))
    side = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))
    x0 = torch.rand(n, generator=generator) * (width - side).clamp(min=0)
    y0 = torch.rand(n, generator=generator) * (height - side).clamp(min=0)
    candidates = torch.stack([x0, y0, x0 + side, y0 + side], dim=1)
    if avoid.shape[0]:
        candidates = candidates[box_iou(candidates, avoid).amax(dim=1) < BACKGROUND_IOU]
    negatives = candidates[:count]
    squares = torch.cat([positives, negatives])
    classes = torch.cat([torch.ones(len(positives), dtype=torch.int64), torch.zeros(len(negatives), dtype=torch.int64)])
    return squares, classes


def sample_crops(images: Sequence[Tensor], boxes: Sequence[Tensor], *, crop: int, count: int,
                 generator: torch.Generator, ignore: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
    """Rotated square crops of the images and their joint labels.

    Args:
        images: per image (3, H, W) float in [0, 1] (any device).
        boxes: per image (G, 4) xyxy ground-truth boxes in that image's pixels.
        crop: side of the crops in pixels.
        count: ground-truth boxes and background squares per image (see :func:`sample_regions`).
        generator: CPU generator of the draws.
        ignore: per image, boxes to keep background squares away from.
    Returns:
        ``(crops (4K, 3, crop, crop) in [0, 1] on the images' device, labels (4K,) int64)`` with
        ``label = class · 4 + k`` for ``k`` quarter turns; the K crops come in rotation 0, then 90, …
    """
    crops, classes = [], []
    for index, image in enumerate(images):
        squares, cls = sample_regions(boxes[index], image.shape[-1], image.shape[-2], count=count,
                                      generator=generator, ignore=None if ignore is None else ignore[index])
        if len(squares):
            crops.append(roi_align(image[None].float(), [squares.to(image.device)], output_size=(crop, crop),
                                   spatial_scale=1.0, sampling_ratio=2, aligned=True))
            classes.append(cls)
    device = images[0].device if len(images) else torch.device("cpu")
    if not crops:
        return torch.zeros(0, 3, crop, crop, device=device), torch.zeros(0, dtype=torch.int64, device=device)
    crops_t, cls_t = torch.cat(crops), torch.cat(classes).to(device)
    rotated = torch.cat([torch.rot90(crops_t, k, dims=(-2, -1)) for k in range(len(ROTATIONS))])
    labels = torch.cat([cls_t * len(ROTATIONS) + k for k in range(len(ROTATIONS))])
    return rotated, labels


def level_features(model: nn.Module, spec: HierarchySpec, levels: Sequence[str], inputs: Tensor) -> dict[str, Tensor]:
    """``{level: tensor}`` of ``model.backbone(inputs)`` (backbone + FPN) through a :class:`Tap`.

    ``inputs``: (N, 3, S, S), already normalised (``model.transform.normalize``).
    """
    with Tap(model, spec, levels) as tap:
        model.backbone(inputs)
    return {name: tap[name] for name in levels}


def model_inputs(model: nn.Module, crops: Tensor) -> Tensor:
    """Crops normalised by ``model``'s transform, on its device and in its dtype."""
    param = next(model.parameters())
    return model.transform.normalize(crops.to(device=param.device, dtype=torch.float32)).to(param.dtype)


# ---------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------
def aux_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of (N, 8) joint logits with the (N,) joint labels."""
    return F.cross_entropy(logits, labels)


def aux_kl(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """``T² · KL(p_teacher ‖ p_student)`` of the (N, 8) joint distributions at temperature ``T``, mean over N.

    Exactly 0 for equal logits.
    """
    log_s = F.log_softmax(student / temperature, dim=1)
    log_t = F.log_softmax(teacher / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean() * temperature ** 2


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else 0.0


# ---------------------------------------------------------------------------
# the teacher's heads
# ---------------------------------------------------------------------------
def probe_inputs(crop: int) -> Tensor:
    """A fixed (2, 3, crop, crop) image batch in [0, 1] (its own generator: no global RNG drawn)."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    coarse = torch.rand(2, 3, 8, 8, generator=generator)
    return F.interpolate(coarse, size=(crop, crop), mode="bilinear", align_corners=False)


@torch.no_grad()
def teacher_probe(teacher: nn.Module, spec: HierarchySpec, levels: Sequence[str], crop: int) -> dict[str, Tensor]:
    """``{level: (2, C) float32}``: the teacher's spatially averaged features on :func:`probe_inputs`."""
    features = level_features(teacher, spec, levels, model_inputs(teacher, probe_inputs(crop)))
    return {name: value.float().mean(dim=(-2, -1)).cpu() for name, value in features.items()}


def check_probe(teacher: nn.Module, spec: HierarchySpec, loaded: "LoadedAux", levels: Sequence[str]) -> None:
    """Raise :class:`ConfigError` if ``teacher`` is not the teacher ``loaded``'s heads were fitted on."""
    now = teacher_probe(teacher, spec, levels, loaded.meta.crop)
    for name in levels:
        then = loaded.probe.get(name)
        if then is None or then.shape != now[name].shape:
            raise ConfigError(f"distill.aux.checkpoint {loaded.path}: no probe features for {name!r} "
                              "(made by another version?); make it again with `hkd train-aux`")
        error = float((now[name] - then).norm() / then.norm().clamp(min=1e-12))
        if error > PROBE_TOLERANCE:
            t = loaded.meta.teacher
            raise ConfigError(
                f"distill.aux.checkpoint {loaded.path}: its heads were fitted on another teacher "
                f"({t.get('file')}, sha256 {str(t.get('sha256'))[:12]}…, step {t.get('step')}): on the probe image "
                f"this teacher's {name} features differ from that teacher's by {error:.0%}; fit heads for this "
                "teacher with `hkd train-aux --teacher <its checkpoint> --data <train set> --out <aux file>`")


# ---------------------------------------------------------------------------
# checkpoint
# ---------------------------------------------------------------------------
@dataclass
class AuxMeta:
    """Metadata of an aux-heads checkpoint (JSON in the safetensors header, key ``hkd``).

    Attributes:
        teacher: the teacher checkpoint the heads belong to: ``{"file", "sha256", "preset", "step"}``.
        levels: ``{level: channels}`` of the teacher, in order.
        crop: crop side in pixels; transforms, classes: what the 8 joint outputs mean
            (``class · 4 + rotation``).
        head: the head architecture (:attr:`AuxHeads.arch`).
        train: how it was fitted (steps, seed, boxes, batch size, lr, dataset).
        metrics: as :func:`hkd.train.aux_heads.train_teacher_aux` returns them (accuracy …).
    """

    teacher: dict
    levels: dict[str, int]
    crop: int
    head: dict
    transforms: list[str] = field(default_factory=lambda: list(TRANSFORMS))
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    train: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    library_version: str = hkd.__version__
    created: str = ""
    kind: str = KIND
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str) -> "AuxMeta":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{source}: HKD metadata is not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: HKD metadata is not a JSON object")
        if raw.get("kind") != KIND:
            if "preset" in raw:
                raise CheckpointError(f"{source}: a detector checkpoint ({raw['preset']}), not aux heads; "
                                      "make aux heads with `hkd train-aux`")
            raise CheckpointError(f"{source}: not an aux-heads checkpoint (kind {raw.get('kind')!r}, "
                                  f"expected {KIND!r})")
        missing = [k for k in ("teacher", "levels", "crop", "head") if k not in raw]
        if missing:
            raise CheckpointError(f"{source}: aux-heads metadata without {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass
class LoadedAux:
    heads: AuxHeads
    meta: AuxMeta
    probe: dict[str, Tensor]
    path: Path


def save_aux_heads(path: str | os.PathLike, heads: AuxHeads, meta: AuxMeta, probe: Mapping[str, Tensor]) -> Path:
    """Write the heads' weights, the probe features and ``meta`` to ``path`` (.safetensors) atomically."""
    if set(meta.levels) != set(heads.levels) or set(probe) != set(heads.levels):
        raise ValueError(f"meta levels {sorted(meta.levels)} and probe levels {sorted(probe)} must be the heads' "
                         f"{sorted(heads.levels)}")
    state = {key: value.detach().float().cpu().contiguous() for key, value in heads.state_dict().items()}
    state.update({PROBE_PREFIX + name: value.detach().float().cpu().contiguous() for name, value in probe.items()})
    meta.created = meta.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return write_safetensors(path, state, meta.to_json())


def read_aux_meta(path: str | os.PathLike) -> AuxMeta:
    """The :class:`AuxMeta` of an aux-heads checkpoint, from its header only."""
    path = existing(path)
    header = read_safetensors_header(path)
    if META_KEY not in header:
        raise CheckpointError(f"{path}: a safetensors file without HKD metadata, not an aux-heads checkpoint")
    return AuxMeta.from_json(header[META_KEY], source=str(path))


def load_aux_heads(path: str | os.PathLike) -> LoadedAux:
    """The heads (eval, CPU), metadata and probe features stored in ``path``.

    Raises:
        CheckpointError: a missing, truncated or foreign file, a detector checkpoint, or weights
            that do not fit the recorded architecture; the message names the file.
    """
    meta = read_aux_meta(path)
    path = Path(path)
    state = read_safetensors_tensors(path)
    probe = {key[len(PROBE_PREFIX):]: value for key, value in state.items() if key.startswith(PROBE_PREFIX)}
    weights = {key: value for key, value in state.items() if not key.startswith(PROBE_PREFIX)}
    try:
        heads = AuxHeads(meta.levels, list(meta.levels), hidden=meta.head.get("hidden", 128),
                         grid=meta.head.get("grid", 2), seed=0)
        heads.load_state_dict(weights, strict=True)
        heads.crop = int(meta.crop)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the recorded heads ({str(exc).splitlines()[0]})") from None
    return LoadedAux(heads.eval(), meta, probe, path)


# ---------------------------------------------------------------------------
# distiller wiring
# ---------------------------------------------------------------------------
def build_aux_pair(config: AuxConfig, teacher: nn.Module, teacher_spec: HierarchySpec,
                   student_spec: HierarchySpec) -> tuple[AuxConfig, AuxHeads, AuxHeads]:
    """(config with its levels resolved, the teacher's heads (frozen), the student's fresh heads).

    Raises:
        ConfigError: an unreadable checkpoint, a level without a teacher head in it or not a feature
            level of both models, heads made for another teacher (channels, probe features).
    """
    try:
        loaded = load_aux_heads(config.checkpoint)
    except CheckpointError as exc:
        raise ConfigError(f"distill.aux.checkpoint: {exc}") from None
    meta = loaded.meta
    stored = list(meta.levels)
    where = "distill.aux.levels" if config.levels is not None else \
        f"distill.aux (levels default to the checkpoint's: {', '.join(stored)})"
    levels = list(config.levels) if config.levels is not None else stored
    for name in levels:
        if name not in meta.levels:
            raise ConfigError(f"{where}: {name!r} has no teacher head in {loaded.path}; it has: {', '.join(stored)}")
    both = teacher_spec.shared_with(student_spec, kinds=("map",))  # feature levels of both
    for name in levels:
        if name not in both:
            raise ConfigError(f"{where}: {name!r} is not a feature level of both models; "
                              f"feature levels of both: {', '.join(both)}")
    for name in levels:
        if teacher_spec[name].channels != meta.levels[name]:
            raise ConfigError(f"distill.aux.checkpoint {loaded.path}: made for another teacher "
                              f"({meta.teacher.get('preset')}, {meta.teacher.get('file')}): its {name} head takes "
                              f"{meta.levels[name]} channels, this teacher's {name} has {teacher_spec[name].channels}")
    check_probe(teacher, teacher_spec, loaded, levels)
    teacher_heads = AuxHeads(meta.levels, levels, hidden=loaded.heads.hidden, grid=loaded.heads.grid, seed=0)
    teacher_heads.crop = int(meta.crop)
    teacher_heads.load_state_dict({k: v for k, v in loaded.heads.state_dict().items()
                                   if k.split(".")[1] in {adapter_key(n) for n in levels}})
    student_heads = AuxHeads(student_spec, levels, hidden=loaded.heads.hidden, grid=loaded.heads.grid, seed=0)
    resolved = AuxConfig(str(loaded.path), tuple(levels), config.weight_kl, config.weight_ce, config.temperature,
                         config.boxes)
    return resolved, teacher_heads.freeze(), student_heads

