"""Adapters (connectors) that bring a student level to the teacher's shape.

Built from the two presets' :class:`~hkd.models.hierarchy.HierarchySpec`, per level
present in both:

==================  =====================================================  =====================
role                adapter when the shapes differ                         when equal
==================  =====================================================  =====================
feature (N,C,H,W)   1×1 conv C_s→C_t, then bilinear resize to the          identity
                    teacher's H×W where the strides differ
regions (K,C,7,7)   1×1 conv C_s→C_t                                       identity
embedding (K,D)     linear D_s→D_t                                         identity
RPN / ROI outputs   none: channels are anchors or classes; different       identity
                    counts are *not comparable*
==================  =====================================================  =====================

Initialisation: the 1×1 conv / linear weights are drawn from
``N(0, 1/C_s)`` (Kaiming, ``fan_in``, linear gain) and the bias is 0, so at
step 0 an adapter passes the student's signal into the teacher's channel space
with its second moment preserved — neither vanishing (all-zero adapters give
no gradient to the student through the loss, only to the adapter) nor
exploding. Where shapes are equal there is *no* adapter (an identity), so a
student that equals its teacher has exactly zero imitation loss.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from hkd.distill.losses import level_role
from hkd.models.hierarchy import HierarchySpec, Level

NOT_COMPARABLE = "not comparable"
NO_LOSS = "not distilled (no loss applies to this level)"
# roles whose tensors can pass through a learned adapter
_ADAPTABLE = {"feature", "regions", "embedding"}


def adapter_key(level_name: str) -> str:
    """ModuleDict key of a level (``neck.p3`` → ``neck_p3``: dots are not allowed in keys)."""
    return level_name.replace(".", "_")


class LevelAdapter(nn.Module):
    """Maps a student level tensor to the teacher's shape.

    Args:
        channel: ``nn.Identity``, a 1×1 ``nn.Conv2d`` or an ``nn.Linear``.
        resize: bilinearly resize maps whose spatial size differs from the teacher's.
    """

    def __init__(self, channel: nn.Module, *, resize: bool = False) -> None:
        super().__init__()
        self.channel = channel
        self.resize = resize

    def forward(self, x: Tensor, size: tuple[int, int] | None = None, *, channels: bool = True) -> Tensor:
        """x: student tensor; size: the teacher's (H, W) for maps; channels=False skips the conv."""
        if channels:
            x = self.channel(x)
        if self.resize and size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x


def _init(layer: nn.Module) -> nn.Module:
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="linear")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _plan_level(teacher: Level, student: Level) -> tuple[bool, str, LevelAdapter | None]:
    """(comparable, description, adapter factory result or None) for one level present in both."""
    role_t, role_s = level_role(teacher), level_role(student)
    if teacher.kind != student.kind or role_t != role_s:
        return False, f"{NOT_COMPARABLE} ({student.kind} vs {teacher.kind})", None
    if role_t is None:
        return False, NO_LOSS, None
    cs, ct = student.channels, teacher.channels
    if role_t not in _ADAPTABLE:
        if cs != ct:
            return False, f"{NOT_COMPARABLE} ({cs} vs {ct} {'anchors' if role_t in ('objectness', 'anchor_deltas') else 'outputs'})", None
        return True, "—", LevelAdapter(nn.Identity())
    parts: list[str] = []
    channel: nn.Module = nn.Identity()
    if cs != ct:
        if role_t == "embedding":
            channel = _init(nn.Linear(cs, ct))
            parts.append(f"linear {cs}→{ct}")
        else:
            channel = _init(nn.Conv2d(cs, ct, kernel_size=1))
            parts.append(f"1×1 conv {cs}→{ct}")
    resize = False
    if role_t == "feature" and student.stride != teacher.stride:
        resize = True
        if student.stride and teacher.stride:
            factor = student.stride / teacher.stride
            scale = f"×{factor:g}" if factor >= 1 else f"×1/{1 / factor:g}"
            parts.append(f"bilinear {scale} (stride {student.stride}→{teacher.stride})")
        else:
            parts.append("bilinear to the teacher's size")
    return True, " + ".join(parts) or "—", LevelAdapter(channel, resize=resize)


def adapter_plan(teacher_spec: HierarchySpec, student_spec: HierarchySpec) -> list[dict]:
    """One row per level of either model, for the Models page.

    Row keys: ``level``, ``kind``, ``student_channels``, ``student_stride``,
    ``teacher_channels``, ``teacher_stride``, ``adapter`` (e.g. ``"1×1 conv 40→48"``,
    ``"—"`` where none is needed, ``"not comparable …"``, or :data:`NO_LOSS`), ``comparable`` (bool) and
    ``params`` (the adapter's parameter count). Student levels first, in
    computation order, then levels only the teacher has.
    """
    rows = []
    names = student_spec.names + [n for n in teacher_spec.names if n not in student_spec]
    for name in names:
        s = student_spec[name] if name in student_spec else None
        t = teacher_spec[name] if name in teacher_spec else None
        if s is None or t is None:
            comparable, text, adapter = False, f"{NOT_COMPARABLE} (only the {'student' if t is None else 'teacher'} has it)", None
        else:
            comparable, text, adapter = _plan_level(t, s)
        rows.append({
            "level": name,
            "kind": (s or t).kind,
            "student_channels": s.channels if s else None,
            "student_stride": s.stride if s else None,
            "teacher_channels": t.channels if t else None,
            "teacher_stride": t.stride if t else None,
            "adapter": text,
            "comparable": comparable,
            "params": sum(p.numel() for p in adapter.parameters()) if adapter is not None else 0,
        })
    return rows


def comparable_levels(teacher_spec: HierarchySpec, student_spec: HierarchySpec) -> list[str]:
    """Names of the levels both models have and that a loss can compare (student order)."""
    return [row["level"] for row in adapter_plan(teacher_spec, student_spec) if row["comparable"]]


def build_adapters(teacher_spec: HierarchySpec, student_spec: HierarchySpec, level_names) -> nn.ModuleDict:
    """A :class:`LevelAdapter` per level in ``level_names``, keyed by :func:`adapter_key`.

    Raises:
        ValueError: a level is missing from one spec or not comparable.
    """
    adapters = nn.ModuleDict()
    for name in level_names:
        missing = [who for who, spec in (("teacher", teacher_spec), ("student", student_spec)) if name not in spec]
        if missing:
            raise ValueError(f"level {name!r} is not in the {' and '.join(missing)} spec; "
                             f"levels in both: {comparable_levels(teacher_spec, student_spec)}")
        comparable, text, adapter = _plan_level(teacher_spec[name], student_spec[name])
        if not comparable:
            raise ValueError(f"level {name!r} cannot be distilled between these models: {text}")
        adapters[adapter_key(name)] = adapter
    return adapters


def adapter_params(adapters: nn.ModuleDict) -> int:
    """Total parameters of the adapters (they are trained, then thrown away)."""
    return sum(p.numel() for p in adapters.parameters())
