"""Detection evaluation on boxes: CityPersons MR⁻², COCO AP and per-image matching.

Works on boxes and scores only; imports nothing else from :mod:`hkd`.

* :func:`evaluate_mr` — log-average miss rate per setup (Reasonable, Small,
  Heavy, All), numerically identical to the official CityPersons script.
* :func:`evaluate_ap` — AP50 and AP@[.5:.95] from pycocotools' COCOeval.
* :func:`match_image` — per-image TP/FP/FN under one setup, for failure analysis.
* :func:`match_pair` — two models' detections matched with each other (agreement).
* :func:`compare_models` — several detectors on one GT set: MR⁻², operating
  points, miss rate per height/visibility bin, disagreements (``hkd compare``).
"""
from hkd.eval.ap import evaluate_ap
from hkd.eval.compare import (
    HEIGHT_BINS,
    VISIBILITY_BINS,
    ComparisonInputError,
    ComparisonReport,
    compare_models,
)
from hkd.eval.matching import (
    SETUP_NAMES,
    SETUPS,
    FppiMissRateCurve,
    ImageMatch,
    PairMatch,
    Setup,
    fppi_miss_rate_curve,
    match_image,
    match_pair,
)
from hkd.eval.mr import MRResult, SetupResult, evaluate_mr, parse_detections, parse_ground_truth

__all__ = [
    "HEIGHT_BINS",
    "SETUPS",
    "SETUP_NAMES",
    "VISIBILITY_BINS",
    "ComparisonInputError",
    "ComparisonReport",
    "FppiMissRateCurve",
    "ImageMatch",
    "MRResult",
    "PairMatch",
    "Setup",
    "SetupResult",
    "compare_models",
    "evaluate_ap",
    "evaluate_mr",
    "fppi_miss_rate_curve",
    "match_image",
    "match_pair",
    "parse_detections",
    "parse_ground_truth",
]
