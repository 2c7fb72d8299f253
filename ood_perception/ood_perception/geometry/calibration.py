"""Camera intrinsics, camera<-LiDAR extrinsics, and the KITTI ``calib.txt`` format."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ood_perception.atomic import atomic_write_text


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation matrix for fixed-axis roll (x), pitch (y), yaw (z) in radians: R = Rz @ Ry @ Rx.

    This is the ROS convention (REP 103, tf2 ``Quaternion.setRPY``).
    """
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def transform_from_xyz_rpy(xyz: np.ndarray | list[float], rpy: np.ndarray | list[float]) -> np.ndarray:
    """4x4 homogeneous transform from a translation and roll/pitch/yaw (radians)."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(3)
    rpy = np.asarray(rpy, dtype=np.float64).reshape(3)
    t = np.eye(4)
    t[:3, :3] = rpy_to_matrix(*rpy)
    t[:3, 3] = xyz
    return t


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Pinhole K with square pixels from the horizontal field of view (CARLA's convention:
    fx = fy = width / (2 tan(fov/2)), principal point at the image centre)."""
    if width <= 0 or height <= 0 or not 0 < fov_deg < 180:
        raise ValueError(f"bad camera: width={width}, height={height}, fov={fov_deg}")
    f = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


@dataclass
class Calibration:
    """A pinhole camera and the rigid transform from the LiDAR frame to it.

    Attributes:
        K: 3x3 intrinsic matrix.
        width, height: image size in pixels.
        T_cam_lidar: 4x4 transform, LiDAR frame -> camera optical frame.
    """

    K: np.ndarray
    width: int
    height: int
    T_cam_lidar: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.T_cam_lidar = np.asarray(self.T_cam_lidar, dtype=np.float64)
        if self.K.shape != (3, 3):
            raise ValueError(f"K must be 3x3, got {self.K.shape}")
        if self.T_cam_lidar.shape != (4, 4):
            raise ValueError(f"T_cam_lidar must be 4x4, got {self.T_cam_lidar.shape}")
        if not np.all(np.isfinite(self.K)) or not np.all(np.isfinite(self.T_cam_lidar)):
            raise ValueError("calibration contains NaN or Inf")
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.K[0, 0]}, fy={self.K[1, 1]}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)

    @property
    def P(self) -> np.ndarray:
        """3x4 projection LiDAR -> homogeneous pixel: K @ T_cam_lidar[:3]."""
        return self.K @ self.T_cam_lidar[:3]

    def scaled(self, width: int, height: int) -> Calibration:
        """The same camera resampled to another image size (intrinsics scaled, extrinsics kept)."""
        sx, sy = width / self.width, height / self.height
        k = self.K.copy()
        k[0] *= sx
        k[1] *= sy
        return Calibration(k, width, height, self.T_cam_lidar.copy())


def _read_kitti_kv(path: Path) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if ":" not in line:
            raise ValueError(f"{path}:{lineno}: expected 'KEY: numbers', got {line[:60]!r}")
        key, rest = line.split(":", 1)
        try:
            values[key.strip()] = np.array([float(x) for x in rest.split()], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
    return values


def load_kitti_calib(path: str | os.PathLike[str], width: int, height: int, camera: str = "P2") -> Calibration:
    """Read a KITTI odometry ``calib.txt`` (P0..P3, Tr) into a :class:`Calibration`.

    KITTI's ``P2`` is ``K @ [I | t]`` for the rectified colour camera (t: the baseline offset)
    and ``Tr`` maps velodyne -> camera-0 coordinates, so pixel ~ ``P2 @ Tr @ [x y z 1]``. We
    split ``P2`` into K and the offset and fold the offset into ``T_cam_lidar``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file not found: {path}")
    kv = _read_kitti_kv(path)
    for key in (camera, "Tr"):
        if key not in kv:
            raise ValueError(f"{path}: missing '{key}' (has {sorted(kv)})")
        if kv[key].size != 12:
            raise ValueError(f"{path}: '{key}' must have 12 numbers, has {kv[key].size}")
    p = kv[camera].reshape(3, 4)
    k = p[:, :3]
    offset = np.linalg.solve(k, p[:, 3])
    tr = np.eye(4)
    tr[:3] = kv["Tr"].reshape(3, 4)
    shift = np.eye(4)
    shift[:3, 3] = offset
    return Calibration(k, width, height, shift @ tr)


def write_kitti_calib(path: str | os.PathLike[str], calib: Calibration) -> None:
    """Write ``calib.txt`` in KITTI's format with P0..P3 = K [I|0] and Tr = T_cam_lidar[:3].

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    p = np.hstack([calib.K, np.zeros((3, 1))])
    lines = [f"P{i}: " + " ".join(f"{v:.12e}" for v in p.ravel()) for i in range(4)]
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in calib.T_cam_lidar[:3].ravel()))
    atomic_write_text(path, "\n".join(lines) + "\n")
