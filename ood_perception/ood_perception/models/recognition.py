"""Video + optical-flow recognition network (MultiOOD-style two-stream model, sized for CPU).

* video encoder: small 3D CNN on RGB clips ``[B, 3, T, H, W]`` -> embedding ``[B, D]``;
* flow encoder: the same 3D CNN on Farneback flow ``[B, 2, T-1, H, W]`` -> ``[B, D]``;
* per-modality heads (``video_head``, ``flow_head``: ``Linear(D, K)``), the unimodal experts;
* joint head ``Linear(2D, K)`` on the concatenated embeddings ``[z_video || z_flow]`` (the
  student of dark-knowledge distillation; a linear head so that feature-based scorers such as
  ReAct, ASH, VIM and HIMPLoS apply directly to ``features``).

The MultiOOD reference uses SlowFast / I3D backbones with 2304/2048-dim embeddings; ours are
``embed_dim=128`` by default so training fits on two CPU cores (our choice).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class RecognitionConfig:
    """Everything needed to rebuild a :class:`RecognitionNet` (stored in checkpoints).

    Attributes:
        num_classes: K in-distribution action classes.
        embed_dim: D, embedding size of each modality.
        width: channels of the first 3D conv (doubled at each of the 4 stages, capped at D).
        dropout: dropout on the embeddings before the heads.
    """

    num_classes: int
    embed_dim: int = 128
    width: int = 16
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if int(self.embed_dim) <= 0 or int(self.width) <= 0:
            raise ValueError(f"embed_dim and width must be positive, got {self.embed_dim}, {self.width}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecognitionConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown recognition config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (what checkpoints store)."""
        return asdict(self)


class ClipEncoder(nn.Module):
    """Four strided 3D conv stages + global average pooling -> ``[B, embed_dim]``."""

    def __init__(self, in_channels: int, embed_dim: int = 128, width: int = 16) -> None:
        super().__init__()
        chans = [in_channels] + [min(width * 2**i, embed_dim) for i in range(4)]
        strides = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv3d(chans[i], chans[i + 1], 3, stride=strides[i], padding=1, bias=False),
                nn.BatchNorm3d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1], embed_dim)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected [B, {self.in_channels}, T, H, W], got {tuple(x.shape)}")
        h = self.body(x).mean(dim=(2, 3, 4))
        return torch.relu(self.proj(h))  # non-negative embeddings, as ReAct/ASH assume (post-ReLU features)


class RecognitionNet(nn.Module):
    """Two-stream recognition network; ``forward(video, flow) -> dict``:

    ``logits`` ``[B, K]`` (joint head), ``video_logits``, ``flow_logits`` (experts), ``features``
    ``[B, 2D]`` (joint head input), ``video_features``, ``flow_features`` ``[B, D]``.
    """

    def __init__(self, config: RecognitionConfig) -> None:
        super().__init__()
        self.config = config
        d, k = config.embed_dim, config.num_classes
        self.video_encoder = ClipEncoder(3, d, config.width)
        self.flow_encoder = ClipEncoder(2, d, config.width)
        self.video_head = nn.Linear(d, k)
        self.flow_head = nn.Linear(d, k)
        self.joint_head = nn.Linear(2 * d, k)
        self.dropout = nn.Dropout(config.dropout)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def experts(self) -> list[nn.Module]:
        """Modules of the unimodal experts (encoders + their heads), frozen by distillation."""
        return [self.video_encoder, self.flow_encoder, self.video_head, self.flow_head]

    def embed(self, video: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality embeddings ``(z_video, z_flow)``."""
        return self.video_encoder(video), self.flow_encoder(flow)

    def heads(self, zv: torch.Tensor, zf: torch.Tensor) -> dict[str, torch.Tensor]:
        """All heads on given embeddings (used on cached embeddings and on mixed outliers)."""
        feats = torch.cat([zv, zf], dim=1)
        return {
            "logits": self.joint_head(self.dropout(feats)),
            "video_logits": self.video_head(self.dropout(zv)),
            "flow_logits": self.flow_head(self.dropout(zf)),
            "features": feats,
            "video_features": zv,
            "flow_features": zf,
        }

    def forward(self, video: torch.Tensor, flow: torch.Tensor) -> dict[str, torch.Tensor]:
        zv, zf = self.embed(video, flow)
        return self.heads(zv, zf)


def build_recognition_model(config: RecognitionConfig | dict[str, Any]) -> RecognitionNet:
    """Build a :class:`RecognitionNet` from a config or its dict form."""
    if isinstance(config, dict):
        config = RecognitionConfig.from_dict(config)
    return RecognitionNet(config)


def load_recognition_checkpoint(path, map_location: str | torch.device = "cpu") -> tuple[RecognitionNet, dict[str, Any]]:
    """Rebuild a :class:`RecognitionNet` from a checkpoint (``weights_only=True``); eval mode."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("task") != "recognition":
        raise ValueError(f"checkpoint {path} is not a recognition checkpoint (task != 'recognition')")
    model = build_recognition_model(dict(ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path}: weights do not fit its model_config: {exc}") from None
    model.to(map_location).eval()
    return model, ckpt
