"""The bench/ scripts, imported for tests: they import each other by bare name, so bench/ is on
``sys.path`` while one is imported."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str):
    """Import bench/<name>.py."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
