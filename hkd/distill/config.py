"""The ``distill:`` section of a run config: plain data, validated on load.

Format (YAML without anchors or aliases (:mod:`hkd.configfile`), or JSON; see ``assets/configs/distill_full.yaml``)::

    distill:
      levels:
        backbone.c3: {loss: mse, weight: 1.0}
        neck.*: [{loss: masked_mse, weight: 1.0, psi: 0.5}, {loss: attention, weight: 50.0}]
        rpn.objectness: {loss: soft_bce, weight: 1.0, temperature: 1.0}
        rpn.deltas: {loss: bounded_l2, weight: 0.5, margin: 0.0}
        roi.features: mse                     # shorthand for {loss: mse, weight: 1.0}
        roi.logits: {loss: kd_kl, weight: 1.0, temperature: 2.0, bg_weight: 0.5}
        roi.deltas: {loss: bounded_l2, weight: 0.5}
      schedule:                               # optional; default: every hierarchy from step 0
        - {until_step: 500, hierarchies: [backbone, neck]}
        - {hierarchies: all}
      adapters: {fit: least_squares, momentum: 0.9, ridge: 0.001}   # optional; these are the defaults

``levels`` maps a level name — or a glob such as ``neck.*`` that expands to every
matching level both models have — to one loss term or a list of them. A term is
``{loss, weight (default 1.0), <params of that loss>}``; the params and their
defaults are those of the loss function (``hkd.distill.losses.LOSSES[name].params``).
An exact level key overrides what a glob gives that level. Params are numbers,
except those with a fixed set of choices (``trust``: ``none | label | confidence | iou``,
on the soft-target losses ``soft_bce``, ``kd_kl`` and ``focal_kd``, with
``wrong_weight``; see :mod:`hkd.distill.losses.trust`)::

        roi.logits: {loss: kd_kl, temperature: 2.0, bg_weight: 0.5, trust: label, wrong_weight: 0.0}

``schedule`` is a list of stages; a stage applies while ``step < until_step``, the
first matching stage wins, and the last stage has no ``until_step`` (it lasts to
the end). ``hierarchies`` is ``all`` or a list from ``backbone, neck, rpn, roi, head``;
terms on other hierarchies are inactive at that step (an empty list: no KD).

``adapters`` says how the 1×1 conv / linear adapters (student → teacher channels)
are fitted. ``least_squares`` (default): at every step each adapter is set to the
ridge least-squares map from the student's to the teacher's tensor, over running
second moments of the recent batches (``momentum``: their decay; ``ridge``: the
regulariser, relative to the mean variance of the student's channels); the student
then learns through the best linear read-out of its features. ``gradient``: the
adapters are trained by the optimiser with the student (FitNets' regressors).

``aux`` (optional) adds self-supervised augmented distillation (HSAKD) on feature levels,
with the teacher's auxiliary heads fitted beforehand by ``hkd train-aux`` (see
:mod:`hkd.distill.aux`)::

      aux: {checkpoint: ../checkpoints/teacher_aux.safetensors, levels: [backbone.c4, neck.p3],
            weight_kl: 1.0, weight_ce: 1.0, temperature: 1.0, boxes: 8}

``checkpoint`` (required; relative to the config file it is written in) holds the
teacher's heads; ``levels`` default to the checkpoint's (each must have a teacher head
there and be a feature level of both models); ``weight_kl`` weighs the KL between the
teacher's and the student's joint (class × rotation) distributions at ``temperature``,
``weight_ce`` the student heads' cross-entropy with the joint label; ``boxes``: background
squares per image (and at most as many ground-truth boxes). The terms show up as
``aux/<level>/kl`` and ``aux/<level>/ce`` and follow the schedule by their level's
hierarchy. The student's heads train with it but are not part of the saved student.

Validation happens in two steps: :func:`parse_config` checks the structure, loss
names, params and hierarchies without knowing the models; :meth:`DistillConfig.resolve`
expands the globs and checks each level against the teacher's and student's
hierarchy specs (it must be in both and comparable) and each loss against the
level's role. Every mistake raises :class:`ConfigError` naming the bad key and
the valid choices.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from hkd.configfile import ConfigFileError, quote, read_config_file

from hkd.distill.adapters import adapter_plan
from hkd.distill.losses import LOSSES, TRUST_MODES, level_role, losses_for
from hkd.models.hierarchy import HIERARCHIES, HierarchySpec

SECTION = "distill"
SECTION_KEYS = ("levels", "schedule", "adapters", "aux")
AUX_KEYS = ("checkpoint", "levels", "weight_kl", "weight_ce", "temperature", "boxes")
STAGE_KEYS = ("until_step", "hierarchies")
ADAPTER_KEYS = ("fit", "momentum", "ridge")
ADAPTER_FITS = ("least_squares", "gradient")
ALL = "all"

# Range checks of params shared by several losses (name -> (predicate, requirement)).
_PARAM_RULES = {
    "temperature": (lambda v: v > 0, "> 0"),
    "psi": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "margin": (lambda v: v >= 0, ">= 0"),
    "bg_weight": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: v >= 0, ">= 0"),
    "p": (lambda v: v > 0, "> 0"),
    "wrong_weight": (lambda v: v >= 0, ">= 0"),
}
# String-valued params: name -> the accepted values (any other param must be a number).
_PARAM_CHOICES = {
    "trust": TRUST_MODES,
}


class ConfigError(ValueError):
    """An invalid distillation config; the message names the key and the valid choices."""


@dataclass(frozen=True)
class LossTerm:
    """One weighted loss on one level.

    Attributes:
        level: level name (a glob before :meth:`DistillConfig.resolve`).
        loss: registry name.
        weight: multiplier of the loss value (≥ 0).
        params: the loss's params set in the config (others keep their defaults).
        source: the ``levels`` key it came from (differs from ``level`` for globs).
    """

    level: str
    loss: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)
    source: str = field(default="", compare=False)

    @property
    def hierarchy(self) -> str:
        return self.level.split(".", 1)[0]

    @property
    def key(self) -> str:
        """Key of this term in the distiller's output: ``kd/<level>/<loss>``."""
        return f"kd/{self.level}/{self.loss}"

    def to_dict(self) -> dict:
        return {"loss": self.loss, "weight": self.weight, **self.params}


@dataclass(frozen=True)
class Stage:
    """Hierarchies distilled while ``step < until_step`` (``None``: until the end)."""

    until_step: int | None
    hierarchies: tuple[str, ...]

    def to_dict(self) -> dict:
        out: dict[str, Any] = {} if self.until_step is None else {"until_step": self.until_step}
        out["hierarchies"] = ALL if set(self.hierarchies) == set(HIERARCHIES) else list(self.hierarchies)
        return out


@dataclass(frozen=True)
class AdapterFit:
    """How adapters are fitted (see the module docstring)."""

    fit: str = "least_squares"
    momentum: float = 0.9
    ridge: float = 1e-3

    def to_dict(self) -> dict:
        return {"fit": self.fit, "momentum": self.momentum, "ridge": self.ridge}


@dataclass(frozen=True)
class AuxConfig:
    """Self-supervised augmented distillation (the ``aux`` key; see the module docstring).

    Attributes:
        checkpoint: path of the teacher's aux heads (``hkd train-aux``).
        levels: feature levels; ``None``: the checkpoint's (filled in when the distiller is built).
        weight_kl, weight_ce: weights of ``aux/<level>/kl`` and ``aux/<level>/ce``.
        temperature: of the KL's softmax.
        boxes: background squares (and at most as many ground-truth boxes) per image.
    """

    checkpoint: str
    levels: tuple[str, ...] | None = None
    weight_kl: float = 1.0
    weight_ce: float = 1.0
    temperature: float = 1.0
    boxes: int = 8

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"checkpoint": self.checkpoint}
        if self.levels is not None:
            out["levels"] = list(self.levels)
        out.update(weight_kl=self.weight_kl, weight_ce=self.weight_ce, temperature=self.temperature,
                   boxes=self.boxes)
        return out


def feature_levels(spec: HierarchySpec) -> list[str]:
    """Names of the feature-map levels of ``spec`` (backbone / FPN, ``(N, C, H, W)``), in order."""
    return [lv.name for lv in spec if level_role(lv) == "feature"]


@dataclass(frozen=True)
class DistillConfig:
    """A validated ``distill:`` section.

    Attributes:
        terms: the loss terms, in level order after :meth:`resolve`.
        schedule: the stages; by default one stage with every hierarchy.
        adapters: how the adapters are fitted.
        resolved: whether the levels were expanded and checked against two specs.
        aux: self-supervised augmented distillation, or ``None`` (off).
    """

    terms: tuple[LossTerm, ...]
    schedule: tuple[Stage, ...] = (Stage(None, HIERARCHIES),)
    resolved: bool = False
    adapters: AdapterFit = AdapterFit()
    aux: AuxConfig | None = None

    @property
    def levels(self) -> list[str]:
        """Distinct level names of the terms, in order."""
        return list(dict.fromkeys(term.level for term in self.terms))

    def hierarchies_at(self, step: int) -> tuple[str, ...]:
        """Hierarchies distilled at ``step``."""
        for stage in self.schedule:
            if stage.until_step is None or step < stage.until_step:
                return stage.hierarchies
        return ()

    def active_terms(self, step: int) -> list[LossTerm]:
        """Terms whose hierarchy is distilled at ``step``."""
        active = set(self.hierarchies_at(step))
        return [term for term in self.terms if term.hierarchy in active]

    def to_dict(self) -> dict:
        """Plain data (``{"levels": …, "schedule": …, "adapters": …}``) that :func:`parse_config` reads back."""
        levels: dict[str, list[dict]] = {}
        for term in self.terms:
            levels.setdefault(term.level if self.resolved else term.source or term.level, []).append(term.to_dict())
        out = {"levels": levels, "schedule": [stage.to_dict() for stage in self.schedule],
               "adapters": self.adapters.to_dict()}
        if self.aux is not None:
            out["aux"] = self.aux.to_dict()
        return out

    def resolve(self, teacher_spec: HierarchySpec, student_spec: HierarchySpec) -> "DistillConfig":
        """Expand globs and check every level and loss against the two models.

        Raises:
            ConfigError: a level that is not in both specs (or not comparable), a glob
                that matches none, a loss that does not apply to the level's role, or
                the same loss twice on a level.
        """
        plan = {row["level"]: row for row in adapter_plan(teacher_spec, student_spec)}
        valid = [name for name, row in plan.items() if row["comparable"]]
        expanded: dict[str, list[LossTerm]] = {}  # level -> terms
        from_glob: set[str] = set()
        # a resolved config is checked again level by level (its globs are expanded already)
        key_of = (lambda t: t.level) if self.resolved else (lambda t: t.source or t.level)
        for source in dict.fromkeys(key_of(term) for term in self.terms):
            terms = [t for t in self.terms if key_of(t) == source]
            if _is_glob(source):
                matches = [name for name in valid if fnmatch.fnmatchcase(name, source)]
                if not matches:
                    raise ConfigError(f"distill.levels: pattern {quote(source)} matches no level of both models; "
                                      f"levels: {', '.join(valid)}")
                for name in matches:
                    if name in expanded and name not in from_glob:
                        continue  # an exact key already set this level
                    expanded.setdefault(name, [])
                    from_glob.add(name)
                    expanded[name] += [LossTerm(name, t.loss, t.weight, dict(t.params), source) for t in terms]
            else:
                if source not in valid:
                    if source in teacher_spec and source in student_spec:
                        reason = f"both models have it, but it is {plan[source]['adapter']}"
                    else:
                        reason = "it is not a level of both models"
                    raise ConfigError(f"distill.levels: unknown level {quote(source)} ({reason}); "
                                      f"levels: {', '.join(valid)}")
                # an exact key overrides what a glob gave the level
                expanded[source] = [LossTerm(source, t.loss, t.weight, dict(t.params), t.source or source)
                                    for t in terms]
                from_glob.discard(source)
        ordered: list[LossTerm] = []
        for name in valid:  # student computation order
            seen: dict[str, str] = {}
            for term in expanded.get(name, []):
                role = level_role(student_spec[name])
                allowed = losses_for(role)
                if term.loss not in allowed:
                    raise ConfigError(f"distill.levels.{term.source}: loss {quote(term.loss)} does not apply to "
                                      f"{quote(name)} ({role}); losses for it: {', '.join(allowed)}")
                if term.loss in seen:
                    raise ConfigError(f"distill.levels: level {quote(name)} gets loss {quote(term.loss)} twice "
                                      f"(from {quote(seen[term.loss])} and {quote(term.source)})")
                seen[term.loss] = term.source
                ordered.append(term)
        if self.aux is not None and self.aux.levels is not None:
            both = teacher_spec.shared_with(student_spec, kinds=("map",))  # feature levels of both
            for name in self.aux.levels:
                if name not in both:
                    raise ConfigError(f"distill.aux.levels: {quote(name)} is not a feature level of both models; "
                                      f"levels: {', '.join(both)}")
        return DistillConfig(tuple(ordered), self.schedule, resolved=True, adapters=self.adapters, aux=self.aux)


def _is_glob(key: str) -> bool:
    return any(ch in key for ch in "*?[")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_term(key: str, entry: Any, where: str) -> LossTerm:
    if isinstance(entry, str):
        entry = {"loss": entry}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a loss name, a mapping {{loss: …, weight: …}} or a list of them, "
                          f"got {type(entry).__name__}")
    if "loss" not in entry:
        raise ConfigError(f"{where}: missing 'loss'; losses: {', '.join(LOSSES)}")
    name = entry["loss"]
    if name not in LOSSES:
        raise ConfigError(f"{where}: unknown loss {quote(name)}; losses: {', '.join(LOSSES)}")
    spec = LOSSES[name]
    weight = entry.get("weight", 1.0)
    if not _is_number(weight) or weight < 0:
        raise ConfigError(f"{where}.weight: must be a number >= 0, got {quote(weight)}")
    params = {}
    for param, value in entry.items():
        if param in ("loss", "weight"):
            continue
        if param not in spec.params:
            choices = ", ".join(["weight", *spec.params]) or "none"
            raise ConfigError(f"{where}: loss {quote(name)} has no param {quote(param)}; params: {choices}")
        choices = _PARAM_CHOICES.get(param)
        if choices is not None:
            if not isinstance(value, str) or value not in choices:
                raise ConfigError(f"{where}.{param}: unknown {param} {quote(value)}; choices: {', '.join(choices)}")
            params[param] = value
            continue
        if not _is_number(value):
            raise ConfigError(f"{where}.{param}: must be a number, got {quote(value)}")
        rule = _PARAM_RULES.get(param)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{where}.{param}: must be {rule[1]}, got {quote(value)}")
        params[param] = float(value)
    return LossTerm(key, name, float(weight), params, key)


def _parse_schedule(raw: Any) -> tuple[Stage, ...]:
    if raw is None:
        return (Stage(None, HIERARCHIES),)
    if not isinstance(raw, list) or not raw:
        raise ConfigError("distill.schedule: expected a non-empty list of stages "
                          "{until_step: <int>, hierarchies: [...]}, the last without until_step")
    stages: list[Stage] = []
    previous = 0
    choices = ", ".join([*HIERARCHIES, ALL])
    for index, entry in enumerate(raw):
        where = f"distill.schedule[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping with keys {', '.join(STAGE_KEYS)}")
        unknown = [k for k in entry if k not in STAGE_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown key {quote(unknown[0])}; keys: {', '.join(STAGE_KEYS)}")
        last = index == len(raw) - 1
        until = entry.get("until_step")
        if last and until is not None:
            raise ConfigError(f"{where}.until_step: the last stage lasts to the end of training; remove "
                              "until_step (add a final stage, e.g. {hierarchies: []}, to stop distilling)")
        if not last:
            if not isinstance(until, int) or isinstance(until, bool) or until <= previous:
                raise ConfigError(f"{where}.until_step: must be an int greater than {previous} "
                                  f"(the previous stage's), got {quote(until)}")
            previous = until
        if "hierarchies" not in entry:
            raise ConfigError(f"{where}: missing 'hierarchies'; choices: {choices}")
        names = entry["hierarchies"]
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list):
            raise ConfigError(f"{where}.hierarchies: expected {quote(ALL)} or a list; choices: {choices}")
        if ALL in names:
            names = list(HIERARCHIES)
        for name in names:
            if name not in HIERARCHIES:
                raise ConfigError(f"{where}.hierarchies: unknown hierarchy {quote(name)}; choices: {choices}")
        stages.append(Stage(until, tuple(dict.fromkeys(names))))
    return tuple(stages)


def parse_config(data: Mapping[str, Any]) -> DistillConfig:
    """Validate plain data: a whole run config with a ``distill:`` key, or the section itself.

    The result is unresolved (globs kept); :meth:`DistillConfig.resolve` (done by the
    distiller at build time) checks it against the models.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a distillation config is a mapping, got {type(data).__name__}")
    section = data[SECTION] if SECTION in data else data
    if section is None or not isinstance(section, Mapping):
        raise ConfigError(f"{SECTION}: expected a mapping with keys {', '.join(SECTION_KEYS)}")
    unknown = [k for k in section if k not in SECTION_KEYS]
    if unknown:
        raise ConfigError(f"{SECTION}: unknown key {quote(unknown[0])}; keys: {', '.join(SECTION_KEYS)}")
    levels = section.get("levels")
    if levels is None:
        levels = {}
    if not isinstance(levels, Mapping):
        raise ConfigError(f"{SECTION}.levels: expected a mapping level -> loss term(s)")
    terms: list[LossTerm] = []
    for key, entries in levels.items():
        if not isinstance(key, str) or "." not in key:
            raise ConfigError(f"{SECTION}.levels: level {quote(key)} is not '<hierarchy>.<level>' "
                              "(e.g. neck.p3, or a glob such as neck.*)")
        entries = entries if isinstance(entries, list) else [entries]
        if not entries:
            raise ConfigError(f"{SECTION}.levels.{key}: empty list of losses")
        for index, entry in enumerate(entries):
            where = f"{SECTION}.levels.{key}" + (f"[{index}]" if len(entries) > 1 else "")
            terms.append(_parse_term(key, entry, where))
        names = [t.loss for t in terms[-len(entries):]]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{SECTION}.levels.{key}: loss {quote(dupes[0])} listed twice")
    return DistillConfig(tuple(terms), _parse_schedule(section.get("schedule")),
                         adapters=_parse_adapters(section.get("adapters")), aux=_parse_aux(section.get("aux")))


def _parse_aux(raw: Any) -> AuxConfig | None:
    where = f"{SECTION}.aux"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(AUX_KEYS)}")
    unknown = [k for k in raw if k not in AUX_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {quote(unknown[0])}; keys: {', '.join(AUX_KEYS)}")
    checkpoint = raw.get("checkpoint")
    if isinstance(checkpoint, Path):
        checkpoint = str(checkpoint)
    if not isinstance(checkpoint, str) or not checkpoint:
        raise ConfigError(f"{where}.checkpoint: the teacher's aux heads (a .safetensors file made by "
                          f"`hkd train-aux`) are required, got {quote(checkpoint)}")
    levels = raw.get("levels")
    if levels is not None:
        if isinstance(levels, str):
            levels = [levels]
        if not isinstance(levels, list) or not levels or not all(isinstance(v, str) and "." in v for v in levels):
            raise ConfigError(f"{where}.levels: expected a non-empty list of feature levels such as "
                              f"[backbone.c4, neck.p3], got {quote(levels)}")
        levels = tuple(dict.fromkeys(levels))
    values: dict[str, Any] = {}
    for key, rule, requirement in (("weight_kl", lambda v: v >= 0, ">= 0"), ("weight_ce", lambda v: v >= 0, ">= 0"),
                                   ("temperature", lambda v: v > 0, "> 0")):
        value = raw.get(key, getattr(AuxConfig, key))
        if not _is_number(value) or not rule(value):
            raise ConfigError(f"{where}.{key}: must be a number {requirement}, got {quote(value)}")
        values[key] = float(value)
    boxes = raw.get("boxes", AuxConfig.boxes)
    if not isinstance(boxes, int) or isinstance(boxes, bool) or boxes < 1:
        raise ConfigError(f"{where}.boxes: must be an integer >= 1 (background boxes per image), got {quote(boxes)}")
    return AuxConfig(checkpoint, levels, boxes=boxes, **values)


def _parse_adapters(raw: Any) -> AdapterFit:
    where = f"{SECTION}.adapters"
    if raw is None:
        return AdapterFit()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(ADAPTER_KEYS)}")
    unknown = [k for k in raw if k not in ADAPTER_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {quote(unknown[0])}; keys: {', '.join(ADAPTER_KEYS)}")
    fit = raw.get("fit", AdapterFit.fit)
    if fit not in ADAPTER_FITS:
        raise ConfigError(f"{where}.fit: unknown fit {quote(fit)}; choices: {', '.join(ADAPTER_FITS)}")
    momentum = raw.get("momentum", AdapterFit.momentum)
    if not _is_number(momentum) or not 0 <= momentum < 1:
        raise ConfigError(f"{where}.momentum: expected a number in [0, 1), got {quote(momentum)}")
    ridge = raw.get("ridge", AdapterFit.ridge)
    if not _is_number(ridge) or not ridge > 0:
        raise ConfigError(f"{where}.ridge: expected a number > 0, got {quote(ridge)}")
    return AdapterFit(fit, float(momentum), float(ridge))


def load_config(
    source: str | Path | Mapping[str, Any] | DistillConfig,
    teacher_spec: HierarchySpec | None = None,
    student_spec: HierarchySpec | None = None,
) -> DistillConfig:
    """A config from a YAML/JSON file, plain data or a :class:`DistillConfig`; resolved if both specs are given."""
    if isinstance(source, DistillConfig):
        config = source
    elif isinstance(source, Mapping):
        config = parse_config(source)
    else:
        path = Path(source)
        try:
            data = read_config_file(path)
        except ConfigFileError as exc:
            raise ConfigError(str(exc)) from None
        try:
            config = parse_config(data if data is not None else {})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if config.aux is not None:  # the aux checkpoint is written relative to this file
            checkpoint = Path(config.aux.checkpoint).expanduser()
            if not checkpoint.is_absolute():
                checkpoint = (path.parent / checkpoint).resolve()
            config = replace(config, aux=replace(config.aux, checkpoint=str(checkpoint)))
    if teacher_spec is not None and student_spec is not None and not config.resolved:
        config = config.resolve(teacher_spec, student_spec)
    return config
