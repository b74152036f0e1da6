"""Hierarchy specs: the logical levels of a detector that can be tapped and distilled.

A level has a *logical* name (``backbone.c3``, ``neck.p3``, ``rpn.objectness``,
``roi.features`` …) that stays the same however the model is wrapped, the
module path whose forward output holds it, an optional selector into that
output (a dict key or a tuple index), and its channels and stride.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

# The hierarchies in the order a detector computes them (and the paper names them).
HIERARCHIES = ("backbone", "neck", "rpn", "roi", "head")
# What a level's tensor is: (N,C,H,W), a list of those per FPN level, (K,C,7,7) per region, (K,C).
KINDS = ("map", "maps", "regions", "vectors")


def _check_kinds(kinds: Iterable[str]) -> list[str]:
    if isinstance(kinds, str):
        raise TypeError(f"kinds must be a collection of level kinds such as ('map',), got the string {kinds!r}")
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown level kind(s) {unknown}; kinds: {', '.join(KINDS)}")
    return kinds


@dataclass(frozen=True)
class Level:
    """One tappable level.

    Attributes:
        name: logical name ``<hierarchy>.<level>``, e.g. ``neck.p3``.
        module: dotted module path inside the detector, e.g. ``backbone.fpn.layer_blocks.0``.
        channels: channels (or logits) of the tapped tensor; for per-level lists the
            channels of each element.
        stride: input pixels per feature cell, or ``None`` for region-level tensors.
        select: key or index applied to the module's output (``None``: the output itself).
        kind: ``"map"`` (N,C,H,W), ``"maps"`` (list of (N,C,H,W) per FPN level),
            ``"regions"`` (K,C,7,7) or ``"vectors"`` (K,C).
    """

    name: str
    module: str
    channels: int
    stride: int | None = None
    select: Any = None
    kind: str = "map"

    @property
    def hierarchy(self) -> str:
        return self.name.split(".", 1)[0]

    def extract(self, output: Any) -> Any:
        """The level's tensor from the module's raw forward output."""
        if self.select is None:
            return output
        return output[self.select]


@dataclass(frozen=True)
class HierarchySpec:
    """All levels of one detector preset, in computation order."""

    levels: tuple[Level, ...]
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        names = [lv.name for lv in self.levels]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate level names in hierarchy spec: {sorted(dupes)}")

    @property
    def names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    def __getitem__(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise KeyError(f"unknown level {name!r}; this detector has: {', '.join(self.names)}")

    def __contains__(self, name: object) -> bool:
        return any(lv.name == name for lv in self.levels)

    def __iter__(self):
        return iter(self.levels)

    def select(self, names: list[str] | None = None, *, hierarchy: str | None = None) -> list[Level]:
        """Levels by name (validated) or by hierarchy (``"neck"``)."""
        if names is not None:
            return [self[n] for n in names]
        if hierarchy is not None:
            return [lv for lv in self.levels if lv.hierarchy == hierarchy]
        return list(self.levels)

    def shared_with(self, other: "HierarchySpec", *, kinds: Iterable[str] | None = None) -> list[str]:
        """Names of the levels ``other`` has too, of the same kind there, in this spec's computation order.

        ``kinds``: only levels of these kinds (``"map"``, ``"maps"``, ``"regions"``,
        ``"vectors"``); e.g. ``teacher.shared_with(student, kinds=("map",))`` are the
        backbone/FPN feature maps of both, ``kinds=("map", "regions")`` adds the pooled
        region features. ``None``: every kind.
        """
        wanted = None if kinds is None else set(_check_kinds(kinds))
        return [lv.name for lv in self.levels
                if (wanted is None or lv.kind in wanted) and lv.name in other and other[lv.name].kind == lv.kind]

    def to_rows(self) -> list[dict]:
        """Plain rows for tables: name, module, channels, stride, kind."""
        return [
            {"level": lv.name, "module": lv.module, "channels": lv.channels, "stride": lv.stride, "kind": lv.kind}
            for lv in self.levels
        ]
