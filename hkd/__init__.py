"""hkd: hierarchical knowledge distillation of pedestrian detectors."""

__version__ = "0.1.0"
