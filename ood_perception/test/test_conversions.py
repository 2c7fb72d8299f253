"""Conversions checked against an independent implementation: rosbags' CDR deserialiser.

Messages are built with rclpy, serialised with ``rclpy.serialization.serialize_message``,
deserialised with the rosbags typestore, and our converters run on the rosbags objects; expected
values come from the arrays (images) or from ``struct``-packed point records (clouds), never from
the code under test.
"""

from __future__ import annotations

import array
import struct

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")
rosbags_typesys = pytest.importorskip("rosbags.typesys", reason="rosbags is a project dependency")

from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402

from ood_perception.codec import conversions as cv  # noqa: E402
from ood_perception.ros import messages as rosmsg  # noqa: E402

TYPESTORE = rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_KILTED)


def via_rosbags(msg, typename: str):
    """rclpy message -> CDR bytes -> rosbags message."""
    return TYPESTORE.deserialize_cdr(serialize_message(msg), typename)


ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}


def _random_image(encoding: str, h: int = 7, w: int = 11, seed: int = 0) -> np.ndarray:
    dtype, ch = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (h, w) if ch == 1 else (h, w, ch)
    if dtype == np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


def _padded_image_msg(arr: np.ndarray, encoding: str, pad: int, big_endian: bool = False) -> Image:
    h, w = arr.shape[:2]
    order = ">" if big_endian else "<"
    rows = [np.ascontiguousarray(arr[r]).astype(arr.dtype.newbyteorder(order)).tobytes() + b"\xab" * pad for r in range(h)]
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(big_endian))
    msg.step = len(rows[0])
    msg.data = array.array("B", b"".join(rows))
    return msg


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("pad", [0, 3])
def test_image_decode_matches_rosbags_bytes(encoding, pad):
    arr = _random_image(encoding, seed=len(encoding) + pad)
    msg = via_rosbags(_padded_image_msg(arr, encoding, pad), "sensor_msgs/msg/Image")
    assert msg.step == arr.shape[1] * arr[0, :].nbytes // arr.shape[1] + pad
    out = cv.image_to_numpy(msg)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == arr.dtype


@pytest.mark.parametrize("encoding", ["mono16", "32FC1"])
def test_big_endian_images_are_byteswapped(encoding):
    arr = _random_image(encoding, seed=5)
    msg = via_rosbags(_padded_image_msg(arr, encoding, pad=2, big_endian=True), "sensor_msgs/msg/Image")
    out = cv.image_to_numpy(msg)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_image_encode_read_back_by_rosbags(encoding):
    arr = _random_image(encoding, seed=9)
    msg = via_rosbags(rosmsg.image_msg(arr, encoding), "sensor_msgs/msg/Image")
    dtype, ch = ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.encoding, msg.step) == (7, 11, encoding, 11 * ch * np.dtype(dtype).itemsize)
    back = np.frombuffer(msg.data.tobytes(), dtype=np.dtype(dtype).newbyteorder("<")).reshape(arr.shape)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize(
    ("encoding", "code"),
    [("bgr8", "COLOR_BGR2RGB"), ("bgra8", "COLOR_BGRA2RGB"), ("rgba8", "COLOR_RGBA2RGB"), ("mono8", "COLOR_GRAY2RGB")],
)
def test_to_rgb8_matches_opencv(encoding, code):
    cv2 = pytest.importorskip("cv2")
    arr = _random_image(encoding, seed=3)
    rgb = cv.image_to_rgb8(_padded_image_msg(arr, encoding, pad=1))
    np.testing.assert_array_equal(rgb, cv2.cvtColor(arr, getattr(cv2, code)))
    assert rgb.flags.c_contiguous and rgb.dtype == np.uint8


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: setattr(m, "encoding", "yuv422"), "not supported"),
        (lambda m: setattr(m, "step", 5), "shorter than a row"),
        (lambda m: setattr(m, "data", m.data[:-4]), r"expected step\*height"),
        (lambda m: setattr(m, "width", 0), "must be positive"),
        (lambda m: setattr(m, "height", 1 << 26), "too large"),
    ],
)
def test_bad_images_raise_clear_errors(mutate, needle):
    msg = _padded_image_msg(_random_image("rgb8"), "rgb8", pad=0)
    mutate(msg)
    with pytest.raises(cv.ConversionError, match=needle):
        cv.image_to_numpy(msg)


# --------------------------------------------------------------------------- clouds

F32, U16, U32 = PointField.FLOAT32, PointField.UINT16, PointField.UINT32
#: name -> (offset, datatype, struct code)
OUSTER = ({"x": (0, F32, "f"), "y": (4, F32, "f"), "z": (8, F32, "f"), "intensity": (16, F32, "f"),
           "t": (20, U32, "I"), "reflectivity": (24, U16, "H"), "ring": (26, U16, "H"),
           "ambient": (28, U16, "H"), "range": (32, U32, "I")}, 48)
VELODYNE = ({"x": (0, F32, "f"), "y": (4, F32, "f"), "z": (8, F32, "f"), "intensity": (12, F32, "f"),
             "ring": (16, U16, "H"), "time": (18, F32, "f")}, 22)
CARLA = ({"x": (0, F32, "f"), "y": (4, F32, "f"), "z": (8, F32, "f"), "intensity": (12, F32, "f")}, 16)


def _cloud(layout, h: int, w: int, seed: int, big_endian: bool = False, row_pad: int = 0, nan_every: int = 0):
    """A PointCloud2 packed point by point with struct, and the expected per-field values."""
    fields, step = layout
    rng = np.random.default_rng(seed)
    n = h * w
    values = {}
    for name, (_, _dt, code) in fields.items():
        values[name] = rng.normal(scale=20, size=n).astype(np.float32) if code == "f" else rng.integers(0, 60000, n)
    if nan_every:
        values["x"][::nan_every] = np.nan
    e = ">" if big_endian else "<"
    buf = bytearray()
    for r in range(h):
        row = bytearray(step * w + row_pad)
        for c in range(w):
            i = r * w + c
            for name, (off, _, code) in fields.items():
                struct.pack_into(e + code, row, c * step + off, values[name][i].item())
        buf += row
    msg = PointCloud2(height=h, width=w, is_bigendian=big_endian, point_step=step, row_step=step * w + row_pad)
    msg.fields = [PointField(name=k, offset=o, datatype=d, count=1) for k, (o, d, _) in fields.items()]
    msg.data = array.array("B", bytes(buf))
    return msg, values


@pytest.mark.parametrize("layout", [OUSTER, VELODYNE, CARLA], ids=["ouster", "velodyne", "carla"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize(("h", "w", "row_pad"), [(1, 37, 0), (4, 9, 0), (3, 5, 6)], ids=["flat", "organized", "rowpad"])
def test_clouds_match_struct_packing(layout, big_endian, h, w, row_pad):
    raw, values = _cloud(layout, h, w, seed=h * w, big_endian=big_endian, row_pad=row_pad)
    msg = via_rosbags(raw, "sensor_msgs/msg/PointCloud2")
    arr = cv.pointcloud2_to_array(msg)
    assert arr.shape == (h * w,)
    for name in layout[0]:
        np.testing.assert_array_equal(arr[name].astype(values[name].dtype), values[name])
    xyzi = cv.pointcloud2_to_xyzi(msg)
    expect = np.stack([values[k] for k in ("x", "y", "z", "intensity")], axis=1).astype(np.float32)
    np.testing.assert_array_equal(xyzi.points, expect)
    assert xyzi.points.dtype == np.float32 and xyzi.has_intensity and xyzi.num_nonfinite == 0


def test_nonfinite_points_dropped_and_counted_and_y_negated():
    raw, values = _cloud(CARLA, 1, 20, seed=1, nan_every=3)
    raw_values_y = values["y"].copy()
    out = cv.pointcloud2_to_xyzi(via_rosbags(raw, "sensor_msgs/msg/PointCloud2"), negate_y=True)
    keep = np.isfinite(values["x"])
    assert out.num_input == 20 and out.num_nonfinite == int((~keep).sum()) == 7
    np.testing.assert_array_equal(out.points[:, 1], -raw_values_y[keep])


def test_nonfinite_z_drops_the_point_and_nonfinite_intensity_becomes_zero():
    """Only a non-finite x, y or z drops a point; a non-finite intensity keeps it with intensity 0;
    a finite cloud passes through unchanged."""
    fields, step = CARLA
    rng = np.random.default_rng(4)
    values = {k: rng.normal(scale=20, size=12).astype(np.float32) for k in fields}
    values["z"][[1, 7]] = [np.nan, -np.inf]
    values["intensity"][[2, 7, 9]] = [np.inf, np.nan, np.nan]
    buf = bytearray(step * 12)
    for i in range(12):
        for name, (off, _, code) in fields.items():
            struct.pack_into("<" + code, buf, i * step + off, values[name][i].item())
    msg = PointCloud2(height=1, width=12, is_bigendian=False, point_step=step, row_step=step * 12)
    msg.fields = [PointField(name=k, offset=o, datatype=d, count=1) for k, (o, d, _) in fields.items()]
    msg.data = array.array("B", bytes(buf))
    out = cv.pointcloud2_to_xyzi(msg)
    keep = np.ones(12, bool)
    keep[[1, 7]] = False
    assert out.num_input == 12 and out.num_nonfinite == 2 and np.isfinite(out.points).all()
    np.testing.assert_array_equal(out.points[:, 2], values["z"][keep])
    want_i = np.nan_to_num(values["intensity"], nan=0.0, posinf=0.0, neginf=0.0)[keep]
    np.testing.assert_array_equal(out.points[:, 3], want_i)
    ok_msg, _ = _cloud(CARLA, 1, 6, seed=5)
    fine = cv.pointcloud2_to_xyzi(ok_msg)
    assert fine.num_nonfinite == 0 and len(fine.points) == 6


def test_cloud_without_intensity_and_empty_cloud():
    fields = ({k: v for k, v in CARLA[0].items() if k != "intensity"}, 12)
    raw, values = _cloud(fields, 1, 4, seed=2)
    out = cv.pointcloud2_to_xyzi(raw)
    assert not out.has_intensity and np.all(out.points[:, 3] == 0)
    raw.width = 0
    raw.data = array.array("B")
    raw.row_step = 0
    assert cv.pointcloud2_to_xyzi(raw).points.shape == (0, 4)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "z"]), "lacks field"),
        (lambda m: setattr(m, "data", m.data[:-1]), "expected row_step"),
        (lambda m: setattr(m, "point_step", 8), "does not fit point_step"),
        (lambda m: setattr(m, "row_step", 3), "row_step"),
        (lambda m: setattr(m.fields[0], "datatype", 42), "unknown datatype"),
        (lambda m: setattr(m, "point_step", 0), "point_step must be positive"),
        (lambda m: setattr(m, "fields", []), "no fields"),
    ],
)
def test_bad_clouds_raise_clear_errors(mutate, needle):
    raw, _ = _cloud(CARLA, 1, 5, seed=0)
    mutate(raw)
    with pytest.raises(cv.ConversionError, match=needle):
        cv.pointcloud2_to_xyzi(raw)


def test_scored_points_read_back_by_rosbags_and_struct():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(13, 4)).astype(np.float32)
    labels = rng.integers(-1, 19, 13).astype(np.int32)
    scores = rng.normal(size=13).astype(np.float32)
    msg = via_rosbags(rosmsg.scored_cloud_msg(pts, labels, scores), "sensor_msgs/msg/PointCloud2")
    assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "label", "ood_score"]
    assert msg.point_step == 24 and msg.width == 13 and msg.height == 1
    data = msg.data.tobytes()
    for i in range(13):
        rec = struct.unpack_from("<ffffif", data, i * 24)
        np.testing.assert_array_equal(np.float32(rec[:4]), pts[i])
        assert rec[4] == labels[i] and np.float32(rec[5]) == scores[i]


def test_camera_info_to_calibration():
    info = CameraInfo(width=800, height=600)
    info.k = [400.0, 0.0, 400.0, 0.0, 410.0, 300.0, 0.0, 0.0, 1.0]
    cal = cv.camera_info_to_calibration(via_rosbags(info, "sensor_msgs/msg/CameraInfo"), np.diag([1.0, 1, 1, 1]))
    np.testing.assert_allclose(cal.K, [[400, 0, 400], [0, 410, 300], [0, 0, 1]])
    assert (cal.width, cal.height) == (800, 600)
    info.binning_x = info.binning_y = 2
    half = cv.camera_info_to_calibration(info)
    assert (half.width, half.height) == (400, 300) and half.K[0, 0] == 200 and half.K[1, 2] == 150
    info.k = [0.0] * 9
    with pytest.raises(cv.ConversionError, match="focal"):
        cv.camera_info_to_calibration(info)
    # issue 14: a NaN principal point is named as such, not as "no valid focal lengths: fx=256.0"
    info.k = [256.0, 0.0, float("nan"), 0.0, 256.0, 300.0, 0.0, 0.0, 1.0]
    with pytest.raises(cv.ConversionError, match=r"^CameraInfo.k is not finite: cx=nan$"):
        cv.camera_info_to_calibration(info)
