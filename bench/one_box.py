"""One box per person: group boxes and fragments resolved, against the models' own output and contained-box suppression.

    python bench/one_box.py --split tune [--variants off c0.9 n0.8/0.75/0.5 ...] [--models teacher ...]
    python bench/one_box.py --split val --variants off c0.9 n0.8/0.75/0.5 --bootstrap 1000

Each shipped checkpoint predicts the split ONCE, as ``bench/containment.py``
does (``runs/containment/<split>_<model>.json``, ``--score-thresh 0.05``;
an existing file is reused); each variant is then applied to the saved
detections offline, image by image — the boxes ``hkd predict`` would write
with the same option (it runs after the score threshold and the
100-detection cap). Variants:

* ``off`` — the models' own output;
* ``cC`` — :func:`hkd.models.inference.suppress_contained` at containment C
  (``hkd predict --suppress-contained C``);
* ``nI/P/S`` — :func:`resolve_nested` (below) with ``inside=I``,
  ``part_height=P``, ``min_score=S``: group boxes removed, fragments removed
  with their score passed to their container; ``gI/P/S`` only its group step,
  ``pI/P/S`` only its fragment step, ``qI/P/S`` the fragment step without the
  score transfer.

Measured per model and variant as in ``bench/containment.py`` (MR⁻² Reasonable
and All; at the operating score of the model's own output — FPPI 0.1 on
Reasonable — the miss rate, FPPI and false positives by type; the same counts
at score 0.5). The choice (:func:`choose`, made on tune): the variant that
halves the part-of-person plus crowd false positives at the operating points,
summed over the models, losing at most 1 point of MR⁻² Reasonable on any model;
among those, the lowest mean MR⁻² Reasonable. ``--bootstrap R``: the paired
interval (95 %, R resamples of the images, seed 0) of MR⁻²(variant) −
MR⁻²(off). Writes ``runs/one_box/<split>.json`` and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import numbers
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import containment  # noqa: E402  (bench/containment.py: the predictions, the measures and the table)

ROOT = Path(__file__).resolve().parents[1]
MAX_MR_LOSS = 1.0
FACTOR = 0.5
TARGET = ("part_of_person", "crowd")


def resolve_nested(boxes, scores, *, inside: float = 0.8, part_height: float = 0.75,
                   min_score: float = 0.5, groups: bool = True, parts: bool = True,
                   transfer: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One box per person: the boxes kept after removing group boxes and fragments, and their scores.

    Two kinds of nested box survive a detector's NMS because their IoU with the
    box they overlap is small: a **group box**, one box over two people standing
    side by side, each of whom also has a box of their own; and a **fragment**,
    a box on the legs or the torso inside a person's full-body box — often
    scoring *higher* than the body (so :func:`suppress_contained`, which lets a
    box be removed only by a higher-scoring one, cannot reach it). A box ``i``
    is *inside* a box ``j`` when ``area(i ∩ j) / area(i) >= inside``.

    1. Group boxes (``groups``): a box holding at least two boxes inside it that
       each score at least ``min_score``, are at least ``part_height`` of its
       height (whole people, not pieces), are narrower than it, and stand side
       by side (their horizontal overlap is less than half the narrower one's
       width) is removed, whatever its score.
    2. Fragments (``parts``): by ascending area, a box inside a remaining box at
       least ``1 / part_height`` times as tall that scores at least
       ``min_score`` (a confident person) is removed, and its score passes to
       that container when higher (the highest-scoring container, when there
       are several; ``transfer=False`` leaves the scores as they are): the
       evidence of the legs is evidence of the person. A fragment whose
       container scores below ``min_score`` is kept.

    A person standing behind another, whose box lies inside the nearer one's and
    is at most ``part_height`` of its height, reads as a fragment. Measured and
    not adopted: docs/BENCHMARKS.md ("Group boxes and fragments: a second
    post-processing lever, measured and rejected").

    Args:
        boxes: (K, 4) ``x1, y1, x2, y2``; scores: (K,).
        inside: share of a box's own area, in (0, 1], inside the other box.
        part_height: in (0, 1]: a fragment is at most this share of its
            container's height; a group's member at least this share of the
            group box's.
        min_score: in [0, 1]: the least score of a container or a group member.
        groups, parts: which of the two steps run.

    Returns:
        ``(keep, new_scores)``: (M,) int64 indices into ``boxes`` of the kept
        boxes, by descending new score (ties: input order), and (M,) float64
        their scores after the transfers.

    Raises:
        ValueError: an option out of range, or boxes and scores of mismatched shapes.
    """
    from hkd.models.inference import _fraction, boxes_and_scores

    inside = _fraction(inside, "inside")
    part_height = _fraction(part_height, "part_height")
    if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real) or not 0 <= min_score <= 1:
        raise ValueError(f"min_score must be a score in [0, 1], got {min_score!r}")
    b, s = boxes_and_scores(boxes, scores)
    n = len(s)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    w = np.clip(b[:, 2] - b[:, 0], 0, None)
    h = np.clip(b[:, 3] - b[:, 1], 0, None)
    area = w * h
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)  # [i, j] = area(i ∩ j)
    with np.errstate(divide="ignore", invalid="ignore"):
        within = np.where(area[:, None] > 0, inter / area[:, None], 0.0) >= inside  # [i, j]: i inside j
    np.fill_diagonal(within, False)  # a zero-area box is inside nothing and holds nothing: always kept
    keep = np.ones(n, dtype=bool)
    s = s.copy()
    if groups:
        for j in range(n):
            members = np.flatnonzero(within[:, j] & keep & (s >= min_score) & (h >= part_height * h[j])
                                     & (w < w[j]))
            if len(members) < 2:
                continue
            x1, x2 = b[members, 0], b[members, 2]
            overlap = np.clip(np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]), 0, None)
            narrower = np.minimum(w[members][:, None], w[members][None, :])
            apart = overlap < 0.5 * narrower
            np.fill_diagonal(apart, False)
            if apart.any():
                keep[j] = False
    if parts:
        for i in np.argsort(area, kind="stable"):
            if not keep[i]:
                continue
            containers = np.flatnonzero(within[i] & keep & (h[i] <= part_height * h) & (s >= min_score))
            if len(containers):
                j = containers[np.argmax(s[containers])]
                if transfer:
                    s[j] = max(s[j], s[i])
                keep[i] = False
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-s[idx], kind="stable")]
    return idx.astype(np.int64), s[idx]


def parse_variant(text: str) -> tuple[str, tuple[float, ...]]:
    """``off`` | ``cC`` | ``nI/P/S`` | ``gI/P/S`` | ``pI/P/S`` → (kind, numbers); a clear error otherwise."""
    if text == "off":
        return "off", ()
    kind, rest = text[:1], text[1:]
    try:
        numbers = tuple(float(v) for v in rest.split("/"))
    except ValueError:
        raise SystemExit(f"bad variant {text!r}: numbers expected after {kind!r}") from None
    if kind == "c" and len(numbers) == 1 or kind in "ngpq" and len(numbers) == 3:
        return kind, numbers
    raise SystemExit(f"bad variant {text!r}: off, cC or [ngp]I/P/S")


def apply(found, variant: str):
    """The parsed detections (:class:`hkd.eval.mr.Detections`) after ``variant``, image by image."""
    from hkd.models.inference import suppress_contained

    kind, nums = parse_variant(variant)
    if kind == "off":
        return found
    if kind == "c":
        return containment.per_image(found, lambda boxes, scores: (
            suppress_contained(boxes, scores, containment=nums[0]), None))
    return containment.per_image(found, lambda boxes, scores: resolve_nested(
        boxes, scores, inside=nums[0], part_height=nums[1], min_score=nums[2],
        groups=kind in "ng", parts=kind in "npq", transfer=kind != "q"))


def choose(results: dict[str, dict[str, dict]], variants: list[str], counts: str = "fp") -> tuple[str, list[str]]:
    """The variant that halves part-of-person + crowd false positives (summed over the models) at ``counts``
    (``"fp"``: the operating points; ``"fp_at_0.5"``) and loses at most 1 point of MR⁻² Reasonable on any
    model; among those the lowest mean MR⁻² Reasonable (ties: listed first); ``"off"`` when none does.
    Also the reasons each variant fails."""
    ok, reasons = [], []
    for v in variants:
        if v == "off":
            continue
        why = []
        before = sum(r["off"][counts][t] for r in results.values() for t in TARGET)
        after = sum(r[v][counts][t] for r in results.values() for t in TARGET)
        if after > FACTOR * before:
            why.append(f"part + crowd {before} → {after} (all models)")
        for model, by_v in results.items():
            loss = by_v[v]["mr"]["Reasonable"] - by_v["off"]["mr"]["Reasonable"]
            if loss > MAX_MR_LOSS:
                why.append(f"{model}: MR⁻² Reasonable +{loss:.2f}")
        (reasons.append(f"{v}: " + "; ".join(why)) if why else ok.append(v))
    if not ok:
        return "off", reasons
    mean = {v: np.mean([by_v[v]["mr"]["Reasonable"] for by_v in results.values()]) for v in ok}
    return min(ok, key=lambda v: (round(mean[v], 6), variants.index(v))), reasons


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="tune", help="SynthPed split under data/synthped (default tune)")
    p.add_argument("--variants", nargs="+", default=["off", "c0.9", "n0.8/0.75/0.5"],
                   help="off, cC, nI/P/S, gI/P/S, pI/P/S (default: off c0.9 n0.8/0.75/0.5)")
    p.add_argument("--models", nargs="+", default=list(containment.MODELS), help="checkpoints under assets/checkpoints")
    p.add_argument("--bootstrap", type=int, default=0, metavar="R",
                   help="paired bootstrap of MR⁻² variant − off, R resamples (default: none)")
    p.add_argument("--pred-dir", type=Path, default=ROOT / "runs" / "containment",
                   help="where the predictions are kept (default runs/containment, shared with bench/containment.py)")
    p.add_argument("--out", type=Path, default=None, help="the JSON record (default runs/one_box/<split>.json)")
    args = p.parse_args()
    from hkd.eval.mr import parse_detections, parse_ground_truth
    from hkd.models.meta import atomic_write

    for v in args.variants:
        parse_variant(v)
    if "off" not in args.variants:
        args.variants.insert(0, "off")
    args.pred_dir.mkdir(parents=True, exist_ok=True)
    out = args.out or ROOT / "runs" / "one_box" / f"{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = parse_ground_truth(json.loads((ROOT / "data" / "synthped" / args.split / "annotations.json").read_text()))
    results, intervals, removed = {}, {}, {}
    for model in args.models:
        found = parse_detections(json.loads(containment.predict(model, args.split, args.pred_dir).read_text()), truth)
        variants = {v: apply(found, v) for v in args.variants}
        results[model], removed[model], paired = containment.measure_variants(truth, variants, args.bootstrap)
        if paired:
            intervals[model] = paired
        print(f"# {model} done", file=sys.stderr, flush=True)
    choice, reasons = choose(results, args.variants)
    display_choice, display_reasons = choose(results, args.variants, counts="fp_at_0.5")
    print(f"## {args.split}: {len(truth.image_ids)} images\n")
    print(containment.table(results).replace("| containment |", "| variant |"))
    print("\nBoxes removed (all scores): " + "; ".join(
        f"{m} " + ", ".join(f"{v}: {n}" for v, n in by_v.items() if v != "off") for m, by_v in removed.items()))
    if args.bootstrap:
        print("\nPaired bootstrap (images resampled, 95 %), MR⁻² variant − off (negative: the variant helps):\n")
        print(containment.intervals_table(intervals, "variant"))
    print(f"\nchoice (part + crowd FPs at the operating points halved, MR⁻² Reasonable +{MAX_MR_LOSS:g} at most): {choice}")
    for line in reasons:
        print(f"- not {line}")
    print(f"\nthe same rule at score {containment.DISPLAY_SCORE:g}: {display_choice}")
    for line in display_reasons:
        print(f"- not {line}")
    text = json.dumps({"split": args.split, "num_images": len(truth.image_ids), "results": results,
                       "removed": removed, "bootstrap": intervals, "bootstrap_resamples": args.bootstrap,
                       "choice": choice, "reasons": reasons, "choice_at_0.5": display_choice,
                       "reasons_at_0.5": display_reasons}, indent=1)
    atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
