"""Network inputs from a frame: the camera image and the LiDAR scan rasterised into the camera plane.

Shared by training, replay and the nodes, so all three feed the model the same tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ood_perception.geometry import Calibration, lidar_to_camera_tensor

#: ImageNet normalisation (torchvision's pretrained weights), RGB.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"size must be (H, W) with positive values, got {tuple(size)}")
    return int(size[0]), int(size[1])


def prepare_inputs(
    image_rgb: np.ndarray,
    points: np.ndarray,
    calib: Calibration,
    input_size: Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build the model inputs of one frame.

    Args:
        image_rgb: uint8 ``[H, W, 3]`` RGB at the calibration's size.
        points: ``[N, >=3]`` LiDAR points (column 3 = intensity when present).
        calib: calibration of ``image_rgb``.
        input_size: ``(H, W)`` of the network input (default: the image's size). The image is
            resized with ``cv2.INTER_AREA`` and the calibration with ``Calibration.scaled``.
        mean, std: per-channel normalisation of ``x / 255``.

    Returns:
        ``(image [3, H, W] float32, lidar [6, H, W] float32, flat_index [N] int64)`` where lidar
        is :func:`ood_perception.geometry.lidar_to_camera_tensor` at the input size and
        ``flat_index`` the pixel (``v * W + u``) of each point at the input size, -1 if out of view.
    """

    img = np.asarray(image_rgb)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image_rgb must be [H, W, 3], got {img.shape}")
    if img.shape[:2] != (calib.height, calib.width):
        raise ValueError(
            f"image is {img.shape[1]}x{img.shape[0]} but the calibration is {calib.width}x{calib.height}"
        )
    h, w = _check_size(input_size) if input_size is not None else (calib.height, calib.width)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    if np.any(std_a <= 0):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if (h, w) != img.shape[:2]:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        calib = calib.scaled(w, h)
    chw = img.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    image = ((chw - mean_a) / std_a).astype(np.float32)
    lidar, flat_index = lidar_to_camera_tensor(points, calib)
    return np.ascontiguousarray(image), lidar, flat_index


def resize_labels(pixel_labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a label map to ``size = (H, W)`` by nearest neighbour (labels are never blended)."""

    h, w = _check_size(size)
    labels = np.asarray(pixel_labels)
    if labels.ndim != 2:
        raise ValueError(f"pixel_labels must be [H, W], got {labels.shape}")
    if labels.shape == (h, w):
        return labels.copy()
    if labels.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    # OpenCV cannot resize other integer types: index arithmetic with the same pixel rule.
    rows = np.minimum((np.arange(h) * labels.shape[0] / h).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum((np.arange(w) * labels.shape[1] / w).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]
