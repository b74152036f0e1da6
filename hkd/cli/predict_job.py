"""The ``predict`` command as a background job (:mod:`hkd.jobs.kinds`): the checkpoint's header,
the images folder and the GT file checked before a process starts, then ``hkd predict``'s
command line (COCO results JSON at ``out``, progress in the job folder's status.json)."""
from __future__ import annotations

import os
from pathlib import Path

from hkd.jobs import JobError, JobKind, Launch, default_threads, register


def prepare(folder: Path, *, checkpoint: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
            gt: str | os.PathLike | None = None, preset: str | None = None, limit: int | None = None,
            threads: int | None = None, name: str | None = None) -> Launch:
    from hkd.models.meta import CheckpointError, foreign_meta, read_meta

    checkpoint, images, out = (Path(p).expanduser().resolve() for p in (checkpoint, images, out))
    try:
        meta = foreign_meta(checkpoint, preset) if preset else read_meta(checkpoint)
    except CheckpointError as exc:
        raise JobError(str(exc)) from None
    if not meta.pedestrian_class:
        # hkd predict keeps label 1, the pedestrian of every HKD preset
        raise JobError(f"{checkpoint}: its class 1 is {meta.classes[1] if len(meta.classes) > 1 else 'missing'} "
                       f"(classes: {', '.join(meta.classes)}), not a pedestrian")
    if not images.is_dir():
        raise JobError(f"images {images}: not a folder")
    inputs = {checkpoint: "checkpoint", images: "images folder"}
    if gt is not None:
        inputs[Path(gt).expanduser().resolve()] = "GT file"
    if out in inputs:
        raise JobError(f"out {out} is the {inputs[out]} of this job; writing it would destroy that input")
    if gt is not None and not Path(gt).is_file():
        raise JobError(f"GT {gt}: no such file")
    if limit is not None and limit <= 0:
        raise JobError(f"limit must be a positive number of images, got {limit}")
    threads = int(threads or default_threads())
    status = folder / "status.json"
    args = ["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--threads", str(threads),
            "--no-progress", "--status", str(status)]
    if gt is not None:
        args += ["--gt", str(Path(gt).expanduser().resolve())]
    if preset:
        args += ["--preset", preset]
    if limit:
        args += ["--limit", str(limit)]
    return Launch(args, name=name or f"predict {checkpoint.stem}", threads=threads,
                  summary={"checkpoint": checkpoint.name, "images": str(images), "limit": limit},
                  outputs={"dets": str(out)}, status_path=status)


register(JobKind("predict", prepare=prepare))
