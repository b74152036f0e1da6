"""The evaluation workflow: a dataset and checkpoints → cached predictions → the comparison
(:mod:`hkd.evaluation.workflow`; what ``hkd compare --data`` runs and the Evaluate page shows)."""
from __future__ import annotations

from hkd.evaluation.workflow import (Checkpoint, EvaluationError, GroundTruth, LazyDataset, PredictionsReport, check_gt,
                                     checkpoint, compare, dataset_ground_truth, dataset_gt, dataset_key, evaluate, ground_truth,
                                     gt_digest, images_digest, images_folder, is_gt_json, predict_all, prediction_entry,
                                     read_predictions)

__all__ = ["Checkpoint", "EvaluationError", "GroundTruth", "LazyDataset", "PredictionsReport", "check_gt", "checkpoint", "compare",
           "dataset_ground_truth", "dataset_gt", "dataset_key", "evaluate", "ground_truth", "gt_digest", "images_digest", "images_folder", "is_gt_json", "predict_all",
           "prediction_entry", "read_predictions"]
