"""codec/tf.py: TFMessage <-> 4x4 with ROS's direction convention, chains, and the /tf_static
the bag writer records (frame ids, direction, the label map in the bag's metadata)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ood_perception.codec.tf import StaticTransforms, matrix_to_translation_quaternion, transform_to_matrix


def _tf(parent: str, child: str, m: np.ndarray) -> NS:
    (x, y, z), (qx, qy, qz, qw) = matrix_to_translation_quaternion(m)
    return NS(header=NS(frame_id=parent), child_frame_id=child,
              transform=NS(translation=NS(x=x, y=y, z=z), rotation=NS(x=qx, y=qy, z=qz, w=qw)))


def _pose(xyz, rpy) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
    m[:3, 3] = xyz
    return m


def test_transform_matrix_round_trip_and_hand_computed_point() -> None:
    # camera 0.27 m ahead of the LiDAR, optical axes (z forward, x right, y down): the usual mount
    pose = _pose([0.27, 0.0, -0.08], [-np.pi / 2, 0.0, -np.pi / 2])
    tf = _tf("lidar", "camera_optical", pose)
    np.testing.assert_allclose(transform_to_matrix(tf.transform), pose, atol=1e-12)
    tree = StaticTransforms([NS(transforms=[tf])])
    T_cam_lidar = tree.lookup("camera_optical", "lidar")
    # a point 10 m straight ahead of the LiDAR is 9.73 m along the camera's optical axis, 0.08 m above it
    p = T_cam_lidar @ np.array([10.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(p[:3], [0.0, -0.08, 9.73], atol=1e-12)
    np.testing.assert_allclose(tree.lookup("lidar", "camera_optical"), pose, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("/lidar", "/lidar"), np.eye(4))  # tf1 leading slashes
    assert tree.lookup("lidar", "nowhere") is None


def test_chain_through_base_link_and_latest_wins() -> None:
    base_lidar = _pose([1.0, 0.0, 1.8], [0.0, 0.0, 0.1])
    base_cam = _pose([1.5, 0.2, 1.4], [-np.pi / 2, 0.0, -np.pi / 2])
    tree = StaticTransforms([NS(transforms=[_tf("base_link", "lidar", base_lidar)]),
                             NS(transforms=[_tf("base_link", "camera", base_cam)])])
    expected = np.linalg.inv(base_cam) @ base_lidar
    np.testing.assert_allclose(tree.lookup("camera", "lidar"), expected, atol=1e-12)
    moved = _pose([1.6, 0.2, 1.4], [-np.pi / 2, 0.0, -np.pi / 2])
    tree.add(NS(transforms=[_tf("camera", "base_link", np.linalg.inv(moved))]))  # re-published, other direction
    assert len(tree) == 2
    np.testing.assert_allclose(tree.lookup("camera", "lidar"), np.linalg.inv(moved) @ base_lidar, atol=1e-12)


def test_bad_quaternion_names_the_frames() -> None:
    tf = _tf("lidar", "cam", np.eye(4))
    tf.transform.rotation = NS(x=0.0, y=0.0, z=0.0, w=0.0)
    with pytest.raises(ValueError, match="lidar -> cam"):
        StaticTransforms([NS(transforms=[tf])])


def test_bag_writer_tf_static_and_label_map(tmp_path) -> None:
    """The writer's /tf_static is lidar -> camera_optical holding the camera pose (inverse of
    T_cam_lidar), so lookup(camera, lidar) gives the frames' T_cam_lidar back; the label map rides
    in metadata.yaml."""
    from ood_perception.data import DatasetConfig, Frame
    from ood_perception.data.bag import CAMERA_FRAME, LIDAR_FRAME, write_bag
    from ood_perception.data.bag_reader import BagSource
    from ood_perception.geometry import Calibration

    T = np.linalg.inv(_pose([0.27, 0.0, -0.08], [-np.pi / 2, 0.0, -np.pi / 2]))
    calib = Calibration(np.array([[40.0, 0, 16], [0, 40, 8], [0, 0, 1]]), 32, 16, T)
    frames = [Frame("00", f"{i:06d}", np.zeros((16, 32, 3), np.uint8), np.ones((5, 4), np.float32), None, None,
                    calib, None, 1.0 + 0.1 * i) for i in range(2)]
    cfg = DatasetConfig.from_dict({"labels": {0: "unlabeled", 40: "road", 150: "anomaly"},
                                   "learning_map": {0: 0, 40: 1, 150: 0}, "learning_map_inv": {0: 0, 1: 40},
                                   "ood_ids": [150]})
    write_bag(tmp_path / "bag", frames, storage="mcap", label_map=cfg)
    write_bag(tmp_path / "plain", frames, storage="sqlite3")
    with BagSource(tmp_path / "bag") as src:
        (msg,) = [m.msg for m in src.messages(["/tf_static"])]
        got = src.label_map()
    tf = msg.transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == (LIDAR_FRAME, CAMERA_FRAME)
    np.testing.assert_allclose(StaticTransforms([msg]).lookup(CAMERA_FRAME, LIDAR_FRAME), T, atol=1e-12)
    assert got is not None and got.class_names == ["road"] and got.ood_ids == [150]
    assert got.learning_map == cfg.learning_map
    with BagSource(tmp_path / "plain") as src:
        assert src.label_map() is None and src.custom_data == {}
