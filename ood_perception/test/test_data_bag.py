"""rosbag2 writer: messages read back with rosbags equal the frames (sqlite3 and mcap), sensor rates."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from ood_perception.data import Frame
from ood_perception.data.bag import get_typestore, write_bag
from ood_perception.geometry import Calibration


def _frames(n=4):
    rng = np.random.default_rng(0)
    calib = Calibration(np.array([[40.0, 0, 16], [0, 40, 8], [0, 0, 1]]), 32, 16)
    out = []
    for i in range(n):
        pose = np.eye(4)
        pose[0, 3] = i
        out.append(Frame("00", f"{i:06d}", rng.integers(0, 255, (16, 32, 3), dtype=np.uint8),
                         rng.normal(size=(50 + i, 4)).astype(np.float32),
                         rng.integers(0, 2**20, 50 + i).astype(np.uint32), rng.integers(0, 300, (16, 32)).astype(np.uint16),
                         calib, pose, i * 0.1))
    return out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_bag_round_trip(tmp_path, storage):
    frames = _frames()
    counts = write_bag(tmp_path / "bag", frames, storage=storage, camera_rate=5.0)
    assert counts["lidar/points"] == 4 and counts["camera/image"] == 2 and counts["/tf_static"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir renamed away
    ts = get_typestore()
    got = {}
    with Reader(tmp_path / "bag") as reader:
        for conn, stamp, raw in reader.messages():
            got.setdefault(conn.topic, []).append((stamp, ts.deserialize_cdr(raw, conn.msgtype)))
    for (stamp, msg), frame in zip(got["lidar/points"], frames, strict=True):
        assert stamp == round(frame.stamp * 1e9) and msg.header.frame_id == "lidar"
        rec = np.frombuffer(msg.data, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "<f4"), ("label", "<u4")])
        np.testing.assert_array_equal(np.stack([rec["x"], rec["y"], rec["z"], rec["i"]], 1), frame.points)
        np.testing.assert_array_equal(rec["label"], frame.point_labels)
        assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "label"] and msg.point_step == 20
    cams = [frames[0], frames[2]]  # 5 Hz camera from 10 Hz frames
    for (stamp, img), (_, lab), (_, info), frame in zip(got["camera/image"], got["camera/labels"],
                                                        got["camera/camera_info"], cams, strict=True):
        assert stamp == round(frame.stamp * 1e9) and img.encoding == "rgb8" and lab.encoding == "mono16"
        np.testing.assert_array_equal(np.asarray(img.data).reshape(16, 32, 3), frame.image)
        np.testing.assert_array_equal(np.asarray(lab.data).view("<u2").reshape(16, 32), frame.pixel_labels)
        np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), frame.calib.K)
    tf = got["/tf"][3][1].transforms[0]
    assert tf.transform.translation.x == 3.0 and tf.child_frame_id == "lidar"


def test_bag_refuses_existing_and_bad_storage(tmp_path):
    (tmp_path / "bag").mkdir()
    with pytest.raises(FileExistsError):
        write_bag(tmp_path / "bag", _frames(1))
    with pytest.raises(ValueError, match="storage"):
        write_bag(tmp_path / "x", _frames(1), storage="rosbag1")
