"""Detection evaluation on boxes: CityPersons MR⁻², COCO AP and per-image matching.

Works on boxes and scores only; imports nothing else from :mod:`hkd`.

* :func:`evaluate_mr` — log-average miss rate per setup (Reasonable, Small,
  Heavy, All), numerically identical to the official CityPersons script.
* :func:`evaluate_ap` — AP50 and AP@[.5:.95] from pycocotools' COCOeval.
* :func:`match_image` — per-image TP/FP/FN under one setup, for failure analysis.
"""
from hkd.eval.ap import evaluate_ap
from hkd.eval.matching import (
    SETUP_NAMES,
    SETUPS,
    FppiMissRateCurve,
    ImageMatch,
    Setup,
    fppi_miss_rate_curve,
    match_image,
)
from hkd.eval.mr import MRResult, SetupResult, evaluate_mr, parse_detections, parse_ground_truth

__all__ = [
    "SETUPS",
    "SETUP_NAMES",
    "FppiMissRateCurve",
    "ImageMatch",
    "MRResult",
    "Setup",
    "SetupResult",
    "evaluate_ap",
    "evaluate_mr",
    "fppi_miss_rate_curve",
    "match_image",
    "parse_detections",
    "parse_ground_truth",
]
