"""Ground surface of a LiDAR scan: a plane fitted by RANSAC, and each point's height above it.

Used by the object decisions (``pipeline/objects.py``): a region is judged on the LiDAR points
that stand *above* the ground (an object on the road), not on the road surface itself, whose
scores flicker with texture and lighting.

:func:`fit_ground_plane` is plain numpy (no Open3D import on the per-frame path):

1. candidates: finite points within ``max_range`` of the sensor whose height ``z`` is in the
   lowest ``candidate_quantile`` of the cloud plus ``candidate_band`` metres (the ground is the
   lowest large surface under a vehicle LiDAR; walls and objects are mostly cut here);
2. RANSAC (Fischler & Bolles 1981): ``iterations`` planes through 3 random candidates, each with a
   normal within ``max_tilt_deg`` of the LiDAR's z axis; the plane with the most candidates
   within ``inlier_dist`` wins;
3. least-squares refit (SVD) on that plane's inliers.

The random generator is seeded (``seed``), so the same cloud always gives the same plane. Open3D's
``PointCloud.segment_plane`` does the same RANSAC, but has no tilt constraint (it happily returns
a building facade) and is not seeded across versions; a flat plane is enough for the road scenes
here (a slope that bends within the sensor's range is the documented limit: heights far away are
then off by the bend).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GroundPlane:
    """The plane ``normal . p + offset = 0`` with a unit ``normal`` pointing up (``normal[2] > 0``).

    Attributes:
        normal: unit normal (LiDAR frame).
        offset: plane offset [m].
        inliers: points within the inlier distance in the final fit.
        candidates: candidate points considered.
        fitted: False when too few candidates were found and the fallback plane (``z = fallback_z``)
            is returned.
    """

    normal: tuple[float, float, float]
    offset: float
    inliers: int = 0
    candidates: int = 0
    fitted: bool = True

    def height(self, xyz: np.ndarray) -> np.ndarray:
        """Signed height [m] of points ``[N, 3]`` above the plane (negative below)."""
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        return xyz @ np.asarray(self.normal, np.float64) + self.offset


def _plane_from(normal: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, float]:
    n = normal / np.linalg.norm(normal)
    if n[2] < 0:
        n = -n
    return n, float(-n @ point)


def fit_ground_plane(
    xyz: np.ndarray,
    *,
    inlier_dist: float = 0.15,
    max_tilt_deg: float = 15.0,
    iterations: int = 60,
    max_range: float = 40.0,
    candidate_quantile: float = 0.3,
    candidate_band: float = 0.5,
    min_candidates: int = 30,
    fallback_z: float = -1.73,
    max_candidates: int = 4000,
    max_points: int = 20000,
    seed: int = 0,
) -> GroundPlane:
    """Fit the ground plane of a LiDAR cloud (see the module docstring).

    Args:
        xyz: ``[N, 3]`` points in the LiDAR frame (z up, REP 103).
        inlier_dist: a point this close [m] to a plane supports it.
        max_tilt_deg: largest angle between the plane normal and z.
        iterations: RANSAC hypotheses.
        max_range: only points within this horizontal range [m] are candidates.
        candidate_quantile, candidate_band: candidates have ``z <= quantile(z, q) + band``.
        min_candidates: fewer candidates -> the fallback plane ``z = fallback_z`` (``fitted`` False).
        fallback_z: ground height [m] in the LiDAR frame when nothing can be fitted (the default is
            the synthetic vehicle's LiDAR mount height, 1.73 m as in KITTI).
        max_candidates: candidates are stride-subsampled to this many (speed).
        max_points: the cloud is stride-subsampled to this many points first (a 64-beam scan has
            ~65k; the quantile and the range test over all of them cost more than the fit).
        seed: RANSAC random seed.
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    if len(xyz) > max_points:
        xyz = xyz[:: int(np.ceil(len(xyz) / max_points))]
    fallback = GroundPlane((0.0, 0.0, 1.0), -float(fallback_z), 0, 0, False)
    finite = np.all(np.isfinite(xyz), axis=1)
    pts = xyz[finite & (np.hypot(xyz[:, 0], xyz[:, 1]) <= max_range)]
    if len(pts) < min_candidates:
        return fallback
    z_cut = float(np.quantile(pts[:, 2], candidate_quantile)) + candidate_band
    cand = pts[pts[:, 2] <= z_cut]
    if len(cand) < min_candidates:
        return replace_counts(fallback, candidates=len(cand))
    if len(cand) > max_candidates:
        cand = cand[:: int(np.ceil(len(cand) / max_candidates))]
    rng = np.random.default_rng(seed)
    cos_tilt = np.cos(np.radians(max_tilt_deg))
    tri = rng.integers(0, len(cand), size=(iterations, 3))
    a, b, c = cand[tri[:, 0]], cand[tri[:, 1]], cand[tri[:, 2]]
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-9
    normals[ok] /= norms[ok, None]
    normals *= np.sign(normals[:, 2:3] + 1e-12)
    ok &= normals[:, 2] >= cos_tilt
    if not ok.any():
        return replace_counts(fallback, candidates=len(cand))
    normals, a = normals[ok], a[ok]
    offsets = -np.einsum("ij,ij->i", normals, a)
    dist = np.abs(cand @ normals.T + offsets)  # [M, H]
    support = (dist <= inlier_dist).sum(axis=0)
    best = int(np.argmax(support))
    inl = cand[dist[:, best] <= inlier_dist]
    if len(inl) >= 3:  # least-squares refit: normal = smallest singular vector of the centred inliers
        centre = inl.mean(axis=0)
        _, _, vt = np.linalg.svd(inl - centre, full_matrices=False)
        n, off = _plane_from(vt[-1], centre)
        if n[2] < cos_tilt:
            n, off = normals[best], float(offsets[best])
    else:
        n, off = normals[best], float(offsets[best])
    n_in = int((np.abs(cand @ n + off) <= inlier_dist).sum())
    return GroundPlane((float(n[0]), float(n[1]), float(n[2])), float(off), n_in, len(cand), True)


def replace_counts(plane: GroundPlane, candidates: int) -> GroundPlane:
    """``plane`` with its candidate count set (the fallback plane says how many were found)."""
    return GroundPlane(plane.normal, plane.offset, plane.inliers, candidates, plane.fitted)
