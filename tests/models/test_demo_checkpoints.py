"""The demo checkpoints shipped in assets/checkpoints/: self-describing, measured, within the size budget.

Only headers are read (no weights loaded), so this stays cheap.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from hkd.models.meta import NotADetectorError, read_meta
from hkd.models.presets import get_preset

SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "checkpoints"
BUDGET_BYTES = 100 * 1000 * 1000  # all demo checkpoints together (issue #17: ≤ 100 MB)
DETECTORS = sorted(p for p in SHIPPED.glob("*.safetensors") if p.name != "teacher_aux.safetensors")


def test_the_demo_checkpoints_fit_the_size_budget():
    total = sum(p.stat().st_size for p in SHIPPED.glob("*.safetensors"))
    assert total <= BUDGET_BYTES, f"{total / 1e6:.1f} MB of demo checkpoints, budget {BUDGET_BYTES / 1e6:.0f} MB"


def test_the_aux_heads_are_not_a_detector():
    with pytest.raises(NotADetectorError):
        read_meta(SHIPPED / "teacher_aux.safetensors")


@pytest.mark.parametrize("path", DETECTORS, ids=[p.stem for p in DETECTORS])
def test_each_demo_detector_says_what_it_is_and_how_it_measured(path):
    meta = read_meta(path)
    preset = get_preset(meta.preset)
    # the name says the role: <prefix>teacher, <prefix>student_*
    assert preset.role == ("teacher" if path.stem.endswith("teacher") else "student"), (path.name, meta.preset)
    assert "SynthPed val" in meta.metrics["dataset"]
    assert 0.0 <= meta.metrics["mr"]["Reasonable"] <= 100.0
    if meta.parent:  # a distilled student names its shipped teacher, of its own family
        parent = read_meta(SHIPPED / meta.parent)
        assert get_preset(parent.preset).family == preset.family
        assert get_preset(parent.preset).role == "teacher"
