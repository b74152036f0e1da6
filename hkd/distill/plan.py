"""Which levels of a teacher/student pair can be distilled, and through which adapter.

Plain data from the two presets' :class:`~hkd.models.hierarchy.HierarchySpec`
(no torch): the Models page shows it before any weights load, and
:mod:`hkd.distill.adapters` builds the modules it describes.

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
"""
from __future__ import annotations

from dataclasses import dataclass

from hkd.models.hierarchy import HierarchySpec, Level

NOT_COMPARABLE = "not comparable"
NO_LOSS = "not distilled (no loss applies to this level)"
# roles whose tensors can pass through a learned adapter
ADAPTABLE = {"feature", "regions", "embedding"}

# non-map levels have a role by their logical name (names are stable by design)
ROLE_BY_NAME = {
    "rpn.objectness": "objectness",
    "rpn.deltas": "anchor_deltas",
    "roi.features": "regions",
    "roi.embedding": "embedding",
    "roi.logits": "class_logits",
    "roi.deltas": "box_deltas",
    "head.cls_logits": "dense_logits",
}


def level_role(level: Level) -> str | None:
    """The role of ``level`` for distillation, or ``None`` if no loss applies to it."""
    if level.kind == "map":
        return "feature"
    return ROLE_BY_NAME.get(level.name)


@dataclass(frozen=True)
class LevelPlan:
    """How one level present in both models is distilled.

    Attributes:
        comparable: a loss can compare the two tensors.
        text: ``"1×1 conv 40→48 + bilinear ×2 (stride 16→8)"``, ``"—"``, or why not comparable.
        channel: ``"identity"``, ``"conv"`` (1×1) or ``"linear"``; ``None`` if not comparable.
        resize: the student's map is resized to the teacher's size.
        params: parameters of the adapter.
    """

    comparable: bool
    text: str
    channel: str | None = None
    resize: bool = False
    params: int = 0


def plan_level(teacher: Level, student: Level) -> LevelPlan:
    """The :class:`LevelPlan` of a level both models have."""
    role_t, role_s = level_role(teacher), level_role(student)
    if teacher.kind != student.kind or role_t != role_s:
        return LevelPlan(False, f"{NOT_COMPARABLE} ({student.kind} vs {teacher.kind})")
    if role_t is None:
        return LevelPlan(False, NO_LOSS)
    cs, ct = student.channels, teacher.channels
    if role_t not in ADAPTABLE:
        if cs != ct:
            what = "anchors" if role_t in ("objectness", "anchor_deltas") else "outputs"
            return LevelPlan(False, f"{NOT_COMPARABLE} ({cs} vs {ct} {what})")
        return LevelPlan(True, "—", "identity")
    parts: list[str] = []
    channel, params = "identity", 0
    if cs != ct:
        channel = "linear" if role_t == "embedding" else "conv"
        parts.append(f"linear {cs}→{ct}" if channel == "linear" else f"1×1 conv {cs}→{ct}")
        params = cs * ct + ct
    resize = False
    if role_t == "feature" and student.stride != teacher.stride:
        resize = True
        if student.stride and teacher.stride:
            factor = student.stride / teacher.stride
            scale = f"×{factor:g}" if factor >= 1 else f"×1/{1 / factor:g}"
            parts.append(f"bilinear {scale} (stride {student.stride}→{teacher.stride})")
        else:
            parts.append("bilinear to the teacher's size")
    return LevelPlan(True, " + ".join(parts) or "—", channel, resize, params)


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
            plan = LevelPlan(False, f"{NOT_COMPARABLE} (only the {'student' if t is None else 'teacher'} has it)")
        else:
            plan = plan_level(t, s)
        rows.append({
            "level": name,
            "kind": (s or t).kind,
            "student_channels": s.channels if s else None,
            "student_stride": s.stride if s else None,
            "teacher_channels": t.channels if t else None,
            "teacher_stride": t.stride if t else None,
            "adapter": plan.text,
            "comparable": plan.comparable,
            "params": plan.params,
        })
    return rows


def comparable_levels(teacher_spec: HierarchySpec, student_spec: HierarchySpec) -> list[str]:
    """Names of the levels both models have and that a loss can compare (student order)."""
    return [row["level"] for row in adapter_plan(teacher_spec, student_spec) if row["comparable"]]
