"""Network inputs of the video + optical-flow recognition network, shared by training and the pipeline.

Farneback optical flow between consecutive frames (OpenCV) and the normalisation of frames and
flow into the recognition network's input layout. The data room's clip datasets, the trainer and
the recognition pipeline (node, replay, demo) all call these, so they feed the network alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class FlowParams:
    """Farneback parameters (OpenCV's documented example values, scaled down for small frames)."""

    pyr_scale: float = 0.5
    levels: int = 2
    winsize: int = 9
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.1

    def key(self) -> str:
        """Short stable hash naming the cache directory of these parameters."""
        return "farneback-" + hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def compute_flow(frames: np.ndarray, params: FlowParams = FlowParams()) -> np.ndarray:
    """Farneback flow between consecutive frames.

    Args:
        frames: uint8 ``[T, H, W, 3]`` RGB (or ``[T, H, W]`` grey), ``T >= 2``.
    Returns:
        float32 ``[T-1, 2, H, W]``: per-pixel displacement (dx, dy) from frame t to t+1.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] < 2:
        raise ValueError(f"compute_flow needs frames [T>=2, H, W(, 3)], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"compute_flow needs uint8 frames, got {frames.dtype}")
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) if f.ndim == 3 else f for f in frames]
    out = np.empty((len(grey) - 1, 2, *grey[0].shape), np.float32)
    for t in range(len(grey) - 1):
        flow = cv2.calcOpticalFlowFarneback(
            grey[t], grey[t + 1], None, params.pyr_scale, params.levels, params.winsize,
            params.iterations, params.poly_n, params.poly_sigma, 0,
        )
        out[t] = flow.transpose(2, 0, 1)
    return out


def normalise_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[..., T, H, W, 3]`` -> float32 ``[..., 3, T, H, W]`` in [-1, 1] (video encoder input)."""
    x = np.asarray(frames, np.float32) / 127.5 - 1.0
    return np.moveaxis(x, -1, -4)


def normalise_flow(flow: np.ndarray, scale: float = 4.0) -> np.ndarray:
    """float ``[..., T-1, 2, H, W]`` -> float32 ``[..., 2, T-1, H, W]`` divided by ``scale`` pixels."""
    x = np.asarray(flow, np.float32) / scale
    return np.swapaxes(x, -3, -4)
