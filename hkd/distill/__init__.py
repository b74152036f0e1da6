"""Hierarchical knowledge distillation: adapters, losses, configs and the aligned distiller.

    from hkd.distill import Distiller, load_config
    distiller = Distiller.build(teacher, teacher_spec, student, student_spec, "assets/configs/distill_full.yaml")

Names load on first use (PEP 562), so ``hkd.distill.plan`` — which levels a pair
can distill and through which adapter — imports without torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "hkd.distill.adapters": ("LevelAdapter", "adapter_key", "build_adapters"),
    "hkd.distill.plan": ("adapter_plan", "comparable_levels", "level_role"),
    "hkd.distill.config": ("ConfigError", "DistillConfig", "LossTerm", "Stage", "load_config", "parse_config"),
    "hkd.distill.distiller": ("Distiller", "check_transforms", "check_wiring", "detection_losses", "detector_family"),
    "hkd.distill.losses": ("LOSSES", "LossSpec", "attention_map", "losses_for"),
    "hkd.distill.losses.trust": ("TRUST_MODES",),
    "hkd.distill.teacher_cache": ("TeacherCache",),
    "hkd.distill.aux": ("AuxHeads", "load_aux_heads", "read_aux_meta", "save_aux_heads"),
    "hkd.distill.pairs": ("check_pair",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hkd.distill' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
