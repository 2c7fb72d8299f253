"""Square object crops: the box around an object grown by a context margin, fitted to the image, resized.

Shared by the crop datasets (``data.crops``) and the alert-region classifier (``pipeline.crops``),
so training and deployment cut crops the same way.
"""

from __future__ import annotations

import cv2
import numpy as np


def square_box(x0: int, y0: int, x1: int, y1: int, width: int, height: int, context: float) -> tuple[int, int, int, int]:
    """The square box around ``[x0, x1) x [y0, y1)`` grown by ``context`` x its side on each side,
    shifted (and if need be shrunk) to fit a ``width x height`` image: ``(x0, y0, x1, y1)``."""
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box ({x0}, {y0}, {x1}, {y1})")
    side = int(round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * context)))
    side = max(1, min(side, width, height))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    bx = int(round(min(max(cx - side / 2.0, 0), width - side)))
    by = int(round(min(max(cy - side / 2.0, 0), height - side)))
    return bx, by, bx + side, by + side


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` resized to ``size x size`` (area when shrinking, linear otherwise)."""
    x0, y0, x1, y1 = box
    patch = image[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)
