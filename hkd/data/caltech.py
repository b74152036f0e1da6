"""The Caltech Pedestrian benchmark as distributed: ``.seq`` videos and ``.vbb`` annotations.

Layout (both video locations are accepted)::

    <root>/set00/V000.seq … <root>/set10/V0xx.seq      (or <root>/videos/setXX/V0xx.seq)
    <root>/annotations/set00/V000.vbb …

Frames are decoded from the ``.seq`` bytes when asked for (:mod:`hkd.data.seq`);
nothing is extracted. Labels and visibility follow Dollár's evaluation code
(``dbEval`` loads ``lbls={'person'}``, ``ilbls={'people'}``; ``bbGt`` computes
visibility), so the ground truth matches published Caltech results.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.io

from hkd.data.base import DatasetError, PedestrianDataset, Transform
from hkd.data.seq import SeqVideo, open_seq
from hkd.data.validation import BoxValidator, RawBox, confine

__all__ = [
    "CALTECH_LAYOUT",
    "IGNORE_LABELS",
    "TOOLBOX_IGNORE_LABELS",
    "PEDESTRIAN_LABELS",
    "SPLITS",
    "CaltechDataset",
    "VbbObject",
    "is_caltech_root",
    "read_vbb",
]

log = logging.getLogger("hkd.data.datasets")  # the one logger of the dataset readers (see validation)

#: The standard split: train on set00–set05, test on set06–set10.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"set{i:02d}" for i in range(0, 6)),
    "test": tuple(f"set{i:02d}" for i in range(6, 11)),
}
#: ``.vbb`` labels that are pedestrians, and labels that are ignore regions: the uncertain
#: ``person?``, the crowd ``people`` and the false-alarm-prone ``person-fa`` neither count as
#: misses nor make a detection on them a false positive. Dollár's ``dbEval`` loads ``people`` as
#: its only ignore label and leaves the other two out (a detection on them is a false positive):
#: ``CaltechDataset(..., ignore_labels=TOOLBOX_IGNORE_LABELS)`` reproduces that.
PEDESTRIAN_LABELS: tuple[str, ...] = ("person",)
IGNORE_LABELS: tuple[str, ...] = ("people", "person?", "person-fa")
TOOLBOX_IGNORE_LABELS: tuple[str, ...] = ("people",)

CALTECH_LAYOUT = ("a Caltech Pedestrian folder holds annotations/setXX/VYYY.vbb and the matching videos "
                  "setXX/VYYY.seq (or videos/setXX/VYYY.seq)")
_SET_NAME = re.compile(r"set\d\d")


# --------------------------------------------------------------------------- .vbb


@dataclass(frozen=True)
class VbbObject:
    """One annotated object in one frame of a ``.vbb`` file.

    Attributes:
        label: ``person``, ``person?``, ``people`` or ``person-fa`` in Caltech.
        pos: full box ``(x, y, w, h)`` pixels.
        posv: visible part ``(x, y, w, h)``; all zeros when not annotated.
        occluded: the ``occl`` flag.
    """

    label: str
    pos: tuple[float, float, float, float]
    posv: tuple[float, float, float, float]
    occluded: bool

    @property
    def vis_ratio(self) -> float:
        """Visible fraction as ``bbGt`` computes it: 1 unless occluded with a visible box;
        a visible box equal to the full box marks a fully occluded person (0);
        else area(posv) / area(pos)."""
        if not self.occluded or not any(self.posv):
            return 1.0
        if self.posv == self.pos:
            return 0.0
        area = self.pos[2] * self.pos[3]
        return self.posv[2] * self.posv[3] / area if area > 0 else 1.0


def _cells(value: Any) -> list[Any]:
    """A MATLAB cell or struct array (loaded unsqueezed) as a flat list."""
    return list(np.asarray(value, dtype=object).reshape(-1))


def _text(value: Any) -> str:
    return "".join(str(part) for part in np.asarray(value).reshape(-1))


def _numbers(value: Any, count: int, what: str) -> tuple[float, ...]:
    try:
        numbers = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        numbers = np.zeros(0)
    if numbers.size != count:
        raise ValueError(f"'{what}' should hold {count} number(s), got {repr(np.asarray(value).tolist())[:100]}")
    return tuple(float(v) for v in numbers)


def _field(struct: Any, name: str) -> Any:
    if not hasattr(struct, name):
        raise ValueError(f"field '{name}' is missing")
    return getattr(struct, name)


def read_vbb(path: str | Path) -> list[list[VbbObject]]:
    """Read a ``.vbb`` file (a MATLAB file with struct ``A``): the objects of each frame.

    Returns:
        ``A.nFrame`` lists, one per frame (0-based), of :class:`VbbObject`.

    Raises:
        DatasetError: not a readable MATLAB file, or ``A`` lacks the fields of a
            ``.vbb`` (``nFrame``, ``objLists``, ``objLbl``), naming the file and frame.
    """
    path = Path(path)
    try:
        # Unsqueezed, every cell and struct array keeps its 2-D shape, so a frame
        # with one object reads like a frame with several.
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3), …
        raise DatasetError(f"'{path}' is not a readable .vbb (MATLAB) file: {type(err).__name__}: {err}") from err
    where = f"'{path}'"
    try:
        if "A" not in mat:
            raise ValueError("there is no variable 'A'")
        annotation = _cells(mat["A"])[0]
        n_frame = int(_numbers(_field(annotation, "nFrame"), 1, "nFrame")[0])
        labels = [_text(label) for label in _cells(_field(annotation, "objLbl"))]
        obj_lists = _cells(_field(annotation, "objLists"))
        if len(obj_lists) != n_frame:
            raise ValueError(f"objLists has {len(obj_lists)} frames, nFrame says {n_frame}")
        frames = []
        for frame, objects in enumerate(obj_lists):
            where = f"'{path}', frame {frame}"
            frames.append([_vbb_object(struct, labels) for struct in _cells(objects)])  # [] when empty
    except (ValueError, TypeError, IndexError, AttributeError) as err:
        raise DatasetError(f"{where}: not a Caltech .vbb annotation: {err}") from err
    return frames


def _vbb_object(struct: Any, labels: list[str]) -> VbbObject:
    object_id = int(_numbers(_field(struct, "id"), 1, "id")[0])
    if not 1 <= object_id <= len(labels):
        raise ValueError(f"object id {object_id} has no label: objLbl lists {len(labels)}")
    pos = _numbers(_field(struct, "pos"), 4, "pos")
    posv_value = getattr(struct, "posv", None)
    posv = (0.0,) * 4 if posv_value is None or np.size(posv_value) <= 1 else _numbers(posv_value, 4, "posv")
    occluded = bool(_numbers(_field(struct, "occl"), 1, "occl")[0])
    return VbbObject(label=labels[object_id - 1], pos=pos, posv=posv, occluded=occluded)  # ids count from 1


def _raw_box(obj: VbbObject, ignore_labels: tuple[str, ...]) -> RawBox:
    return RawBox(xywh=list(obj.pos), ignore=obj.label in ignore_labels, height=obj.pos[3],
                   vis_ratio=obj.vis_ratio)


# --------------------------------------------------------------------------- layout


def _video_folder(root: Path, set_name: str) -> Path:
    direct = root / set_name
    return direct if direct.is_dir() else root / "videos" / set_name


def is_caltech_root(path: str | Path) -> bool:
    """Whether ``path`` is a folder with ``annotations/setXX/*.vbb`` and a matching ``.seq``."""
    root = Path(path)
    try:
        for set_dir in sorted((root / "annotations").glob("set[0-9][0-9]")):
            videos = _video_folder(root, set_dir.name)
            if any((videos / f"{vbb.stem}.seq").is_file() for vbb in set_dir.glob("*.vbb")):
                return True
    except OSError:
        return False
    return False


def _set_names(sets: Iterable[int | str]) -> tuple[str, ...]:
    names = []
    for value in sets:
        name = f"set{value:02d}" if isinstance(value, int) else str(value)
        if not _SET_NAME.fullmatch(name):
            raise DatasetError(f"Caltech set {value!r} is not a set: expected 'set00'…'set10' or 0…10")
        names.append(name)
    if not names:
        raise DatasetError("no Caltech sets given: expected e.g. sets=['set06'] or sets=[6]")
    return tuple(dict.fromkeys(names))


def _videos(root: Path, set_name: str) -> list[tuple[str, Path, Path]]:
    """``(video name, .seq, .vbb)`` of one set, each .seq with its .vbb, confined to ``root``."""
    annotations, videos = root / "annotations" / set_name, _video_folder(root, set_name)
    seqs = {p.stem: p for p in videos.glob("*.seq")} if videos.is_dir() else {}
    vbbs = {p.stem: p for p in annotations.glob("*.vbb")} if annotations.is_dir() else {}
    unannotated, unfilmed = sorted(seqs.keys() - vbbs.keys()), sorted(vbbs.keys() - seqs.keys())
    if unannotated:
        name = unannotated[0]
        raise DatasetError(f"'{seqs[name]}' has no annotations: expected '{annotations / (name + '.vbb')}'")
    if unfilmed:
        name = unfilmed[0]
        raise DatasetError(f"'{vbbs[name]}' has no video: expected '{videos / (name + '.seq')}'")
    return [(name, confine(seqs[name], root, root), confine(vbbs[name], root, root)) for name in sorted(seqs)]


# --------------------------------------------------------------------------- dataset


class CaltechDataset(PedestrianDataset):
    """Caltech Pedestrian frames read straight from the ``.seq`` videos.

    Frames ``i`` with ``(i + 1) % step == 0`` are used (29, 59, … for the standard
    ``step=30``; ``step=3`` gives Caltech10x training). ``file_name`` is
    ``setXX/VYYY/I{i:05d}.jpg``, the name extracted copies use; ``image_id`` counts
    from 1. Each record's ``path`` is its ``.seq`` video, a container of many
    frames, not an image file: read pixels with :meth:`load_pixels`.

    Boxes: label ``person`` is a pedestrian; ``people``, ``person?`` and ``person-fa``
    are ignore regions (:data:`IGNORE_LABELS`); ``height`` is the annotated box
    height, ``vis_ratio`` as :attr:`VbbObject.vis_ratio`.

    Args:
        root: the Caltech folder (see :data:`CALTECH_LAYOUT`).
        split: ``"train"`` (set00–set05) or ``"test"`` (set06–set10); sets of the
            split that are absent are skipped with a warning.
        step: sample every ``step``-th frame.
        sets: these sets instead of the split's (``"set06"`` or ``6``); all must exist.
        ignore_labels: the labels read as ignore regions; labels in neither this nor
            :data:`PEDESTRIAN_LABELS` are left out (:data:`TOOLBOX_IGNORE_LABELS`: as
            Dollár's ``dbEval``).
        transforms: see :class:`PedestrianDataset`.

    Raises:
        DatasetError: a missing set or file, a ``.seq`` without ``.vbb`` (or the
            reverse), frame counts that differ, a malformed file, or a file that
            resolves outside ``root``.
    """

    format_name: ClassVar[str] = "caltech"

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "test",
        step: int = 30,
        sets: Iterable[int | str] | None = None,
        ignore_labels: Iterable[str] = IGNORE_LABELS,
        transforms: Transform | None = None,
    ):
        root = Path(root)
        ignore_labels = tuple(ignore_labels)
        if not root.is_dir():
            raise DatasetError(f"Caltech folder '{root}' does not exist; {CALTECH_LAYOUT}")
        if split not in SPLITS:
            raise DatasetError(f"Caltech split {split!r} is not one of {sorted(SPLITS)}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise DatasetError(f"step must be a positive number of frames, got {step!r}")
        set_names = _set_names(sets) if sets is not None else SPLITS[split]
        present = [name for name in set_names
                   if (root / "annotations" / name).is_dir() or _video_folder(root, name).is_dir()]
        missing = [name for name in set_names if name not in present]
        if sets is not None and missing:
            raise DatasetError(f"Caltech set(s) {missing} are not in '{root}'; {CALTECH_LAYOUT}")
        if not present:
            raise DatasetError(f"none of the {split} sets {list(set_names)} is in '{root}'; {CALTECH_LAYOUT}")
        if missing:
            log.warning("%s: Caltech %s sets %s are missing; reading %s", root, split, missing, present)

        validator = BoxValidator(root / "annotations")
        images, self._frames = [], []
        for set_name in present:
            for video_name, seq_path, vbb_path in _videos(root, set_name):
                video, frames = open_seq(seq_path), read_vbb(vbb_path)
                if len(frames) != len(video):
                    raise DatasetError(f"'{vbb_path}' annotates {len(frames)} frames but '{seq_path}' "
                                       f"holds {len(video)}")
                for frame in range(step - 1, len(video), step):
                    images.append(validator.annotate(
                        image_id=len(images) + 1,
                        file_name=f"{set_name}/{video_name}/I{frame:05d}.jpg",
                        path=seq_path,
                        width=video.header.width,
                        height=video.header.height,
                        raw_boxes=[_raw_box(obj, ignore_labels) for obj in frames[frame]
                                   if obj.label in PEDESTRIAN_LABELS or obj.label in ignore_labels],
                    ))
                    self._frames.append((video, frame))
        if not images:
            raise DatasetError(f"'{root}': sets {present} have no frame i with (i + 1) % {step} == 0")
        validator.report()
        super().__init__(images, transforms=transforms, notes=validator.notes())

    def load_pixels(self, index: int) -> np.ndarray:
        """Image ``index`` decoded from its video: ``uint8 [H, W, 3]`` RGB, as ``load_image`` gives.

        Raises:
            DatasetError: the frame is not a readable JPEG of the video's frame size.
        """
        video, frame = self._frames[index]
        return video.frame(frame)

    def image_file(self, index: int) -> Path | None:
        """None: a frame is not a file of its own (``image_path`` is its video)."""
        return None

    def video_frame(self, index: int) -> tuple[SeqVideo, int]:
        """The video of image ``index`` and the frame's 0-based number in it."""
        return self._frames[index]
