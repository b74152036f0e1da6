"""The ``diagnose`` command as a background job (:mod:`hkd.jobs.kinds`): the checkpoint's header,
the images folder and the GT file checked before a process starts, then ``hkd diagnose``'s
command line (``diagnosis.json`` and ``cases.csv`` in the folder ``out``)."""
from __future__ import annotations

import os
from pathlib import Path

from hkd.jobs import JobError, JobKind, Launch, default_threads, register


def prepare(folder: Path, *, checkpoint: str | os.PathLike, images: str | os.PathLike, gt: str | os.PathLike,
            out: str | os.PathLike, name_in_report: str = "model", limit: int | None = None, fppi: float = 0.1,
            setup: str = "Analysis", threads: int | None = None, name: str | None = None) -> Launch:
    from hkd.models.meta import CheckpointError, read_meta

    checkpoint, images, gt, out = (Path(p).expanduser().resolve() for p in (checkpoint, images, gt, out))
    try:
        meta = read_meta(checkpoint)
    except CheckpointError as exc:
        raise JobError(str(exc)) from None
    if not meta.pedestrian_class:
        raise JobError(f"{checkpoint}: its classes are {', '.join(meta.classes)}; class 1 is not a pedestrian")
    if not images.is_dir():
        raise JobError(f"images {images}: not a folder")
    if not gt.is_file():
        raise JobError(f"GT {gt}: no such file")
    if out in (checkpoint, images, gt):
        raise JobError(f"out {out} is an input of this job; writing it would destroy that input")
    if limit is not None and limit <= 0:
        raise JobError(f"limit must be a positive number of images, got {limit}")
    threads = int(threads or default_threads())
    status = folder / "status.json"
    args = ["--checkpoint", f"{name_in_report}={checkpoint}", "--images", str(images), "--gt", str(gt),
            "--out", str(out), "--fppi", str(fppi), "--setup", setup, "--threads", str(threads),
            "--no-progress", "--status", str(status)]
    if limit:
        args += ["--limit", str(limit)]
    return Launch(args, name=name or f"diagnose {checkpoint.stem}", threads=threads,
                  summary={"checkpoint": checkpoint.name, "images": str(images), "limit": limit, "fppi": fppi},
                  outputs={"diagnosis": str(out / "diagnosis.json")}, status_path=status)


register(JobKind("diagnose", prepare=prepare))
