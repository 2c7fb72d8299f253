"""Model-resolution maps at camera resolution (as the fusion node publishes them) and the occlusion test.

The node, replay, ``evaluate`` and the tables all bring score and class maps to the label
(camera) resolution with these two functions, so every consumer sees the same pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Default occlusion test of in-view LiDAR points (fusion pipeline and evaluation alike): a point
#: farther than ``OCCLUSION_TOL + OCCLUSION_REL * r`` [m] behind the nearest point at its pixel is occluded.
OCCLUSION_TOL = 0.5
OCCLUSION_REL = 0.05


def upsample_score_map(score_m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A model-resolution score map ``[h, w]`` at camera resolution ``hw = (H, W)``, as the node
    publishes it: OpenCV bilinear (``cv2.INTER_LINEAR``, pixel centres aligned), float32; returned
    unchanged when already ``hw``. Evaluation scores pixels with this same function."""
    score_m = np.asarray(score_m, np.float32)
    H, W = int(hw[0]), int(hw[1])
    if score_m.shape == (H, W):
        return score_m
    return cv2.resize(score_m, (W, H), interpolation=cv2.INTER_LINEAR)


def upsample_class_map(class_m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A model-resolution class map ``[h, w]`` at camera resolution ``hw = (H, W)`` by nearest
    neighbour (``cv2.INTER_NEAREST``), int32; as the node publishes it and evaluation scores it."""
    class_m = np.asarray(class_m).astype(np.int32, copy=False)
    H, W = int(hw[0]), int(hw[1])
    if class_m.shape == (H, W):
        return class_m
    return cv2.resize(class_m, (W, H), interpolation=cv2.INTER_NEAREST)


def occluded_points(points: np.ndarray, pixel_index: np.ndarray, range_map: np.ndarray, tol: float,
                    rel: float) -> np.ndarray:
    """Which in-view points the model did not see: farther than ``tol + rel * r`` behind the
    nearest point at their model-resolution pixel (range ``r`` from the LiDAR tensor's range
    channel). The pipeline gives such points no score (NaN) and no class (-1); evaluation leaves
    them out with this same rule.

    Args:
        points: ``[M, >=3]`` in-view points (x, y, z in the LiDAR frame; ranges taken in float32).
        pixel_index: ``[M]`` flat pixel index of each point at model resolution (all >= 0).
        range_map: ``[h, w]`` range channel of :func:`ood_perception.geometry.lidar_to_camera_tensor`.
        tol, rel: ``occlusion_tol`` [m] and ``occlusion_rel`` (defaults :data:`OCCLUSION_TOL`, :data:`OCCLUSION_REL`).

    Returns:
        bool ``[M]``, True for occluded points.
    """
    rng = np.linalg.norm(np.asarray(points, np.float32)[:, :3], axis=1)
    nearest = np.asarray(range_map).reshape(-1)[pixel_index]
    return rng > nearest + tol + rel * nearest
