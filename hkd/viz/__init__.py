"""Looking inside detectors: feature maps, teacher/student similarity (per image and over a dataset's
cases), CAMs, drawn boxes.

Every function takes a model already in eval mode and leaves it as it was (no
mode switch, no hook left behind), so the app can pass models cached for all
sessions. Level tensors come from :class:`hkd.models.taps.Tap`.
"""
from hkd.viz.cam import CamResult, attention_maps, detection_cam
from hkd.viz.divergence import Case, case_similarities, divergence_chart, divergence_over_cases
from hkd.viz.draw import COLORS, compare_detections, comparison_rows, draw_boxes, draw_comparison
from hkd.viz.featmaps import (
    LevelView,
    adapter_difference,
    capture_levels,
    level_views,
    overlay,
    roi_features_for_box,
)
from hkd.viz.similarity import cosine, linear_cka, similarity_profile

__all__ = [
    "COLORS",
    "CamResult",
    "Case",
    "LevelView",
    "adapter_difference",
    "attention_maps",
    "capture_levels",
    "case_similarities",
    "compare_detections",
    "comparison_rows",
    "cosine",
    "detection_cam",
    "divergence_chart",
    "divergence_over_cases",
    "draw_boxes",
    "draw_comparison",
    "level_views",
    "linear_cka",
    "overlay",
    "roi_features_for_box",
    "similarity_profile",
]
