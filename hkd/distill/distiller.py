"""The distiller: one aligned teacher/student training step with hierarchical KD losses.

    distiller = Distiller.build(teacher, teacher_spec, student, student_spec, "distill_full.yaml")
    distiller.train()                            # the teacher stays in eval mode
    losses = distiller(images, targets, step=step)
    sum(losses.values()).backward()              # optimizer over distiller.trainable_parameters()

An *aligned* step (Faster R-CNN):

1. ``student.transform`` runs once; both backbones see the same ``batch.tensors``.
2. Student: backbone → FPN → RPN (its own losses) → proposals sampled once by
   ``roi_heads.select_training_samples`` → box RoI pool → box head → predictor
   → ``fastrcnn_loss``: torchvision's ``RoIHeads`` training path, written out
   so that the sampled proposals are known.
3. Teacher (eval, ``no_grad``, frozen): backbone → FPN → RPN head on the same
   batch; its box RoI pool, box head and predictor on the *student's* sampled
   proposals, so region features and logits are compared on the same boxes.
4. Every level tensor comes from a :class:`~hkd.models.taps.Tap` around those
   calls; each active loss term gets the (adapted) student tensor and the
   teacher tensor, prepared by the level's role (see :mod:`hkd.distill.losses`).

The output is a flat dict of weighted scalars: ``det/<torchvision loss key>``
(``det/loss_classifier``, ``det/loss_box_reg``, ``det/loss_objectness``,
``det/loss_rpn_box_reg``) and ``kd/<level>/<loss>`` for the terms active at
``step``; the caller sums the values.

Single-stage detectors (torchvision RetinaNet / FCOS) take the same route:
shared batch, the student's own ``compute_loss`` for ``det/``, teacher head
outputs on the same anchors for ``head.cls_logits`` (``focal_kd``) and feature
losses on backbone / neck levels.

Training without KD is the student's own forward; :func:`detection_losses`
returns it with the same ``det/`` keys.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import permute_and_flatten

from hkd.distill.adapters import adapter_key, build_adapters
from hkd.distill.config import ConfigError, DistillConfig, LossTerm, load_config
from hkd.distill.losses import LOSSES, level_role
from hkd.distill.losses.roi import class_deltas
from hkd.models.hierarchy import HierarchySpec
from hkd.models.taps import Tap

# inputs the distiller provides, by level role
PROVIDES: dict[str, set[str]] = {
    "feature": {"gt_boxes", "cell_anchors", "stride"},
    "anchor_deltas": {"target", "num_samples"},
    "box_deltas": {"target", "num_samples"},
}
# transform attributes that must agree for teacher and student to share a batch. The
# sizes need not: the student's transform resizes the batch once and both models see
# its output, so a multi-scale student (several min_size values) still pairs with a
# teacher whose own transform has one.
_TRANSFORM_ATTRS = ("image_mean", "image_std", "size_divisible", "fixed_size")


def detector_family(model: nn.Module) -> str:
    """``"two_stage"`` (torchvision Faster R-CNN layout) or ``"single_stage"`` (RetinaNet / FCOS)."""
    if all(hasattr(model, a) for a in ("transform", "backbone", "rpn", "roi_heads")):
        return "two_stage"
    if all(hasattr(model, a) for a in ("transform", "backbone", "head", "anchor_generator", "compute_loss")):
        return "single_stage"
    raise ConfigError(f"{type(model).__name__} is neither a torchvision two-stage (transform, backbone, rpn, "
                      "roi_heads) nor single-stage (transform, backbone, head, anchor_generator) detector")


def detection_losses(student: nn.Module, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The student's own training forward (no KD) with ``det/`` keys, for baselines."""
    return {f"det/{key}": value for key, value in student(images, targets).items()}


def check_transforms(teacher: nn.Module, student: nn.Module) -> None:
    """Raise :class:`ConfigError` unless both models resize and normalise images identically."""
    diffs = []
    for attr in _TRANSFORM_ATTRS:
        t = getattr(teacher.transform, attr, None)
        s = getattr(student.transform, attr, None)
        if _plain(t) != _plain(s):
            diffs.append(f"{attr}: teacher {t!r}, student {s!r}")
    if diffs:
        raise ConfigError("teacher and student must see the same transformed batch, but their transforms differ: "
                          + "; ".join(diffs))


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_wiring(config: DistillConfig, teacher_spec: HierarchySpec, student_spec: HierarchySpec) -> None:
    """Check that every term's loss can be called with what the distiller provides for its level.

    Raises:
        ConfigError: a loss needs an input the level's role does not provide, or its
            signature does not accept the configured params.
    """
    for term in config.terms:
        spec = LOSSES[term.loss]
        role = level_role(student_spec[term.level])
        if role != level_role(teacher_spec[term.level]) or role not in spec.roles:
            raise ConfigError(f"{term.key}: loss {term.loss!r} does not apply to the level's role {role!r}")
        missing = set(spec.inputs) - PROVIDES.get(role, set())
        if missing:
            raise ConfigError(f"{term.key}: loss {term.loss!r} needs {sorted(missing)}, which the distiller does "
                              f"not provide for {role} levels (it provides {sorted(PROVIDES.get(role, ()))})")
        try:
            inspect.signature(spec.fn).bind(None, None, **{name: None for name in spec.inputs}, **term.params)
        except TypeError as exc:
            raise ConfigError(f"{term.key}: params {term.params} do not fit {spec.fn.__name__}(): {exc}; "
                              f"params: {', '.join(spec.params) or 'none'}") from None


class Distiller(nn.Module):
    """Teacher → student hierarchical distillation around two torchvision detectors.

    Args:
        teacher: the teacher detector; put in eval mode and frozen (``requires_grad_(False)``).
        teacher_spec: its hierarchy spec.
        student: the student detector (trained).
        student_spec: its hierarchy spec.
        config: a :class:`DistillConfig` (resolved here against the two specs).

    Attributes:
        teacher, student, adapters (``nn.ModuleDict`` keyed ``neck_p3`` …), config (resolved),
        teacher_spec, student_spec, family.

    Raises:
        ConfigError: at build time, for levels missing or not comparable, losses that do not
            apply, params a loss does not take, different transforms or detector families.
    """

    def __init__(
        self,
        teacher: nn.Module,
        teacher_spec: HierarchySpec,
        student: nn.Module,
        student_spec: HierarchySpec,
        config: DistillConfig,
    ) -> None:
        super().__init__()
        self.family = detector_family(student)
        if detector_family(teacher) != self.family:
            raise ConfigError(f"teacher is {detector_family(teacher)} and student {self.family}: "
                              "distill between detectors of one family")
        check_transforms(teacher, student)
        self.config = config.resolve(teacher_spec, student_spec)
        check_wiring(self.config, teacher_spec, student_spec)
        self.teacher_spec = teacher_spec
        self.student_spec = student_spec
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        first = next(student.parameters(), None)
        self.adapters = build_adapters(teacher_spec, student_spec, self.config.levels)
        if first is not None:
            self.adapters.to(device=first.device, dtype=first.dtype)
        if self.config.adapters.fit == "least_squares":
            for adapter in self.adapters.values():
                adapter.use_least_squares()
            if first is not None:
                self.adapters.to(device=first.device)

    # -- construction ------------------------------------------------------
    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        teacher_spec: HierarchySpec,
        student: nn.Module,
        student_spec: HierarchySpec,
        config: DistillConfig | Mapping[str, Any] | str | Any,
    ) -> "Distiller":
        """Like the constructor, with ``config`` as a :class:`DistillConfig`, plain data or a YAML/JSON path."""
        return cls(teacher, teacher_spec, student, student_spec, load_config(config))

    @classmethod
    def from_presets(
        cls,
        config: DistillConfig | Mapping[str, Any] | str | Any,
        *,
        teacher: str | None = None,
        student: str | None = None,
        pretrained_backbone: bool = False,
    ) -> "Distiller":
        """Fresh teacher and student from presets (default: the HKD pair); weights are the caller's business."""
        from hkd.models.presets import DEFAULT_STUDENT, DEFAULT_TEACHER, get_preset

        t_preset = get_preset(teacher or DEFAULT_TEACHER)
        s_preset = get_preset(student or DEFAULT_STUDENT)
        return cls.build(
            t_preset.build(pretrained_backbone=pretrained_backbone), t_preset.hierarchy,
            s_preset.build(pretrained_backbone=pretrained_backbone), s_preset.hierarchy, config,
        )

    # -- modes and parameters ---------------------------------------------
    def train(self, mode: bool = True) -> "Distiller":
        """Set the student and adapters to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and adapter parameters that require grad (never the teacher's)."""
        for module in (self.student, self.adapters):
            for param in module.parameters():
                if param.requires_grad:
                    yield param

    # -- the step ------------------------------------------------------------
    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]],
        step: int = 0,
    ) -> dict[str, Tensor]:
        """One aligned step.

        Args:
            images: list of (3, H, W) float tensors in [0, 1].
            targets: per image ``{"boxes": (G, 4) xyxy float, "labels": (G,) int64}``.
            step: training step, for the config's schedule.
        Returns:
            ``{"det/…": …, "kd/<level>/<loss>": …}`` scalars, already weighted.
        """
        if not self.student.training:
            raise RuntimeError("Distiller.forward computes training losses: call distiller.train() first "
                               "(the teacher stays in eval mode)")
        terms = self.config.active_terms(step)
        batch, targets = self.student.transform(images, targets)
        _check_boxes(targets)
        if self.family == "two_stage":
            return self._two_stage(batch, targets, terms)
        return self._single_stage(batch, targets, terms)

    def _two_stage(self, batch: ImageList, targets: list[dict[str, Tensor]], terms: list[LossTerm]) -> dict[str, Tensor]:
        student, teacher = self.student, self.teacher
        levels = list(dict.fromkeys(term.level for term in terms))
        with Tap(student, self.student_spec, levels) as s_tap:
            features = student.backbone(batch.tensors)
            proposals, rpn_losses = student.rpn(batch, features, targets)
            proposals, _, labels, regression_targets = student.roi_heads.select_training_samples(proposals, targets)
            regions = student.roi_heads.box_roi_pool(features, proposals, batch.image_sizes)
            embedding = student.roi_heads.box_head(regions)
            class_logits, box_regression = student.roi_heads.box_predictor(embedding)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        out = {
            "det/loss_classifier": loss_classifier,
            "det/loss_box_reg": loss_box_reg,
            **{f"det/{key}": value for key, value in rpn_losses.items()},
        }
        if not terms:
            return out

        hierarchies = {term.hierarchy for term in terms}
        roi_head_levels = {"roi.embedding", "roi.logits", "roi.deltas"} & set(levels)
        with torch.no_grad(), Tap(teacher, self.teacher_spec, levels) as t_tap:
            t_features = teacher.backbone(batch.tensors)
            if "rpn" in hierarchies:
                teacher.rpn.head(list(t_features.values()))
            if "roi" in hierarchies:
                # the student's sampled proposals, in the shared batch's coordinates
                t_regions = teacher.roi_heads.box_roi_pool(t_features, proposals, batch.image_sizes)
                if roi_head_levels:
                    teacher.roi_heads.box_predictor(teacher.roi_heads.box_head(t_regions))

        context = _StepInputs(batch, targets, list(features.values()), student.rpn.anchor_generator,
                              student.rpn, torch.cat(labels), torch.cat(regression_targets))
        for term in terms:
            out[term.key] = term.weight * self._term_loss(term, s_tap[term.level], t_tap[term.level], context)
        return out

    def _single_stage(self, batch: ImageList, targets: list[dict[str, Tensor]], terms: list[LossTerm]) -> dict[str, Tensor]:
        student, teacher = self.student, self.teacher
        levels = list(dict.fromkeys(term.level for term in terms))
        with Tap(student, self.student_spec, levels) as s_tap:
            features = list(student.backbone(batch.tensors).values())
            head_outputs = student.head(features)
        anchors = student.anchor_generator(batch, features)
        if "num_anchors_per_level" in inspect.signature(student.compute_loss).parameters:  # FCOS
            losses = student.compute_loss(targets, head_outputs, anchors, [f.size(2) * f.size(3) for f in features])
        else:  # RetinaNet
            losses = student.compute_loss(targets, head_outputs, anchors)
        out = {f"det/{key}": value for key, value in losses.items()}
        if not terms:
            return out
        with torch.no_grad(), Tap(teacher, self.teacher_spec, levels) as t_tap:
            t_features = list(teacher.backbone(batch.tensors).values())
            if "head" in {term.hierarchy for term in terms}:
                teacher.head(t_features)
        context = _StepInputs(batch, targets, features, student.anchor_generator)
        for term in terms:
            out[term.key] = term.weight * self._term_loss(term, s_tap[term.level], t_tap[term.level], context)
        return out

    def _term_loss(self, term: LossTerm, student: Any, teacher: Any, context: "_StepInputs") -> Tensor:
        """The term's loss in float32, also under mixed precision (``train.amp``).

        Half-precision level tensors are cast up and autocast is off here: a ridge
        least-squares adapter applied in bfloat16 (8-bit mantissa) loses part of its fit
        (tiny random pair, step 1 under ``amp: bf16``: P3 imitation loss 1.65 with the
        term in bfloat16, 1.46 in float32; 1.14 without amp), and the soft-target KL of
        two close distributions is a small difference of large terms.
        """
        student, teacher = _float32(student), _float32(teacher)
        with torch.autocast(context.batch.tensors.device.type, enabled=False):
            return self._term_loss_fp32(term, student, teacher, context)

    def _term_loss_fp32(self, term: LossTerm, student: Any, teacher: Any, context: "_StepInputs") -> Tensor:
        """Prepare the level's tensors for its role, then call the loss."""
        spec = LOSSES[term.loss]
        role = level_role(self.student_spec[term.level])
        inputs: dict[str, Any] = {}
        if role in ("feature", "regions", "embedding"):
            size = tuple(teacher.shape[-2:]) if teacher.dim() == 4 else None
            adapter = self.adapters[adapter_key(term.level)]
            fit = self.config.adapters
            if (fit.fit == "least_squares" and spec.adapt == "full" and adapter.learned and self.training
                    and term.level not in context.fitted):
                adapter.fit_least_squares(student.detach(), teacher, fit.momentum, fit.ridge)
                context.fitted.add(term.level)
            student = adapter(student, size, channels=spec.adapt == "full")
            if role == "feature" and spec.inputs:
                inputs = context.imitation_inputs(tuple(teacher.shape[-2:]))
        elif role == "objectness":
            student, teacher = _per_anchor(student, 1), _per_anchor(teacher, 1)
        elif role == "anchor_deltas":
            positive, target = context.rpn_targets()
            student, teacher = _per_anchor(student, 4)[positive], _per_anchor(teacher, 4)[positive]
            inputs = {"target": target[positive], "num_samples": context.rpn_samples()}
        elif role == "box_deltas":
            positive = context.roi_labels > 0
            labels = context.roi_labels[positive]
            student, teacher = class_deltas(student[positive], labels), class_deltas(teacher[positive], labels)
            inputs = {"target": context.roi_targets[positive], "num_samples": context.roi_labels.numel()}
        return spec.fn(student, teacher, **{k: v for k, v in inputs.items() if k in spec.inputs}, **term.params)


def _float32(value: Any) -> Any:
    """Half-precision tensors (or lists of them, e.g. per-level RPN maps) as float32; others unchanged."""
    if isinstance(value, Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


def _per_anchor(maps: list[Tensor], values: int) -> Tensor:
    """Per-level (N, A·values, H, W) RPN maps → (N·Σ H·W·A, values) in torchvision's anchor order."""
    flat = []
    for level in maps:
        n, channels, h, w = level.shape
        flat.append(permute_and_flatten(level, n, channels // values, values, h, w))
    return torch.cat(flat, dim=1).reshape(-1, values)


def _check_boxes(targets: list[dict[str, Tensor]]) -> None:
    for index, target in enumerate(targets):
        boxes = target["boxes"]
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            raise ValueError(f"target {index}: boxes need positive width and height, got {boxes[bad][0].tolist()}")


class _StepInputs:
    """What the losses need besides the level tensors, computed once per step on demand."""

    def __init__(self, batch: ImageList, targets: list[dict[str, Tensor]], student_features: list[Tensor],
                 anchor_generator: nn.Module, rpn: nn.Module | None = None,
                 roi_labels: Tensor | None = None, roi_targets: Tensor | None = None) -> None:
        self.batch = batch
        self.targets = targets
        self.student_features = student_features
        self.anchor_generator = anchor_generator
        self.rpn = rpn
        self.roi_labels = roi_labels
        self.roi_targets = roi_targets
        self._rpn_targets: tuple[Tensor, Tensor] | None = None
        self.fitted: set[str] = set()  # levels whose least-squares adapter was updated this step

    def imitation_inputs(self, size: tuple[int, int]) -> dict[str, Any]:
        """GT boxes, stride and the cell anchors of the anchor level whose stride is closest to the map's."""
        height, width = self.batch.tensors.shape[-2:]
        stride = (height // size[0], width // size[1])
        anchor_strides = [height // f.shape[-2] for f in self.student_features]
        nearest = min(range(len(anchor_strides)), key=lambda i: abs(math.log2(anchor_strides[i] / stride[0])))
        cell = self.anchor_generator.cell_anchors[nearest].to(self.batch.tensors.device)
        return {"gt_boxes": [t["boxes"] for t in self.targets], "cell_anchors": cell, "stride": stride}

    def rpn_samples(self) -> int:
        """Anchors torchvision's RPN samples for its losses in this batch (its box-loss normaliser)."""
        return self.rpn.fg_bg_sampler.batch_size_per_image * len(self.targets)

    def rpn_targets(self) -> tuple[Tensor, Tensor]:
        """(positive mask (M,), regression targets (M, 4)) over all anchors of the batch."""
        if self._rpn_targets is None:
            anchors = self.anchor_generator(self.batch, self.student_features)
            labels, matched = self.rpn.assign_targets_to_anchors(anchors, self.targets)
            encoded = self.rpn.box_coder.encode(matched, anchors)
            self._rpn_targets = (torch.cat(labels) == 1, torch.cat(encoded))
        return self._rpn_targets
