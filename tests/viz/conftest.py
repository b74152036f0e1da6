"""Tiny random-init detectors and small images for the viz tests.

The presets are built at their real widths but with the input transform set
to the image size (128 × 160), so one forward takes a fraction of a second.
"""
import dataclasses
import threading

import numpy as np
import pytest
import torch

from hkd.models.presets import DEFAULT_STUDENT, DEFAULT_TEACHER, get_preset
from tests.conftest import one_torch_thread

H, W = 128, 160


def small_detector(name: str, seed: int, *, min_size: int = H, max_size: int = W) -> torch.nn.Module:
    torch.manual_seed(seed)
    preset = dataclasses.replace(get_preset(name), min_size=min_size, max_size=max_size)
    return preset.build(rpn_post_nms_top_n_test=100).eval()


def scene(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """(h, w, 3) uint8: a smooth background with a few upright 'pedestrian' blocks and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 80 * yy / h, 90 + 60 * xx / w, 120 + 0 * xx], axis=-1)
    for _ in range(4):
        bw = int(rng.integers(w // 12, w // 6))
        bh = int(bw * rng.uniform(2.0, 3.0))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, max(1, h - bh)))
        img[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_detector():
    """``make_detector(preset, seed, *, min_size, max_size)``: a small random-init detector."""
    return small_detector


@pytest.fixture(scope="session")
def make_scene():
    """``make_scene(seed, h, w)``: a synthetic (h, w, 3) uint8 image."""
    return scene


@pytest.fixture(scope="session")
def in_two_threads():
    """``in_two_threads(work)``: ``{0: work(0), 1: work(1)}``, both started together on two threads."""

    def run(work):
        results, errors = {}, []
        barrier = threading.Barrier(2)

        def target(i):
            try:
                barrier.wait()
                results[i] = work(i)
            except Exception as exc:  # re-raised below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=target, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    return run


@pytest.fixture(scope="session")
def student():
    return small_detector(DEFAULT_STUDENT, 0)


@pytest.fixture(scope="session")
def student_spec():
    return get_preset(DEFAULT_STUDENT).hierarchy


@pytest.fixture(scope="session")
def teacher():
    return small_detector(DEFAULT_TEACHER, 1)


@pytest.fixture(scope="session")
def teacher_spec():
    return get_preset(DEFAULT_TEACHER).hierarchy


@pytest.fixture(scope="session")
def image():
    return scene(0)


@pytest.fixture(scope="package", autouse=True)
def one_intra_op_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP workers of several
    processes oversubscribe the cores and make every forward many times slower.
    (The threading tests still run two Python threads on one model.)"""
    with one_torch_thread():
        yield
