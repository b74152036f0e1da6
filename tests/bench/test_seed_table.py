"""bench/seed_table.py: a seed's lead and gap share from a bootstrap report, the mean ± std, the floor."""
from __future__ import annotations

import argparse

import pytest

from tests.bench.scripts import bench_module


@pytest.fixture(scope="module")
def seeds():
    return bench_module("seed_table")


def _boot(teacher: float, no_kd: float, hkd: float, lead: tuple[float, float, float], order=("no_kd", "hkd")):
    point = lambda v: {"Reasonable": {"point": v, "low": v - 1, "high": v + 1}}  # noqa: E731
    sign = 1 if order == ("no_kd", "hkd") else -1
    return {"models": {"teacher": point(teacher), "no_kd": point(no_kd), "hkd": point(hkd)},
            "differences": [{"a": order[0], "b": order[1], "metrics": {"Reasonable": {
                "point": sign * lead[0], "low": sign * lead[1], "high": sign * lead[2]}}}]}


@pytest.mark.parametrize("order", [("no_kd", "hkd"), ("hkd", "no_kd")])
def test_a_seed_row_reads_the_lead_the_same_whichever_way_the_difference_runs(seeds, order):
    row = seeds.seed_row(_boot(14.0, 19.0, 15.0, (4.0, 2.5, 5.5), order), "teacher", "no_kd", "hkd")
    assert row["lead"] == {"point": 4.0, "low": 2.5, "high": 5.5}
    assert row["gap"] == 5.0 and row["share"] == pytest.approx(0.8)


def test_mean_std_and_the_floor(seeds):
    rows = {"0": seeds.seed_row(_boot(14, 19, 15, (4, 2.5, 5.5)), "teacher", "no_kd", "hkd"),
            "1": seeds.seed_row(_boot(14, 18, 16, (2, 0.5, 3.5)), "teacher", "no_kd", "hkd")}
    s = seeds.summary(rows)
    assert s["share"]["mean"] == pytest.approx((0.8 + 0.5) / 2) and s["lead"]["mean"] == pytest.approx(3.0)
    assert s["lead"]["std"] == pytest.approx(2 ** 0.5)
    assert s["floor"] == {"mean_share_at_least": 0.65, "mean_share_met": True, "every_lead_interval_above_0": True}
    rows["2"] = seeds.seed_row(_boot(14, 18, 17.5, (0.5, -1.0, 2.0)), "teacher", "no_kd", "hkd")
    s = seeds.summary(rows)
    assert not s["floor"]["mean_share_met"] and not s["floor"]["every_lead_interval_above_0"]


def test_a_pair_is_seed_equals_two_checkpoints(seeds):
    seed, baseline, hkd = seeds.parse_pair("1=a/base.safetensors,b/hkd.safetensors")
    assert (seed, baseline.name, hkd.name) == ("1", "base.safetensors", "hkd.safetensors")
    with pytest.raises(argparse.ArgumentTypeError, match="SEED=NO_KD"):
        seeds.parse_pair("base.safetensors,hkd.safetensors")
