"""Hierarchical knowledge distillation: adapters, losses, configs and the aligned distiller.

    from hkd.distill import Distiller, load_config
    distiller = Distiller.build(teacher, teacher_spec, student, student_spec, "assets/configs/distill_full.yaml")
"""
from hkd.distill.adapters import LevelAdapter, adapter_key, adapter_plan, build_adapters, comparable_levels
from hkd.distill.config import ConfigError, DistillConfig, LossTerm, Stage, load_config, parse_config
from hkd.distill.distiller import Distiller, check_transforms, check_wiring, detection_losses, detector_family
from hkd.distill.losses import LOSSES, LossSpec, attention_map, level_role, losses_for

__all__ = [
    "Distiller", "detection_losses", "detector_family", "check_transforms", "check_wiring",
    "DistillConfig", "LossTerm", "Stage", "ConfigError", "load_config", "parse_config",
    "LevelAdapter", "adapter_key", "adapter_plan", "build_adapters", "comparable_levels",
    "LOSSES", "LossSpec", "attention_map", "level_role", "losses_for",
]
