"""LiDAR branch: a SalsaNext-style encoder on the LiDAR scan projected into the camera plane.

Input is the raw 6-channel tensor of :func:`ood_perception.geometry.lidar_to_camera_tensor`
(x, y, z, range, intensity, valid). The branch normalises it itself (per-channel mean/std kept as
buffers, empty pixels kept at zero through the ``valid`` channel), then applies SalsaNext's
building blocks (Cortinhal et al., 2020, "SalsaNext"; structure from the paper, not verified
against its code): residual *context* blocks (1x1 then 3x3 and dilated 3x3 convs with a skip)
at full resolution, then residual *dilated* blocks (three parallel-in-series convs with
dilation 1, 2 and 3 whose outputs are concatenated and fused by a 1x1 conv, plus a skip)
followed by 2x2 average pooling, until stride 4. The output ``Fl`` is on the same stride-4 grid
as the camera features ``Fc``.

Departures from SalsaNext, documented: the 2x2 dilated conv is a 3x3 conv with dilation 3
(symmetric padding, trivially ONNX-exportable); no dropout; no range-image decoder (the
fusion head decodes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Default per-channel normalisation of (x, y, z, range, intensity, valid). Rough statistics of a
#: forward-looking automotive LiDAR seen by a camera (metres; intensity in [0, 1]). The trainer
#: replaces them by the statistics of the training set (stored in the model config).
DEFAULT_LIDAR_MEAN: tuple[float, ...] = (15.0, 0.0, -1.0, 15.0, 0.3, 0.0)
DEFAULT_LIDAR_STD: tuple[float, ...] = (12.0, 8.0, 1.5, 12.0, 0.3, 1.0)


class ResContextBlock(nn.Module):
    """SalsaNext context block: 1x1 shortcut conv, then 3x3 and 3x3 dilation-2 convs, added."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.LeakyReLU(0.1, inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
                                   nn.BatchNorm2d(cout))
        self.conv3 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=2, dilation=2), nn.LeakyReLU(0.1, inplace=True),
                                   nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut(x)
        return s + self.conv3(self.conv2(s))


class ResDilatedBlock(nn.Module):
    """SalsaNext residual block: convs with dilation 1, 2, 3 in series, concatenated, 1x1-fused,
    added to a 1x1 shortcut; optionally followed by 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, pool: bool = True) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.LeakyReLU(0.1, inplace=True))
        self.c1 = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True), nn.BatchNorm2d(cout))
        self.c2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=2, dilation=2), nn.LeakyReLU(0.1, inplace=True),
                                nn.BatchNorm2d(cout))
        self.c3 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=3, dilation=3), nn.LeakyReLU(0.1, inplace=True),
                                nn.BatchNorm2d(cout))
        self.fuse = nn.Sequential(nn.Conv2d(3 * cout, cout, 1), nn.LeakyReLU(0.1, inplace=True), nn.BatchNorm2d(cout))
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)
        b = self.c2(a)
        c = self.c3(b)
        y = self.shortcut(x) + self.fuse(torch.cat([a, b, c], dim=1))
        return self.pool(y)


class LidarBranch(nn.Module):
    """SalsaNext-style encoder producing ``Fl`` ``[B, out_channels, H/4, W/4]``."""

    def __init__(self, out_channels: int = 64, width: int = 32,
                 mean: Sequence[float] = DEFAULT_LIDAR_MEAN, std: Sequence[float] = DEFAULT_LIDAR_STD) -> None:
        super().__init__()
        if len(mean) != 6 or len(std) != 6:
            raise ValueError(f"lidar mean/std need 6 values (x, y, z, range, intensity, valid), got {len(mean)}/{len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"lidar std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 6, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 6, 1, 1))
        w = width
        self.context = nn.Sequential(ResContextBlock(6, w), ResContextBlock(w, w))
        self.down1 = ResDilatedBlock(w, 2 * w, pool=True)  # stride 2
        self.down2 = ResDilatedBlock(2 * w, 2 * w, pool=True)  # stride 4
        self.out = ResDilatedBlock(2 * w, out_channels, pool=False)
        self.out_channels = out_channels

    def normalise(self, lidar: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std on pixels with a point, zero elsewhere; the valid channel is kept."""
        valid = lidar[:, 5:6]
        norm = (lidar - self.mean) / self.std * valid
        return torch.cat([norm[:, :5], valid], dim=1)

    def forward(self, lidar: torch.Tensor) -> torch.Tensor:
        x = self.context(self.normalise(lidar))
        return self.out(self.down2(self.down1(x)))
