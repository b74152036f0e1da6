"""Device strings: ``auto | cpu | cuda | cuda:N``, one parser for training, prediction and benchmarks.

    resolve_device("auto")   # cuda:0 where a GPU is visible, else cpu
    resolve_device("cuda:1") # DeviceError on a machine without a second GPU

:func:`check_device_spec` checks the spelling without importing torch (run configs
are validated by the app before any torch import); :func:`resolve_device` also
checks that the device exists on this machine.
"""
from __future__ import annotations

import re

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


class DeviceError(ValueError):
    """A device string is misspelt, or names a device this machine does not have."""


def check_device_spec(spec: object) -> tuple[str, int | None]:
    """``(kind, index)`` of a device string — ``("auto", None)``, ``("cpu", None)``,
    ``("cuda", None)`` or ``("cuda", N)`` — without importing torch.

    Raises:
        DeviceError: ``spec`` is not one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    """
    if spec is None:
        return "auto", None
    text = str(spec).strip().lower() if isinstance(spec, str) else None
    if text in ("auto", "cpu", "cuda"):
        return text, None
    match = _CUDA_INDEX.match(text or "")
    if match:
        return "cuda", int(match.group(1))
    raise DeviceError(f"unknown device {spec!r}; valid devices: {', '.join(DEVICE_CHOICES)} (N: a GPU index)")


def cuda_problem(index: int | None = None) -> str | None:
    """Why CUDA device ``index`` (any GPU for None) cannot be used here, or None if it can."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = (f"this torch {torch.__version__} is a CUDA {built} build but sees no GPU (no device or driver)"
               if built else f"this torch {torch.__version__} is a CPU-only build")
        return f"CUDA was requested, but torch.cuda.is_available() is False: {why}"
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        return f"cuda:{index} was requested, but this machine has {count} CUDA device(s): cuda:0 … cuda:{count - 1}"
    return None


def resolve_device(spec: object = "auto"):
    """The ``torch.device`` for ``spec`` (``auto``: ``cuda`` when available, else ``cpu``).

    ``cuda`` means the current CUDA device (``cuda:0`` unless set otherwise, e.g. by
    ``torch.cuda.set_device`` under torchrun).

    Raises:
        DeviceError: a misspelt string, or a GPU requested where none (or not that one) exists.
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    kind, index = check_device_spec(spec)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    problem = cuda_problem(index)
    if problem:
        raise DeviceError(f"{problem}; use device cpu (or auto) on this machine")
    return torch.device("cuda", torch.cuda.current_device() if index is None else index)
