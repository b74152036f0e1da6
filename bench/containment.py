"""Suppressing boxes mostly contained in a higher-scoring one: MR⁻² and false positives by type.

    python bench/containment.py --split tune [--thresholds off 0.9 0.8 0.7] [--models teacher ...]
    python bench/containment.py --split val --thresholds off 0.8 --bootstrap 1000

Each shipped checkpoint predicts the split ONCE (``hkd predict --threads 1
--score-thresh 0.05``, to ``runs/containment/<split>_<model>.json``; an
existing file is reused), then
:func:`hkd.models.inference.suppress_contained` is applied to the saved
detections offline, image by image, at each containment threshold — the same
boxes ``hkd predict --suppress-contained C`` would write (it runs after the
score threshold and the 100-detection cap). For each model and threshold:

* MR⁻² Reasonable and All (:func:`hkd.eval.mr.evaluate_mr`);
* at the operating point of the model *without* suppression (its score at
  FPPI 0.1 on Reasonable, as ``hkd compare`` picks it), one fixed threshold
  for every variant of the model: the miss rate on Reasonable and the false
  positives by type (:func:`hkd.eval.errors.false_positive_errors`:
  duplicate, crowd, part_of_person, localization, background);
* the same counts at score 0.5 (what the demo pages draw by default) in the JSON.

The choice (:func:`choose`, meant for tune): the threshold that halves the
part-of-person false positives at the models' operating points (summed over
the models) without losing more than 1 point of MR⁻² Reasonable on any
model; among those, the lowest mean MR⁻² Reasonable. With ``--bootstrap R``: the paired bootstrap interval (95 %, R
resamples of the images, seed 0) of MR⁻²(with) − MR⁻²(without) per model and
threshold (:func:`hkd.eval.bootstrap.bootstrap_intervals`); negative: suppression helps.
Writes ``runs/containment/<split>.json`` and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("teacher", "student_baseline", "student_hkd")
SETUPS = ("Reasonable", "All")
FPPI = 0.1
DISPLAY_SCORE = 0.5
# the choice: halve part-of-person false positives at the operating point, losing at most this much MR⁻² Reasonable
MAX_MR_LOSS = 1.0
PART_FACTOR = 0.5


def predict(model: str, split: str, out_dir: Path) -> Path:
    """``runs/containment/<split>_<model>.json``, predicted once (kept when it exists)."""
    out = out_dir / f"{split}_{model}.json"
    if out.exists() and out.stat().st_size > 0:
        return out
    data = ROOT / "data" / "synthped" / split
    checkpoint = ROOT / "assets" / "checkpoints" / f"{model}.safetensors"
    cmd = [sys.executable, "-m", "hkd", "predict", "--checkpoint", str(checkpoint),
           "--images", str(data / "images"), "--gt", str(data / "annotations.json"), "--out", str(out),
           "--score-thresh", "0.05", "--threads", "1", "--device", "cpu", "--no-progress"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"# predicted {model} on {split} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


def parse_threshold(text: str) -> tuple[float, float] | None:
    """``"off"`` → None; ``"C"`` → (C, 1.0); ``"C:R"`` → containment C with score_ratio R."""
    if text == "off":
        return None
    containment, _, ratio = text.partition(":")
    return float(containment), float(ratio or 1.0)


def suppress(found, threshold: tuple[float, float] | None):
    """The parsed detections (:class:`hkd.eval.mr.Detections`) after suppression at
    ``(containment, score_ratio)``, image by image; None: unchanged."""
    from hkd.models.inference import suppress_contained

    if threshold is None:
        return found
    containment, ratio = threshold
    return per_image(found, lambda boxes, scores: (
        suppress_contained(boxes, scores, containment=containment, score_ratio=ratio), None))


def per_image(found, rule):
    """``found`` (:class:`hkd.eval.mr.Detections`) after ``rule(boxes_xyxy, scores) -> (kept indices, their new
    scores or None)`` applied to each image's detections."""
    from hkd.eval.mr import Detections

    keep = np.zeros(len(found.score), dtype=bool)
    score = found.score.copy()
    order = np.argsort(found.image, kind="stable")
    bounds = np.flatnonzero(np.diff(found.image[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows) == 0:
            continue
        xywh = found.bbox[rows]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        kept, new = rule(boxes, found.score[rows])
        keep[rows[kept]] = True
        if new is not None:
            score[rows[kept]] = new
    return Detections(image=found.image[keep], category=found.category[keep], bbox=found.bbox[keep],
                      score=score[keep])


def people_at_risk(truth, containment: float) -> dict[str, int]:
    """GT people a perfect detector would lose: ``{setup: (counted people, those with at least
    ``containment`` of their box inside another person's box)}`` — a person standing behind another is
    removed when the nearer one scores higher, whatever the detector."""
    from hkd.eval.matching import get_setup
    from hkd.eval.mr import PEDESTRIAN_CATEGORY

    people = (truth.ann_category == PEDESTRIAN_CATEGORY) & ~truth.ignore
    xyxy = np.concatenate([truth.bbox[:, :2], truth.bbox[:, :2] + truth.bbox[:, 2:]], axis=1)
    inside = np.zeros(len(people), dtype=bool)
    for img in np.unique(truth.ann_image[people]):
        rows = np.flatnonzero(people & (truth.ann_image == img))
        b = xyxy[rows]
        lt = np.maximum(b[:, None, :2], b[None, :, :2])
        rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = np.clip(rb - lt, 0, None).prod(axis=2)
        area = np.prod(b[:, 2:] - b[:, :2], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ioa = np.where(area[:, None] > 0, inter / area[:, None], 0.0)
        np.fill_diagonal(ioa, 0.0)
        inside[rows] = (ioa >= containment).any(axis=1)
    out = {}
    for name in SETUPS:
        spec = get_setup(name)
        counted = (people & (truth.height >= spec.height_range[0]) & (truth.height <= spec.height_range[1])
                   & (truth.visibility >= spec.visibility_range[0]) & (truth.visibility <= spec.visibility_range[1]))
        out[name] = (int(counted.sum()), int((counted & inside).sum()))
    return out


def measure(truth, found, base_score: float) -> dict:
    """MR⁻², and at ``base_score`` (and 0.5): miss rate, FPPI and false positives by type."""
    from hkd.eval.compare import operating_point
    from hkd.eval.errors import false_positive_errors
    from hkd.eval.mr import evaluate_mr

    mr = evaluate_mr(truth, found, setups=list(SETUPS))
    curve = mr.setups["Reasonable"].curve
    at_op = operating_point(curve, base_score, FPPI, "Reasonable")
    own = operating_point(curve, None, FPPI, "Reasonable")
    errors = false_positive_errors(truth, found, score=base_score, setup="Reasonable")
    display = false_positive_errors(truth, found, score=DISPLAY_SCORE, setup="Reasonable")
    return {
        "mr": {name: float(mr.mr[name]) for name in SETUPS},
        "num_detections": int(len(found.score)),
        "operating_score": float(base_score),
        "miss_rate": at_op["miss_rate"],
        "fppi": at_op["fppi"],
        "miss_rate_at_own_fppi_0.1": own["miss_rate"],
        "fp": dict(errors.counts),
        "fp_any_score": dict(errors.counts_any_score),
        "fp_at_0.5": dict(display.counts),
    }


def measure_variants(truth, variants: dict, resamples: int = 0) -> tuple[dict, dict, dict]:
    """Each variant of one model's detections (``{name: parsed Detections}``, ``"off"`` the model's own)
    measured (:func:`measure`) at the operating score of ``"off"`` (FPPI 0.1 on Reasonable): ``(results,
    boxes each removed, paired intervals of MR⁻² variant − off)``, the intervals ``{}`` when ``resamples``
    is 0, else R resamples of the images, seed 0."""
    from hkd.eval.bootstrap import bootstrap_intervals
    from hkd.eval.compare import operating_point
    from hkd.eval.mr import evaluate_mr

    own = variants["off"]
    curve = evaluate_mr(truth, own, setups=["Reasonable"]).setups["Reasonable"].curve
    base_score = operating_point(curve, None, FPPI, "Reasonable")["score"]
    results = {name: measure(truth, found, base_score) for name, found in variants.items()}
    removed = {name: int(len(own.score) - len(found.score)) for name, found in variants.items()}
    intervals = {}
    if resamples:
        report = bootstrap_intervals(truth, variants, resamples=resamples, seed=0, setups=list(SETUPS))
        # the report's differences are off − variant; kept (and printed) as variant − off
        intervals = {name: {m: _flip(report.differences[("off", name)][m]) for m in SETUPS}
                     for name in variants if name != "off"}
    return results, removed, intervals


def intervals_table(intervals: dict[str, dict[str, dict]], column: str) -> str:
    """Markdown rows ``model | variant | Δ MR⁻² per setup [95 %]`` of :func:`measure_variants`' intervals."""
    lines = [f"| model | {column} | " + " | ".join(f"Δ MR⁻² {'R' if m == 'Reasonable' else m} [95 %]" for m in SETUPS)
             + " |", "|---|---|" + "---|" * len(SETUPS)]
    for model, by_variant in intervals.items():
        for name, by_m in by_variant.items():
            cells = [f"{d['point']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" for d in (by_m[m] for m in SETUPS)]
            lines.append(f"| {model} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def choose(results: dict[str, dict[str, dict]], thresholds: list[str], counts: str = "fp") -> tuple[str, list[str]]:
    """The threshold that halves the part-of-person false positives at the operating points (summed over
    the models: a few per model at FPPI 0.1) and loses at most 1 point of MR⁻² Reasonable on any model;
    among those, the lowest mean MR⁻² Reasonable (ties: the larger containment, the gentler one);
    ``"off"`` when none qualifies. Also the reasons each threshold fails. ``counts``: ``"fp"`` (the false
    positives at the operating point) or ``"fp_at_0.5"`` (at score 0.5, what the demo pages draw)."""
    ok, reasons = [], []
    for t in thresholds:
        if t == "off":
            continue
        why = []
        part_off = sum(by_t["off"][counts]["part_of_person"] for by_t in results.values())
        part_on = sum(by_t[t][counts]["part_of_person"] for by_t in results.values())
        if part_on > PART_FACTOR * part_off:
            why.append(f"part-of-person {part_off} → {part_on} (all models)")
        for model, by_t in results.items():
            off, on = by_t["off"], by_t[t]
            loss = on["mr"]["Reasonable"] - off["mr"]["Reasonable"]
            if loss > MAX_MR_LOSS:
                why.append(f"{model}: MR⁻² Reasonable +{loss:.2f}")
        if why:
            reasons.append(f"{t}: " + "; ".join(why))
        else:
            ok.append(t)
    if not ok:
        return "off", reasons
    mean = {t: np.mean([by_t[t]["mr"]["Reasonable"] for by_t in results.values()]) for t in ok}
    return min(ok, key=lambda t: (round(mean[t], 6), -parse_threshold(t)[0], parse_threshold(t)[1])), reasons


def _flip(interval) -> dict:
    """An interval of ``a − b`` as one of ``b − a``."""
    return {"point": -interval.point, "low": -interval.high, "high": -interval.low,
            "within_noise": interval.within_noise}


def table(results: dict[str, dict[str, dict]]) -> str:
    from hkd.eval.errors import ERROR_TYPES

    short = {"duplicate": "dup", "crowd": "crowd", "part_of_person": "part", "localization": "loc",
             "background": "bg"}
    lines = ["| model | containment | MR⁻² R | MR⁻² All | miss @FPPI 0.1 | score | miss @score | FPPI @score | "
             + " | ".join(short[t] for t in ERROR_TYPES) + " | FP | part @0.5 | crowd @0.5 | dup @0.5 |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(ERROR_TYPES) + 4)]
    for model, by_t in results.items():
        for t, r in by_t.items():
            fp = r["fp"]
            lines.append(
                f"| {model} | {t} | {r['mr']['Reasonable']:.2f} | {r['mr']['All']:.2f} | "
                f"{100 * r['miss_rate_at_own_fppi_0.1']:.1f} % | {r['operating_score']:.3f} | "
                f"{100 * r['miss_rate']:.1f} % | {r['fppi']:.3f} | "
                + " | ".join(str(fp[e]) for e in ERROR_TYPES)
                + f" | {sum(fp.values())} | {r['fp_at_0.5']['part_of_person']} | {r['fp_at_0.5']['crowd']} | "
                  f"{r['fp_at_0.5']['duplicate']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="tune", help="SynthPed split under data/synthped (default tune)")
    p.add_argument("--thresholds", nargs="+", default=["off", "0.9", "0.8", "0.7"],
                   help="containment thresholds C, or C:R with score_ratio R; 'off' is the models' own output "
                        "(default off 0.9 0.8 0.7)")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="checkpoints under assets/checkpoints")
    p.add_argument("--bootstrap", type=int, default=0, metavar="R",
                   help="paired bootstrap of MR⁻² with − without each threshold, R resamples (default: none)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "containment")
    args = p.parse_args()
    from hkd.eval.mr import parse_detections, parse_ground_truth
    from hkd.models.meta import atomic_write

    if "off" not in args.thresholds:
        args.thresholds.insert(0, "off")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    gt = json.loads((ROOT / "data" / "synthped" / args.split / "annotations.json").read_text())
    truth = parse_ground_truth(gt)
    results: dict[str, dict[str, dict]] = {}
    intervals: dict[str, dict[str, dict]] = {}
    removed: dict[str, dict[str, int]] = {}
    for model in args.models:
        found = parse_detections(json.loads(predict(model, args.split, args.out_dir).read_text()), truth)
        variants = {t: suppress(found, parse_threshold(t)) for t in args.thresholds}
        results[model], removed[model], paired = measure_variants(truth, variants, args.bootstrap)
        if paired:
            intervals[model] = paired
        print(f"# {model} done", file=sys.stderr, flush=True)

    choice, reasons = choose(results, args.thresholds)
    display_choice, display_reasons = choose(results, args.thresholds, counts="fp_at_0.5")
    risk = {t: people_at_risk(truth, parse_threshold(t)[0]) for t in args.thresholds if t != "off"}
    print(f"## {args.split}: {len(truth.image_ids)} images\n")
    print(table(results))
    print("\nPeople with at least C of their box inside another person's box (lost to suppression whenever "
          "the other scores higher):\n")
    print("| containment | " + " | ".join(SETUPS) + " |\n|---|" + "---|" * len(SETUPS))
    for t, by_setup in risk.items():
        cells = [f"{k} of {n} ({100 * k / max(n, 1):.1f} %)" for n, k in by_setup.values()]
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("\nBoxes removed (all scores): " + "; ".join(
        f"{model} " + ", ".join(f"{t}: {n}" for t, n in by_t.items() if t != "off") for model, by_t in removed.items()))
    if args.bootstrap:
        print("\nPaired bootstrap (images resampled, 95 %), MR⁻² with − without (negative: suppression helps):\n")
        print(intervals_table(intervals, "containment"))
    print(f"\nchoice by the rule (part-of-person FPs at the operating points halved, MR⁻² Reasonable "
          f"+{MAX_MR_LOSS:g} at most): {choice}")
    for line in reasons:
        print(f"- not {line}")
    print(f"\nthe same rule on the false positives at score {DISPLAY_SCORE:g} (the demo's threshold): {display_choice}")
    for line in display_reasons:
        print(f"- not {line}")
    record = {"split": args.split, "num_images": len(truth.image_ids), "results": results, "removed": removed,
              "people_at_risk": risk,
              "bootstrap": intervals, "bootstrap_resamples": args.bootstrap, "choice": choice, "reasons": reasons,
              "choice_at_0.5": display_choice, "reasons_at_0.5": display_reasons}
    text = json.dumps(record, indent=1)
    atomic_write(args.out_dir / f"{args.split}.json", lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
