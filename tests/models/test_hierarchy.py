"""HierarchySpec.shared_with: the levels two detectors share, of the kinds asked for, in one spec's order."""
from __future__ import annotations

import pytest

from hkd.models.hierarchy import HierarchySpec, Level


def _spec(*levels: tuple[str, str]) -> HierarchySpec:
    return HierarchySpec(tuple(Level(name, f"m.{i}", 8, kind=kind) for i, (name, kind) in enumerate(levels)))


TEACHER = _spec(("backbone.c3", "map"), ("backbone.c4", "map"), ("neck.p3", "map"), ("rpn.objectness", "maps"),
                ("roi.features", "regions"), ("roi.logits", "vectors"))
# another order, one teacher level missing (c4), one of another kind (roi.logits), one of its own (neck.p6)
STUDENT = _spec(("neck.p3", "map"), ("backbone.c3", "map"), ("neck.p6", "map"), ("rpn.objectness", "maps"),
                ("roi.features", "regions"), ("roi.logits", "regions"))


def test_shared_with_keeps_this_specs_order_and_drops_missing_and_other_kinds():
    assert TEACHER.shared_with(STUDENT) == ["backbone.c3", "neck.p3", "rpn.objectness", "roi.features"]
    assert STUDENT.shared_with(TEACHER) == ["neck.p3", "backbone.c3", "rpn.objectness", "roi.features"]
    assert TEACHER.shared_with(STUDENT, kinds=("map",)) == ["backbone.c3", "neck.p3"]
    assert TEACHER.shared_with(STUDENT, kinds=("map", "regions")) == ["backbone.c3", "neck.p3", "roi.features"]
    assert TEACHER.shared_with(STUDENT, kinds=("vectors",)) == []
    assert TEACHER.shared_with(TEACHER) == TEACHER.names


def test_shared_with_names_the_kinds_on_a_typo():
    with pytest.raises(ValueError, match="unknown level kind.*'feature'.*map, maps, regions, vectors"):
        TEACHER.shared_with(STUDENT, kinds=("feature",))
    with pytest.raises(TypeError, match="got the string 'map'"):
        TEACHER.shared_with(STUDENT, kinds="map")


def test_shared_with_on_the_shipped_pair_and_map_levels_are_backbone_or_fpn():
    from hkd.models.presets import PRESETS, default_pair, get_preset

    teacher, student = (get_preset(name).hierarchy for name in default_pair())
    assert teacher.shared_with(student, kinds=("map",)) == [n for n in teacher.names if n.startswith(("backbone.", "neck."))]
    assert "roi.features" in teacher.shared_with(student, kinds=("regions",))
    # callers ask for kinds=("map",) where they mean "backbone/FPN feature maps": that holds for every preset
    for preset in PRESETS.values():
        assert all(lv.hierarchy in ("backbone", "neck") for lv in preset.hierarchy if lv.kind == "map"), preset.name
