"""A content-addressed cache of a frozen teacher's image-level outputs (issue #19).

    cache = TeacherCache("runs/teacher_cache", teacher_id=load_checkpoint(path).sha256)
    distiller = Distiller.build(teacher, t_spec, student, s_spec, config, teacher_cache=cache)

A sweep of distill configs over one seed (same data, batch size, augmentation) shows
the frozen teacher the same transformed batches again and again. Everything the
teacher computes from a batch alone (backbone, FPN, RPN head of a two-stage teacher;
backbone, FPN, dense head of a single-stage one) is stored once per batch and read
back by every later run; only the ROI part, which depends on the student's sampled
proposals, runs at every step.

- **Key**: blake2b over the teacher id, the stored dtype, how the teacher computes
  (device, parameter dtype, autocast, memory format, torch version), the teacher's
  image-level level names, and the batch (``batch.tensors`` shape, strides, dtype and
  bytes; ``batch.image_sizes``).
- **Entry**: every image-level level of the teacher's spec (``backbone.*``, ``neck.*``,
  ``rpn.*``, ``head.*``) and the FPN feature dict that ``box_roi_pool`` needs, computed
  in full on a miss whichever terms are active, so every config and schedule stage of
  a sweep reads the same entries (the price: one RPN-head forward a stage without
  ``rpn`` terms would not run, on a miss). One safetensors file
  ``<root>/<key[:2]>/<key>.safetensors``, never pickled; tensors that are one object
  (a neck tap and its FPN dict value) are stored once; the level → tensor map, each
  tensor's dtype and memory layout, and the key fields are in its metadata.
- **Writes** are atomic (a temporary file in the same folder, then ``os.replace``), so
  trainings running side by side share a folder safely; a truncated or unreadable entry,
  or one written for other key fields, is a miss (a logged warning) and is rewritten.
  The tensor data has no checksum: flipped bits inside a well-formed file go unnoticed.
- **Precision**: by default each tensor is stored in the teacher's own dtype and memory
  layout, so a hit gives bit-exact tensors (same values and strides) and the losses equal
  an uncached run's. ``dtype=torch.float16`` halves the disk but is not bit-exact; a miss
  then returns the rounded tensors too, so a run computes the same losses whether its
  entries were cold or warm.

hkd never deletes entries: the folder grows by one entry per distinct batch (measured
sizes in :mod:`hkd.train.config`, ``train.teacher_cache``); remove it when the sweep is done.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from hkd.models.hierarchy import HierarchySpec
from hkd.models.meta import atomic_write
from hkd.models.taps import Tap

FORMAT = "hkd-teacher-cache/1"
META_KEY = "hkd-teacher-cache"
# the hierarchies a teacher computes from the batch alone (roi.* needs the student's proposals)
IMAGE_HIERARCHIES = ("backbone", "neck", "rpn", "head")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

log = logging.getLogger(__name__)


@dataclass
class TeacherOutputs:
    """A teacher's image-level outputs for one batch.

    Attributes:
        levels: image-level level name → what a :class:`~hkd.models.taps.Tap` holds for it:
            a (N, C, H, W) tensor, or a per-FPN-level list of them (``rpn.*``).
        features: ``teacher.backbone(batch.tensors)``, the FPN dict (name → (N, C, H, W)).
    """

    levels: dict[str, Any]
    features: "OrderedDict[str, Tensor]"


def image_levels(spec: HierarchySpec) -> list[str]:
    """The levels of ``spec`` a teacher computes from the batch alone (``backbone``, ``neck``, ``rpn``, ``head``)."""
    return [level.name for level in spec if level.hierarchy in IMAGE_HIERARCHIES]


@torch.no_grad()
def teacher_image_outputs(teacher: nn.Module, spec: HierarchySpec, batch: ImageList) -> TeacherOutputs:
    """Every image-level level of a frozen teacher on ``batch``: backbone + FPN, then the RPN head
    (two-stage) or the dense head (single-stage), as the distiller runs them."""
    with Tap(teacher, spec, image_levels(spec)) as tap:
        features = teacher.backbone(batch.tensors)
        head = teacher.rpn.head if hasattr(teacher, "rpn") else teacher.head
        head(list(features.values()))
    return TeacherOutputs(tap.outputs(), features)


class TeacherCache:
    """A folder of a frozen teacher's image-level outputs, one file per batch (see the module docstring).

    Args:
        root: the folder (created on the first write; shared by runs, never cleaned).
        teacher_id: identifies the teacher's weights, e.g. its checkpoint's sha256. The caller
            vouches that one id means one teacher, prepared one way (``load_checkpoint(...,
            inference=True)`` folds norms: its outputs differ in the last bits from the unfolded model's).
        dtype: ``None`` (each tensor in the teacher's own dtype: bit-exact), ``float16``
            (half the disk, not bit-exact) or ``float32``/``bfloat16``; a ``torch.dtype`` or its name.

    Attributes:
        hits, misses: lookups answered from the folder / computed (and stored).
        rejected: entries that were there but unreadable (counted among the misses, rewritten).
        bytes_read, bytes_written: entry file bytes.
    """

    def __init__(self, root: str | os.PathLike, teacher_id: str, dtype: torch.dtype | str | None = None) -> None:
        if not teacher_id:
            raise ValueError("TeacherCache needs a teacher_id (e.g. the teacher checkpoint's sha256)")
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"teacher cache dtype {dtype!r}: expected one of {', '.join(DTYPES)} or None")
            dtype = DTYPES[dtype]
        if dtype is not None and dtype not in DTYPES.values():
            raise ValueError(f"teacher cache dtype {dtype}: expected one of {', '.join(DTYPES)} or None")
        self.root = Path(root)
        self.teacher_id = str(teacher_id)
        self.dtype = dtype
        self.hits = self.misses = self.rejected = 0
        self.bytes_read = self.bytes_written = 0
        self._write_failed = False

    def __repr__(self) -> str:
        return f"TeacherCache({str(self.root)!r}, teacher_id={self.teacher_id[:12]!r}…, dtype={self.dtype_name})"

    @property
    def dtype_name(self) -> str:
        """The stored dtype as written into keys: ``native`` (the teacher's own) or a dtype name."""
        return "native" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def summary(self) -> str:
        """One line for logs: hits, misses and bytes."""
        return (f"teacher cache {self.root}: {self.hits} hits, {self.misses} misses"
                + (f" ({self.rejected} unreadable entries rewritten)" if self.rejected else "")
                + f", {self.bytes_read / 1e6:.1f} MB read, {self.bytes_written / 1e6:.1f} MB written")

    # -- lookup ----------------------------------------------------------------
    def image_outputs(self, teacher: nn.Module, spec: HierarchySpec, batch: ImageList) -> TeacherOutputs:
        """The teacher's image-level outputs on ``batch``: read from the folder, or computed in full
        (:func:`teacher_image_outputs`) and stored. Tensors are on ``batch.tensors``' device."""
        fields = self.key_fields(teacher, spec, batch)
        key = self.key(batch, fields)
        path = self.path(key)
        found = self._read(path, key, fields, batch.tensors.device)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        return self._write(path, key, fields, teacher_image_outputs(teacher, spec, batch))

    def key_fields(self, teacher: nn.Module, spec: HierarchySpec, batch: ImageList) -> dict[str, Any]:
        """Everything but the batch's bytes that decides an entry (JSON-plain; stored in its metadata)."""
        x = batch.tensors
        device = x.device.type
        first = next(teacher.parameters(), None)
        autocast = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else "off"
        # a channels-last teacher's convolutions may round differently from a contiguous one's
        channels_last = any(not m.weight.is_contiguous() for m in teacher.modules() if isinstance(m, nn.Conv2d))
        compute = {"device": device, "params": str(first.dtype) if first is not None else None,
                   "autocast": autocast, "channels_last": channels_last, "torch": torch.__version__}
        if x.is_cuda:
            compute["device_name"] = torch.cuda.get_device_name(x.device)
        fields = {"format": FORMAT, "teacher": self.teacher_id, "dtype": self.dtype_name, "compute": compute,
                  "levels": image_levels(spec),
                  "batch": {"shape": list(x.shape), "stride": list(x.stride()), "dtype": str(x.dtype),
                            "image_sizes": [list(size) for size in batch.image_sizes]}}
        return json.loads(json.dumps(fields))  # plain lists, as they read back from the metadata

    @staticmethod
    def key(batch: ImageList, fields: dict[str, Any]) -> str:
        """blake2b (40 hex digits) of the key fields and the bytes of ``batch.tensors``."""
        digest = hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=20)
        data = batch.tensors.detach().contiguous().cpu().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().data)
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    # -- files -------------------------------------------------------------------
    def _read(self, path: Path, key: str, fields: dict[str, Any], device: torch.device) -> TeacherOutputs | None:
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = json.loads((fh.metadata() or {})[META_KEY])
                if meta.get("key") != key or meta.get("fields") != fields:
                    raise ValueError("it was written for another batch or teacher")
                stored = {name: fh.get_tensor(name) for name in fh.keys()}
            size = path.stat().st_size
            outputs = _decode(meta, stored, device)
        except FileNotFoundError:
            return None
        except torch.OutOfMemoryError:
            raise
        except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            self.rejected += 1
            log.warning("teacher cache entry %s is unreadable (%s: %s): recomputing and rewriting it",
                        path, type(exc).__name__, exc)
            return None
        self.bytes_read += size
        return outputs

    def _write(self, path: Path, key: str, fields: dict[str, Any], outputs: TeacherOutputs) -> TeacherOutputs:
        stored, meta, cast = _encode(outputs, self.dtype)
        meta.update(format=FORMAT, key=key, fields=fields)
        written = {"bytes": 0}

        def write(tmp: str) -> None:
            save_file(stored, tmp, metadata={META_KEY: json.dumps(meta)})
            written["bytes"] = os.path.getsize(tmp)

        try:
            atomic_write(path, write)
            self.bytes_written += written["bytes"]
        except OSError as exc:  # a full disk slows the next runs down; it must not stop this one
            if not self._write_failed:
                log.warning("teacher cache %s: could not write %s (%s); training goes on without storing",
                            self.root, path.name, exc)
            self._write_failed = True
        # a lossy dtype: the rounded tensors, as a hit would give them (cold and warm runs agree)
        return _decode(meta, stored, _device(outputs)) if cast else outputs


def _device(outputs: TeacherOutputs) -> torch.device:
    first = next(iter(outputs.features.values()), None)
    return first.device if first is not None else torch.device("cpu")


def _encode(outputs: TeacherOutputs, dtype: torch.dtype | None) -> tuple[dict[str, Tensor], dict[str, Any], bool]:
    """(tensors to save, metadata, whether any tensor was cast). Tensors that are one object are
    stored once; each is saved contiguous in its own stride order (``order``), undone on load."""
    tensors: dict[str, Tensor] = {}
    info: dict[str, dict[str, Any]] = {}
    names: dict[int, str] = {}  # id(tensor) → name; every tensor is alive in ``outputs`` meanwhile
    storages: set[int] = set()
    cast = False

    def encode(value: Any) -> Any:
        nonlocal cast
        if isinstance(value, Tensor):
            if id(value) in names:
                return names[id(value)]
            name = names[id(value)] = f"t{len(names)}"
            value = value.detach()
            order = sorted(range(value.dim()), key=lambda d: -value.stride(d))  # stable: ties keep their order
            saved = value.permute(order).contiguous().cpu()
            if dtype is not None and saved.is_floating_point() and saved.dtype != dtype:
                saved, cast = saved.to(dtype), True
            pointer = saved.untyped_storage().data_ptr()
            if pointer and pointer in storages:  # safetensors refuses tensors that share memory
                saved = saved.clone()
            storages.add(saved.untyped_storage().data_ptr())
            tensors[name] = saved
            info[name] = {"dtype": str(value.dtype).removeprefix("torch.")}
            if order != list(range(value.dim())):
                info[name]["order"] = order
            return name
        if isinstance(value, (list, tuple)):
            return {type(value).__name__: [encode(v) for v in value]}
        raise TypeError(f"the teacher cache stores tensors and lists of tensors, not {type(value).__name__}")

    levels = {}
    for level, value in outputs.levels.items():
        try:
            levels[level] = encode(value)
        except TypeError as exc:
            raise TypeError(f"level {level}: {exc}") from None
    features = [[name, encode(value)] for name, value in outputs.features.items()]
    return tensors, {"levels": levels, "features": features, "tensors": info}, cast


def _decode(meta: dict[str, Any], stored: dict[str, Tensor], device: torch.device) -> TeacherOutputs:
    """The inverse of :func:`_encode`: tensors on ``device`` in their own dtype and strides."""
    loaded: dict[str, Tensor] = {}

    def tensor(name: str) -> Tensor:
        if name not in loaded:
            info = meta["tensors"][name]
            dtype = getattr(torch, info["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"tensor {name}: {info['dtype']!r} is not a dtype")
            value = stored[name].to(device)
            value = value.to(dtype) if value.dtype != dtype else value
            order = info.get("order")
            if order is not None:
                value = value.permute(sorted(range(len(order)), key=order.__getitem__))
            loaded[name] = value
        return loaded[name]

    def decode(spec: Any) -> Any:
        if isinstance(spec, str):
            return tensor(spec)
        (kind, items), = spec.items()
        if kind not in ("list", "tuple"):
            raise ValueError(f"unknown container {kind!r}")
        return (list if kind == "list" else tuple)(decode(item) for item in items)

    return TeacherOutputs({level: decode(spec) for level, spec in meta["levels"].items()},
                          OrderedDict((name, decode(spec)) for name, spec in meta["features"]))
