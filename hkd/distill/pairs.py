"""Can a teacher be distilled into a student head to head? Checked when the distiller is built.

The distiller compares the two heads' outputs row by row: a single-stage
detector's class logits are (N, Σ H·W·A, classes) over every anchor of every FPN
level, so both detectors must be of one kind (RetinaNet, FCOS …), with the same
anchors per location, FPN levels under the head and classes; a two-stage pair's
ROI logits are compared per proposal, so both predictors need the same classes.
A mismatch is a :class:`~hkd.distill.config.ConfigError` naming it, before any
step runs. Only attributes are read: nothing runs a forward.
"""
from __future__ import annotations

from torch import nn

from hkd.distill.config import ConfigError

_TORCHVISION_DETECTION = "torchvision.models.detection"


def check_pair(teacher: nn.Module, student: nn.Module) -> None:
    """Raise :class:`ConfigError` naming every reason the pair's heads cannot be compared.

    Single-stage pairs (torchvision RetinaNet / FCOS layout): detector kind, anchors per
    location, FPN levels under the head, classes. Two-stage pairs (Faster R-CNN layout): the
    box predictor's classes. Models of different families are left to
    :func:`hkd.distill.distiller.detector_family`'s check.
    """
    if _two_stage(teacher) and _two_stage(student):
        problems = _differences([("classes", _predictor_classes)], teacher, student)
    elif not _two_stage(teacher) and not _two_stage(student):
        problems = _differences([
            ("detectors", detector_kind),
            ("anchors per location", _anchors_per_location),
            ("FPN levels under the head", _head_levels),
            ("classes", _head_classes),
        ], teacher, student)
    else:
        return
    if problems:
        raise ConfigError(f"teacher ({detector_kind(teacher)}) and student ({detector_kind(student)}) cannot be "
                          "distilled head to head: " + "; ".join(problems))


def detector_kind(model: nn.Module) -> str:
    """The torchvision detector class ``model`` is (or derives from), e.g. ``"RetinaNet"``; else its class name."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith(_TORCHVISION_DETECTION):
            return cls.__name__
    return type(model).__name__


def _differences(checks, teacher: nn.Module, student: nn.Module) -> list[str]:
    out = []
    for what, read in checks:
        t, s = read(teacher), read(student)
        if t is not None and s is not None and t != s:
            out.append(f"different {what} (teacher {t}, student {s})")
    return out


def _two_stage(model: nn.Module) -> bool:
    return hasattr(model, "roi_heads")


def _predictor_classes(model: nn.Module) -> int | None:
    cls_score = getattr(getattr(model.roi_heads, "box_predictor", None), "cls_score", None)
    return getattr(cls_score, "out_features", None)


def _classification_head(model: nn.Module) -> nn.Module | None:
    return getattr(getattr(model, "head", None), "classification_head", None)


def _anchors_per_location(model: nn.Module) -> int | list[int] | None:
    """The head's anchors per location; the generator's per level if they are not all that."""
    generator = getattr(model, "anchor_generator", None)
    per_level = list(generator.num_anchors_per_location()) if generator is not None else []
    head = getattr(_classification_head(model), "num_anchors", None)
    if head is not None and all(n == head for n in per_level):
        return head
    return per_level or head


def _head_levels(model: nn.Module) -> int | None:
    # the anchor generator has one entry per feature map the head runs on (torchvision checks that)
    generator = getattr(model, "anchor_generator", None)
    return len(generator.sizes) if generator is not None else None


def _head_classes(model: nn.Module) -> int | None:
    return getattr(_classification_head(model), "num_classes", None)
