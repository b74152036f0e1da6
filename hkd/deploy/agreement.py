"""Do two backends detect the same? Detections of a candidate backend (onnxruntime) against a reference (PyTorch).

:func:`backend_agreement` pairs two lists of :class:`~hkd.models.inference.Detections`
image by image and reports the largest box and score differences
(:class:`Agreement`); :func:`check_backends` runs both backends first. The export
(:func:`hkd.deploy.export.export_onnx`) writes a file only when they agree.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["BOX_TOL_PX", "SCORE_TOL", "Agreement", "backend_agreement", "check_backends"]

BOX_TOL_PX = 1.0
SCORE_TOL = 1e-3


@dataclass
class Agreement:
    """How closely a candidate backend's detections follow the reference's, over a set of images.

    Detections are paired per image by :func:`hkd.eval.matching.match_pair` (IoU ≥ 0.5).
    ``max_box_diff_px`` is the largest coordinate difference of a pair, ``max_score_diff``
    the largest score difference. An unpaired detection is *borderline* when its
    score is within ``score_tol`` of the score threshold, or of the lowest score of
    the other side when that side hit ``max_dets``: tiny float differences decide
    whether such a box is kept at all. Anything else unpaired is a real difference.
    """

    images: int = 0
    reference: int = 0
    candidate: int = 0
    matched: int = 0
    max_box_diff_px: float = 0.0
    max_score_diff: float = 0.0
    borderline: int = 0
    unmatched: list[dict] = field(default_factory=list)  # {"image", "side", "score", "box"} of real differences
    box_tol_px: float = BOX_TOL_PX
    score_tol: float = SCORE_TOL
    names: tuple[str, str] = ("pytorch", "onnxruntime")

    @property
    def ok(self) -> bool:
        return (self.max_box_diff_px <= self.box_tol_px and self.max_score_diff <= self.score_tol
                and not self.unmatched)

    def summary(self) -> str:
        ref, cand = self.names
        head = (f"{self.matched} of {self.reference} {ref} / {self.candidate} {cand} detections paired on "
                f"{self.images} images; max box difference {self.max_box_diff_px:.4f} px "
                f"(tolerance {self.box_tol_px:g}), max score difference {self.max_score_diff:.2e} "
                f"(tolerance {self.score_tol:g})")
        if self.borderline:
            head += f"; {self.borderline} unpaired at the score threshold / max_dets cut"
        if self.unmatched:
            worst = max(self.unmatched, key=lambda u: u["score"])
            head += (f"; {len(self.unmatched)} detections found by one backend only "
                     f"(e.g. image {worst['image']}: {worst['side']} score {worst['score']:.3f} "
                     f"at {[round(v, 1) for v in worst['box']]})")
        return ("OK: " if self.ok else "MISMATCH: ") + head

    def to_dict(self) -> dict:
        out = asdict(self)
        out["names"] = list(self.names)
        out["ok"] = self.ok
        return out


def backend_agreement(
    reference: Sequence, candidate: Sequence, *, score_thresh: float = 0.05, max_dets: int = 100,
    box_tol_px: float = BOX_TOL_PX, score_tol: float = SCORE_TOL, names: tuple[str, str] = ("pytorch", "onnxruntime"),
) -> Agreement:
    """How closely ``candidate``'s detections follow ``reference``'s: two backends' (e.g. PyTorch and
    onnxruntime) :class:`~hkd.models.inference.Detections` of the same images, paired image by image.

    ``score_thresh``/``max_dets`` are the filter both lists went through (they
    decide which unpaired boxes are borderline).
    """
    from hkd.eval.matching import match_pair

    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference images but {len(candidate)} candidate images")
    report = Agreement(images=len(reference), box_tol_px=box_tol_px, score_tol=score_tol, names=names)
    for index, (ref, cand) in enumerate(zip(reference, candidate)):
        report.reference += len(ref)
        report.candidate += len(cand)
        pair = match_pair(ref.boxes, ref.scores, cand.boxes, cand.scores, iou_threshold=0.5)
        hit = pair.a_to_b >= 0
        report.matched += int(hit.sum())
        if hit.any():
            mate = pair.a_to_b[hit]
            box_diff = np.abs(ref.boxes[hit].astype(np.float64) - cand.boxes[mate]).max()
            score_diff = np.abs(ref.scores[hit].astype(np.float64) - cand.scores[mate]).max()
            report.max_box_diff_px = max(report.max_box_diff_px, float(box_diff))
            report.max_score_diff = max(report.max_score_diff, float(score_diff))
        for side, dets, other, alone in ((names[0], ref, cand, pair.a_only), (names[1], cand, ref, pair.b_only)):
            floor = score_thresh
            if len(other) >= max_dets:
                floor = max(floor, float(other.scores.min()))
            for k in np.flatnonzero(alone):
                score = float(dets.scores[k])
                if score <= floor + score_tol:
                    report.borderline += 1
                else:
                    report.unmatched.append({"image": index, "side": side, "score": score,
                                             "box": [float(v) for v in dets.boxes[k]]})
    return report


def check_backends(model, detector, images: Sequence, *, score_thresh: float = 0.05, max_dets: int = 100,
                   box_tol_px: float = BOX_TOL_PX, score_tol: float = SCORE_TOL) -> tuple[Agreement, list, list]:
    """Run ``model`` (PyTorch, eval mode) and ``detector`` on ``images``; returns (agreement, reference, candidate).

    ``images``: uint8 (H, W, 3) arrays or float (3, H, W) tensors.
    """
    from hkd.models.inference import detect

    reference = [detect(model, [im], score_thresh=score_thresh, max_dets=max_dets)[0] for im in images]
    candidate = [detector.detect([im], score_thresh=score_thresh, max_dets=max_dets)[0] for im in images]
    agreement = backend_agreement(reference, candidate, score_thresh=score_thresh, max_dets=max_dets,
                                  box_tol_px=box_tol_px, score_tol=score_tol)
    return agreement, reference, candidate
