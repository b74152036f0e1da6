"""Ship the train_large set: copy the candidates to assets/checkpoints/ with their metrics on the whole
SynthPed val split (from the predictions bench/seed_table.py keeps in runs/seed_val/) and the notes
the demo checkpoints carry; the teacher's aux heads refitted for the new teacher go beside them.

    python bench/records/tlarge/ship.py
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from hkd.models.checkpoint import update_metadata
from hkd.models.meta import atomic_write, file_sha256

ROOT = Path(__file__).resolve().parents[3]
DEST = ROOT / "assets" / "checkpoints"
VAL = ROOT / "data" / "synthped" / "val"
DATASET = "SynthPed val (500 images, seed 1000)"
# a run's metadata names the checkpoint it started from as its parent; a demo checkpoint names its shipped
# teacher there, or nothing (tests/models/test_demo_checkpoints.py)
SHIP = {
    "teacher": ("runs/tlarge/teacher/checkpoints/final.safetensors",
                "teacher (2500 steps on train, then 600 on train_large: people up to 1.6x the frame's height)",
                {"parent": None}),
    "student_baseline": ("runs/large/base_s0/checkpoints/final.safetensors",
                         "student without KD, 1600 steps on train, then 800 on train_large, seed 0",
                         {"parent": None}),
    "student_hkd": ("runs/tlarge/hkd_s0/checkpoints/final.safetensors",
                    "student + HKD of all hierarchies with trust in the teacher, distill_trust.yaml, 1600 steps on "
                    "train, then 800 on train_large distilled from the train_large teacher, seed 0",
                    {"parent": "teacher.safetensors"}),
}

for name, (ckpt, note, changes) in SHIP.items():
    ckpt = ROOT / ckpt
    dets = ROOT / "runs" / "seed_val" / f"{ckpt.stem}-{file_sha256(ckpt)[:12]}.json"
    out = subprocess.run([sys.executable, "-m", "hkd", "eval", "--gt", str(VAL / "annotations.json"), "--dets", str(dets),
                          "--json"], check=True, capture_output=True, text=True).stdout
    metrics = {**json.loads(out), "dataset": DATASET}
    update_metadata(ckpt, DEST / f"{name}.safetensors", metrics=metrics, notes=f"HKD Studio demo checkpoint ({note})",
                    **changes)
    print(f"shipped {name}: val MR-2 Reasonable {metrics['mr']['Reasonable']:.2f}")
atomic_write(DEST / "teacher_aux.safetensors",
             lambda tmp: shutil.copyfile(ROOT / "runs/tlarge/aux/teacher_aux.safetensors", tmp))
print("shipped teacher_aux (hkd train-aux --teacher runs/tlarge/teacher/checkpoints/final.safetensors "
      "--data data/synthped/train --steps 200 --crop 64 --seed 0 --threads 1)")
