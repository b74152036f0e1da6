"""MR⁻² of bench/zoom_out.py's Large setup (people ≥ half the image tall, visibility ≥ 0.2), paired between
the students continued on train and on train_large, one look, on tune_large (1000 resamples, seed 0).
Reads the first-pass predictions bench/zoom_out.py keeps in runs/zoom/tune_large/.

    python bench/records/large/large_setup.py
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from zoom_out import large_setup  # noqa: E402

from hkd.eval.bootstrap import bootstrap_intervals  # noqa: E402
from hkd.eval.mr import parse_detections, parse_ground_truth  # noqa: E402

gt = json.load(open("data/synthped/tune_large/annotations.json"))
truth = parse_ground_truth(gt)
large = large_setup(gt)
d = "runs/zoom/tune_large/final-"  # <stem>-<sha256 prefix>.json of each checkpoint
for a, b, fa, fb in [("no_kd_train", "no_kd_large", "fd82d43967aa", "ada38a8ef553"),
                     ("hkd_train", "hkd_large", "ff9a24f2afeb", "defdbd287184")]:
    dets = {a: parse_detections(json.load(open(d + fa + ".json")), truth),
            b: parse_detections(json.load(open(d + fb + ".json")), truth)}
    r = bootstrap_intervals(truth, dets, resamples=1000, seed=0, setups=[large])
    x = r.differences[(a, b)]["Large"]
    print(f"{a} − {b}  MR⁻² Large  {x.point:+.1f} ({x.low:+.1f} to {x.high:+.1f})")
