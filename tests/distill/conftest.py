"""Shared helpers: tiny batches and detectors shrunk for fast CPU tests."""
import pytest
import torch

from hkd.distill.losses import level_role, losses_for
from hkd.models.hierarchy import HierarchySpec
from tests.conftest import one_torch_thread

TEACHER = "hkd_frcnn_lite2.teacher"
STUDENT = "hkd_frcnn_lite0.student"


def shrink(model, *, size: int = 128, max_size: int = 160, rois: int = 32, proposals: int = 100):
    """Small inputs and few proposals: the model keeps its architecture, the test its budget."""
    model.transform.min_size = (size,)
    model.transform.max_size = max_size
    if hasattr(model, "roi_heads"):
        model.roi_heads.fg_bg_sampler.batch_size_per_image = rois
        model.rpn._pre_nms_top_n = {"training": 2 * proposals, "testing": 2 * proposals}
        model.rpn._post_nms_top_n = {"training": proposals, "testing": proposals}
    return model


def freeze_batchnorm(model) -> None:
    """BatchNorm in eval mode, so a student computes exactly what its eval-mode twin computes."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def every_term(spec: HierarchySpec) -> dict:
    """A ``levels`` section with every applicable loss on every distillable level of ``spec``."""
    return {lv.name: [{"loss": name} for name in losses_for(level_role(lv))]
            for lv in spec if losses_for(level_role(lv))}


def make_batch(seed: int = 0, n: int = 2, h: int = 128, w: int = 160):
    """``n`` random images in [0, 1] with two tall pedestrian boxes each."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=g) for _ in range(n)]
    targets = []
    for i in range(n):
        x0 = 10.0 + 8 * i
        boxes = torch.tensor([[x0, 12.0, x0 + 30.0, 100.0], [x0 + 70.0, 30.0, x0 + 95.0, 110.0]])
        targets.append({"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64)})
    return images, targets


@pytest.fixture
def batch():
    return make_batch()


@pytest.fixture(scope="package", autouse=True)
def one_intra_op_thread():
    """One torch thread: on a shared 2-core machine, OpenMP threads waiting for a busy
    core make these small forwards ~10× slower than running them on one."""
    with one_torch_thread():
        yield
