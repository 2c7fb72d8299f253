"""Geometry: calibration I/O and LiDAR -> camera projection against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ood_perception.geometry import (
    Calibration,
    intrinsics_from_fov,
    lidar_to_camera_tensor,
    load_kitti_calib,
    project_points,
    rpy_to_matrix,
    spherical_range_image,
    transform_from_xyz_rpy,
    write_kitti_calib,
)

# LiDAR (x forward, y left, z up) -> camera optical (x right, y down, z forward).
LIDAR_TO_OPTICAL = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def _calib(w: int = 64, h: int = 32) -> Calibration:
    return Calibration(intrinsics_from_fov(w, h, 90.0), w, h, LIDAR_TO_OPTICAL)


def test_rpy_matches_axis_rotations():
    r = rpy_to_matrix(0.0, 0.0, math.pi / 2)
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    r = rpy_to_matrix(math.pi / 2, 0.0, 0.0)
    np.testing.assert_allclose(r @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    t = transform_from_xyz_rpy([1, 2, 3], [0.1, -0.2, 0.3])
    np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(t[:3, 3], [1, 2, 3])


def test_fov_intrinsics_carla_convention():
    k = intrinsics_from_fov(800, 600, 90.0)
    assert k[0, 0] == pytest.approx(400.0) and k[1, 1] == pytest.approx(400.0)
    assert (k[0, 2], k[1, 2]) == (400.0, 300.0)
    with pytest.raises(ValueError):
        intrinsics_from_fov(800, 600, 180.0)


def test_projection_matches_manual_pinhole():
    calib = _calib()
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(1, 20, 200), rng.uniform(-10, 10, 200), rng.uniform(-3, 3, 200)]
    proj = project_points(pts, calib)
    # Independent: camera x = -y_lidar, y = -z_lidar, z = x_lidar.
    xc, yc, zc = -pts[:, 1], -pts[:, 2], pts[:, 0]
    u = np.floor(calib.K[0, 0] * xc / zc + calib.K[0, 2]).astype(int)
    v = np.floor(calib.K[1, 1] * yc / zc + calib.K[1, 2]).astype(int)
    inside = (u >= 0) & (u < 64) & (v >= 0) & (v < 32)
    np.testing.assert_array_equal(proj.in_view, inside)
    np.testing.assert_array_equal(proj.u[inside], u[inside])
    np.testing.assert_array_equal(proj.v[inside], v[inside])
    np.testing.assert_allclose(proj.depth, zc)


def test_points_behind_and_nonfinite_are_out_of_view():
    calib = _calib()
    pts = np.array([[-5.0, 0, 0], [np.nan, 0, 0], [np.inf, 1, 1], [5.0, 0, 0]])
    proj = project_points(pts, calib)
    assert proj.in_view.tolist() == [False, False, False, True]


def test_occluded_point_not_visible_and_nearest_wins_in_tensor():
    calib = _calib()
    near = [5.0, 0.0, 0.0, 0.2]
    far = [20.0, 0.0, 0.0, 0.9]  # same ray, behind `near`
    pts = np.array([far, near], dtype=np.float32)
    proj = project_points(pts, calib)
    assert proj.in_view.all()
    assert proj.visible.tolist() == [False, True]
    tensor, flat = lidar_to_camera_tensor(pts, calib)
    assert tensor.shape == (6, 32, 64) and tensor.dtype == np.float32
    assert flat[0] == flat[1] >= 0
    pix = np.unravel_index(flat[1], (32, 64))
    assert tensor[0][pix] == pytest.approx(5.0)  # x of the near point
    assert tensor[3][pix] == pytest.approx(5.0)  # range
    assert tensor[4][pix] == pytest.approx(0.2)  # intensity
    assert tensor[5].sum() == 1.0  # exactly one valid pixel


def test_nearest_wins_whatever_the_order_and_ties_go_to_the_last_point():
    """The rasteriser writes each pixel's z-buffer winner: the nearer point whether it comes first or
    last, and among equally near points the last one (as a stable far-to-near write order would)."""
    calib = _calib()
    a, b, c = [5.0, 0.0, 0.0, 0.1], [5.0, 0.0, 0.0, 0.7], [9.0, 0.0, 0.0, 0.4]  # a, b tie; c behind
    for pts, want in (([c, a], 0.1), ([a, c], 0.1), ([a, b, c], 0.7), ([b, c, a], 0.1)):
        tensor, flat = lidar_to_camera_tensor(np.array(pts, np.float32), calib)
        pix = np.unravel_index(flat[0], (32, 64))
        assert tensor[4][pix] == pytest.approx(want) and tensor[3][pix] == pytest.approx(5.0)
        assert tensor[5].sum() == 1.0
    proj = project_points(np.array([a, c, [-3.0, 0, 0, 0]], np.float32), calib)
    assert proj.nearest.tolist() == [5.0, 5.0, float("inf")]


def test_kitti_calib_roundtrip_and_offset(tmp_path):
    calib = Calibration(np.array([[500.0, 0, 320], [0, 500.0, 120], [0, 0, 1]]), 640, 240,
                        transform_from_xyz_rpy([0.1, -0.2, 0.3], [0.01, 0.02, 0.03]) @ LIDAR_TO_OPTICAL)
    path = tmp_path / "calib.txt"
    write_kitti_calib(path, calib)
    back = load_kitti_calib(path, 640, 240)
    np.testing.assert_allclose(back.P, calib.P, atol=1e-9)
    # A real KITTI P2 carries a baseline offset in its last column; pixel = P2 @ Tr @ X.
    p2 = np.hstack([calib.K, np.array([[44.85728], [0.2163791], [0.002745884]])])
    tr = LIDAR_TO_OPTICAL[:3]
    text = "\n".join(
        [f"P{i}: " + " ".join(map(str, p2.ravel())) for i in range(4)] + ["Tr: " + " ".join(map(str, tr.ravel()))]
    )
    path.write_text(text)
    kitti = load_kitti_calib(path, 640, 240)
    x = np.array([10.0, 1.0, 0.5, 1.0])
    expect = p2 @ np.vstack([tr, [0, 0, 0, 1]]) @ x
    got = kitti.P @ x
    np.testing.assert_allclose(got[:2] / got[2], expect[:2] / expect[2], atol=1e-9)


def test_bad_calibration_errors(tmp_path):
    with pytest.raises(ValueError, match="3x3"):
        Calibration(np.eye(2), 10, 10)
    with pytest.raises(ValueError, match="NaN"):
        Calibration(np.full((3, 3), np.nan), 10, 10)
    with pytest.raises(FileNotFoundError):
        load_kitti_calib(tmp_path / "nope.txt", 10, 10)
    (tmp_path / "bad.txt").write_text("P2: 1 2 3\nTr: 1 2 3 4 5 6 7 8 9 10 11 12\n")
    with pytest.raises(ValueError, match="12 numbers"):
        load_kitti_calib(tmp_path / "bad.txt", 10, 10)


def test_scaled_calibration_projects_to_scaled_pixels():
    calib = _calib(64, 32)
    half = calib.scaled(32, 16)
    pts = np.array([[10.0, 1.0, 0.5]])
    a = project_points(pts, calib)
    b = project_points(pts, half)
    assert abs(b.u[0] - a.u[0] / 2) <= 1 and abs(b.v[0] - a.v[0] / 2) <= 1


def test_spherical_range_image_rows_follow_elevation():
    pts = np.array([[10.0, 0.0, 10.0 * math.tan(math.radians(2.0)), 1.0],
                    [10.0, 0.0, 10.0 * math.tan(math.radians(-24.0)), 1.0]])
    img, rc = spherical_range_image(pts)
    assert rc[0, 0] < rc[1, 0]  # higher elevation -> upper row
    assert img.shape == (5, 64, 1024)
    assert img[3, rc[0, 0], rc[0, 1]] == pytest.approx(np.linalg.norm(pts[0, :3]), rel=1e-6)


def test_apply_affine_equals_matmul_without_blas():
    """apply_affine (used instead of ``@`` so no BLAS thread pool wakes up) is points @ M.T + t."""
    from ood_perception.geometry import apply_affine

    rng = np.random.default_rng(0)
    M, t = rng.normal(size=(3, 3)), rng.normal(size=3)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        pts = rng.normal(size=(1000, 3)).astype(dtype)
        got = apply_affine(pts, M, t)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, pts.astype(np.float64) @ M.T + t, rtol=tol, atol=tol)
    np.testing.assert_array_equal(apply_affine(np.zeros((0, 4)), M), np.zeros((0, 3)))
