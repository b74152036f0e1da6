"""The case against the norm (issue #28, item 4): per-level teacher–student distance on a box, and
its percentile among the successes. The test that can fail: noise added to ONE level of the
student on the case's region puts that level's percentile above every other level's."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from hkd.analysis import divergence as dv
from hkd.models.presets import DEFAULT_STUDENT, DEFAULT_TEACHER, get_preset
from hkd.models.taps import resolve_module
from hkd.viz.divergence import Case
from tests.conftest import one_torch_thread

H, W = 128, 160
SUCCESS_IMAGES = (1, 2, 3, 4)  # 8 boxes each: 32 successes


def small_detector(name: str, seed: int) -> torch.nn.Module:
    """A random-init preset at its real widths, its input transform set to the images' size."""
    torch.manual_seed(seed)
    preset = dataclasses.replace(get_preset(name), min_size=H, max_size=W)
    return preset.build(rpn_post_nms_top_n_test=100).eval()


def scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W, 3) uint8 image with 8 upright blocks on a smooth background, and their (8, 4) boxes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([60 + 80 * yy / H, 90 + 60 * xx / W, 120 + 0 * xx], axis=-1).astype(np.float64)
    boxes = []
    for _ in range(8):
        bw = int(rng.integers(W // 14, W // 6))
        bh = min(int(bw * rng.uniform(2.0, 3.0)), H - 2)
        x0, y0 = int(rng.integers(0, W - bw)), int(rng.integers(0, H - bh))
        image[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, 3)
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), np.asarray(boxes, dtype=np.float64)


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def pair():
    return (small_detector(DEFAULT_TEACHER, 1), get_preset(DEFAULT_TEACHER).hierarchy,
            small_detector(DEFAULT_STUDENT, 0), get_preset(DEFAULT_STUDENT).hierarchy)


@pytest.fixture(scope="module")
def successes(pair) -> dict[str, np.ndarray]:
    """The norm: every box of four other images, unperturbed."""
    values: dict[str, list[float]] = {}
    for seed in SUCCESS_IMAGES:
        image, boxes = scene(seed)
        for level, d in dv.case_distances(*pair, image, boxes).items():
            values.setdefault(level, []).extend(d.tolist())
    return {level: np.asarray(v) for level, v in values.items()}


@pytest.fixture(scope="module")
def case():
    image, boxes = scene(0)
    return image, boxes[0]  # 23 × 52 px: the ROI pooler reads it from P3


def profile_with_noise(pair, case, successes, level: str | None, sigma: float = 10.0) -> dict[str, float]:
    """The case's percentile profile with a forward hook adding N(0, (sigma·std)²) noise to the student's
    ``level`` on the case's region only (its row for roi.features); ``level=None``: unperturbed."""
    teacher, t_spec, student, s_spec = pair
    image, box = case
    handle = None
    if level is not None:
        spec_level = s_spec[level]
        generator = torch.Generator().manual_seed(5)

        def add_noise(module, inputs, output):
            value = spec_level.extract(output).clone()
            if spec_level.kind == "regions":
                region = value[0]  # the case is the only box pooled
            else:
                stride = spec_level.stride
                x1, y1 = int(box[0] // stride), int(box[1] // stride)
                x2, y2 = math.ceil(box[2] / stride), math.ceil(box[3] / stride)
                region = value[..., y1:y2, x1:x2]
            region += sigma * value.std() * torch.randn(region.shape, generator=generator)
            if spec_level.select is None:
                return value
            return {**output, spec_level.select: value}

        handle = resolve_module(student, spec_level.module).register_forward_hook(add_noise)
    try:
        distances = dv.case_distances(teacher, t_spec, student, s_spec, image, box[None])
    finally:
        if handle is not None:
            handle.remove()
    return dv.percentile_profile({name: d[0] for name, d in distances.items()}, successes)


# Noise at a level also reaches the levels computed from it. These three are chosen so that it
# does not reach a *compared* level as strongly: C3's noise is diluted by the blocks to C4/C5 and
# the FPN; P4 is read neither by P3 nor by the ROI pooler for this small box (P3); roi.features
# feeds no compared level. (Noise on P3 would also be the box's roi.features: the same cells.)
@pytest.mark.parametrize("level", ["backbone.c3", "neck.p4", "roi.features"])
def test_the_perturbed_level_stands_above_all_others(pair, case, successes, level):
    profile = profile_with_noise(pair, case, successes, level)
    others = {name: p for name, p in profile.items() if name != level}
    assert profile[level] > max(others.values()), profile
    assert profile[level] == 100.0


def test_the_unperturbed_case_sits_within_the_norm(pair, case, successes):
    profile = profile_with_noise(pair, case, successes, None)
    values = np.array(list(profile.values()))
    assert list(profile) == dv.distance_levels(pair[1], pair[3])
    assert np.isfinite(values).all()
    assert (values < 100).sum() >= len(values) - 2  # no level far beyond the successes
    assert 10 < np.median(values) < 90


def test_levels_and_forms_of_the_distance(pair):
    teacher, t_spec, _, s_spec = pair
    levels = dv.distance_levels(t_spec, s_spec)
    assert levels[:8] == ["backbone.c2", "backbone.c3", "backbone.c4", "backbone.c5",
                          "neck.p3", "neck.p4", "neck.p5", "neck.p6"]
    assert levels[8:] == ["rpn.objectness", "roi.features"]
    forms = dv.level_measures(teacher, t_spec, s_spec, (H, W))
    # C4 of a 128 × 160 image: 8 × 10 cells for 113 unknowns per channel — too few to fit an adapter
    assert forms["backbone.c3"] == forms["roi.features"] == forms["rpn.objectness"] == dv.RESIDUAL
    assert forms["backbone.c4"] == forms["neck.p6"] == dv.ATTENTION
    assert dv.level_measures(teacher, t_spec, s_spec, (2 * H, 2 * W)) == forms  # the model resizes it to H × W


def test_identical_models_are_at_distance_zero(pair, case):
    teacher, t_spec, _, _ = pair
    image, box = case
    distances = dv.case_distances(teacher, t_spec, teacher, t_spec, image, np.stack([box, box + 5]))
    for level, d in distances.items():
        assert d.shape == (2,)
        np.testing.assert_allclose(d, 0.0, atol=2e-3, err_msg=level)


def test_a_box_is_measured_alike_alone_or_among_others(pair, case):
    image, box = case
    _, boxes = scene(0)
    alone = dv.case_distances(*pair, image, box[None], levels=["backbone.c2", "neck.p3", "roi.features"])
    among = dv.case_distances(*pair, image, boxes, levels=["neck.p3", "backbone.c2", "roi.features"])
    assert list(among) == ["backbone.c2", "neck.p3", "roi.features"]  # computation order
    for level in alone:
        np.testing.assert_allclose(alone[level][0], among[level][0], rtol=1e-4, err_msg=level)


def test_bad_boxes_and_levels_are_named(pair, case):
    image, box = case
    with pytest.raises(ValueError, match=r"x2 > x1 and y2 > y1; bad rows \[1\]"):
        dv.case_distances(*pair, image, [box, [50, 50, 40, 80]])
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        dv.case_distances(*pair, image, [1, 2, 3])
    with pytest.raises(ValueError, match=r"\['roi.logits'\] cannot be measured on a box; choose from \[.*neck.p3"):
        dv.case_distances(*pair, image, box[None], levels=["roi.logits"])
    with pytest.raises(ValueError, match="cannot be measured"):
        dv.case_distances(*pair, image, box[None], levels=[])
    with pytest.raises(TypeError, match="list of level names"):
        dv.case_distances(*pair, image, box[None], levels="neck.p3")
    assert dv.case_distances(*pair, image, np.zeros((0, 4)), levels=["neck.p3"])["neck.p3"].shape == (0,)
    with pytest.raises(RuntimeError, match="eval mode"):
        dv.case_distances(pair[0].train(), *pair[1:], image, box[None])
    pair[0].eval()


def test_percentiles_count_ties_half():
    norm = {"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, 1.0, np.nan], "c": [np.nan]}
    profile = dv.percentile_profile({"a": 2.0, "b": 5.0, "c": 1.0}, norm)
    assert profile["a"] == pytest.approx(37.5) and profile["b"] == 100.0 and math.isnan(profile["c"])
    assert dv.percentile_profile({"a": 0.0}, norm) == {"a": 0.0}
    assert math.isnan(dv.percentile_profile({"a": np.nan}, norm)["a"])
    with pytest.raises(ValueError, match=r"no success distances for levels \['d'\]"):
        dv.percentile_profile({"d": 1.0}, norm)


def test_the_interval_of_the_mean_covers_it_and_repeats():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 1.0, 200)
    mean, low, high = dv.mean_interval(values)
    assert low < mean < high and low < 2.0 < high
    assert high - low == pytest.approx(2 * 1.96 / math.sqrt(200), rel=0.2)  # the normal interval's width
    assert dv.mean_interval(values) == (mean, low, high)
    assert dv.mean_interval([3.0, np.nan]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(v) for v in dv.mean_interval([]))
    with pytest.raises(ValueError, match="confidence"):
        dv.mean_interval(values, confidence=95)


def test_distances_over_cases_group_by_image_and_summarise(pair, case):
    image, box = case
    images = {"a.png": image, "b.png": scene(1)[0]}
    loaded, done = [], []

    def load(path):
        loaded.append(path)
        return images[path]

    b_box = tuple(scene(1)[1][0])
    cases = [Case("a.png", tuple(box), "failure"), Case("b.png", b_box, "success"),
             Case("a.png", tuple(box + 3), "success")]
    values = dv.distances_over_cases(*pair, cases, levels=["neck.p3", "roi.features"], load_image=load,
                                     progress=lambda d, t: done.append((d, t)))
    assert loaded == ["a.png", "b.png"] and done == [(1, 2), (2, 2)]
    assert list(values) == ["neck.p3", "roi.features"] and list(values["neck.p3"]) == ["failure", "success"]
    direct = dv.case_distances(*pair, image, box[None], levels=["neck.p3"])["neck.p3"][0]
    assert values["neck.p3"]["failure"][0] == pytest.approx(direct, rel=1e-5)
    assert values["neck.p3"]["success"].shape == (2,)

    rows = dv.summarise(values, resamples=200)
    assert [(r["level"], r["group"], r["n"]) for r in rows] == [
        ("neck.p3", "failure", 1), ("neck.p3", "success", 2), ("roi.features", "failure", 1),
        ("roi.features", "success", 2)]
    assert all(r["low"] <= r["mean"] <= r["high"] for r in rows)
    figure = dv.distance_chart(rows)
    assert [t.name for t in figure.data] == ["failure", "success"]
    assert list(figure.data[0].x) == ["neck.p3", "roi.features"]
    with pytest.raises(ValueError, match=r"cases\[0\] \(a.png\)"):
        dv.distances_over_cases(*pair, [Case("a.png", (5, 5, 1, 9), "failure")], load_image=load)
