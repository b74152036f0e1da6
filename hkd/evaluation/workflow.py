"""The evaluation workflow: a dataset's first N images → their ground truth → each checkpoint's
predictions (``hkd predict``, cached in the result store) → :func:`hkd.eval.compare.compare_models`.

What ``hkd compare --data DATASET --checkpoints NAME=CK …`` runs and the Evaluate page shows:

* :func:`dataset_gt` — the COCO GT of a dataset's first N images (the evaluation code's keys:
  height, vis_ratio, ignore), written once to ``<cache>/gt/`` for ``hkd predict --gt``;
  :func:`ground_truth` adds its digests and checks it (:class:`GroundTruth`).
* :func:`predict_all` — each checkpoint's predictions as a store entry (:mod:`hkd.results`,
  ``predictions/<sha256>/<dataset>-<N>-<images digest>.json``, the layout the app has always
  written): a ready entry is reused, one being written by another session or process is waited
  for, a missing one is started as an ``hkd predict`` subprocess, up to ``min(2, cores)`` at once.
* :func:`compare` — the comparison (and its bootstrap intervals when asked).

Every problem with an input is :class:`EvaluationError`, one sentence naming the file.
This module stands above :mod:`hkd.data`, :mod:`hkd.models.meta`, :mod:`hkd.eval` and
:mod:`hkd.results`; it loads no model (the predictions run in their own processes).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from hkd.results import Entry, ResultStore, write_atomic

MAX_PARALLEL = 2  # predictions at once: each is CPU-bound; more would only share the same cores


class EvaluationError(ValueError):
    """An input the evaluation cannot go on without; the message names the file and the problem."""


# -- the dataset --------------------------------------------------------------------
def dataset_key(path: str | os.PathLike) -> str:
    """The key a dataset path is cached under: ``path:<absolute path>`` (as the app names the
    datasets it finds under ``HKD_DATA_ROOTS``, so both share their cached predictions)."""
    return f"path:{Path(path).expanduser().resolve()}"


class LazyDataset:
    """``open_dataset(path)`` on first call, the same object afterwards: one parse of a dataset as
    distributed (COCO, CityPersons, Caltech) for both its ground truth and its images folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self._dataset = None

    def __call__(self):
        if self._dataset is None:
            from hkd.data.datasets import open_dataset

            self._dataset = open_dataset(self.path)
        return self._dataset


def images_folder(path: str | os.PathLike, cache_root: str | os.PathLike | None = None, *,
                  opened: LazyDataset | None = None) -> Path:
    """The folder the GT's ``file_name`` entries of the annotated dataset ``path`` are relative to.

    hkd's own layouts name it without reading anything (``images/``, CrowdHuman's ``Images/``);
    COCO (``<split>/``) and CityPersons (``leftImg8bit/<split>/``) are opened to find it; the frames
    of a Caltech video are written once, as the JPEGs the ``.seq`` holds, under
    ``cache_root/frames/`` (:func:`video_frames`), so that ``hkd predict`` and the app read files.
    ``opened``: the :class:`LazyDataset` of ``path`` when the caller reads it too."""
    from hkd.data.coco import is_coco_instances
    from hkd.data.datasets import is_annotated

    path = Path(path)
    if path.is_dir() and (path / "annotations.json").is_file():
        return path / "images"
    if path.suffix.lower() == ".odgt":
        return path.parent / "Images" if (path.parent / "Images").is_dir() else path.parent / "images"
    if path.suffix.lower() == ".json" and not is_coco_instances(path):
        return path.parent / "images"
    if path.is_dir() and not is_annotated(path):
        return path / "images"
    return dataset_images((opened or LazyDataset(path))(), path, cache_root)


def dataset_images(dataset, source: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """The folder below which ``dataset``'s images lie under their ``file_name`` (the one folder
    every image file is ``<folder>/<file_name>``); for frames of a video, :func:`video_frames`.
    Raises :class:`hkd.data.DatasetError` when the images share no such folder."""
    from hkd.data.datasets import DatasetError

    roots = set()
    for index, name in enumerate(dataset.file_names):
        file = dataset.image_file(index)
        if file is None:
            return video_frames(dataset, source, cache_root)
        depth = len(PurePosixPath(name).parts)
        roots.add(Path(file).parents[depth - 1])
    if len(roots) != 1:
        raise DatasetError(f"{source}: its images lie in {len(roots)} folders, not below one folder by their "
                           "file names; convert it with `hkd data convert`")
    return roots.pop()


def video_frames(dataset, source: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """A folder holding every frame of ``dataset`` (a :class:`hkd.data.caltech.CaltechDataset`, whose
    images are frames of ``.seq`` videos) as a file under its ``file_name``: the JPEG bytes the
    video holds, else PNG. Written once per (dataset path, videos' sizes and times) in the result
    store (``frames/<digest>/``, its ``.json`` written last says it is complete), under its lock."""
    from PIL import Image

    from hkd.models.meta import atomic_write

    store = ResultStore(cache_root) if cache_root is not None else ResultStore()
    videos = sorted({str(dataset.annotations(i).path) for i in range(len(dataset))})
    stamps = [[v, Path(v).stat().st_size, Path(v).stat().st_mtime_ns] for v in videos]
    entry = store.entry("frames", {"source": str(Path(source).resolve()), "videos": stamps,
                                   "images": dataset.file_names})
    folder = entry.path.with_suffix("")

    def write() -> dict:
        for index, name in enumerate(dataset.file_names):
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if hasattr(dataset, "video_frame"):
                video, frame = dataset.video_frame(index)
                data = video.frame_bytes(frame)
                atomic_write(target, lambda tmp, data=data: Path(tmp).write_bytes(data))
            else:
                pixels = dataset.load_pixels(index)
                atomic_write(target, lambda tmp, pixels=pixels: Image.fromarray(pixels).save(tmp, format="PNG"))
        return {"source": str(source), "images": len(dataset)}

    _, problem = entry.computed(write, valid=lambda d: isinstance(d, dict) and d.get("images") == len(dataset))
    if problem:
        raise OSError(f"the frames of {source} could not be written: {problem}")
    return folder


def dataset_gt(path: str | os.PathLike, limit: int | None, cache_root: str | os.PathLike, *,
               opened: LazyDataset | None = None) -> tuple[dict, Path]:
    """The ground truth of the first ``limit`` images (all if None) of the dataset ``path`` as a
    COCO dict with height, vis_ratio and ignore, and the file under ``cache_root/gt/`` holding it
    (named by the path, the annotations' modification time and ``limit``; written once).

    Raises :class:`hkd.data.DatasetError` or OSError for a dataset that cannot be read."""
    source = Path(path)
    annotations = source / "annotations.json" if source.is_dir() else source
    stamp = annotations.stat().st_mtime_ns if annotations.exists() else 0
    dataset_id = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    out = Path(cache_root) / "gt" / f"{dataset_id}-{stamp}-{limit or 'all'}.json"
    if out.is_file():
        return json.loads(out.read_text()), out
    gt = dataset_ground_truth(path, opened=opened)
    if limit:
        keep = {im["id"] for im in gt["images"][:limit]}
        gt = {**gt, "images": gt["images"][:limit],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    write_atomic(out, json.dumps(gt))
    return gt, out


def is_gt_json(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a COCO-style ground-truth JSON read as it is (``hkd eval --gt``), rather than
    a dataset whose ground truth :func:`dataset_ground_truth` builds (COCO's own ``instances_*.json``
    keeps every category, so it is a dataset)."""
    from hkd.data.coco import is_coco_instances

    path = Path(path)
    return path.suffix.lower() == ".json" and not is_coco_instances(path) and path.name != "annotations.json"


def dataset_ground_truth(path: str | os.PathLike, *, opened: LazyDataset | None = None) -> dict:
    """The COCO GT dict (height, vis_ratio, ignore) of any annotated dataset :func:`hkd.data.open_dataset`
    reads; :class:`hkd.data.DatasetError` for a folder of images without annotations."""
    from hkd.data.datasets import ACCEPTED_LAYOUTS, DatasetError, is_annotated

    if Path(path).exists() and not is_annotated(path):
        raise DatasetError(f"{path}: no annotations to evaluate against; {ACCEPTED_LAYOUTS}")
    return (opened or LazyDataset(path))().coco_gt()


def images_digest(gt: dict) -> str:
    """A short hash of the GT's image list (ids and file names): what predictions depend on."""
    listing = json.dumps([[im["id"], im["file_name"]] for im in gt["images"]])
    return hashlib.sha256(listing.encode()).hexdigest()[:12]


def gt_digest(gt: dict) -> str:
    """A short hash of the whole GT: what a comparison depends on."""
    return hashlib.sha256(json.dumps(gt, sort_keys=True).encode()).hexdigest()[:16]


def check_gt(gt: dict, gt_path, source) -> None:
    """:class:`EvaluationError` naming ``gt_path`` (and the dataset it came from) and the first bad
    entry, if the evaluation code cannot read this GT, or if it has no image."""
    from hkd.eval import parse_ground_truth

    try:
        parse_ground_truth(gt)
    except ValueError as exc:
        raise EvaluationError(f"ground truth {gt_path} (from {source}): {exc}") from None
    if not gt.get("images"):
        raise EvaluationError(f"ground truth {gt_path} (from {source}): no images to evaluate")


@dataclass(frozen=True)
class GroundTruth:
    """The GT of a dataset's first ``limit`` images: ``gt`` (COCO dict) written at ``gt_path``;
    ``key`` the dataset's cache key, ``images`` and ``digest`` the short hashes of its image list
    and of the whole GT."""

    key: str
    limit: int | None
    gt: dict
    gt_path: Path
    images_dir: Path
    images: str
    digest: str

    @property
    def num_images(self) -> int:
        return len(self.gt.get("images", []))


def ground_truth(dataset: str | os.PathLike, limit: int | None = None, *,
                 store: ResultStore | None = None) -> GroundTruth:
    """The checked GT of ``dataset``'s first ``limit`` images (all for None); one sentence
    (:class:`EvaluationError`) for a dataset that cannot be read or has no annotations."""
    from hkd.data.datasets import ACCEPTED_LAYOUTS, DatasetError, is_annotated

    store = store or ResultStore()
    path = Path(dataset).expanduser().resolve()
    if limit is not None and limit < 1:
        raise EvaluationError(f"images limit must be a positive number of images, got {limit}")
    if not path.exists():
        raise EvaluationError(f"dataset {dataset}: no such file or folder; {ACCEPTED_LAYOUTS}")
    if path.is_dir() and not is_annotated(path):
        raise EvaluationError(f"dataset {dataset}: a folder without annotations.json (nor COCO, CityPersons or "
                              f"Caltech annotations), so there is no ground truth to compare against; "
                              f"{ACCEPTED_LAYOUTS}")
    try:
        opened = LazyDataset(str(path))  # read once for both, if at all (the GT may be cached)
        gt, gt_path = dataset_gt(str(path), limit, store.root, opened=opened)
        images_dir = images_folder(path, store.root, opened=opened)
    except (DatasetError, OSError, ValueError) as exc:
        raise EvaluationError(f"dataset {dataset}: {exc}") from None
    check_gt(gt, gt_path, dataset)
    return GroundTruth(dataset_key(path), limit or None, gt, gt_path, images_dir, images_digest(gt), gt_digest(gt))


# -- the checkpoints ------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path
    sha256: str


def checkpoint(name: str, path: str | os.PathLike) -> Checkpoint:
    """A checkpoint ``hkd predict`` can score on pedestrians (an HKD .safetensors checkpoint whose
    class 1 is a pedestrian, or an exported .onnx model), with its SHA-256; else :class:`EvaluationError`."""
    from hkd.models.meta import CheckpointError, file_sha256, read_meta

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise EvaluationError(f"checkpoint {name}={path}: no such file")
    if path.suffix.lower() == ".safetensors":
        try:
            meta = read_meta(path)
        except CheckpointError as exc:
            raise EvaluationError(f"checkpoint {name}: {exc}") from None
        if not meta.pedestrian_class:
            raise EvaluationError(f"checkpoint {name}={path}: its classes {meta.classes} do not have a pedestrian "
                                  "as class 1, so it cannot be scored on pedestrians")
    elif path.suffix.lower() != ".onnx":
        raise EvaluationError(f"checkpoint {name}={path}: expected an HKD .safetensors checkpoint or an exported "
                              ".onnx model")
    return Checkpoint(name, path, file_sha256(path))


# -- predictions in the store -----------------------------------------------------------
def prediction_entry(store: ResultStore, sha256: str, gt: GroundTruth) -> Entry:
    """The store entry of (checkpoint sha256, dataset, N)."""
    return store.entry("predictions", {"sha256": sha256, "dataset": gt.key, "n": gt.limit, "images": gt.images})


def predict_command(ck: Checkpoint, gt: GroundTruth, out: Path, threads: int) -> list[str]:
    """``hkd predict`` of ``ck`` on the GT's images, writing the COCO results list ``out``."""
    command = [sys.executable, "-m", "hkd", "predict", "--checkpoint", str(ck.path), "--images", str(gt.images_dir),
               "--gt", str(gt.gt_path), "--out", str(out), "--threads", str(threads), "--no-progress"]
    if gt.limit:
        command += ["--limit", str(gt.limit)]
    return command


@dataclass
class _Run:
    proc: subprocess.Popen
    log: object


@dataclass
class PredictionsReport:
    """Where each checkpoint's predictions are, and which of them were made now (``made``) or reused."""

    files: dict[str, Path]
    made: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def predict_all(checkpoints: dict[str, Checkpoint], gt: GroundTruth, *, store: ResultStore | None = None,
                parallel: int | None = None, say: Callable[[str], None] | None = None,
                poll_s: float = 0.5) -> PredictionsReport:
    """Every checkpoint's predictions on ``gt``'s images, from the store or made now by ``hkd
    predict`` subprocesses (``parallel`` at once, default ``min(2, cores)``, the cores shared among
    them). An entry another session or process is making is waited for. ``say`` gets a line per
    step. Raises :class:`EvaluationError` naming each checkpoint whose predictions failed (after
    the others have finished: theirs stay cached)."""
    from hkd.jobs.process import identify
    from hkd.results import STARTABLE

    store = store or ResultStore()
    say = say or (lambda line: None)
    cores = os.cpu_count() or 1
    parallel = max(1, parallel or min(MAX_PARALLEL, cores))
    threads = max(1, cores // parallel)
    entries = {name: prediction_entry(store, ck.sha256, gt) for name, ck in checkpoints.items()}
    report = PredictionsReport({name: entry.path for name, entry in entries.items()})
    waiting = list(checkpoints)
    running: dict[str, _Run] = {}
    failures: dict[str, str] = {}
    announced: set[str] = set()
    while waiting or running:
        for name in list(waiting):
            entry = entries[name]
            state = entry.state()
            if state.ready:
                waiting.remove(name)
                if name not in report.made:
                    report.reused.append(name)
                    say(f"{name}: cached predictions {entry.path}")
            elif state.state in STARTABLE and name in report.made:  # our own run ended without its file
                waiting.remove(name)
                failures[name] = state.message or f"hkd predict wrote no {entry.path}"
            elif state.state in STARTABLE and len(running) < parallel:
                started: list[_Run] = []

                def start(ck=checkpoints[name], entry=entry, started=started) -> dict:
                    entry.folder.mkdir(parents=True, exist_ok=True)
                    log = open(entry.log_path, "w")
                    proc = subprocess.Popen(predict_command(ck, gt, entry.path, threads), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                    started.append(_Run(proc, log))
                    return identify(proc.pid)

                entry.claim(start)
                if started:
                    running[name] = started[0]
                    report.made.append(name)
                    waiting.remove(name)
                    say(f"{name}: predicting {gt.num_images} images with {checkpoints[name].path} → {entry.path}")
            elif state.pending and name not in announced:
                announced.add(name)
                say(f"{name}: waiting for {state.owner} ({state.state}) to make {entry.path}")
        for name, run in list(running.items()):
            if run.proc.poll() is None:
                continue
            run.log.close()
            del running[name]
            entry = entries[name]
            if entry.path.is_file() and run.proc.returncode == 0:
                entry.marker.unlink(missing_ok=True)  # the file alone says ready now
                say(f"{name}: done")
            else:
                tail = entry.log_tail()
                failures[name] = (f"hkd predict exited with code {run.proc.returncode}"
                                  + (f": {tail}" if tail else "") + f" (log: {entry.log_path})")
        if waiting or running:
            time.sleep(poll_s)
    if failures:
        raise EvaluationError("; ".join(f"predictions of {name} ({checkpoints[name].path}) failed: {why}"
                                        for name, why in failures.items()))
    return report


# -- the comparison ----------------------------------------------------------------------
def compare(gt: dict, dets: dict[str, list], *, score: float | None = None, fppi: float = 0.1,
            setup: str = "Reasonable", iou: float = 0.5, max_disagreements: int | None = None,
            bootstrap: int | None = None, seed: int = 0):
    """``(ComparisonReport, BootstrapReport | None)``: :func:`hkd.eval.compare.compare_models`, and
    :func:`hkd.eval.bootstrap.bootstrap_intervals` with ``bootstrap`` resamples when given.
    Raises ``ComparisonInputError`` (its ``source`` names the input at fault) or ValueError."""
    from hkd.eval.bootstrap import bootstrap_intervals
    from hkd.eval.compare import compare_models

    report = compare_models(gt, dets, score=score, fppi=fppi, setup=setup, iou=iou,
                            max_disagreements=max_disagreements)
    boot = None
    if bootstrap is not None:  # the inputs were validated by compare_models
        boot = bootstrap_intervals(gt, dets, resamples=bootstrap, seed=seed)
    return report, boot


def read_predictions(path: str | os.PathLike) -> list | None:
    """The COCO results list in ``path``; None while it does not exist or is half-written."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, list) else None


def evaluate(dataset: str | os.PathLike, checkpoints: dict[str, str | os.PathLike], *, limit: int | None = None,
             store: ResultStore | None = None, parallel: int | None = None,
             say: Callable[[str], None] | None = None, **options):
    """The whole workflow: ``(GroundTruth, PredictionsReport, ComparisonReport, BootstrapReport | None)``
    of ``checkpoints`` ({name: path}) on ``dataset``'s first ``limit`` images; ``options`` go to
    :func:`compare`. Raises :class:`EvaluationError` (one sentence naming the input at fault)."""
    from hkd.eval.compare import ComparisonInputError

    store = store or ResultStore()
    cks = {name: checkpoint(name, path) for name, path in checkpoints.items()}
    gt = ground_truth(dataset, limit, store=store)
    made = predict_all(cks, gt, store=store, parallel=parallel, say=say)
    dets = {}
    for name, path in made.files.items():
        dets[name] = read_predictions(path)
        if dets[name] is None:
            raise EvaluationError(f"predictions of {name} {path}: not a COCO results list")
    try:
        report, boot = compare(gt.gt, dets, **options)
    except ComparisonInputError as exc:
        where = gt.gt_path if exc.source == "gt" else made.files.get(exc.source, exc.source)
        raise EvaluationError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    return gt, made, report, boot
