"""CarlaOodReader: files written in a documented schema are read back with the right geometry and labels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ood_perception.data import CarlaOodReader
from ood_perception.geometry import project_points

SCHEMA = {
    "sequences": "Town*",
    "frames": "{sequence}/lidar/*.npy",
    "points": "{sequence}/lidar/{frame}.npy",
    "points_format": "npy",
    "point_labels": "{sequence}/lidar_label/{frame}.npy",
    "image": "{sequence}/rgb/{frame}.png",
    "pixel_labels": "{sequence}/seg/{frame}.png",
    "pixel_label_channel": 0,  # CARLA's semantic camera: tag in the red channel
    "calib": {"fov": 90, "camera_xyz_rpy": [0.5, 0.0, -0.2, 0.0, 0.0, 0.0]},
    "labels": {0: "unlabeled", 7: "road", 10: "vehicle", 30: "anomaly"},
    "learning_map": {0: 0, 7: 1, 10: 2, 30: 0},
    "learning_map_inv": {0: 0, 1: 7, 2: 10},
    "ood_ids": [30],
    "sample_period": 0.05,
}


def _write(root):
    for seq in ("Town01", "Town02"):
        for d in ("lidar", "lidar_label", "rgb", "seg"):
            (root / seq / d).mkdir(parents=True)
        for i in range(2):
            pts = np.array([[10.5, 0.0, 0.2, 0.3], [5.5, 5.0, 0.2, 0.9]], dtype=np.float32)
            np.save(root / seq / "lidar" / f"{i:04d}.npy", pts)
            np.save(root / seq / "lidar_label" / f"{i:04d}.npy", np.array([30, 10], dtype=np.int64))
            rgb = np.zeros((60, 80, 3), np.uint8)
            rgb[..., 0] = 7
            rgb[30, 40, 0] = 30  # where the anomaly point lands
            cv2.imwrite(str(root / seq / "rgb" / f"{i:04d}.png"), rgb[:, :, ::-1] + 1)
            cv2.imwrite(str(root / seq / "seg" / f"{i:04d}.png"), rgb[:, :, ::-1])


def test_reads_schema(tmp_path):
    _write(tmp_path)
    reader = CarlaOodReader(tmp_path, SCHEMA)
    assert len(reader) == 4 and reader.sequences == ["Town01", "Town02"]
    assert reader.config.ood_ids == [30] and reader.config.class_names == ["road", "vehicle"]
    f = reader[1]
    assert f.sequence == "Town01" and f.frame_id == "0001" and f.stamp == pytest.approx(0.05)
    assert f.image.shape == (60, 80, 3) and int(f.image[0, 0, 0]) == 8
    assert f.pixel_labels[30, 40] == 30 and f.pixel_labels[0, 0] == 7
    np.testing.assert_array_equal(f.point_labels, [30, 10])
    # camera 0.5 m ahead, 0.2 m below the LiDAR: the point 10 m ahead at +0.2 m lands 0.4 m above the centre row
    proj = project_points(f.points, f.calib)
    fx = 80 / 2  # fov 90
    assert proj.u[0] == 40 and proj.v[0] == int(np.floor(30 - fx * 0.4 / 10))
    assert not proj.in_view[1]  # 45 deg left of the 90-deg field of view's edge
    assert reader.config.ood_mask(f.point_labels).tolist() == [True, False]


def test_schema_errors(tmp_path):
    _write(tmp_path)
    with pytest.raises(ValueError, match="unknown keys"):
        CarlaOodReader(tmp_path, {**SCHEMA, "pointz": "x"})
    with pytest.raises(ValueError, match="missing required key 'points'"):
        CarlaOodReader(tmp_path, {k: v for k, v in SCHEMA.items() if k != "points"})
    with pytest.raises(FileNotFoundError, match="no frames"):
        CarlaOodReader(tmp_path, {**SCHEMA, "frames": "{sequence}/none/*.npy"})
    import yaml

    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    assert len(CarlaOodReader(tmp_path, tmp_path / "schema.yaml")) == 4
