"""CityPersons as it is published: ``anno_<split>.mat`` over Cityscapes' ``leftImg8bit/<split>/``.

The ``.mat`` holds one variable, ``anno_<split>_aligned``: a 1×N MATLAB cell array
whose cells are 1×1 structs with ``cityname``, ``im_name`` and ``bbs``; the image is
``leftImg8bit/<split>/<cityname>/<im_name>``. Each row of ``bbs`` is

    [class_label, x1, y1, w, h, instance_id, x1_vis, y1_vis, w_vis, h_vis]

with classes 0 ignore region, 1 pedestrian, 2 rider, 3 sitting person, 4 other
person, 5 group of people. As in the official evaluation, class 1 rows are the
pedestrians and every other row is an ignore region; ``height`` is the full box's
``h`` and ``vis_ratio`` the visible box's area over the full box's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hkd.data.base import DatasetError, PedestrianDataset, Transform
from hkd.data.validation import BoxValidator, RawBox, check_relative_name, resolve_image_paths

__all__ = ["CityPersonsDataset", "citypersons_splits", "is_citypersons_mat"]

PEDESTRIAN_CLASS = 1
_FIELDS = ("cityname", "im_name", "bbs")
_BBS_COLUMNS = 10
_MAT_NAME = re.compile(r"anno_(.+)\.mat")
_VARIABLE = re.compile(r"anno_(.+)_aligned")
_EXPECTED = ("a variable anno_<split>_aligned: a 1×N cell array of structs with fields "
             "cityname, im_name and bbs (rows of [class, x1, y1, w, h, id, x1_vis, y1_vis, w_vis, h_vis])")


def is_citypersons_mat(path: str | Path) -> bool:
    """Whether ``path`` is named as CityPersons names its files, ``anno_<split>.mat``."""
    return _MAT_NAME.fullmatch(Path(path).name) is not None


def citypersons_splits(root: str | Path) -> dict[str, Path]:
    """``{split: anno_<split>.mat}`` found in ``root`` or ``root/annotations``, by split name."""
    found: dict[str, Path] = {}
    for folder in (Path(root), Path(root, "annotations")):
        for path in sorted(folder.glob("anno_*.mat")):
            match = _MAT_NAME.fullmatch(path.name)
            if match and path.is_file():
                found.setdefault(match.group(1), path)
    return found


class CityPersonsDataset(PedestrianDataset):
    """CityPersons' ``anno_<split>.mat`` with the Cityscapes images it annotates.

    Image ids count from 1 in the order of the ``.mat``, as in the official ``val_gt.json``;
    ``file_name`` is ``<cityname>/<im_name>``, relative to the images folder, and may not
    leave it (:func:`hkd.data.validation.check_relative_name`, :func:`~hkd.data.validation.confine`).

    Args:
        mat_file: the ``anno_<split>.mat`` file.
        images_dir: ``leftImg8bit/<split>``; by default ``<mat folder>/../leftImg8bit/<split>``,
            else ``<mat folder>/leftImg8bit/<split>``.
        transforms: see :class:`PedestrianDataset`.
    """

    format_name: ClassVar[str] = "citypersons"

    def __init__(
        self,
        mat_file: str | Path,
        *,
        images_dir: str | Path | None = None,
        transforms: Transform | None = None,
    ):
        source = Path(mat_file)
        if not source.is_file():
            raise DatasetError(f"annotation file '{source}' does not exist")
        cells, self.split = _read_cells(source)
        images_dir = Path(images_dir) if images_dir is not None else _default_images_dir(source, self.split)

        file_names, raw_boxes = [], []
        for position, cell in enumerate(cells):
            city, name, bbs = _read_cell(cell, position, source)
            for part in (city, name):  # each on its own: "frankfurt" + "/etc/x" is no relative name
                check_relative_name(part, images_dir, source)
            file_names.append(f"{city}/{name}")
            raw_boxes.append([_raw_box(row) for row in bbs])
        paths = resolve_image_paths(images_dir, file_names, source)

        validator = BoxValidator(source)
        images = validator.annotate_files(file_names, paths, raw_boxes)  # the .mat has no image sizes
        validator.report()
        super().__init__(images, transforms=transforms, notes=validator.notes())


def _read_cells(source: Path) -> tuple[np.ndarray, str]:
    """The cells of ``anno_<split>_aligned`` (flattened) and the split, or DatasetError naming ``source``."""
    try:
        from scipy.io import loadmat
    except ImportError as err:  # scipy is in requirements.txt; a trimmed install may lack it
        raise DatasetError(f"reading '{source}' needs scipy (pip install scipy)") from err
    try:
        contents = loadmat(source)
    except NotImplementedError as err:
        raise DatasetError(f"'{source}' is a MATLAB v7.3 (HDF5) file, which scipy cannot read; "
                           "save it again with save(..., '-v7')") from err
    except Exception as err:  # scipy raises many kinds on a foreign or truncated file
        raise DatasetError(f"'{source}' is not a readable MATLAB .mat file ({type(err).__name__}: {err}); "
                           f"expected CityPersons' anno_<split>.mat with {_EXPECTED}") from err
    variables = {key: value for key, value in contents.items() if not key.startswith("__")}
    named = _MAT_NAME.fullmatch(source.name)
    key = f"anno_{named.group(1)}_aligned" if named else None
    if key not in variables:
        candidates = [k for k in variables if _VARIABLE.fullmatch(k)]
        if len(candidates) != 1:
            raise DatasetError(f"'{source}' is not a CityPersons annotation file: expected {_EXPECTED}; "
                               f"it holds {sorted(variables) or 'no variables'}")
        key = candidates[0]
    cells = variables[key]
    if not isinstance(cells, np.ndarray) or cells.dtype != object or cells.ndim != 2 or 1 not in cells.shape:
        what = f"{cells.dtype} array of shape {cells.shape}" if isinstance(cells, np.ndarray) else type(cells).__name__
        raise DatasetError(f"'{source}': {key} is a {what}; expected {_EXPECTED}")
    return cells.reshape(-1), _VARIABLE.fullmatch(key).group(1)


def _read_cell(cell: Any, position: int, source: Path) -> tuple[str, str, np.ndarray]:
    """``(cityname, im_name, bbs [N, 10] float64)`` of one cell (a 1×1 struct, as loadmat gives it)."""
    where = f"'{source}', cell {position + 1}"
    if not (isinstance(cell, np.ndarray) and cell.dtype.names and set(_FIELDS) <= set(cell.dtype.names)
            and cell.size == 1):
        raise DatasetError(f"{where} is not a struct with fields {', '.join(_FIELDS)}; expected {_EXPECTED}")
    record = cell.reshape(-1)[0]
    city, name = _text(record["cityname"], "cityname", where), _text(record["im_name"], "im_name", where)
    try:
        bbs = np.asarray(record["bbs"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: bbs is not a numeric matrix ({err})") from err
    if bbs.size == 0:
        return city, name, np.zeros((0, _BBS_COLUMNS))
    if bbs.ndim != 2 or bbs.shape[1] != _BBS_COLUMNS:
        raise DatasetError(f"{where}: bbs has shape {bbs.shape}; expected N rows of {_BBS_COLUMNS} "
                           "[class, x1, y1, w, h, id, x1_vis, y1_vis, w_vis, h_vis]")
    return city, name, bbs


def _text(value: Any, field: str, where: str) -> str:
    """A MATLAB char array as loadmat gives it (``array(['frankfurt'])``) as ``str``."""
    items = value.reshape(-1) if isinstance(value, np.ndarray) else [value]
    if len(items) != 1 or not isinstance(items[0], str) or not items[0]:
        raise DatasetError(f"{where}: {field} is {value!r}, expected a text")
    return items[0]


def _raw_box(row: np.ndarray) -> RawBox:
    """One ``bbs`` row: class 1 a pedestrian, any other class an ignore region."""
    label, x, y, w, h = row[:5]
    vis_w, vis_h = row[8], row[9]
    full_area = w * h
    return RawBox(
        xywh=[float(x), float(y), float(w), float(h)],
        ignore=float(label) != PEDESTRIAN_CLASS,
        height=float(h),
        vis_ratio=float(vis_w * vis_h / full_area) if full_area > 0 else None,
    )


def _default_images_dir(source: Path, split: str) -> Path:
    candidates = [source.parent.parent / "leftImg8bit" / split, source.parent / "leftImg8bit" / split]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"no Cityscapes images for '{source}': looked for {[str(c) for c in candidates]}; "
                       "pass the leftImg8bit/<split> folder as the images folder")
