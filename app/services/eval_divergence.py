"""Divergence over an evaluated dataset: the teacher–student distance on the boxes of the pair's
failures (GTs the reference finds and the compared model misses) and of successes spread over the
dataset, per level with 95 % intervals, cached on disk in the result store's ``divergence/``
folder. The Features page places one case among the successes (:mod:`app.services.case_profile`)."""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hkd.results import slug

from app.services import models
from app.services.evaluation import Evaluation, Prepared, store
from app.services.eval_gallery import _pixels, gallery, image_path

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
    return store().root / "divergence" / (
        f"{t_key[:16]}-{s_key[:16]}-{slug(prepared.key)}-{n}-{hashlib.sha1(params.encode()).hexdigest()[:12]}.json")


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
