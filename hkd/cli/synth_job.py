"""The ``synth`` command as a background job (:mod:`hkd.jobs.kinds`): a SynthPed split generated
in the background, into a new folder only."""
from __future__ import annotations

import os
from pathlib import Path

from hkd.jobs import JobError, JobKind, Launch, default_threads, register


def prepare(folder: Path, *, out: str | os.PathLike, num: int, seed: int, threads: int | None = None,
            name: str | None = None) -> Launch:
    """``hkd synth --out OUT --num N --seed S``."""
    from hkd.data.synth.dataset import MAX_IMAGES

    out = Path(out).expanduser().resolve()
    if not 0 < num <= MAX_IMAGES:
        raise JobError(f"num must be a number of images from 1 to {MAX_IMAGES:,}, got {str(num)[:40]}")
    if out.exists() and any(out.iterdir()):
        raise JobError(f"{out} is not empty; SynthPed is generated only into a new folder")
    workers = int(threads or default_threads())
    status = folder / "status.json"
    args = ["--out", str(out), "--num", str(num), "--seed", str(seed), "--workers", str(workers),
            "--no-progress", "--status", str(status)]
    return Launch(args, name=name or f"SynthPed {out.name}", threads=workers,
                  summary={"out": str(out), "num": num, "seed": seed}, outputs={"dataset": str(out)},
                  status_path=status)


register(JobKind("synth", prepare=prepare))
