"""How much a diagnosis pass costs over a plain prediction, image by image on the same model.

    python bench/diagnose_speed.py [--checkpoint assets/checkpoints/student_hkd.safetensors]
                                   [--data data/synthped/val] [--images 500] [--threads 1]

For each image, ``hkd predict``'s forward (:func:`hkd.models.inference.detect`) and ``hkd
diagnose``'s staged forward (:func:`hkd.analysis.stages.staged_forward`) run one after the other,
in alternating order, on the same loaded model: whatever else the machine does slows both alike,
so the ratio of their summed times holds on a busy host too. Image decoding is timed once and
added to both (both commands decode every image once). Prints one line per model and the ratio;
the target is a diagnosis pass ≤ 1.3× the prediction pass.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", default=None)
    p.add_argument("--data", default="data/synthped/val")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    from hkd.analysis.stages import staged_forward
    from hkd.data.images import load_image
    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.inference import detect

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    records = json.loads((data / "annotations.json").read_text())["images"][:args.images]
    checkpoints = args.checkpoint or ["assets/checkpoints/student_hkd.safetensors"]
    load = os.getloadavg()[0]
    for checkpoint in checkpoints:
        model = load_checkpoint(checkpoint, inference=True).model
        decode = predict = diagnose = 0.0
        for n, record in enumerate(records):
            start = time.perf_counter()
            image = load_image(data / "images" / record["file_name"])
            decode += time.perf_counter() - start
            for kind in (("predict", "diagnose") if n % 2 == 0 else ("diagnose", "predict")):
                start = time.perf_counter()
                if kind == "predict":
                    detect(model, [image])
                    predict += time.perf_counter() - start
                else:
                    staged_forward(model, image)
                    diagnose += time.perf_counter() - start
        print(f"{Path(checkpoint).name}: {len(records)} images, {args.threads} thread(s): predict "
              f"{decode + predict:.1f} s, diagnose {decode + diagnose:.1f} s, ratio "
              f"{(decode + diagnose) / (decode + predict):.3f} (decode {decode:.1f} s in both)")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; 1-min load at start {load:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
