"""Boxes on images, and the teacher-vs-student comparison of detections.

Images are (H, W, 3) uint8 RGB; colours are (r, g, b); boxes are xyxy in image
pixels. Drawing never modifies the input image.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from hkd.eval.matching import match_pair

# Colours of the comparison (the app's legend reads these).
COLORS: dict[str, tuple[int, int, int]] = {
    "agreed": (40, 200, 60),
    "teacher_only": (40, 120, 255),
    "student_only": (255, 150, 20),
    "ground_truth": (225, 225, 225),
}
STATUSES = ("agreed", "teacher_only", "student_only")

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    *,
    scores: np.ndarray | Sequence[float] | None = None,
    color: tuple[int, int, int] = COLORS["agreed"],
    labels: list[str] | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """A copy of ``image`` with (K, 4) xyxy ``boxes`` drawn (anti-aliased).

    Each box gets a caption when it has a label or a score: ``"label 0.87"``,
    ``"label"`` or ``"0.87"``, on a filled tab of the box's colour.
    """
    out = _check_image(image).copy()
    boxes = _as_boxes(boxes)
    if scores is not None and len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), tuple(int(c) for c in color), thickness, cv2.LINE_AA)
        parts = []
        if labels is not None:
            parts.append(str(labels[i]))
        if scores is not None:
            parts.append(f"{float(scores[i]):.2f}")
        if parts:
            _caption(out, " ".join(parts), (x1, y1), color)
    return out


def comparison_rows(
    teacher_boxes: np.ndarray,
    teacher_scores: np.ndarray,
    student_boxes: np.ndarray,
    student_scores: np.ndarray,
    iou_thresh: float = 0.5,
) -> list[dict]:
    """The rows of a teacher-vs-student box comparison: detections matched (:func:`hkd.eval.matching.match_pair`).

    The one greedy matcher of :mod:`hkd.eval.matching`, with the teacher as
    model A: teacher detections are visited highest score first, each takes
    the unmatched student detection with the highest IoU if that IoU >=
    ``iou_thresh`` (on equal IoU, the higher-scoring student box). Any two
    models can be compared this way; "teacher" and "student" name the
    first and second argument.

    Returns rows ``{"box", "score_teacher", "score_student", "iou", "status"}``:
    ``agreed`` (the teacher's box, both scores, their IoU) in teacher-score
    order, then ``teacher_only`` (student score and IoU ``None``) in
    teacher-score order, then ``student_only`` (teacher score and IoU
    ``None``) by student score.
    """
    t_boxes, s_boxes = _as_boxes(teacher_boxes), _as_boxes(student_boxes)
    t_scores = np.asarray(teacher_scores, dtype=np.float64).reshape(-1)
    s_scores = np.asarray(student_scores, dtype=np.float64).reshape(-1)
    if len(t_scores) != len(t_boxes) or len(s_scores) != len(s_boxes):
        raise ValueError("each detection needs one score: "
                         f"teacher {len(t_boxes)} boxes/{len(t_scores)} scores, student {len(s_boxes)}/{len(s_scores)}")
    pair = match_pair(t_boxes, t_scores, s_boxes, s_scores, iou_threshold=iou_thresh)
    matched, teacher_only = [], []
    for t in np.argsort(-t_scores, kind="stable"):
        s = int(pair.a_to_b[t])
        if s >= 0:
            matched.append(_row(t_boxes[t], t_scores[t], s_scores[s], pair.iou[t], "agreed"))
        else:
            teacher_only.append(_row(t_boxes[t], t_scores[t], None, None, "teacher_only"))
    student_only = [
        _row(s_boxes[s], None, s_scores[s], None, "student_only")
        for s in np.argsort(-s_scores, kind="stable") if pair.b_only[s]
    ]
    return matched + teacher_only + student_only


compare_detections = comparison_rows  # the old name, still used by app/ (backend agreement is hkd.deploy's)


def draw_comparison(
    image: np.ndarray,
    rows: list[dict],
    gt_boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
    *,
    labels: tuple[str, str] = ("T", "S"),
    colors: dict[str, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """A copy of ``image`` with :func:`comparison_rows` drawn in :data:`COLORS`.

    Agreed boxes green (caption ``T 0.91 S 0.85``), teacher-only blue
    (``T 0.91``), student-only orange (``S 0.85``); ground-truth boxes, if
    given, dashed light grey underneath. ``labels`` are the caption prefixes
    of the first and second model compared (default teacher, student), and
    ``colors`` overrides :data:`COLORS` per status (e.g. each model's own colour).
    """
    palette = {**COLORS, **(colors or {})}
    out = _check_image(image).copy()
    if gt_boxes is not None:
        for box in _as_boxes(gt_boxes):
            _dashed_rectangle(out, box, palette["ground_truth"], 1)
    for row in rows:
        status = row["status"]
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}")
        parts = []
        if row.get("score_teacher") is not None:
            parts.append(f"{labels[0]} {row['score_teacher']:.2f}")
        if row.get("score_student") is not None:
            parts.append(f"{labels[1]} {row['score_student']:.2f}")
        x1, y1, x2, y2 = (int(round(float(v))) for v in row["box"])
        color = tuple(int(c) for c in palette[status])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2, cv2.LINE_AA)
        _caption(out, " ".join(parts), (x1, y1), color)
    return out


# ---------------------------------------------------------------------------
def _row(box, score_teacher, score_student, iou, status) -> dict:
    return {
        "box": [float(v) for v in box],
        "score_teacher": None if score_teacher is None else float(score_teacher),
        "score_student": None if score_student is None else float(score_student),
        "iou": None if iou is None else float(iou),
        "status": status,
    }


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {getattr(image, 'shape', type(image))}")
    return image


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) xyxy, got shape {arr.shape}")
    return arr


def _caption(image: np.ndarray, text: str, corner: tuple[int, int], color) -> None:
    """Text on a filled tab above the box corner (below it at the image's top edge)."""
    if not text:
        return
    scale = max(0.35, min(0.6, image.shape[0] / 900))
    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = max(corner[0], 0), corner[1]
    top = y - h - base - 2 if y - h - base - 2 >= 0 else y
    cv2.rectangle(image, (x, top), (x + w + 4, top + h + base + 2), tuple(int(c) for c in color), -1)
    ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    cv2.putText(image, text, (x + 2, top + h + 1), _FONT, scale, ink, 1, cv2.LINE_AA)


def _dashed_rectangle(image: np.ndarray, box, color, thickness: int, dash: int = 6) -> None:
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length, 2 * dash):
            end = min(start + dash, length)
            p = (ax + (bx - ax) * start // max(length, 1), ay + (by - ay) * start // max(length, 1))
            q = (ax + (bx - ax) * end // max(length, 1), ay + (by - ay) * end // max(length, 1))
            cv2.line(image, p, q, color, thickness, cv2.LINE_AA)
