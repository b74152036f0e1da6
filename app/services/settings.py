"""Where HKD Studio looks for things, read from the environment on every call.

* ``HKD_MODELS_DIR`` — checkpoints folder (default ``assets/checkpoints``).
* ``HKD_SAMPLES_DIR`` — sample images (default ``assets/samples``: ``synthped/`` and ``real/``).
* ``HKD_DATA_ROOTS`` — extra folders the app may read, separated by ``os.pathsep``.
* ``HKD_MAX_IMAGE_SIDE`` — longer image side above which inputs are downscaled (default 1280 px).
* ``HKD_JOBS_DIR`` — the background jobs' queue (default ``runs/jobs``; ``hkd jobs`` reads the same).
* ``HKD_CACHE_DIR`` — on-disk cache of dataset predictions and evaluations (default ``runs/cache``).
* ``HKD_SYNTHPED_DIR`` — where the SynthPed splits live or are generated (default ``data/synthped``).
* ``HKD_SYNTHPED_SIZES`` — images per generated SynthPed split, e.g. ``train_small=8,val=10``
  (default: the sizes of docs/BENCHMARKS.md; smaller ones are for tests and quick looks).

Relative paths are taken from the repository root, so the app behaves the same
whatever folder it was started from. Every path a user can name is confined to
the allowed roots (symlinks resolved first).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class PathNotAllowed(ValueError):
    """A path outside every allowed root."""


def _from_env(name: str, default: str) -> Path:
    path = Path(os.environ.get(name) or default).expanduser()
    return (path if path.is_absolute() else REPO_ROOT / path).resolve()


def models_dir() -> Path:
    return _from_env("HKD_MODELS_DIR", "assets/checkpoints")


def samples_dir() -> Path:
    return _from_env("HKD_SAMPLES_DIR", "assets/samples")


def upload_dir() -> Path:
    """Per-machine folder where uploaded checkpoints are written before loading."""
    path = Path(tempfile.gettempdir()) / "hkd-studio-uploads"
    path.mkdir(mode=0o700, exist_ok=True)
    return path.resolve()


def jobs_dir() -> Path:
    return _from_env("HKD_JOBS_DIR", "runs/jobs")


def cache_dir() -> Path:
    return _from_env("HKD_CACHE_DIR", "runs/cache")


def synthped_dir() -> Path:
    return _from_env("HKD_SYNTHPED_DIR", "data/synthped")


def synthped_sizes() -> dict[str, int]:
    """``HKD_SYNTHPED_SIZES`` as {split: images}; {} when unset."""
    out = {}
    for part in (os.environ.get("HKD_SYNTHPED_SIZES") or "").split(","):
        if part.strip():
            name, _, num = part.partition("=")
            if not num.strip().isdigit() or int(num) < 1:
                raise ValueError(f"HKD_SYNTHPED_SIZES: {part.strip()!r} is not split=images (e.g. val=10)")
            out[name.strip()] = int(num)
    return out


def max_image_side() -> int:
    return int(os.environ.get("HKD_MAX_IMAGE_SIDE") or 1280)


def allowed_roots() -> list[Path]:
    roots = [models_dir(), samples_dir(), (REPO_ROOT / "assets").resolve(), upload_dir(), jobs_dir(),
             synthped_dir()]
    for part in (os.environ.get("HKD_DATA_ROOTS") or "").split(os.pathsep):
        if part.strip():
            roots.append(Path(part.strip()).expanduser().resolve())
    return list(dict.fromkeys(roots))


def confine(path: str | os.PathLike) -> Path:
    """``path`` resolved, if it lies inside an allowed root; else :class:`PathNotAllowed`."""
    raw = Path(path).expanduser()
    resolved = (raw if raw.is_absolute() else REPO_ROOT / raw).resolve()
    for root in allowed_roots():
        if resolved.is_relative_to(root):
            return resolved
    roots = ", ".join(str(r) for r in allowed_roots())
    raise PathNotAllowed(f"{path} is outside the folders HKD Studio may read ({roots}); "
                         "add its folder to HKD_DATA_ROOTS to allow it")
