"""Norpix StreamPix ``.seq`` videos with JPEG frames, as the Caltech Pedestrian benchmark ships them.

A ``.seq`` file is a 1024-byte header followed by frames. Each compressed frame
is a ``uint32`` size (counting its own 4 bytes), ``size - 4`` bytes of JPEG and
an 8-byte timestamp (``uint32`` s, ``uint16`` ms, ``uint16`` µs); some writers add
8 empty bytes after every timestamp. The frame offsets are found once by walking
the size fields (as Dollár's ``seqReaderPlugin`` does) and cached per file, so a
frame is one seek and one JPEG decode, without extracting anything to disk.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hkd.data.base import DatasetError
from hkd.data.images import ImageError, load_image

__all__ = ["JPEG_FORMATS", "SeqHeader", "SeqVideo", "open_seq"]

HEADER_SIZE = 1024
MAGIC = 0xFEED
#: Norpix ``imageFormat`` codes of JPEG-compressed frames (Caltech: 102 colour, 201 grey/colour).
JPEG_FORMATS = (102, 201)
_OTHER_FORMATS = {100: "raw", 200: "raw", 101: "raw BRGB8", 103: "JPEG BRGB", 1: "PNG", 2: "PNG"}
_TIMESTAMP_BYTES = 8  # uint32 seconds, uint16 milliseconds, uint16 microseconds
_PADDING_BYTES = 8  # empty bytes some writers put after each timestamp
_JPEG_SOI = b"\xff\xd8"


@dataclass(frozen=True)
class SeqHeader:
    """The fields of a ``.seq`` header that reading frames needs.

    Attributes:
        version: Norpix format version (offset 28).
        width, height: frame size in pixels (offsets 548, 552).
        image_format: Norpix format code (offset 568); one of :data:`JPEG_FORMATS`.
        frame_count: allocated frames (offset 572); 0 means "count them".
        fps: nominal frame rate (offset 584).
    """

    version: int
    width: int
    height: int
    image_format: int
    frame_count: int
    fps: float


def _read_header(path: Path, raw: bytes) -> SeqHeader:
    if len(raw) < HEADER_SIZE:
        raise DatasetError(f"'{path}' is truncated: {len(raw)} bytes, shorter than the "
                           f"{HEADER_SIZE}-byte header of a Norpix .seq video")
    (magic,) = struct.unpack_from("<I", raw, 0)
    name = raw[4:24].decode("utf-16-le", errors="replace")
    if magic != MAGIC or not name.startswith("Norpix seq"):
        raise DatasetError(f"'{path}' is not a Norpix .seq video: it starts with {raw[:8].hex()} "
                           f"instead of the magic number 0xFEED and the name 'Norpix seq'")
    version, header_size = struct.unpack_from("<iI", raw, 28)
    width, height, _bit_depth, _bit_depth_real, _image_bytes, image_format = struct.unpack_from("<6I", raw, 548)
    (frame_count,) = struct.unpack_from("<I", raw, 572)
    (fps,) = struct.unpack_from("<d", raw, 584)
    if header_size != HEADER_SIZE:
        raise DatasetError(f"'{path}': header size {header_size}, expected {HEADER_SIZE}")
    if image_format not in JPEG_FORMATS:
        kind = _OTHER_FORMATS.get(image_format, "unknown")
        raise DatasetError(f"'{path}': image format {image_format} ({kind}) is not supported; "
                           f"accepted are JPEG-compressed frames (formats {JPEG_FORMATS}), as in Caltech")
    if width == 0 or height == 0:
        raise DatasetError(f"'{path}': the header gives a frame size of {width}×{height} pixels")
    return SeqHeader(version=version, width=width, height=height, image_format=image_format,
                     frame_count=frame_count, fps=fps)


@dataclass(frozen=True)
class SeqVideo:
    """One ``.seq`` video: its header and where each JPEG frame lies (use :func:`open_seq`).

    Attributes:
        path: the ``.seq`` file.
        header: see :class:`SeqHeader`.
        offsets: ``int64 [F]`` byte offset of each frame's JPEG data.
        sizes: ``int64 [F]`` byte length of each frame's JPEG data.
    """

    path: Path
    header: SeqHeader
    offsets: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def _where(self, frame: int) -> str:
        return f"'{self.path}', frame {frame}"

    def frame_bytes(self, frame: int) -> bytes:
        """The JPEG file of frame ``frame`` (0-based), as stored."""
        if not 0 <= frame < len(self):
            raise IndexError(f"{self._where(frame)}: the video has {len(self)} frames")
        offset, size = int(self.offsets[frame]), int(self.sizes[frame])
        with open(self.path, "rb") as file:
            file.seek(offset)
            data = file.read(size)
        if len(data) != size:
            raise DatasetError(f"{self._where(frame)} is truncated: {len(data)} of {size} bytes at byte "
                               f"{offset} (the file changed after it was indexed?)")
        return data

    def frame(self, frame: int) -> np.ndarray:
        """Frame ``frame`` (0-based) decoded to ``uint8 [H, W, 3]`` RGB, as :func:`load_image` gives."""
        try:
            pixels = load_image(self.frame_bytes(frame))
        except ImageError as err:
            raise DatasetError(f"{self._where(frame)} is not a readable JPEG: {err}") from err
        if pixels.shape[:2] != (self.header.height, self.header.width):
            raise DatasetError(f"{self._where(frame)} is {pixels.shape[1]}×{pixels.shape[0]} pixels but the "
                               f"header says {self.header.width}×{self.header.height}")
        return pixels


def _index_frames(path: Path, header: SeqHeader, file_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Walk the frames' size fields: ``(offsets, sizes)`` of their JPEG data.

    Like ``seqReaderPlugin``, the 8 empty bytes some writers add after each
    timestamp are detected once, after frame 0 (a zero where frame 1's size
    should be). A header frame count of 0 means "as many frames as the file holds".
    """
    expected = header.frame_count
    offsets, sizes = [], []
    stride_extra = _TIMESTAMP_BYTES
    position = HEADER_SIZE
    with open(path, "rb") as file:
        while expected == 0 or len(offsets) < expected:
            frame = len(offsets)
            if expected == 0 and position >= file_size:
                break
            file.seek(position)
            head = file.read(6)
            if len(head) < 6:
                raise DatasetError(f"'{path}' is truncated at frame {frame} (byte {position}): the header "
                                   f"says {expected} frames, the file ends after {frame}")
            (size,) = struct.unpack_from("<I", head)
            if size == 0 and frame == 1 and stride_extra == _TIMESTAMP_BYTES:
                # Padding after frame 0's timestamp: every frame carries it.
                stride_extra += _PADDING_BYTES
                position += _PADDING_BYTES
                continue
            if size < 4 + len(_JPEG_SOI) or head[4:6] != _JPEG_SOI:
                raise DatasetError(f"'{path}', frame {frame} (byte {position}) is not a JPEG frame: size "
                                   f"field {size}, data starting {head[4:6].hex()} instead of ffd8")
            if position + size > file_size:
                raise DatasetError(f"'{path}', frame {frame} is truncated: {size - 4} bytes of JPEG at byte "
                                   f"{position + 4}, the file ends at byte {file_size}")
            offsets.append(position + 4)
            sizes.append(size - 4)
            position += size + stride_extra
    return np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)


@functools.lru_cache(maxsize=512)
def _open_seq_cached(path: str, file_size: int, mtime_ns: int) -> SeqVideo:
    del mtime_ns  # part of the cache key only: a rewritten file is indexed again
    with open(path, "rb") as file:
        header = _read_header(Path(path), file.read(HEADER_SIZE))
    offsets, sizes = _index_frames(Path(path), header, file_size)
    return SeqVideo(path=Path(path), header=header, offsets=offsets, sizes=sizes)


def open_seq(path: str | Path) -> SeqVideo:
    """Read the header and frame index of the ``.seq`` video at ``path`` (cached per file).

    Raises:
        DatasetError: not a Norpix ``.seq`` (wrong magic), frames other than JPEG,
            or a file that ends before the header's frame count, naming the frame.
        FileNotFoundError: ``path`` does not exist.
    """
    stat = os.stat(path)
    return _open_seq_cached(os.fspath(path), stat.st_size, stat.st_mtime_ns)
