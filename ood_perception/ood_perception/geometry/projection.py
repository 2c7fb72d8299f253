"""LiDAR -> camera projection and range images, vectorised (no per-point Python loops)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ood_perception.geometry.calibration import Calibration

#: Channels of the LiDAR tensor projected into the camera plane (input of the LiDAR branch).
LIDAR_CHANNELS: tuple[str, ...] = ("x", "y", "z", "range", "intensity", "valid")


@dataclass
class ProjectedPoints:
    """Result of projecting points into an image.

    Attributes:
        u, v: integer pixel column/row of each point (meaningful where ``in_view``).
        depth: z in the camera frame [m].
        in_view: point is in front of the camera (depth > min_depth) and inside the image.
        visible: in view and the nearest point at its pixel within ``occlusion_tol`` (a z-buffer
            test, so points hidden behind a nearer surface are not counted as seen).
        nearest: the z-buffer read back per point: the smallest depth of any in-view point at
            its pixel (``inf`` where not in view); ``depth == nearest`` marks the nearest point.
    """

    u: np.ndarray
    v: np.ndarray
    depth: np.ndarray
    in_view: np.ndarray
    visible: np.ndarray
    nearest: np.ndarray

    def flat_index(self, width: int) -> np.ndarray:
        """Flattened pixel index ``v * width + u`` per point, -1 where not in view."""
        idx = self.v.astype(np.int64) * int(width) + self.u.astype(np.int64)
        return np.where(self.in_view, idx, -1)


def apply_affine(points: np.ndarray, M: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """``points @ M.T + t`` for ``[N, 3]`` points and a 3x3 ``M``, summed column by column with
    elementwise numpy (result dtype: ``points``' float dtype).

    Why not ``@``: a ``[N, 3] @ [3, 3]`` product goes to BLAS, and OpenBLAS wakes its thread pool
    for it; those threads spin on every core and steal the one the model runs on when replay
    overlaps inference with this work on another thread (measured with bench/replay.py's pipeline:
    1.9x -> 3.0x real time when BLAS was held to one thread). The elementwise form is as fast for
    3 columns and uses no thread pool.
    """
    pts = np.asarray(points)
    dtype = pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.dtype(np.float64)
    M = np.asarray(M, dtype)
    x, y, z = pts[:, 0].astype(dtype, copy=False), pts[:, 1].astype(dtype, copy=False), pts[:, 2].astype(dtype, copy=False)
    out = np.empty((pts.shape[0], 3), dtype)
    for i in range(3):
        col = x * M[i, 0]
        col += y * M[i, 1]
        col += z * M[i, 2]
        if t is not None:
            col += dtype.type(t[i])
        out[:, i] = col
    return out


def _as_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be [N, >=3], got shape {points.shape}")
    return points


def project_points(
    points: np.ndarray,
    calib: Calibration,
    min_depth: float = 0.1,
    occlusion_tol: float = 0.5,
    occlusion_rel: float = 0.05,
) -> ProjectedPoints:
    """Project LiDAR points (``[N, >=3]``, LiDAR frame) into the camera image.

    A point is *visible* when it is in view and its depth is within
    ``occlusion_tol + occlusion_rel * depth`` of the nearest depth at its pixel.
    Non-finite points are never in view.
    """
    pts = _as_points(points)[:, :3].astype(np.float64)
    finite = np.all(np.isfinite(pts), axis=1)
    T = np.asarray(calib.T_cam_lidar, np.float64)
    cam = apply_affine(np.where(finite[:, None], pts, 0.0), T[:3, :3], T[:3, 3])  # no BLAS: see apply_affine
    depth = cam[:, 2]
    front = finite & (depth > min_depth)
    safe = np.where(front, depth, 1.0)
    uvw = apply_affine(cam, calib.K)
    uf = uvw[:, 0] / safe
    vf = uvw[:, 1] / safe
    u = np.floor(np.where(front, uf, -1)).astype(np.int64)
    v = np.floor(np.where(front, vf, -1)).astype(np.int64)
    in_view = front & (u >= 0) & (u < calib.width) & (v >= 0) & (v < calib.height)
    flat = np.where(in_view, v * calib.width + u, 0)
    zbuf = np.full(calib.width * calib.height, np.inf)
    np.minimum.at(zbuf, flat[in_view], depth[in_view])
    nearest = np.where(in_view, zbuf[flat], np.inf)
    visible = in_view & (depth <= nearest + occlusion_tol + occlusion_rel * depth)
    return ProjectedPoints(u=u, v=v, depth=depth, in_view=in_view, visible=visible, nearest=nearest)


def lidar_to_camera_tensor(
    points: np.ndarray,
    calib: Calibration,
    intensity: np.ndarray | None = None,
    min_depth: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise a LiDAR scan into the camera plane for the LiDAR branch.

    Args:
        points: ``[N, >=3]`` in the LiDAR frame; column 3, when present and ``intensity`` is
            None, is taken as intensity.
        calib: camera and extrinsics; the output has the camera's size.
        intensity: optional ``[N]`` intensity (defaults to column 3 or zeros).

    Returns:
        ``(tensor, flat_index)``: tensor ``[6, H, W]`` float32 with channels
        :data:`LIDAR_CHANNELS` (x, y, z, range in the LiDAR frame, intensity, valid 0/1), the
        nearest point winning at each pixel; and ``flat_index`` ``[N]`` int64, the pixel of each
        point (``v * W + u``) or -1 when out of view. Per-point predictions are gathered from a
        per-pixel map with ``map.reshape(-1)[flat_index]`` where ``flat_index >= 0``.
    """
    pts = _as_points(points)
    if intensity is None:
        intensity = pts[:, 3] if pts.shape[1] > 3 else np.zeros(pts.shape[0])
    intensity = np.asarray(intensity, dtype=np.float64).reshape(-1)
    if intensity.shape[0] != pts.shape[0]:
        raise ValueError(f"intensity has {intensity.shape[0]} values for {pts.shape[0]} points")
    proj = project_points(pts, calib, min_depth=min_depth)
    h, w = calib.height, calib.width
    flat = proj.flat_index(w)
    out = np.zeros((len(LIDAR_CHANNELS), h * w), dtype=np.float32)
    # Nearest point wins: write only the points at their pixel's z-buffer depth, in index order, so
    # among equally near points the last one wins (what a stable far-to-near sort wrote last; the
    # sort cost ~0.5 ms per 8k-point scan on the node's path).
    order = np.flatnonzero(proj.in_view & (proj.depth <= proj.nearest))
    if order.size:
        xyz = pts[order, :3].astype(np.float64)
        pix = flat[order]
        out[0, pix] = xyz[:, 0]
        out[1, pix] = xyz[:, 1]
        out[2, pix] = xyz[:, 2]
        out[3, pix] = np.linalg.norm(xyz, axis=1)
        out[4, pix] = np.nan_to_num(intensity[order], nan=0.0, posinf=0.0, neginf=0.0)
        out[5, pix] = 1.0
    return out.reshape(len(LIDAR_CHANNELS), h, w), flat


def spherical_range_image(
    points: np.ndarray,
    height: int = 64,
    width: int = 1024,
    fov_up_deg: float = 3.0,
    fov_down_deg: float = -25.0,
) -> tuple[np.ndarray, np.ndarray]:
    """SalsaNext/RangeNet-style spherical projection of a scan.

    Returns ``(image [5, H, W]`` with x, y, z, range, intensity (nearest point wins), and
    ``[N, 2]`` (row, col) per point)``. Defaults are the HDL-64E's vertical field of view.
    """
    pts = _as_points(points).astype(np.float64)
    fov_up, fov_down = np.radians(fov_up_deg), np.radians(fov_down_deg)
    fov = fov_up - fov_down
    r = np.linalg.norm(pts[:, :3], axis=1)
    r_safe = np.where(r > 0, r, 1.0)
    yaw = -np.arctan2(pts[:, 1], pts[:, 0])
    pitch = np.arcsin(np.clip(pts[:, 2] / r_safe, -1, 1))
    col = np.clip(np.floor(0.5 * (yaw / np.pi + 1.0) * width), 0, width - 1).astype(np.int64)
    row = np.clip(np.floor((1.0 - (pitch - fov_down) / fov) * height), 0, height - 1).astype(np.int64)
    inten = pts[:, 3] if pts.shape[1] > 3 else np.zeros(len(pts))
    img = np.zeros((5, height, width), dtype=np.float32)
    order = np.argsort(-r, kind="stable")
    rr, cc = row[order], col[order]
    img[0, rr, cc] = pts[order, 0]
    img[1, rr, cc] = pts[order, 1]
    img[2, rr, cc] = pts[order, 2]
    img[3, rr, cc] = r[order]
    img[4, rr, cc] = inten[order]
    return img, np.stack([row, col], axis=1)


def region_in_camera(region: Any, T_cam_lidar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A region's 3D centroid and axis-aligned size (any object with ``centroid`` and ``size`` in
    the LiDAR frame) moved to the camera frame (the size of the rotated box's axis-aligned bound)."""
    R, t = T_cam_lidar[:3, :3], T_cam_lidar[:3, 3]
    centroid = R @ np.asarray(region.centroid) + t
    size = np.abs(R) @ np.asarray(region.size)
    return centroid, size
