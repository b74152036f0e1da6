"""Linear CKA and cosine, and the teacher/student similarity profile."""
import math

import numpy as np
import pytest
import torch

from hkd.models.presets import DEFAULT_STUDENT
from hkd.models.taps import count_hooks
from hkd.viz.similarity import cosine, linear_cka, similarity_profile

DEFAULT_LEVELS = ["backbone.c2", "backbone.c3", "backbone.c4", "backbone.c5",
                  "neck.p3", "neck.p4", "neck.p5", "neck.p6", "roi.features"]


def _reference_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with an explicit centering matrix (Kornblith et al., eq. 3)."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * l).sum() / (k.norm() * l.norm()))


@pytest.mark.parametrize("n, d1, d2", [(400, 12, 20), (30, 200, 150)])  # feature-space and sample-space paths
def test_linear_cka_matches_the_definition(n, d1, d2):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d1, generator=g)
    y = x @ torch.randn(d1, d2, generator=g) + 0.5 * torch.randn(n, d2, generator=g)
    assert linear_cka(x, y) == pytest.approx(_reference_cka(x, y), rel=1e-9)


def test_linear_cka_invariances_and_independence():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 32, generator=g) @ torch.randn(32, 32, generator=g)  # correlated features
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    assert linear_cka(x, x.double() @ q) == pytest.approx(1.0, abs=1e-9)  # orthogonal transform
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)  # isotropic scaling
    y = torch.randn(500, 48, generator=g)
    z = x @ torch.randn(32, 16, generator=g) + torch.randn(500, 16, generator=g)
    assert linear_cka(x, y) < 0.3  # independent
    assert linear_cka(x, z) > linear_cka(x, y)
    # CKA is not invariant to a non-isotropic scaling
    assert linear_cka(x, x * torch.linspace(0.1, 10, 32)) < 0.999
    assert math.isnan(linear_cka(torch.ones(10, 3), torch.randn(10, 3)))
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))


def test_cosine():
    x = torch.randn(3, 4, 5)
    assert cosine(x, 2 * x) == pytest.approx(1.0)
    assert cosine(x, -x) == pytest.approx(-1.0)
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same shape"):
        cosine(x, x.flatten())


def test_a_model_is_identical_to_itself_at_every_level(student, student_spec, image):
    rows = similarity_profile(student, student_spec, student, student_spec, image)
    assert [r["level"] for r in rows] == DEFAULT_LEVELS
    for row in rows:
        assert row["cka"] == pytest.approx(1.0, abs=1e-6), row
        assert row["cosine"] == pytest.approx(1.0, abs=1e-6), row
        assert row["teacher_shape"] == row["student_shape"]
    assert count_hooks(student) == 0 and not student.training


def test_another_model_is_less_similar_and_roi_features_use_the_same_boxes(
        teacher, teacher_spec, student, student_spec, image):
    rows = similarity_profile(teacher, teacher_spec, student, student_spec, image)
    assert [r["level"] for r in rows] == DEFAULT_LEVELS
    for row in rows:
        assert 0.0 <= row["cka"] < 0.99, row
        assert row["cosine"] < 0.999, row
    by_level = {r["level"]: r for r in rows}
    assert by_level["neck.p3"]["teacher_shape"][0] == 256 and by_level["neck.p3"]["student_shape"][0] == 64
    t_roi, s_roi = by_level["roi.features"]["teacher_shape"], by_level["roi.features"]["student_shape"]
    assert t_roi[0] == s_roi[0] and t_roi[1:] == (256, 7, 7) and s_roi[1:] == (64, 7, 7)  # the same K boxes
    assert np.mean([r["cka"] for r in rows]) < 0.95
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_maps_of_different_sizes_are_resized_and_other_levels_can_be_asked(
        make_detector, student, student_spec, image):
    # the same weights at twice the input size: every map is 2x larger and is compared after resizing
    big = make_detector(DEFAULT_STUDENT, 0, min_size=256, max_size=320)
    rows = similarity_profile(big, student_spec, student, student_spec, image,
                              levels=["roi.logits", "backbone.c2", "rpn.objectness"])
    assert [r["level"] for r in rows] == ["backbone.c2", "rpn.objectness", "roi.logits"]  # computation order
    c2 = rows[0]
    assert c2["teacher_shape"] == (24, 64, 80) and c2["student_shape"] == (24, 32, 40)
    assert c2["cka"] > 0.8 and c2["cosine"] > 0.8
    for row in rows:
        assert math.isfinite(row["cka"]) and math.isfinite(row["cosine"]), row
    with pytest.raises(ValueError, match="not in both"):
        similarity_profile(big, student_spec, student, student_spec, image, levels=["neck.p9"])
