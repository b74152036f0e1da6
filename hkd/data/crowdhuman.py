"""CrowdHuman ``.odgt``: one JSON object per line, full-body and visible boxes per person."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from hkd.data.base import DatasetError, PedestrianDataset, Transform
from hkd.data.validation import BoxValidator, RawBox, overlap_fraction, parse_xywh, resolve_image_paths

__all__ = ["CrowdHumanDataset"]


class CrowdHumanDataset(PedestrianDataset):
    """CrowdHuman ``.odgt``: one JSON object per line, images at ``images_dir/<ID>.jpg``.

    Per ``gtboxes`` entry: ``fbox`` (full body, ``[x, y, w, h]``) is the box;
    ``vis_ratio`` = area(``vbox`` ∩ ``fbox``) / area(``fbox``); tag ``mask`` (an
    ignore region) or ``extra.ignore`` = 1 make an ignore box. Full boxes often
    reach outside the image; they are clipped, ``height`` keeps the full height.
    ``hbox`` (head) and ``extra.occ`` are not used: ``vis_ratio`` measures occlusion.

    Args:
        images_dir: folder with ``<ID>.jpg`` files.
        odgt_file: the annotation file.
        transforms: see :class:`PedestrianDataset`.
    """

    format_name: ClassVar[str] = "crowdhuman"

    def __init__(
        self,
        images_dir: str | Path,
        odgt_file: str | Path,
        *,
        transforms: Transform | None = None,
    ):
        source = Path(odgt_file)
        if not source.is_file():
            raise DatasetError(f"annotation file '{source}' does not exist")
        ids: dict[str, int] = {}  # ID -> line number, in file order
        raw_boxes: list[list[RawBox]] = []
        with source.open(encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                record = self._parse_line(line, line_number, source)
                if record["ID"] in ids:
                    raise DatasetError(
                        f"'{source}', line {line_number}: ID {record['ID']!r} is already on "
                        f"line {ids[record['ID']]}"
                    )
                ids[record["ID"]] = line_number
                raw_boxes.append([self._raw_box(box) for box in record.get("gtboxes") or []])

        file_names = [f"{image_id}.jpg" for image_id in ids]
        paths = resolve_image_paths(Path(images_dir), file_names, source)
        validator = BoxValidator(source)
        images = validator.annotate_files(file_names, paths, raw_boxes)  # the .odgt has no image sizes
        validator.report()
        super().__init__(images, transforms=transforms, notes=validator.notes())

    @staticmethod
    def _parse_line(line: str, line_number: int, source: Path) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"'{source}', line {line_number}: malformed JSON ({err.msg} at column {err.colno})"
            ) from err
        if not isinstance(record, dict) or not isinstance(record.get("ID"), str):
            raise DatasetError(f"'{source}', line {line_number}: expected an object with a string 'ID'")
        if not isinstance(record.get("gtboxes", []), list):
            raise DatasetError(f"'{source}', line {line_number}: 'gtboxes' must be a list")
        return record

    @staticmethod
    def _raw_box(entry: Any) -> RawBox:
        entry = entry if isinstance(entry, dict) else {}
        extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
        full = parse_xywh(entry.get("fbox")) or parse_xywh(entry.get("vbox"))
        visible = parse_xywh(entry.get("vbox"))
        if full is None:
            # No usable box: validation drops it and counts it.
            full = [float("nan")] * 4
        return RawBox(
            xywh=full,
            ignore=entry.get("tag") != "person" or bool(extra.get("ignore", 0)),
            height=full[3],
            vis_ratio=None if visible is None else overlap_fraction(visible, full),
        )
