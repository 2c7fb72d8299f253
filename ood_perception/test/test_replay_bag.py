"""Bag reading for replay: storage formats, distros, topic resolution, damaged bags."""

from __future__ import annotations

import numpy as np
import pytest
from replay_bags import frame_arrays, truncate_bag, write_drive_bag

from ood_perception.data.bag_reader import BagReadError, BagSource, MissingTopicError


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_reads_both_storages_in_bag_time_order(tmp_path, storage):
    bag = write_drive_bag(tmp_path / "b", storage=storage, frames=4)
    with BagSource(bag) as src:
        assert not src.salvaged
        assert src.topics["/camera/image"] == "sensor_msgs/msg/Image"
        topic = src.resolve("camera/image")
        msgs = list(src.messages([topic, "/lidar/points"]))
    assert [m.index for m in msgs] == list(range(8))
    stamps = [m.timestamp_ns for m in msgs]
    assert stamps == sorted(stamps)
    img = msgs[2].msg
    rgb, _, _ = frame_arrays(1, False)
    assert bytes(img.data) == rgb.tobytes()  # the bytes written are the bytes read


def test_topic_resolution_namespaced_and_missing(tmp_path):
    bag = write_drive_bag(tmp_path / "b", frames=1, prefix="/vehicle")
    with BagSource(bag) as src:
        assert src.resolve("camera/image") == "/vehicle/camera/image"
        assert src.resolve("/vehicle/lidar/points") == "/vehicle/lidar/points"
        assert src.resolve("video/image", required=False) is None
        with pytest.raises(MissingTopicError) as err:
            src.resolve("radar/points")
    text = str(err.value)
    assert "radar/points" in text and "/vehicle/camera/image [sensor_msgs/msg/Image]" in text
    assert "/vehicle/lidar/points [sensor_msgs/msg/PointCloud2]" in text and str(bag) in text


def test_humble_bag_without_definitions_uses_distro_types(tmp_path):
    """A sqlite3 bag with the definitions table emptied (as humble's recorder writes) still reads."""
    import sqlite3

    bag = write_drive_bag(tmp_path / "b", storage="sqlite3", frames=2, distro="humble")
    db = next(p for p in bag.iterdir() if p.suffix == ".db3")
    con = sqlite3.connect(db)
    con.execute("DELETE FROM message_definitions")
    con.commit()
    con.close()
    with BagSource(bag, distro="humble") as src:
        msgs = list(src.messages(["/camera/camera_info"]))
    assert len(msgs) == 2 and msgs[0].msg.k[0] == pytest.approx(40.0)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_bag_salvages_and_names_position(tmp_path, storage):
    bag = write_drive_bag(tmp_path / "b", storage=storage, frames=40)
    with BagSource(bag) as src:
        full = [(m.topic, m.timestamp_ns) for m in src.messages(src.topics)]
    truncate_bag(bag, 0.5)
    got = []
    with BagSource(bag) as src:
        assert src.salvaged and src.open_error
        with pytest.raises(BagReadError) as err:
            for m in src.messages(src.topics):
                got.append((m.topic, m.timestamp_ns))
    e = err.value
    # a real share of the bag came back, exactly as in the intact bag, and the error says where
    assert 0.2 * len(full) < len(got) < len(full)
    assert got == full[: len(got)]
    assert e.index == len(got) and e.timestamp_ns == got[-1][1] and e.topic == got[-1][0]
    assert str(bag) in str(e) and f"after message #{len(got)}" in str(e) and got[-1][0] in str(e)
    if storage == "mcap":
        assert e.byte_offset is not None and "byte" in str(e)


def test_corrupt_payload_is_skipped_and_reported(tmp_path):
    """A message whose bytes do not deserialise: skipped (reading goes on), reported with its own
    topic and index."""
    import sqlite3

    bag = write_drive_bag(tmp_path / "b", storage="sqlite3", frames=3)
    db = next(p for p in bag.iterdir() if p.suffix == ".db3")
    con = sqlite3.connect(db)
    (tid,) = con.execute("SELECT id FROM topics WHERE name='/lidar/points'").fetchone()
    (mid,) = con.execute("SELECT id FROM messages WHERE topic_id=? ORDER BY timestamp LIMIT 1 OFFSET 1", (tid,)).fetchone()
    con.execute("UPDATE messages SET data=? WHERE id=?", (b"\x00\x01\x00\x00" + b"\xff" * 10, mid))
    con.commit()
    con.close()
    with BagSource(bag) as src:
        seen = [m.topic for m in src.messages(["/camera/image", "/lidar/points"])]
        (skip,) = src.skipped
        report = src.damage_report()
    assert seen.count("/lidar/points") == 2 and seen.count("/camera/image") == 3  # the one after it too
    assert skip.kind == "message" and skip.topic == "/lidar/points" and skip.after_index == 3
    assert skip.messages_lost == 1
    assert report.startswith(f"bag {bag}: skipped 1 damaged part and read on (messages lost: 1): message #3 on /lidar/points")
    assert "cannot deserialise sensor_msgs/msg/PointCloud2" in report


def test_missing_bag_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BagSource(tmp_path / "nope")


def test_frame_arrays_labels_match_points():
    _, labels, pts = frame_arrays(3, True)
    assert set(np.unique(labels)) == {40, 150} and set(np.unique(pts[:, 4])) == {40.0, 150.0}
