"""Dataset evaluation for the Evaluate page: cached predictions, the comparison, the gallery, divergence.

* **Predictions** are ``hkd predict`` runs in background jobs (:mod:`hkd.jobs`), one per
  (checkpoint, dataset, N), kept in the result store (:mod:`hkd.results`): each writes a COCO
  results list to ``cache_dir()/predictions/<checkpoint sha256>/<dataset>-<N>-<GT digest>.json`` —
  the file ``hkd eval --dets`` reads, and the one ``hkd compare --data`` reuses — and a ``….job``
  marker beside it names the job, so every browser session (and a later visit) finds the result
  or the run in progress instead of starting another.
* **The comparison** is :func:`hkd.eval.compare.compare_models` on those files with paired
  bootstrap intervals, cached per (GT, files, operating point) for the process and in the result
  store (``compare/``) for later visits.

The pieces built on an :class:`Evaluation` live beside this module: :mod:`app.services.eval_scores`
(table, breakdowns, curves, exports), :mod:`app.services.eval_gallery` (cases and their drill-down),
:mod:`app.services.eval_divergence` (teacher–student distance over the dataset's cases).

Every problem with an input is a message that names the file and what is wrong with it:
:class:`EvaluationError` where nothing can go on, ``notes``/``skipped`` lines where the rest can.
"""
from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from hkd.evaluation import EvaluationError, check_gt, gt_digest, images_digest, read_predictions
from hkd.models.meta import CheckpointError
from hkd.results import STARTABLE, ResultStore, slug

from app.services import finetune, models, settings
from app.services.jobs import queue

log = logging.getLogger(__name__)

SETUPS = ("Reasonable", "Small", "Heavy", "All")
DEFAULT_STEMS = ("teacher", "student_baseline", "student_hkd")
PEDESTRIAN_CLASSES = {"pedestrian", "pedestrians", "person", "persons"}
BOOTSTRAP = {"resamples": 1000, "seed": 0}  # the Evaluate table's intervals (hkd compare --bootstrap 1000 --seed 0)
PREDICT_THREADS = 1  # one thread per job: two spinning OpenMP pools on 2 cores run several times slower


# -- checkpoints -----------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A checkpoint the page can evaluate: ``label`` is its unique name in tables and charts."""

    label: str
    ref: dict  # {"path", "preset"}
    source: str  # "models folder" | "upload" | "fine-tune"
    default: bool = False


def _finished_finetunes() -> list[tuple[str, str]]:
    """(name, checkpoint path) of every succeeded train/distill job that left a checkpoint."""
    try:
        return [(job.name or job.id, str(path)) for job, path in finetune.finished_checkpoints(queue())]
    except (OSError, ValueError) as exc:  # an unreadable queue must not hide the folder's checkpoints
        log.warning("jobs queue %s unreadable: %s", settings.jobs_dir(), exc)
        return []


def candidates() -> list[Candidate]:
    """The models folder's and this session's checkpoints, then finished fine-tunes.

    Selected by default: ``teacher``, ``student_baseline``, ``student_hkd`` and every fine-tune
    (or the chosen pair when the folder has none of those names). Foreign weights take part once
    their preset is named on the Models page.
    """
    entries, _ = models.available()
    refs = {role: models.current_ref(role) for role in models.ROLES}
    presets = {r["path"]: r.get("preset") for r in refs.values() if r}
    found: list[tuple[str, dict, str, bool]] = []
    for entry in entries:
        if entry.error or (entry.needs_preset and not presets.get(entry.path)) or entry.source == "job":
            continue  # fine-tunes come below, named after their jobs
        stem = Path(entry.path).stem
        found.append((stem, {"path": entry.path, "preset": presets.get(entry.path)},
                      "upload" if entry.source == "upload" else "models folder", stem in DEFAULT_STEMS))
    for name, path in _finished_finetunes():
        found.append((name, {"path": path, "preset": None}, "fine-tune", True))
    if not any(default for *_, default in found):
        chosen = {r["path"] for r in refs.values() if r}
        found = [(n, r, s, r["path"] in chosen) for n, r, s, _ in found]
    # the table's order: teacher, no-KD student, HKD student, then the rest as listed
    found.sort(key=lambda f: DEFAULT_STEMS.index(f[0]) if f[3] and f[0] in DEFAULT_STEMS else len(DEFAULT_STEMS))
    out, seen = [], set()
    for name, ref, source, default in found:
        if ref["path"] in {c.ref["path"] for c in out}:
            continue
        label, n = name, 1
        while label in seen:  # two runs with one name, a file name in the folder and among the runs
            n += 1
            label = f"{name} ({n})"
        seen.add(label)
        out.append(Candidate(label, ref, source, default))
    return out


def pedestrian_problem(info: models.ModelInfo) -> str | None:
    """Why a checkpoint cannot be scored as a pedestrian detector, or None.

    ``hkd predict`` keeps label 1, so class 1 must be a pedestrian (or COCO's person)."""
    classes = list(info.meta.classes or [])
    if len(classes) > 1 and str(classes[1]).lower() in PEDESTRIAN_CLASSES:
        return None
    return (f"{info.path}: its classes {classes} do not include pedestrians as class 1 "
            f"(accepted names: {', '.join(sorted(PEDESTRIAN_CLASSES))}), so it cannot be scored on pedestrians")


# -- the dataset ----------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """The ground truth of the chosen dataset (its first ``limit`` images).

    gt: COCO dict; gt_path: where it is written (what ``hkd predict --gt`` and ``hkd eval --gt`` read);
    digest: short hash of its images (part of the cache names); notes: boxes the loader dropped or clipped.
    """

    key: str
    label: str
    limit: int | None
    gt: dict
    gt_path: Path
    images_dir: Path
    digest: str
    gt_hash: str
    notes: tuple[str, ...] = ()

    @property
    def num_images(self) -> int:
        return len(self.gt.get("images", []))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _stamp(path: Path) -> int:
    """Modification time of a dataset's annotations (a changed file is prepared again)."""
    for candidate in (path / "annotations.json", path):
        try:
            return candidate.stat().st_mtime_ns
        except OSError:
            continue
    return 0


@st.cache_data(show_spinner=False, max_entries=16)
def _prepare(key: str, label: str, path: str, images_dir: str, limit: int | None, stamp: int, _choice) -> Prepared:
    from hkd.data.datasets import DatasetError

    from app.services import datasets

    del stamp  # cache key only
    capture = _Capture()
    logger = logging.getLogger("hkd.data")
    logger.addHandler(capture)
    try:
        gt, gt_path = datasets.coco_gt(_choice, limit)
    except (DatasetError, OSError) as exc:
        raise EvaluationError(f"dataset {path}: {exc}") from None
    finally:
        logger.removeHandler(capture)
    # the loader reports dropped boxes only when it reads the annotations, not when the GT comes from
    # datasets' cache file: keep its lines beside that file for the next process
    notes_path = Path(f"{gt_path}.notes.json")
    if capture.lines:
        notes_path.write_text(json.dumps(capture.lines))
    notes = capture.lines or (json.loads(notes_path.read_text()) if notes_path.is_file() else [])
    check_gt(gt, gt_path, path)
    if not images_dir:  # a dataset as distributed: its images folder is found (Caltech: frames written once)
        from hkd.evaluation import images_folder

        try:
            images_dir = str(images_folder(path, settings.cache_dir()))
        except (DatasetError, OSError) as exc:
            raise EvaluationError(f"dataset {path}: {exc}") from None
    return prepared_from(key, label, limit, gt, gt_path, images_dir, notes)


def prepared_from(key: str, label: str, limit: int | None, gt: dict, gt_path, images_dir, notes=()) -> Prepared:
    """A :class:`Prepared` of a GT dict already written to ``gt_path``, with its cache digests."""
    # predictions depend on the images only; the comparison on the annotations too
    return Prepared(key, label, limit or None, gt, Path(gt_path), Path(images_dir), images_digest(gt), gt_digest(gt),
                    tuple(notes))


def prepare(choice, limit: int | None) -> Prepared:
    """The GT of ``choice``'s first ``limit`` images (all for None); raises :class:`EvaluationError`."""
    path = Path(choice.path)
    return _prepare(choice.key, choice.label, str(path), str(choice.images_dir), limit or None, _stamp(path), choice)


_slug = slug  # the file-name part of a dataset key (hkd.results.slug; divergence files use it too)


# -- predictions -------------------------------------------------------------------
@dataclass(frozen=True)
class PredictionState:
    """Where one checkpoint's predictions on the prepared dataset stand.

    state: ``ready`` (``path`` holds them), ``missing``, ``queued``, ``running``, ``failed``,
    ``cancelled`` or ``refused`` (the checkpoint cannot be evaluated: ``message`` says why).
    """

    candidate: Candidate
    path: Path | None
    state: str
    step: int = 0
    total: int = 0
    message: str = ""
    job_id: str | None = None

    @property
    def label(self) -> str:
        return self.candidate.label

    @property
    def pending(self) -> bool:
        return self.state in ("queued", "running")


def store() -> ResultStore:
    """The result store of the app's cache folder (``HKD_CACHE_DIR``), its jobs in the app's queue."""
    return ResultStore(settings.cache_dir(), queue=queue)


def _entry(sha256: str, prepared: Prepared):
    return store().entry("predictions", {"sha256": sha256, "dataset": prepared.key, "n": prepared.limit,
                                         "images": prepared.digest})


def predictions_path(sha256: str, prepared: Prepared) -> Path:
    """The cache file of (checkpoint sha256, dataset, N)."""
    return _entry(sha256, prepared).path


def prediction_state(candidate: Candidate, prepared: Prepared) -> PredictionState:
    """Ready, in progress (this or another session's job, or an ``hkd compare`` process), failed,
    missing or refused."""
    try:
        info = models.info(candidate.ref)
    except (CheckpointError, settings.PathNotAllowed) as exc:
        return PredictionState(candidate, None, "refused", message=str(exc))
    problem = pedestrian_problem(info)
    if problem:
        return PredictionState(candidate, None, "refused", message=problem)
    now = _entry(info.key.split(":")[0], prepared).state()
    if now.ready:  # what the job skipped (images the GT does not list, …) stays worth saying
        return PredictionState(candidate, now.path, "ready", message=now.message if "skipped" in now.message else "",
                               job_id=now.job_id)
    message = now.message
    if now.job_state == "succeeded":  # finished but nothing readable: say so, do not loop
        message = f"the predict job {now.job_id} succeeded but {now.path} is missing or not JSON"
    elif now.job_state in ("failed", "cancelled"):
        message = f"{message}\n{_log_tail(now.job_id)}".strip()
    return PredictionState(candidate, now.path, now.state, now.step, now.total, message, now.job_id)


def _log_tail(job_id: str, lines: int = 6) -> str:
    try:
        text = queue().log_tail(job_id)
    except Exception:  # noqa: BLE001 - a missing log must not hide the job's own message
        return ""
    return "\n".join((text or "").strip().splitlines()[-lines:])


def launch(state: PredictionState, prepared: Prepared) -> PredictionState:
    """Start the predict job of a missing (or failed) prediction; another session's job is left alone.

    The store's claim reads the state again under the entry's lock and writes the marker atomically
    once the job is queued: readers never see a half-written marker, and two sessions clicking at
    once start one job."""
    if state.state not in STARTABLE or state.path is None:
        return state

    def start() -> str:
        ref = state.candidate.ref
        first = f" (first {prepared.limit})" if prepared.limit else ""
        return queue().submit_predict(
            checkpoint=ref["path"], preset=ref.get("preset"), images=str(prepared.images_dir),
            gt=str(prepared.gt_path), out=str(state.path), limit=prepared.limit, threads=PREDICT_THREADS,
            name=f"predict {state.label} on {prepared.label}{first}").id

    store().at("predictions", state.path).claim(start)
    return prediction_state(state.candidate, prepared)


@st.fragment(run_every=2.0)
def follow(job_ids: list[str], title: str) -> None:
    """Progress bars of background jobs, redrawn every 2 s; the whole page reruns once all have ended."""
    from hkd.jobs import JobError

    jobs, outside = [], sum(job_id is None for job_id in job_ids)
    for job_id in filter(None, job_ids):
        try:
            jobs.append(queue().get(job_id))
        except JobError:
            continue  # deleted meanwhile: the page's rerun says what is left
    if all(job.finished for job in jobs) and (not outside or _outside_poll_due()):
        st.rerun()
    for job in jobs:
        count = f" · {job.step} of {job.total}" if job.total else ""
        st.progress(job.progress, text=f"{title} — {job.name}: {job.state}{count} {job.message or ''}".rstrip())
    if outside:
        st.caption(f"{outside} result(s) are being made by another process (`hkd compare --data`); "
                   "this page looks again every few seconds.")
    st.caption("Other pages stay usable meanwhile; the results are cached on disk for every session.")


def _outside_poll_due(every_s: float = 6.0) -> bool:
    """Whether to rerun the page for results a process outside the queue is making (their end
    cannot be followed as a job's): at most every ``every_s`` seconds, never at once."""
    import time

    now, last = time.monotonic(), st.session_state.get("_evaluate_outside_poll")
    if last is None or now - last < every_s:
        if last is None:
            st.session_state["_evaluate_outside_poll"] = now
        return False
    st.session_state["_evaluate_outside_poll"] = now
    return True


# -- the comparison ----------------------------------------------------------------
def clean_detections(path: Path, dets: list, gt: dict) -> tuple[list[dict], list[str]]:
    """The detections of ``path`` the GT can score, and a line per kind of entry left out
    (detections on images that are not in the GT, malformed entries)."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    ids = {int(im["id"]) for im in gt.get("images", [])}
    kept, unknown, broken = [], [], []
    for i, det in enumerate(dets):
        try:
            image_id = det["image_id"]
            box = [float(v) for v in det["bbox"]]
            score = float(det["score"])
            valid = (whole(image_id) and whole(det["category_id"]) and len(box) == 4 and box[2] >= 0
                     and box[3] >= 0 and all(map(math.isfinite, box + [score])))
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            broken.append(i)
        elif image_id not in ids:
            unknown.append(image_id)
        else:
            kept.append(det)
    lines = []
    if unknown:
        lines.append(f"{path}: {len(unknown)} detection(s) on images that are not in the ground truth "
                     f"(image_id {', '.join(map(str, sorted(set(unknown))[:5]))}) skipped")
    if broken:
        lines.append(f"{path}: {len(broken)} malformed detection(s) skipped (entries {broken[:5]}; each needs an "
                     "integer image_id and category_id, bbox [x, y, w, h] with w, h ≥ 0 and a finite score)")
    return kept, lines


@dataclass(frozen=True)
class Evaluation:
    """The comparison of the ready models: ``report`` is ``ComparisonReport.to_dict()`` (``models``,
    ``breakdown``, ``disagreements``), ``curves`` {label: {"fppi", "miss_rate"}} on ``setup``,
    ``skipped`` what was left out and why, ``dets`` the scored COCO results per label."""

    report: dict
    curves: dict
    setup: str
    skipped: tuple[str, ...]
    dets: dict
    files: dict  # label → predictions file
    by_image: dict  # label → {image_id: [detection, …]} (the gallery draws one image at a time)
    bootstrap: dict | None = None  # hkd.eval.bootstrap's report (to_dict): 95 % paired intervals

    @property
    def labels(self) -> list[str]:
        return list(self.report["models"])


# a resource, not data: the page only reads it, and copying every detection on each rerun would be the slowest part
@st.cache_resource(show_spinner=False, max_entries=16)
def _compare(gt_hash: str, files: tuple[tuple[str, str, int], ...], fppi: float, setup: str, _gt: dict) -> Evaluation:
    from hkd.eval.compare import ComparisonInputError, compare_models

    # gt_hash: the cache key of the ground truth
    dets, skipped = {}, []
    for label, path, _ in files:
        raw = read_predictions(Path(path))
        if raw is None:
            skipped.append(f"{path}: not a COCO results list; {label} left out")
            continue
        dets[label], lines = clean_detections(Path(path), raw, _gt)
        skipped += lines
    if not dets:
        raise EvaluationError("no readable predictions: " + "; ".join(skipped))
    paths = {label: path for label, path, _ in files}
    # the comparison (AP through pycocotools is most of it) is kept in the result store too, so a
    # restarted app or another server process opens a cached evaluation at once
    entry = store().entry("compare", [gt_hash, [list(f) for f in files], fppi, setup, sorted(dets), BOOTSTRAP])

    def run() -> dict:
        try:
            result = compare_models(_gt, dets, fppi=fppi, setup=setup)
        except ComparisonInputError as exc:
            where = paths.get(exc.source, "the ground truth")
            raise EvaluationError(f"{where}: {exc}") from None
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        return {"report": result.to_dict(), "curves": result.curves, "setup": result.setup,
                "skipped": list(result.skipped), "bootstrap": _bootstrap(_gt, dets)}

    stored, problem = entry.computed(run, valid=lambda d: isinstance(d, dict) and {
        "report", "curves", "setup", "skipped", "bootstrap"} <= set(d))
    if problem:  # the disk copy only spares a later visit the work: a full disk must not cost this one
        skipped.append(f"the comparison was not cached on disk: {problem}")
    report, curves, result_setup, result_skipped, boot = (stored["report"], stored["curves"], stored["setup"],
                                                          stored["skipped"], stored["bootstrap"])
    skipped += list(result_skipped)
    by_image: dict[str, dict[int, list[dict]]] = {}
    for label, rows in dets.items():
        grouped = defaultdict(list)
        for det in rows:
            grouped[det["image_id"]].append(det)
        by_image[label] = dict(grouped)
    return Evaluation(report, curves, result_setup, tuple(skipped), dets, {label: paths[label] for label in dets},
                      by_image, boot)


def _bootstrap(gt: dict, dets: dict) -> dict | None:
    """Paired 95 % intervals of every model's MR⁻² and AP50 and of every difference (images resampled)."""
    from hkd.eval.bootstrap import bootstrap_intervals

    try:
        return bootstrap_intervals(gt, dets, resamples=BOOTSTRAP["resamples"], seed=BOOTSTRAP["seed"]).to_dict()
    except ValueError as exc:  # e.g. a set without pedestrians: the table keeps its plain numbers
        log.warning("no bootstrap intervals: %s", exc)
        return None


def compare(prepared: Prepared, ready: list[PredictionState], *, fppi: float = 0.1,
            setup: str = "Reasonable") -> Evaluation:
    """:func:`hkd.eval.compare.compare_models` on the cached predictions of ``ready`` (state "ready");
    raises :class:`EvaluationError` naming the file at fault."""
    files = tuple((s.label, str(s.path), s.path.stat().st_mtime_ns) for s in ready)
    return _compare(prepared.gt_hash, files, float(fppi), setup, prepared.gt)
