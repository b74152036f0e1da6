"""Hierarchy taps: capture level tensors during a forward, without leaving anything behind.

    with Tap(model, spec, ["backbone.c3", "neck.p3"]) as tap:
        model(images)
    p3 = tap["neck.p3"]          # tensor of the last forward inside the block

Hooks are registered on ``__enter__`` and removed on ``__exit__`` (also when the
block raises). Each hook only records while *its own* tap is active in the
current thread/context (a ``ContextVar``), so two threads tapping one shared
model at the same time each get their own tensors, and a model cached for all
app sessions is never left modified.
"""
from __future__ import annotations

import contextvars
import itertools
from collections import defaultdict
from typing import Any, Iterable

from torch import nn

from hkd.models.hierarchy import HierarchySpec, Level

_ACTIVE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("hkd_active_taps", default=frozenset())
_IDS = itertools.count(1)


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``, tolerating DDP/DataParallel's ``module.`` wrapper."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            return resolve_module(inner, path)
        raise


class Tap:
    """Context manager capturing the outputs of hierarchy levels.

    Args:
        model: the detector (possibly wrapped in DDP).
        levels: a ``HierarchySpec`` or an iterable of ``Level``.
        names: level names to capture (default: every level in ``levels``).
        detach: store detached tensors (for visualisation, and for targets that must carry no graph:
            an online teacher's outputs; a student's levels need their graphs).

    After (or during) the block, ``tap[name]`` is the level's output of the last
    forward and ``tap.calls(name)`` every capture in order.
    """

    def __init__(
        self,
        model: nn.Module,
        levels: HierarchySpec | Iterable[Level],
        names: Iterable[str] | None = None,
        *,
        detach: bool = False,
    ) -> None:
        spec = levels if isinstance(levels, HierarchySpec) else HierarchySpec(tuple(levels))
        self.levels: list[Level] = spec.select(list(names)) if names is not None else list(spec.levels)
        self.model = model
        self.detach = detach
        self._id = next(_IDS)
        self._handles: list[Any] = []
        self._token: contextvars.Token | None = None
        self._store: dict[str, list[Any]] = defaultdict(list)

    # -- context protocol -------------------------------------------------
    def __enter__(self) -> "Tap":
        if self._handles:
            raise RuntimeError("this Tap is already active; create a new one per block")
        try:
            for level in self.levels:
                try:
                    module = resolve_module(self.model, level.module)
                except AttributeError:
                    raise KeyError(
                        f"level {level.name!r} points to module {level.module!r}, which "
                        f"{type(self.model).__name__} does not have (is the spec for another preset?)"
                    ) from None
                self._handles.append(module.register_forward_hook(self._make_hook(level)))
        except BaseException:
            self._remove()
            raise
        self._token = _ACTIVE.set(_ACTIVE.get() | {self._id})
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, level: Level):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._id not in _ACTIVE.get():
                return  # another thread's (or an exited) forward: not ours
            value = level.extract(output)
            if self.detach:
                value = _detach(value)
            self._store[level.name].append(value)

        return hook

    # -- access ------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        calls = self.calls(name)
        if not calls:
            raise KeyError(
                f"level {name!r} was not computed by the tapped forward "
                "(roi.* levels need proposals; rpn.* need the RPN to run)"
            )
        return calls[-1]

    def __contains__(self, name: str) -> bool:
        return bool(self._store.get(name))

    def calls(self, name: str) -> list[Any]:
        if name not in {lv.name for lv in self.levels}:
            raise KeyError(f"level {name!r} is not tapped here; tapped: {[lv.name for lv in self.levels]}")
        return list(self._store.get(name, []))

    def outputs(self) -> dict[str, Any]:
        """Last capture of every level that was computed."""
        return {name: calls[-1] for name, calls in self._store.items() if calls}

    def clear(self) -> None:
        self._store.clear()


def _detach(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def count_hooks(model: nn.Module) -> int:
    """Forward hooks currently attached anywhere in ``model`` (for leak tests)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
