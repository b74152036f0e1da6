"""The Evaluate page's failure gallery: the disagreement records of a (reference, compared) pair by
view and bin, each case's crop with both models' boxes and its caption, and the drill-down a case
opens on the Detections/Features/Attention pages (``open_case``, the case's URL value)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import streamlit as st

from hkd.evaluation import EvaluationError
from hkd.models.meta import CheckpointError
from hkd.viz.draw import COLORS

from app.services import models, settings
from app.services.evaluation import Evaluation, Prepared, _stamp, prepare

PAGE_SIZE = 12  # gallery crops per page
# the gallery's views of a (reference, compared) pair: (a, b, kind) of hkd.eval.compare's records
GALLERY_VIEWS = {
    "missed": ("reference", "compared", "found_by_a_missed_by_b"),
    "found": ("compared", "reference", "found_by_a_missed_by_b"),
    "false_positive": ("compared", "reference", "fp_of_a_only"),
}
# the Detections page's colours: the reference as its teacher, the compared model as its student
CASE_COLORS = {"reference": COLORS["teacher_only"], "compared": COLORS["student_only"]}


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


