"""SemanticKITTI layout: DatasetConfig, reader on a hand-made sequence in the real format, writer round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ood_perception.data import DatasetConfig, Frame, SemanticKittiReader, SemanticKittiWriter
from ood_perception.geometry import Calibration, project_points


def _handmade(root, rng):
    """A two-frame sequence written byte by byte as KITTI/SemanticKITTI do (no dataset.yaml)."""
    seq = root / "sequences" / "08"
    for d in ("velodyne", "labels", "image_2"):
        (seq / d).mkdir(parents=True)
    k = np.array([[700.0, 0, 600], [0, 700.0, 180], [0, 0, 1]])
    # KITTI: P2 carries the colour camera's baseline offset, Tr maps velodyne -> camera 0.
    p0 = np.hstack([k, np.zeros((3, 1))])
    p2 = np.hstack([k, (k @ np.array([0.06, -0.001, 0.002]))[:, None]])
    tr = np.array([[0, -1, 0, 0.01], [0, 0, -1, -0.07], [1, 0, 0, -0.27]], dtype=np.float64)
    def row(m):
        return " ".join(repr(float(v)) for v in np.asarray(m).ravel())

    lines = [f"P0: {row(p0)}", f"P1: {row(p0)}", f"P2: {row(p2)}", f"P3: {row(p2)}", f"Tr: {row(tr)}"]
    (seq / "calib.txt").write_text("\n".join(lines) + "\n")
    cam_poses = [np.eye(4), np.eye(4)]
    cam_poses[1][:3, 3] = [0.0, 0.0, 1.5]  # camera 0 moved 1.5 m forward (its z)
    (seq / "poses.txt").write_text("".join(row(m[:3]) + "\n" for m in cam_poses))
    (seq / "times.txt").write_text("0.000000e+00\n1.036300e-01\n")
    frames = []
    for i in range(2):
        pts = rng.normal(size=(50, 4)).astype(np.float32)
        pts[:, 0] += 10
        sem = rng.choice([0, 10, 40, 252, 81], size=50).astype(np.uint32)
        inst = rng.integers(0, 7, size=50).astype(np.uint32)
        lab = sem | (inst << 16)
        img = rng.integers(0, 255, size=(37, 124, 3), dtype=np.uint8)
        pts.tofile(seq / "velodyne" / f"{i:06d}.bin")
        lab.tofile(seq / "labels" / f"{i:06d}.label")
        cv2.imwrite(str(seq / "image_2" / f"{i:06d}.png"), img[:, :, ::-1])
        frames.append((pts, lab, img))
    return frames, k, p2, tr, cam_poses


def test_reader_reads_real_format(tmp_path):
    rng = np.random.default_rng(0)
    frames, k, p2, tr, cam_poses = _handmade(tmp_path, rng)
    reader = SemanticKittiReader(tmp_path)
    assert reader.config.num_classes == 19  # the embedded semantic-kitti.yaml map
    assert len(reader) == 2 and reader.sequences == ["08"]
    for i, frame in enumerate(reader):
        pts, lab, img = frames[i]
        assert frame.sequence == "08" and frame.frame_id == f"{i:06d}"
        np.testing.assert_array_equal(frame.points, pts)
        np.testing.assert_array_equal(frame.point_labels, lab)
        np.testing.assert_array_equal(frame.semantic, lab & 0xFFFF)
        np.testing.assert_array_equal(frame.instance, lab >> 16)
        np.testing.assert_array_equal(frame.image, img)
        assert frame.pixel_labels is None
        # pixel ~ P2 @ Tr @ [x y z 1], computed independently of the geometry room
        homo = np.hstack([pts[:, :3].astype(np.float64), np.ones((50, 1))])
        uvw = homo @ (p2 @ np.vstack([tr, [0, 0, 0, 1]])).T
        proj = project_points(frame.points, frame.calib)
        np.testing.assert_allclose(proj.u, np.floor(uvw[:, 0] / uvw[:, 2]))
        # LiDAR pose = inv(Tr) cam_pose Tr: the camera's 1.5 m along its z is 1.5 m along LiDAR x.
        tr4 = np.vstack([tr, [0, 0, 0, 1]])
        np.testing.assert_allclose(frame.pose, np.linalg.inv(tr4) @ cam_poses[i] @ tr4, atol=1e-12)
    np.testing.assert_allclose(reader[1].pose[:3, 3], [1.5, 0, 0], atol=1e-9)
    assert reader[1].stamp == pytest.approx(0.10363)
    assert reader[-1].frame_id == "000001"
    with pytest.raises(IndexError):
        reader[2]


def test_writer_round_trip_equals_handmade(tmp_path):
    rng = np.random.default_rng(1)
    _handmade(tmp_path / "a", rng)
    src = SemanticKittiReader(tmp_path / "a")
    cfg = DatasetConfig.semantic_kitti()
    writer = SemanticKittiWriter(tmp_path / "b", cfg)
    writer.write_config()
    assert writer.write_sequence(iter(src)) == 2
    out = SemanticKittiReader(tmp_path / "b")
    assert out.config.to_dict() == cfg.to_dict()
    for a, b in zip(src, out, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.point_labels, b.point_labels)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(a.calib.P, b.calib.P, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(a.pose, b.pose, atol=1e-9)
        assert a.stamp == pytest.approx(b.stamp)


def test_writer_pixel_labels_and_determinism(tmp_path):
    calib = Calibration(np.array([[50.0, 0, 16], [0, 50, 8], [0, 0, 1]]), 32, 16)
    rng = np.random.default_rng(2)
    frame = Frame("3", "000007", rng.integers(0, 255, (16, 32, 3), dtype=np.uint8),
                  rng.normal(size=(9, 4)).astype(np.float32), np.arange(9, dtype=np.uint32) | (3 << 16),
                  rng.integers(0, 300, (16, 32)).astype(np.uint16), calib, np.eye(4), 0.7,
                  pixel_instances=rng.integers(0, 9, (16, 32)).astype(np.uint16))
    for name in ("x", "y"):
        w = SemanticKittiWriter(tmp_path / name, DatasetConfig.semantic_kitti())
        w.write_config()
        w.write_sequence([frame])
    files = sorted(p.relative_to(tmp_path / "x") for p in (tmp_path / "x").rglob("*") if p.is_file())
    assert any(str(f).endswith("image_2_label/000007.png") for f in files)
    for f in files:
        assert (tmp_path / "x" / f).read_bytes() == (tmp_path / "y" / f).read_bytes(), f
    back = SemanticKittiReader(tmp_path / "x", sequences=[3])[0]
    np.testing.assert_array_equal(back.pixel_labels, frame.pixel_labels)
    np.testing.assert_array_equal(back.pixel_instances, frame.pixel_instances)
    assert back.pixel_labels.dtype == np.uint16


def test_dataset_config_train_ids_and_ood(tmp_path):
    d = DatasetConfig.semantic_kitti().to_dict()
    d["labels"][200] = "trailer"
    d["learning_map"][200] = 0
    d["color_map"][200] = [0, 0, 255]
    d["ood_ids"] = [200]
    cfg = DatasetConfig.from_dict(d)
    raw = np.array([0, 10 | (4 << 16), 252, 40, 60, 200 | (1 << 16), 52, 999], dtype=np.uint32)
    # independent: learning map lookup, minus one, ignore -> 255
    expect = [255, 0, 0, 8, 8, 255, 255, 255]
    np.testing.assert_array_equal(cfg.to_train_ids(raw), expect)
    np.testing.assert_array_equal(cfg.ood_mask(raw), [False, False, False, False, False, True, False, False])
    assert cfg.class_names[8] == "road" and cfg.colors.shape == (19, 3)
    assert tuple(cfg.colors[0]) == (100, 150, 245)  # BGR [245,150,100] -> RGB
    cfg.write_yaml(tmp_path / "d.yaml")
    assert DatasetConfig.from_yaml(tmp_path / "d.yaml").to_dict() == cfg.to_dict()
    bad = dict(d, learning_map={**d["learning_map"], 200: 3})
    with pytest.raises(ValueError, match="ood id 200"):
        DatasetConfig.from_dict(bad)
    with pytest.raises(ValueError, match="missing keys"):
        DatasetConfig.from_dict({"labels": {}})


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="sequences"):
        SemanticKittiReader(tmp_path)
    (tmp_path / "sequences" / "00" / "velodyne").mkdir(parents=True)
    np.zeros(8, np.float32).tofile(tmp_path / "sequences" / "00" / "velodyne" / "000000.bin")
    reader = SemanticKittiReader(tmp_path)
    with pytest.raises(FileNotFoundError, match="image_2"):
        reader[0]
    with pytest.raises(FileNotFoundError, match="sequence '05'"):
        SemanticKittiReader(tmp_path, sequences=[5])
