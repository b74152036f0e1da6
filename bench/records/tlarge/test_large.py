"""Large people (at least half the image tall, visibility >= 0.2: bench/zoom_out.py's Large setup) on a SynthPed
split (default test), one look, the models shipped before against the train_large set: MR-2 Large, the share of large people
missed at score 0.5 (what the Detections page draws) and the false positives per image there; paired 95 %
intervals of MR-2 Large before - now (1000 resamples of the images, seed 0). Reads the predictions
bench/seed_table.py keeps in runs/test_table/ (or bench/zoom_out.py's first passes in runs/zoom/<split>/).

    python bench/records/tlarge/test_large.py [SPLIT CACHE_DIR]   # default: test runs/test_table
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
from test_table import predictions  # noqa: E402
from zoom_out import large_setup, measure  # noqa: E402

from hkd.eval.bootstrap import bootstrap_intervals  # noqa: E402
from hkd.eval.mr import parse_detections, parse_ground_truth  # noqa: E402

B = "runs/shipped_before"  # the models shipped before: git show 0ea8fc4:assets/checkpoints/<name>.safetensors
# now: the runs whose tensors were shipped (assets/checkpoints/ holds them with their metadata rewritten)
PAIRS = {"teacher": (f"{B}/teacher.safetensors", "runs/tlarge/teacher/checkpoints/final.safetensors"),
         "no-KD student": (f"{B}/student_baseline.safetensors", "runs/large/base_s0/checkpoints/final.safetensors"),
         "HKD student": (f"{B}/student_hkd.safetensors", "runs/tlarge/hkd_s0/checkpoints/final.safetensors")}
SPLIT, CACHE = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else ("test", "runs/test_table")
gt = json.loads((ROOT / "data/synthped" / SPLIT / "annotations.json").read_text())
truth = parse_ground_truth(gt)
large = large_setup(gt)


def dets(ckpt: str):
    """The checkpoint's predictions (``hkd predict``), cached as bench/test_table.py caches them."""
    path = predictions(ROOT / ckpt, ROOT / "data/synthped" / SPLIT, ROOT / CACHE, threads=1)
    return parse_detections(json.loads(path.read_text()), truth)


print("| model | MR⁻² Large before → now | before − now (95 %) | large missed @0.5 | FPPI @0.5 (R) |")
print("|---|---:|---:|---:|---:|")
for name, (before, now) in PAIRS.items():
    d = {"before": dets(before), "now": dets(now)}
    m = {k: measure(truth, v, large) for k, v in d.items()}
    x = bootstrap_intervals(truth, d, resamples=1000, seed=0, setups=[large]).differences[("before", "now")]["Large"]
    print(f"| {name} | {m['before']['mr']['Large']:.2f} → {m['now']['mr']['Large']:.2f} "
          f"| {x.point:+.1f} ({x.low:+.1f} to {x.high:+.1f}) "
          f"| {m['before']['large_miss_at_0.5']:.1%} → {m['now']['large_miss_at_0.5']:.1%} "
          f"| {m['before']['fppi_at_0.5']:.2f} → {m['now']['fppi_at_0.5']:.2f} |")
print(f"\n{m['now']['large_people']} large people on {len(gt['images'])} {SPLIT} images")
