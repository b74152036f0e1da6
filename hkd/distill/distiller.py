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

**Online distillation** (``online=True``): the teacher is not a trained, frozen
checkpoint but learns in the same step. It runs its own training forward on the
shared batch (its own proposals and losses, returned as ``teacher/det/…``); the
student's KD terms read the teacher's tensors *detached*, and its ROI head is
evaluated without grad on the student's sampled proposals as above, so the
teacher learns only from its own losses and the student only from the teacher's
outputs. KD starts at step ``kd_after`` (the teacher's warm-up); the config's
schedule counts its steps from there.

**Teacher cache** (``teacher_cache=``, :mod:`hkd.distill.teacher_cache`): a frozen
teacher's image-level outputs (everything but the ROI head) for a batch seen before
are read from disk instead of computed: sweeps of configs over one seed see the same
batches. The losses are those of the uncached step.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Iterator, Mapping, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import permute_and_flatten

from hkd.distill.adapters import adapter_key, build_adapters
from hkd.distill.config import ConfigError, DistillConfig, LossTerm, load_config
from hkd.distill.losses import LOSSES, level_role
from hkd.distill.losses.roi import class_deltas
from hkd.distill.step_inputs import StepInputs
from hkd.distill.teacher_cache import TeacherCache
from hkd.models.hierarchy import HierarchySpec
from hkd.models.taps import Tap

_StepInputs = StepInputs  # its name before it had a module of its own (tests patch it here)

# inputs the distiller provides, by level role
PROVIDES: dict[str, set[str]] = {
    "feature": {"gt_boxes", "cell_anchors", "stride"},
    "anchor_deltas": {"target", "num_samples"},
    "box_deltas": {"target", "num_samples"},
    # the rows' ground truth, for the soft-target losses' trust in the teacher (only when a term's
    # params need it: LossSpec.inputs_for); dense heads take it from the student's anchor matcher
    "objectness": {"row_labels", "row_iou"},
    "class_logits": {"row_labels", "row_iou"},
    "dense_logits": {"row_labels", "row_iou"},
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


def check_wiring(config: DistillConfig, teacher_spec: HierarchySpec, student_spec: HierarchySpec, *,
                 student: nn.Module | None = None) -> None:
    """Check that every term's loss can be called with what the distiller provides for its level.

    ``student`` (the model), when given, is checked for what some inputs are computed
    with: per-anchor ``row_labels`` of a dense head come from its ``proposal_matcher``.

    Raises:
        ConfigError: a loss needs an input the level's role does not provide (or the
            student cannot provide), or its signature does not accept the configured params.
    """
    for term in config.terms:
        spec = LOSSES[term.loss]
        role = level_role(student_spec[term.level])
        if role != level_role(teacher_spec[term.level]) or role not in spec.roles:
            raise ConfigError(f"{term.key}: loss {term.loss!r} does not apply to the level's role {role!r}")
        try:
            needed = spec.inputs_for(term.params)
        except ValueError as exc:
            raise ConfigError(f"{term.key}: {exc}") from None
        missing = set(needed) - PROVIDES.get(role, set())
        if missing:
            raise ConfigError(f"{term.key}: loss {term.loss!r} needs {sorted(missing)}, which the distiller does "
                              f"not provide for {role} levels (it provides {sorted(PROVIDES.get(role, ()))})")
        try:
            inspect.signature(spec.fn).bind(None, None, **{name: None for name in spec.inputs}, **term.params)
        except TypeError as exc:
            raise ConfigError(f"{term.key}: params {term.params} do not fit {spec.fn.__name__}(): {exc}; "
                              f"params: {', '.join(spec.params) or 'none'}") from None
        if (role == "dense_logits" and "row_labels" in needed and student is not None
                and getattr(student, "proposal_matcher", None) is None):
            raise ConfigError(f"{term.key}: params {term.params} need each anchor's ground-truth label, which the "
                              f"distiller takes from the student's anchor matcher (proposal_matcher, as RetinaNet "
                              f"has); {type(student).__name__} has none (FCOS assigns anchors by centre sampling): "
                              "use trust: none")


class Distiller(nn.Module):
    """Teacher → student hierarchical distillation around two torchvision detectors.

    Args:
        teacher: the teacher detector; put in eval mode and frozen (``requires_grad_(False)``).
        teacher_spec: its hierarchy spec.
        student: the student detector (trained).
        student_spec: its hierarchy spec.
        config: a :class:`DistillConfig` (resolved here against the two specs).
        online: the teacher learns in the same step (see the module docstring); otherwise it
            is frozen in eval mode.
        kd_after: with ``online``, the first step of the KD terms (the teacher's warm-up).
        teacher_cache: a :class:`~hkd.distill.teacher_cache.TeacherCache`: a frozen teacher's
            image-level outputs (backbone, FPN, RPN / dense head) are read from it when a batch
            was seen before, else computed in full and stored; only the ROI head runs on the
            student's proposals. Same losses as without it (bit-exact in the default dtype).

    Attributes:
        teacher, student, adapters (``nn.ModuleDict`` keyed ``neck_p3`` …), config (resolved),
        teacher_spec, student_spec, family, online, kd_after, teacher_cache, aux_student /
        aux_teacher (the HSAKD heads of ``distill.aux``, :mod:`hkd.distill.aux`; else ``None``).

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
        *,
        online: bool = False,
        kd_after: int = 0,
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        super().__init__()
        if kd_after < 0 or (kd_after and not online):
            raise ConfigError(f"kd_after={kd_after}: a warm-up before KD is an option of online distillation "
                              "(online=True) and must be ≥ 0")
        self.online = bool(online)
        self.kd_after = int(kd_after)
        if teacher_cache is not None and self.online:
            raise ConfigError("teacher_cache: an online teacher learns at every step, so its outputs for a batch "
                              "are never the same twice; the cache is for a frozen teacher checkpoint")
        self.teacher_cache = teacher_cache
        self.family = detector_family(student)
        if detector_family(teacher) != self.family:
            raise ConfigError(f"teacher is {detector_family(teacher)} and student {self.family}: "
                              "distill between detectors of one family")
        from hkd.distill.pairs import check_pair  # heads compared row by row: same anchors, levels, classes

        check_pair(teacher, student)
        check_transforms(teacher, student)
        self.config = config.resolve(teacher_spec, student_spec)
        check_wiring(self.config, teacher_spec, student_spec, student=student)
        self.teacher_spec = teacher_spec
        self.student_spec = student_spec
        self.teacher = teacher.requires_grad_(True) if self.online else teacher.eval().requires_grad_(False)
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
        # self-supervised augmented distillation (distill.aux, hkd.distill.aux): heads that train with
        # the student but are not part of it; none at all (no crops, no random draws) without the key
        self.aux_student: nn.Module | None = None
        self.aux_teacher: nn.Module | None = None
        if self.config.aux is not None:
            from dataclasses import replace

            from hkd.distill.aux import build_aux_pair

            if self.online:
                raise ConfigError("distill.aux: the teacher's aux heads were fitted on a frozen teacher; "
                                  "online distillation (a teacher that learns) cannot use them")
            aux_config, aux_teacher, aux_student = build_aux_pair(self.config.aux, teacher, teacher_spec,
                                                                  student_spec)
            self.config = replace(self.config, aux=aux_config)
            t_first = next(teacher.parameters(), None)
            self.aux_teacher = aux_teacher.to(device=t_first.device) if t_first is not None else aux_teacher
            self.aux_student = aux_student.to(device=first.device) if first is not None else aux_student

    # -- construction ------------------------------------------------------
    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        teacher_spec: HierarchySpec,
        student: nn.Module,
        student_spec: HierarchySpec,
        config: DistillConfig | Mapping[str, Any] | str | Any,
        **options: Any,
    ) -> "Distiller":
        """Like the constructor, with ``config`` as a :class:`DistillConfig`, plain data or a YAML/JSON path
        (``options``: ``online``, ``kd_after``, ``teacher_cache``)."""
        return cls(teacher, teacher_spec, student, student_spec, load_config(config), **options)

    # -- modes and parameters ---------------------------------------------
    def train(self, mode: bool = True) -> "Distiller":
        """Set the student and adapters to ``mode``; the teacher stays in eval mode (unless ``online``)."""
        super().train(mode)
        if not self.online:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and adapter parameters that require grad (the teacher's too, when ``online``)."""
        for group in self.parameter_groups().values():
            yield from group

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by model: ``student`` (student and adapters) and, when ``online``,
        ``teacher`` (for its own learning rate and gradient clipping)."""
        groups = {"student": [p for m in self.student_modules() for p in m.parameters() if p.requires_grad]}
        if self.online:
            groups["teacher"] = [p for p in self.teacher.parameters() if p.requires_grad]
        return groups

    def student_modules(self) -> list[nn.Module]:
        """The modules trained for the student: the student, the adapters and the student's aux heads."""
        aux = [self.aux_student] if getattr(self, "aux_student", None) is not None else []
        return [self.student, self.adapters, *aux]

    def active_terms(self, step: int) -> list[LossTerm]:
        """The config's terms at ``step`` (online: none before ``kd_after``, the schedule counted from there)."""
        if step < self.kd_after:
            return []
        return self.config.active_terms(step - self.kd_after)

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
            ``{"det/…": …, "kd/<level>/<loss>": …}`` scalars, already weighted (with ``distill.aux``
            also ``aux/<level>/kl`` and ``aux/<level>/ce``).
        """
        if not self.student.training:
            raise RuntimeError("Distiller.forward computes training losses: call distiller.train() first "
                               "(the teacher stays in eval mode)")
        terms = self.active_terms(step)
        batch, batch_targets = self.student.transform(images, targets)
        _check_boxes(batch_targets)
        if self.family == "two_stage":
            out = self._two_stage(batch, batch_targets, terms)
        else:
            out = self._single_stage(batch, batch_targets, terms)
        if self.aux_student is not None:  # after the detection step: its random draws are a no-aux run's
            out.update(self._aux_losses(images, targets, batch, step))
        return out

    def _aux_losses(self, images: list[Tensor], targets: list[dict[str, Tensor]], batch: ImageList,
                    step: int) -> dict[str, Tensor]:
        """``aux/<level>/kl`` and ``aux/<level>/ce`` (weighted) of the aux levels active at ``step``.

        The crops are cut from the input ``images`` with the untransformed ``targets``
        (:func:`hkd.distill.aux.sample_crops`), from a generator seeded by one draw of the
        global RNG; both backbones (+ FPN) see the same normalised crops, the teacher's
        without grad. Heads and losses run in float32 (autocast off), as the KD terms do.
        """
        from hkd.distill.aux import aux_ce, aux_kl, level_features, model_inputs, sample_crops

        aux = self.config.aux
        active = set(self.config.hierarchies_at(step))
        levels = [name for name in aux.levels if name.split(".", 1)[0] in active]
        if not levels:
            return {}
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        crops, labels = sample_crops(images, [t["boxes"] for t in targets], crop=self.aux_teacher.crop,
                                     count=aux.boxes, generator=generator)
        device = batch.tensors.device
        if not len(labels):  # no region in any image (all empty): nothing to learn this step
            return {f"aux/{name}/{kind}": torch.zeros((), device=device) for name in levels for kind in ("kl", "ce")}
        s_features = level_features(self.student, self.student_spec, levels, model_inputs(self.student, crops))
        with torch.no_grad():
            t_features = level_features(self.teacher, self.teacher_spec, levels, model_inputs(self.teacher, crops))
        with torch.autocast(device.type, enabled=False):
            s_logits = self.aux_student({name: value.float() for name, value in s_features.items()})
            with torch.no_grad():
                t_logits = self.aux_teacher({name: value.float() for name, value in t_features.items()})
            t_logits = {name: value.to(device) for name, value in t_logits.items()}
            labels = labels.to(device)
            out = {}
            for name in levels:
                out[f"aux/{name}/kl"] = aux.weight_kl * aux_kl(s_logits[name], t_logits[name],
                                                               temperature=aux.temperature)
                out[f"aux/{name}/ce"] = aux.weight_ce * aux_ce(s_logits[name], labels)
        return out

    def _two_stage(self, batch: ImageList, targets: list[dict[str, Tensor]], terms: list[LossTerm]) -> dict[str, Tensor]:
        student, teacher = self.student, self.teacher
        levels = list(dict.fromkeys(term.level for term in terms))
        with Tap(student, self.student_spec, levels) as s_tap:
            own = two_stage_training(student, batch, targets)
        out = dict(own.losses)
        hierarchies = {term.hierarchy for term in terms}
        roi_head_levels = {"roi.embedding", "roi.logits", "roi.deltas"} & set(levels)
        roi_levels = [name for name in levels if name.startswith("roi.")]
        if self.online:
            # the teacher's own training forward on the shared batch: its losses train it; the
            # KD terms read its tensors detached (the tap stores them so)
            image_levels = [name for name in levels if name not in roi_levels]
            with Tap(teacher, self.teacher_spec, image_levels, detach=True) as own_tap:
                t_own = two_stage_training(teacher, batch, targets)
            out.update({f"teacher/{key}": value for key, value in t_own.losses.items()})
            if not terms:
                return out
            t_features = OrderedDict((name, value.detach()) for name, value in t_own.features.items())
            with torch.no_grad(), Tap(teacher, self.teacher_spec, roi_levels) as roi_tap:
                self._teacher_regions(t_features, own.proposals, batch, hierarchies, roi_head_levels)
            t_tap = _Levels({name: (roi_tap if name in roi_levels else own_tap)[name] for name in levels})
        elif not terms:
            return out
        else:
            cache = self.teacher_cache
            with torch.no_grad(), Tap(teacher, self.teacher_spec, levels if cache is None else roi_levels) as t_tap:
                if cache is None:
                    t_features = teacher.backbone(batch.tensors)
                    if "rpn" in hierarchies:
                        teacher.rpn.head(list(t_features.values()))
                else:  # every image-level output from the cache (computed in full and stored on a miss)
                    cached = cache.image_outputs(teacher, self.teacher_spec, batch)
                    t_features = cached.features
                self._teacher_regions(t_features, own.proposals, batch, hierarchies, roi_head_levels)
            if cache is not None:
                t_tap = _Levels({name: (t_tap if name in roi_levels else cached.levels)[name] for name in levels})

        context = StepInputs(batch, targets, list(own.features.values()), student.rpn.anchor_generator,
                             student.rpn, torch.cat(own.labels), torch.cat(own.regression_targets),
                             proposals=own.proposals)
        for term in terms:
            out[term.key] = term.weight * self._term_loss(term, s_tap[term.level], t_tap[term.level], context)
        return out

    def _teacher_regions(self, t_features: Mapping[str, Tensor], proposals: list[Tensor], batch: ImageList,
                         hierarchies: set[str], roi_head_levels: set[str]) -> None:
        """The teacher's box RoI pool (and box head + predictor, if a term reads them) on the student's
        sampled proposals, in the shared batch's coordinates; the caller's tap captures the levels."""
        if "roi" not in hierarchies:
            return
        roi_heads = self.teacher.roi_heads
        regions = roi_heads.box_roi_pool(t_features, proposals, batch.image_sizes)
        if roi_head_levels:
            roi_heads.box_predictor(roi_heads.box_head(regions))

    def _single_stage(self, batch: ImageList, targets: list[dict[str, Tensor]], terms: list[LossTerm]) -> dict[str, Tensor]:
        student, teacher = self.student, self.teacher
        levels = list(dict.fromkeys(term.level for term in terms))
        with Tap(student, self.student_spec, levels) as s_tap:
            features = list(student.backbone(batch.tensors).values())
            head_outputs = student.head(features)
        out = {f"det/{key}": value for key, value in _dense_losses(student, batch, targets, features, head_outputs).items()}
        if self.online:
            with Tap(teacher, self.teacher_spec, levels, detach=True) as t_tap:  # KD targets, detached
                t_features = list(teacher.backbone(batch.tensors).values())
                t_losses = _dense_losses(teacher, batch, targets, t_features, teacher.head(t_features))
            out.update({f"teacher/det/{key}": value for key, value in t_losses.items()})
            if not terms:
                return out
        elif not terms:
            return out
        elif self.teacher_cache is not None:  # every level of a dense detector is image-level
            t_tap = _Levels(self.teacher_cache.image_outputs(teacher, self.teacher_spec, batch).levels)
        else:
            with torch.no_grad(), Tap(teacher, self.teacher_spec, levels) as t_tap:
                t_features = list(teacher.backbone(batch.tensors).values())
                if "head" in {term.hierarchy for term in terms}:
                    teacher.head(t_features)
        context = StepInputs(batch, targets, features, student.anchor_generator,
                             matcher=getattr(student, "proposal_matcher", None))
        for term in terms:
            out[term.key] = term.weight * self._term_loss(term, s_tap[term.level], t_tap[term.level], context)
        return out

    def _term_loss(self, term: LossTerm, student: Any, teacher: Any, context: "StepInputs") -> Tensor:
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

    def _term_loss_fp32(self, term: LossTerm, student: Any, teacher: Any, context: "StepInputs") -> Tensor:
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
        needed = spec.inputs_for(term.params)
        truth = [name for name in ("row_labels", "row_iou") if name in needed]
        if truth:  # only for terms whose params use them (trust): other configs pay nothing
            inputs.update(context.row_truth(role, truth))
        return spec.fn(student, teacher, **{k: v for k, v in inputs.items() if k in needed}, **term.params)


class TwoStageTraining(NamedTuple):
    features: "OrderedDict[str, Tensor]"
    losses: dict[str, Tensor]  # det/loss_classifier, det/loss_box_reg, det/<RPN loss>
    proposals: list[Tensor]  # per image, the sampled proposals the box head saw
    labels: list[Tensor]
    regression_targets: list[Tensor]
    matched_idxs: list[Tensor]  # per image, each sampled proposal's GT box (index into targets' boxes)
    box_regression: Tensor  # (sum of proposals, num_classes * 4), the box head's deltas


def two_stage_training(model: nn.Module, batch: ImageList, targets: list[dict[str, Tensor]]) -> TwoStageTraining:
    """A Faster R-CNN's own training forward on a transformed batch: torchvision's ``RoIHeads``
    training path written out, so that the sampled proposals are known (the student's and an
    online teacher's step, and :mod:`hkd.train.repulsion`; a tap around the call captures the levels)."""
    features = model.backbone(batch.tensors)
    proposals, rpn_losses = model.rpn(batch, features, targets)
    proposals, matched_idxs, labels, regression_targets = model.roi_heads.select_training_samples(proposals, targets)
    regions = model.roi_heads.box_roi_pool(features, proposals, batch.image_sizes)
    class_logits, box_regression = model.roi_heads.box_predictor(model.roi_heads.box_head(regions))
    loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
    losses = {"det/loss_classifier": loss_classifier, "det/loss_box_reg": loss_box_reg,
              **{f"det/{key}": value for key, value in rpn_losses.items()}}
    return TwoStageTraining(features, losses, proposals, labels, regression_targets, matched_idxs, box_regression)


def _dense_losses(model: nn.Module, batch: ImageList, targets: list[dict[str, Tensor]], features: list[Tensor],
                  head_outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """A RetinaNet's / FCOS's own losses for its head outputs on a transformed batch."""
    anchors = model.anchor_generator(batch, features)
    if "num_anchors_per_level" in inspect.signature(model.compute_loss).parameters:  # FCOS
        return model.compute_loss(targets, head_outputs, anchors, [f.size(2) * f.size(3) for f in features])
    return model.compute_loss(targets, head_outputs, anchors)  # RetinaNet


class _Levels(dict):
    """Level tensors by name, read like a :class:`~hkd.models.taps.Tap` (``levels[name]``)."""


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
