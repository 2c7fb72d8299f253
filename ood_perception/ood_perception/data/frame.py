"""The :class:`Frame`: one synchronised camera + LiDAR sample with labels, calibration and pose."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ood_perception.geometry import Calibration


@dataclass
class Frame:
    """One camera + LiDAR frame (the contract of ``docs/architecture.md``).

    Attributes:
        sequence: sequence name (``"00"``).
        frame_id: frame name within the sequence (``"000000"``).
        image: uint8 ``[H, W, 3]`` RGB (``None`` only for LiDAR-only data read with
            ``require_images=False``).
        points: float32 ``[N, 4]``: x, y, z, intensity in the LiDAR frame.
        point_labels: uint32 ``[N]`` raw labels (semantic = ``v & 0xFFFF``, instance = ``v >> 16``).
        pixel_labels: uint16 ``[H, W]`` raw semantic id per pixel.
        calib: camera intrinsics and the LiDAR -> camera transform at the image's size.
        pose: float64 ``[4, 4]``, the LiDAR pose in the sequence's first LiDAR frame
            (``T_lidar0_lidar``; SemanticKITTI's ``inv(Tr) @ poses[i] @ Tr``).
        stamp: seconds since the start of the sequence.
        pixel_instances: optional uint16 ``[H, W]`` instance id per pixel (synthetic data only).
    """

    sequence: str
    frame_id: str
    image: np.ndarray | None
    points: np.ndarray
    point_labels: np.ndarray | None
    pixel_labels: np.ndarray | None
    calib: Calibration
    pose: np.ndarray | None = None
    stamp: float | None = None
    pixel_instances: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points)
        if self.points.ndim != 2 or self.points.shape[1] != 4:
            raise ValueError(f"frame {self.sequence}/{self.frame_id}: points must be [N, 4], got {self.points.shape}")
        if self.points.dtype != np.float32:
            self.points = self.points.astype(np.float32)
        if self.point_labels is not None:
            self.point_labels = np.asarray(self.point_labels)
            if self.point_labels.shape != (self.points.shape[0],):
                raise ValueError(
                    f"frame {self.sequence}/{self.frame_id}: {self.point_labels.shape[0]} point labels "
                    f"for {self.points.shape[0]} points"
                )
            self.point_labels = self.point_labels.astype(np.uint32, copy=False)
        if self.image is not None:
            if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
                raise ValueError(
                    f"frame {self.sequence}/{self.frame_id}: image must be uint8 [H, W, 3], "
                    f"got {self.image.dtype} {self.image.shape}"
                )
            if self.image.shape[:2] != (self.calib.height, self.calib.width):
                raise ValueError(
                    f"frame {self.sequence}/{self.frame_id}: image is {self.image.shape[1]}x{self.image.shape[0]} "
                    f"but the calibration is {self.calib.width}x{self.calib.height}"
                )
        for name in ("pixel_labels", "pixel_instances"):
            arr = getattr(self, name)
            if arr is None:
                continue
            if arr.shape != (self.calib.height, self.calib.width):
                raise ValueError(
                    f"frame {self.sequence}/{self.frame_id}: {name} shape {arr.shape} does not match the "
                    f"image {self.calib.height}x{self.calib.width}"
                )
            setattr(self, name, arr.astype(np.uint16, copy=False))

    @property
    def semantic(self) -> np.ndarray | None:
        """Raw semantic id per point (``point_labels & 0xFFFF``) or None."""
        return None if self.point_labels is None else (self.point_labels & 0xFFFF).astype(np.uint16)

    @property
    def instance(self) -> np.ndarray | None:
        """Instance id per point (``point_labels >> 16``) or None."""
        return None if self.point_labels is None else (self.point_labels >> 16).astype(np.uint16)
