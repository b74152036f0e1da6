"""For the app: one checked ONNX export per checkpoint, kept in a folder, and both backends timed the same way."""
from __future__ import annotations

import os
from pathlib import Path

from hkd.deploy.export import export_onnx
from hkd.deploy.runtime import OnnxDetector, OnnxModelError, onnx_latency, read_onnx_meta
from hkd.models.meta import file_sha256

__all__ = ["cached_export", "backend_latency"]


def cached_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike, *,
                  size: tuple[int, int] | None = None) -> Path:
    """The ONNX export of ``checkpoint`` in ``cache_dir``, exported (and checked) the first time only.

    The file is named by the checkpoint's SHA-256, so a retrained checkpoint
    under the same name gets a new export; an export whose recorded source does
    not match is redone. Safe to call from several sessions at once (the write
    is atomic; at worst two export the same file).
    """
    from hkd.models.meta import existing

    path = existing(checkpoint)
    digest = file_sha256(path)
    shape = "any" if size is None else f"{size[0]}x{size[1]}"
    target = Path(cache_dir) / f"{path.stem}.{digest[:16]}.{shape}.onnx"
    if target.is_file():
        try:
            _, export_info = read_onnx_meta(target)
            if export_info["source"]["sha256"] == digest:
                return target
        except (OnnxModelError, KeyError, TypeError):
            pass  # a damaged or foreign file under our name: export again
    return export_onnx(path, target, size=size).path


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
