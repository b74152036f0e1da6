"""For the app: one checked ONNX export per checkpoint, kept in the result store, and both backends timed the same way."""
from __future__ import annotations

import os
from pathlib import Path

from hkd.deploy.export import export_onnx
from hkd.deploy.runtime import OnnxDetector, OnnxModelError, onnx_latency, read_onnx_meta
from hkd.models.meta import file_sha256
from hkd.results import ResultStore

__all__ = ["cached_export", "backend_latency"]


def cached_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                  store: ResultStore | None = None, size: tuple[int, int] | None = None) -> Path:
    """The ONNX export of ``checkpoint``, exported (and checked) the first time only.

    It is the result store's ``onnx`` entry of (checkpoint stem, SHA-256, size) —
    ``<store root>/onnx/<stem>.<sha256[:16]>.<WxH|any>.onnx`` — or, given ``cache_dir``
    instead of ``store``, the file of that name in ``cache_dir``. Named by the checkpoint's
    SHA-256, a retrained checkpoint under the same name gets a new export; an export whose
    recorded source does not match is redone. The export runs under the entry's lock, so
    two sessions asking at once export once.
    """
    from hkd.models.meta import existing

    path = existing(checkpoint)
    digest = file_sha256(path)
    key = {"stem": path.stem, "sha256": digest, "size": None if size is None else list(size)}
    if store is None:
        if cache_dir is None:
            raise ValueError("cached_export needs a result store or a cache folder")
        folder = Path(cache_dir)  # the export's file of the same name, in that folder
        legacy = ResultStore(folder)
        entry = legacy.at("onnx", folder / legacy.entry("onnx", key).path.name)
    else:
        entry = store.entry("onnx", key)

    def current() -> bool:
        if not entry.path.is_file():
            return False
        try:
            _, export_info = read_onnx_meta(entry.path)
            return export_info["source"]["sha256"] == digest
        except (OnnxModelError, KeyError, TypeError):
            return False  # a damaged or foreign file under our name: export again

    if current():
        return entry.path
    with entry.locked():
        if current():
            return entry.path
        return export_onnx(path, entry.path, size=size).path


def backend_latency(checkpoint: str | os.PathLike, *, cache_dir: str | os.PathLike, model=None,
                    detector: OnnxDetector | None = None, width: int = 640, height: int = 480,
                    threads: int = 2, warmup: int = 2, runs: int = 7) -> dict:
    """PyTorch and onnxruntime latency of one checkpoint, measured back to back by the same protocol.

    ``model``: the PyTorch model as the app runs it (prepared for inference; loaded
    from ``checkpoint`` when omitted; not mutated). ``detector``: its ONNX backend
    (``OnnxDetector(cached_export(checkpoint, cache_dir), threads=threads)`` when omitted).
    Returns ``{"pytorch": {median_s, min_s, runs, threads}, "onnxruntime": {...,
    provider}, "speedup": pytorch median / onnxruntime median, "size": [w, h]}``.
    """
    from hkd.models.checkpoint import load_checkpoint
    from hkd.models.profile import cpu_latency

    if model is None:
        model = load_checkpoint(checkpoint, inference=True).model
    if detector is None:
        detector = OnnxDetector(cached_export(checkpoint, cache_dir), threads=threads)
    torch_lat = cpu_latency(model, width, height, threads=threads, warmup=warmup, runs=runs)
    onnx_lat = onnx_latency(detector, width, height, warmup=warmup, runs=runs)
    return {"pytorch": torch_lat, "onnxruntime": onnx_lat,
            "speedup": torch_lat["median_s"] / onnx_lat["median_s"], "size": [width, height]}
