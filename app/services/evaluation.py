"""Dataset evaluation for the Evaluate page: cached predictions, the comparison, the gallery, divergence.

* **Predictions** are ``hkd predict`` runs in background jobs (:mod:`hkd.jobs`), one per
  (checkpoint, dataset, N), kept in the result store (:mod:`hkd.results`): each writes a COCO
  results list to ``cache_dir()/predictions/<checkpoint sha256>/<dataset>-<N>-<GT digest>.json`` —
  the file ``hkd eval --dets`` reads, and the one ``hkd compare --data`` reuses — and a ``….job``
  marker beside it names the job, so every browser session (and a later visit) finds the result
  or the run in progress instead of starting another.
* **The comparison** is :func:`hkd.eval.compare.compare_models` on those files, cached per
  (GT, files, operating point) for the process.
* **Gallery** crops are drawn from the image files and the cached detections.
* **Divergence** (:func:`hkd.viz.divergence.divergence_over_cases`) runs in the page, batched per
  image with a progress callback, and is cached on disk under ``cache_dir()/divergence/``.

Every problem with an input is a message that names the file and what is wrong with it:
:class:`EvaluationError` where nothing can go on, ``notes``/``skipped`` lines where the rest can.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import streamlit as st

from hkd.evaluation import EvaluationError, check_gt, gt_digest, images_digest, read_predictions
from hkd.models.meta import CheckpointError
from hkd.results import STARTABLE, ResultStore, slug
from hkd.viz.draw import COLORS

from app.services import finetune, models, settings
from app.services.jobs import queue

log = logging.getLogger(__name__)

PAGE_SIZE = 12  # gallery crops per page
SETUPS = ("Reasonable", "Small", "Heavy", "All")
DEFAULT_STEMS = ("teacher", "student_baseline", "student_hkd")
PEDESTRIAN_CLASSES = {"pedestrian", "pedestrians", "person", "persons"}
# the gallery's views of a (reference, compared) pair: (a, b, kind) of hkd.eval.compare's records
GALLERY_VIEWS = {
    "missed": ("reference", "compared", "found_by_a_missed_by_b"),
    "found": ("compared", "reference", "found_by_a_missed_by_b"),
    "false_positive": ("compared", "reference", "fp_of_a_only"),
}
# the Detections page's colours: the reference as its teacher, the compared model as its student
CASE_COLORS = {"reference": COLORS["teacher_only"], "compared": COLORS["student_only"]}
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
    # the comparison (AP through pycocotools is most of it) is kept on disk too, so a restarted
    # app or another server process opens a cached evaluation at once
    key = json.dumps([gt_hash, [list(f) for f in files], fppi, setup, sorted(dets), BOOTSTRAP])
    cached = settings.cache_dir() / "compare" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
    try:
        stored = json.loads(cached.read_text())
        report, curves, result_setup, result_skipped = (stored["report"], stored["curves"], stored["setup"],
                                                        stored["skipped"])
        boot = stored["bootstrap"]
    except (OSError, ValueError, KeyError):
        try:
            result = compare_models(_gt, dets, fppi=fppi, setup=setup)
        except ComparisonInputError as exc:
            where = paths.get(exc.source, "the ground truth")
            raise EvaluationError(f"{where}: {exc}") from None
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        report, curves, result_setup, result_skipped = result.to_dict(), result.curves, result.setup, result.skipped
        boot = _bootstrap(_gt, dets)
        from hkd.models.meta import atomic_write

        text = json.dumps({"report": report, "curves": curves, "setup": result_setup, "skipped": list(result_skipped),
                           "bootstrap": boot})
        try:  # the disk copy only spares a later visit the work: a full disk must not cost this one
            atomic_write(cached, lambda tmp: Path(tmp).write_text(text))
        except OSError as exc:
            skipped.append(f"the comparison was not cached on disk ({cached.parent}: {exc.strerror or exc})")
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


# -- the table, the breakdowns, their exports ----------------------------------------
def recorded_latency(meta) -> float | None:
    """Median CPU seconds of a 640×480 forward if the checkpoint records one (``cost.latency``, the
    dict ``hkd info --bench`` prints, measured at ``cost.flops_size``), else None."""
    cost = meta.cost or {}
    latency = cost.get("latency")
    if isinstance(latency, dict) and cost.get("flops_size") == list(models.PROFILE_SIZE):
        value = latency.get("median_s")
        return float(value) if isinstance(value, (int, float)) else None
    return None


def table_rows(evaluation: Evaluation, refs: dict[str, dict], measured: dict[str, float]) -> list[dict]:
    """One row per model: MR⁻² per setup (%), AP50, parameters (M), CPU latency (ms), operating point.

    ``refs``: label → checkpoint ref (the header gives parameters and a recorded latency);
    ``measured``: model key → median seconds measured in this session (preferred to a recorded one).
    MR⁻² of a setup without ground truth (-100 in ``hkd eval``) is None."""
    rows = []
    for label, result in evaluation.report["models"].items():
        info = models.info(refs[label])
        cost = models.recorded_cost(info.meta, models.PROFILE_SIZE)
        latency = measured.get(info.key, recorded_latency(info.meta))
        op = result["operating_point"]
        row = {"model": label}
        row.update({f"MR⁻² {setup}": (None if result["mr"][setup] < 0 else result["mr"][setup]) for setup in SETUPS})
        row.update({
            "AP50": result["ap50"] if result["ap50"] >= 0 else None,
            "params (M)": cost["params"]["total"] / 1e6 if cost else None,
            "CPU latency (ms)": latency * 1000 if latency is not None else None,
            "detections": result["num_detections"],
            "operating score": op["score"],
            "miss rate at operating point": op["miss_rate"],
        })
        rows.append(row)
    return rows


def breakdown_rows(evaluation: Evaluation) -> list[dict]:
    """Flat rows (model, by, bin, gt, missed, miss_rate) of the height and visibility breakdowns."""
    return [{"model": label, "by": by, "bin": row["bin"], "low": row["low"], "high": row["high"], "gt": row["gt"],
             "missed": row["missed"], "miss_rate": row["miss_rate"]}
            for label, breakdown in evaluation.report["breakdown"].items()
            for by in ("height", "visibility") for row in breakdown[by]]


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def breakdown_figure(evaluation: Evaluation, by: str):
    """Miss rate per GT ``by`` ("height" or "visibility") bin at each model's operating point,
    bars grouped by model; hover gives missed / GT."""
    import plotly.graph_objects as go

    from hkd.viz.plots import PALETTE  # the curves' colours: one colour per model on the whole page

    title = {"height": "GT height (px)", "visibility": "visible fraction"}[by]
    figure = go.Figure()
    for i, (label, breakdown) in enumerate(evaluation.report["breakdown"].items()):
        rows = breakdown[by]
        figure.add_trace(go.Bar(
            name=label, x=[r["bin"] for r in rows], y=[r["miss_rate"] for r in rows],
            marker_color=PALETTE[i % len(PALETTE)],
            customdata=[[r["missed"], r["gt"]] for r in rows],
            hovertemplate=f"<b>{label}</b> · %{{x}}<br>miss rate %{{y:.2f}}<br>%{{customdata[0]}} of "
                          "%{customdata[1]} missed<extra></extra>"))
    figure.update_layout(barmode="group", height=360, title=f"Miss rate by {title}", xaxis_title=title,
                         yaxis=dict(title="miss rate at the operating point", range=[0, 1.05]),
                         margin=dict(t=50, b=40), legend=dict(orientation="h", y=-0.3, yanchor="top", x=0))
    return figure


def _curve_marks(evaluation: Evaluation) -> dict:
    models_ = evaluation.report["models"]
    return {"mr": {label: m["mr"][evaluation.setup] for label, m in models_.items()},
            "operating_points": {label: m["operating_point"] for label, m in models_.items()}}


def curves_figure(evaluation: Evaluation):
    """FPPI–miss-rate curves on log–log axes with each model's operating point (:func:`hkd.viz.plots.fppi_figure`)."""
    from hkd.viz.plots import fppi_figure

    return fppi_figure(evaluation.curves, **_curve_marks(evaluation))


def curves_png(evaluation: Evaluation) -> bytes:
    """The same curves as a PNG (:func:`hkd.viz.plots.fppi_png`, matplotlib)."""
    import tempfile

    from hkd.viz.plots import fppi_png

    with tempfile.TemporaryDirectory() as folder:
        return fppi_png(evaluation.curves, Path(folder) / "curves.png", **_curve_marks(evaluation)).read_bytes()


def figure_html(figure) -> str:
    """A standalone HTML page of ``figure`` (plotly.js inlined: it opens offline)."""
    return figure.to_html(include_plotlyjs=True, full_html=True)


def measure_latency(refs: dict[str, dict], measured: dict[str, float]) -> list[str]:
    """Time each checkpoint of ``refs`` (``compute.latency``: 640×480, 2 threads) into ``measured``
    (model key → median seconds); returns a line per checkpoint that cannot be loaded."""
    from app.services import compute

    problems = []
    for label, ref in refs.items():
        try:
            measured[models.info(ref).key] = compute.latency(models.load(ref))["median_s"]
        except (CheckpointError, settings.PathNotAllowed) as exc:
            problems.append(f"{label}: {exc}")
    return problems


# -- the gallery ---------------------------------------------------------------------
def _bins(evaluation: Evaluation, by: str) -> list[dict]:
    first = next(iter(evaluation.report["breakdown"].values()))
    return first[by]


def bin_labels(evaluation: Evaluation, by: str) -> list[str]:
    return [row["bin"] for row in _bins(evaluation, by)]


def _in_bin(value: float | None, row: dict) -> bool:
    high = math.inf if row["high"] is None else row["high"]
    return value is not None and row["low"] <= value < high


def gallery(evaluation: Evaluation, reference: str, compared: str, view: str, *,
            height_bin: str | None = None, visibility_bin: str | None = None) -> list[dict]:
    """The disagreement records of one gallery view, most severe first.

    view: ``missed`` (the reference finds, the compared model misses), ``found`` (the reverse) or
    ``false_positive`` (the compared model's false positives the reference does not make). The
    height bin filters on the GT's height (a false positive's box height); false positives have no
    visibility, so a visibility bin leaves them out."""
    roles = {"reference": reference, "compared": compared}
    a, b, kind = (roles[GALLERY_VIEWS[view][0]], roles[GALLERY_VIEWS[view][1]], GALLERY_VIEWS[view][2])
    items = [r for r in evaluation.report["disagreements"] if r["a"] == a and r["b"] == b and r["kind"] == kind]
    if height_bin:
        row = next(r for r in _bins(evaluation, "height") if r["bin"] == height_bin)
        items = [r for r in items if _in_bin(r["height"] if r["height"] is not None else r["box"][3] - r["box"][1], row)]
    if visibility_bin:
        row = next(r for r in _bins(evaluation, "visibility") if r["bin"] == visibility_bin)
        items = [r for r in items if _in_bin(r["visibility"], row)]
    return items


@st.cache_data(show_spinner=False, max_entries=4)
def _image_index(images_dir: str, stamp: int) -> dict[str, str]:
    """File name → path for every image below ``images_dir`` (CityPersons keeps per-city subfolders)."""
    from hkd.data.images import IMAGE_SUFFIXES

    del stamp
    out: dict[str, str] = {}
    for path in sorted(Path(images_dir).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            out.setdefault(path.name, str(path))
    return out


def image_path(prepared: Prepared, file_name: str) -> Path:
    """The file of a GT image (``images_dir/file_name``, else found by name below it); a name that
    leaves the images folder (``..``, an absolute path, a symlink out) is refused like the dataset
    readers refuse it (:func:`hkd.data.datasets.confine`, DatasetError, a ValueError)."""
    from hkd.data.datasets import check_relative_name, confine

    check_relative_name(file_name, prepared.images_dir, prepared.gt_path)
    direct = prepared.images_dir / file_name
    if direct.is_file():
        return confine(direct, prepared.images_dir, prepared.gt_path)
    found = _image_index(str(prepared.images_dir), _stamp(prepared.images_dir)).get(Path(file_name).name)
    if found is None:
        raise FileNotFoundError(f"{direct}: image listed in {prepared.gt_path} not found")
    return confine(Path(found), prepared.images_dir, prepared.gt_path)


@st.cache_data(show_spinner=False, max_entries=32)
def _pixels(path: str, mtime_ns: int) -> np.ndarray:
    from hkd.data.images import load_image

    del mtime_ns
    return load_image(path)


def _boxes_of(dets: list[dict], score: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, 4) xyxy boxes and (K,) scores of the COCO results ``dets`` scoring at least ``score``."""
    rows = [d for d in dets if d["score"] >= score]
    boxes = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
                      for d in rows], dtype=np.float64).reshape(-1, 4)
    return boxes, np.array([d["score"] for d in rows], dtype=np.float64)


def case_crop(prepared: Prepared, evaluation: Evaluation, record: dict, reference: str, compared: str,
              *, min_height: int = 200) -> np.ndarray:
    """The region around a record's box, enlarged to at least ``min_height`` px: the case box (GT or
    false positive) in white, the reference's and the compared model's detections at their
    operating points in their colours with their scores. Raises ImageError/FileNotFoundError
    naming the image file."""
    from hkd.viz.draw import draw_boxes

    path = image_path(prepared, record["file_name"])
    pixels = _pixels(str(path), path.stat().st_mtime_ns)
    height, width = pixels.shape[:2]
    x1, y1, x2, y2 = record["box"]
    margin = max(x2 - x1, y2 - y1, 16) * 0.6
    left, top = max(0, int(x1 - margin)), max(0, int(y1 - margin))
    right, bottom = min(width, int(math.ceil(x2 + margin))), min(height, int(math.ceil(y2 + margin)))
    region = pixels[top:max(bottom, top + 1), left:max(right, left + 1)]
    factor = max(1, math.ceil(min_height / region.shape[0]))
    image = np.ascontiguousarray(np.repeat(np.repeat(region, factor, axis=0), factor, axis=1))

    def local(boxes: np.ndarray) -> np.ndarray:
        return (boxes - np.array([left, top, left, top])) * factor

    ops = {label: evaluation.report["models"][label]["operating_point"]["score"] for label in (reference, compared)}
    for label, color in CASE_COLORS.items():
        label = {"reference": reference, "compared": compared}[label]
        boxes, scores = _boxes_of(evaluation.by_image[label].get(record["image_id"], []), ops[label])
        inside = (boxes[:, 2] > left) & (boxes[:, 0] < right) & (boxes[:, 3] > top) & (boxes[:, 1] < bottom)
        if inside.any():
            image = draw_boxes(image, local(boxes[inside]), scores=scores[inside], color=color)
    # the case's own box last and thin, so that a detection right on it does not hide it
    return draw_boxes(image, local(np.array([record["box"]])), color=COLORS["ground_truth"], thickness=1)


def case_legend(reference: str, compared: str) -> list[tuple[str, tuple[int, int, int]]]:
    """(label, colour) of what :func:`case_crop` draws, for ``widgets.legend``."""
    return [("the case (GT, or the false positive)", COLORS["ground_truth"]),
            (f"{reference} at its operating point", CASE_COLORS["reference"]),
            (f"{compared} at its operating point", CASE_COLORS["compared"])]


def view_titles(reference: str, compared: str) -> dict[str, str]:
    """Gallery view → what the user reads."""
    return {"missed": f"{reference} finds, {compared} misses", "found": f"{compared} finds, {reference} misses",
            "false_positive": f"{compared}-only false positives"}


def default_pair(labels: list[str], refs: dict[str, dict]) -> tuple[str, str]:
    """(reference, compared): the pair chosen on the Models page where both are evaluated, else the
    first teacher-role checkpoint and the first other one."""
    by_path = {refs[label]["path"]: label for label in labels}
    chosen = [by_path.get((models.current_ref(role) or {}).get("path")) for role in models.ROLES]
    if all(chosen) and chosen[0] != chosen[1]:
        return chosen[0], chosen[1]

    def role(label: str) -> str | None:
        try:
            return models.info(refs[label]).preset.role
        except (CheckpointError, settings.PathNotAllowed, KeyError):
            return None

    reference = next((label for label in labels if role(label) == "teacher"), labels[0])
    compared = next((label for label in labels if label != reference and role(label) == "student"),
                    next(label for label in labels if label != reference))
    return reference, compared


def case_caption(record: dict, evaluation: Evaluation) -> str:
    """One line under a gallery crop: the image, both models' scores on the box, its height and visibility."""
    a, b = record["a"], record["b"]
    threshold = evaluation.report["models"][b]["operating_point"]["score"]
    size = f"h {record['height']:.0f} px · vis {record['visibility']:.2f}" if record["height"] is not None \
        else f"box h {record['box'][3] - record['box'][1]:.0f} px · IoU with a GT {record['iou_a']:.2f}"
    b_part = (f"{b}: best {record['score_b']:.2f} (IoU {record['iou_b']:.2f}; its threshold {threshold:.2f})"
              if record["score_b"] > 0 else f"{b}: nothing (best IoU {record['iou_b']:.2f})")
    return f"{record['file_name']} · {a}: {record['score_a']:.2f} · {b_part} · {size}"


def case_param(prepared: Prepared, record: dict) -> str:
    """A case's URL query value: ``<dataset key>|<N>|<image file>|x1,y1,x2,y2``."""
    box = ",".join(f"{v:.1f}" for v in record["box"])
    return f"{prepared.key}|{prepared.limit or 0}|{record['file_name']}|{box}"


def focus_from_param(text: str) -> dict | None:
    """The focus (``open_case``'s contract) of a case URL value, or None for a value that names no
    image of a known dataset (a stale or hand-edited link is ignored, not an error)."""
    from app.services import datasets, images

    try:
        key, _limit, file_name, box = text.split("|")
        coords = [float(v) for v in box.split(",")]
        choice = {c.key: c for c in datasets.choices()}[key]
        if len(coords) != 4 or not choice.exists:
            return None
        path = image_path(prepare(choice, None), file_name)
        image_key = images.file_key(path)
    except (ValueError, KeyError, OSError, EvaluationError, settings.PathNotAllowed):
        return None
    return {"image_key": image_key, "box": coords, "source": "evaluate",
            "what": "a case from the Evaluate page's gallery (from its link)"}


def open_case(prepared: Prepared, record: dict) -> dict:
    """The drill-down contract: ``{"image_key", "box", "source"}`` for the Detections/Features/Attention pages."""
    from app.services import images

    key = images.file_key(image_path(prepared, record["file_name"]))
    return {"image_key": key, "box": [float(v) for v in record["box"]], "source": "evaluate"}


# -- divergence over the dataset --------------------------------------------------------
FAILURE, SUCCESS = "failure", "success"


def _found_records(gt: dict, label: str, dets: list[dict], score: float) -> list[dict]:
    """Every counted GT ``label`` finds at operating score ``score``: its disagreements with a model
    that detects nothing (compare_models' own matcher and GT filter, nothing re-implemented)."""
    from hkd.eval.compare import FOUND_MISSED, compare_models

    nothing = "\u2205" if label != "\u2205" else "nothing"
    report = compare_models(gt, {label: dets, nothing: []}, score=score)
    return [r for r in report.disagreements if r["a"] == label and r["kind"] == FOUND_MISSED]


def divergence_cases(prepared: Prepared, evaluation: Evaluation, reference: str, compared: str,
                     per_group: int) -> list:
    """Up to ``per_group`` failures (GTs the reference finds and the compared model misses, most
    severe first) and as many successes (GTs both find, spread over the dataset) as
    :class:`hkd.viz.divergence.Case`, boxes in the image files' pixels."""
    from hkd.viz.divergence import Case

    ops = {label: evaluation.report["models"][label]["operating_point"]["score"] for label in (reference, compared)}
    failures = gallery(evaluation, reference, compared, "missed")
    key = lambda r: (r["image_id"], tuple(r["box"]))  # noqa: E731
    missed_by_compared = {key(r) for r in failures}
    found = _found_records(prepared.gt, reference, evaluation.dets[reference], ops[reference])
    both = sorted((r for r in found if key(r) not in missed_by_compared), key=key)
    if len(both) > per_group:  # evenly over the dataset, not the first images only
        both = [both[i] for i in np.linspace(0, len(both) - 1, per_group).round().astype(int)]
    cases = []
    for group, records in ((FAILURE, failures[:per_group]), (SUCCESS, both)):
        for r in records:
            x1, y1, x2, y2 = r["box"]
            if x2 > x1 and y2 > y1:
                cases.append(Case(str(image_path(prepared, r["file_name"])), (x1, y1, x2, y2), group))
    return cases


def divergence_path(prepared: Prepared, evaluation: Evaluation, refs: dict[str, dict], reference: str,
                    compared: str, *, per_group: int, measure: str = "distance") -> Path:
    """Cache file of one divergence run: both checkpoints, the dataset, N, the operating points, the cases."""
    t_key, s_key = (models.info(refs[label]).key.split(":")[0] for label in (reference, compared))
    ops = [evaluation.report["models"][label]["operating_point"]["score"] for label in (reference, compared)]
    params = json.dumps([prepared.gt_hash, ops, per_group, measure, evaluation.setup])
    n = prepared.limit or "all"
    return settings.cache_dir() / "divergence" / (
        f"{t_key[:16]}-{s_key[:16]}-{_slug(prepared.key)}-{n}-{hashlib.sha1(params.encode()).hexdigest()[:12]}.json")


def read_divergence(path: Path) -> dict | None:
    """``{"rows", "cases", "measure", "successes", "teacher_key", "student_key"}`` from a divergence
    cache file, or None (also for a file of the older CKA measure)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("rows"), list) and "successes" in data):
        return None
    # JSON has no NaN: None stands for "no finite value" (see _finite)
    data["rows"] = [{k: (math.nan if v is None and k in ("mean", "low", "high") else v) for k, v in row.items()}
                    for row in data["rows"]]
    return data


def compute_divergence(path: Path, teacher: models.LoadedModel, student: models.LoadedModel, cases: list, *,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """:func:`hkd.analysis.divergence.distances_over_cases` (the Features page's per-case measure: the
    teacher–student distance on each case's box, one forward per model and image) summarised per
    level and group with 95 % intervals, written to ``path`` with the successes' distances (the
    norm a case opened from the gallery is placed in). An unreadable image raises ImageError naming it."""
    from hkd.analysis.divergence import distances_over_cases, summarise
    from hkd.models.meta import atomic_write

    values = distances_over_cases(teacher.model, teacher.spec, student.model, student.spec, cases,
                                  load_image=lambda p: _pixels(p, Path(p).stat().st_mtime_ns), progress=progress)
    counts: dict[str, int] = defaultdict(int)
    for case in cases:
        counts[case.group] += 1
    successes = {level: [float(v) for v in groups.get(SUCCESS, []) if math.isfinite(v)]
                 for level, groups in values.items()}
    data = {"rows": _finite(summarise(values)), "cases": dict(counts), "measure": "distance",
            "teacher": teacher.name, "student": student.name, "teacher_key": teacher.key,
            "student_key": student.key, "successes": successes}
    text = json.dumps(data)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return read_divergence(path)


def _finite(rows: Iterable[dict]) -> list[dict]:
    """JSON has no NaN: a level without a finite value for a group is written as None."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in rows]
