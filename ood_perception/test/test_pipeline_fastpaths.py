"""Per-frame shortcuts of the fusion pipeline give the exact results they replace: the frustum
pre-cull before projection, and the voxel-downsampled DBSCAN for very large anomalous sets."""

from __future__ import annotations

import numpy as np
from test_pipeline import CALIB, H, RednessBackend, W

from ood_perception.geometry import Calibration, transform_from_xyz_rpy
from ood_perception.geometry.inputs import prepare_inputs
from ood_perception.pipeline import FusionFrame, FusionPipeline
from ood_perception.pipeline.fusion import frustum_candidates
from ood_perception.pipeline.regions import cluster_points


def scan(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    az, el, r = rng.uniform(-np.pi, np.pi, n), rng.uniform(-0.4, 0.4, n), rng.uniform(0.05, 40, n)
    pts = np.column_stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el), rng.random(n)])
    pts[:5, :3] = [[0.0, 0.0, 0.09], [0, 0, 0.11], [0, 0, -1], [1e-3, 0, 0.1], [0, 0, 0]]  # near-plane edge cases
    return pts.astype(np.float32)


def test_frustum_cull_keeps_every_in_view_point_and_inputs_are_identical():
    T = np.linalg.inv(transform_from_xyz_rpy([0.2, -0.1, 0.3], [-np.pi / 2 + 0.05, 0.02, -np.pi / 2 - 0.1]))
    for calib, camera_axes in ((CALIB, True), (Calibration(CALIB.K, W, H, T), False)):
        pts = scan(40000)
        if camera_axes:  # CALIB's LiDAR frame is the camera frame: forward is z
            pts[:, :3] = pts[:, [1, 2, 0]] * np.array([-1, -1, 1], np.float32)
        img = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
        pipe = FusionPipeline(RednessBackend())
        inputs, flat = pipe.prepare(FusionFrame(stamp=1.0, image=img, points=pts, calib=calib))
        ref_img, ref_lidar, ref_flat = prepare_inputs(img, pts, calib, pipe.input_hw, pipe.mean.ravel(), pipe.std.ravel())
        np.testing.assert_array_equal(flat, ref_flat)
        np.testing.assert_array_equal(inputs["lidar"][0], ref_lidar)
        np.testing.assert_array_equal(inputs["image"][0], ref_img)
        keep = frustum_candidates(pts, calib)
        assert (ref_flat >= 0).sum() > 100 and len(keep) < 0.6 * len(pts)  # it culls, and drops nothing in view
    skewed = Calibration(CALIB.K + np.array([[0, 1.0, 0], [0, 0, 0], [0, 0, 0]]), W, H)
    assert frustum_candidates(scan(10), skewed) is None


def test_voxel_dbscan_finds_the_same_objects_as_exact_dbscan():
    rng = np.random.default_rng(3)
    blobs = [rng.normal(c, 0.25, (4000, 3)) for c in ([10, 2, 0], [14, -3, 0.5], [25, 8, 1])]
    xyz = np.concatenate(blobs)
    scores = rng.random(len(xyz))
    exact, lab_exact = cluster_points(xyz, scores, eps=0.6, min_points=5, max_points=100_000)
    fast, lab_fast = cluster_points(xyz, scores, eps=0.6, min_points=5, max_points=2000)
    assert len(exact) == len(fast) == 3
    by_x = lambda regions: sorted(regions, key=lambda r: r.centroid[0])  # noqa: E731 - equal sizes tie in rank
    for a, b in zip(by_x(exact), by_x(fast), strict=True):
        assert abs(a.num_points - b.num_points) <= 0.01 * a.num_points
        np.testing.assert_allclose(a.centroid, b.centroid, atol=0.05)
    # the same points end up together (cluster ids may be ranked differently only on ties)
    agree = np.mean([np.bincount(lab_fast[lab_exact == c][lab_fast[lab_exact == c] >= 0]).max() / (lab_exact == c).sum()
                     for c in range(3)])
    assert agree > 0.99 and (lab_fast >= 0).mean() > 0.99
