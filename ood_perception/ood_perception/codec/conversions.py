"""sensor_msgs <-> numpy conversions for the nodes (vectorised: no per-pixel or per-point loops).

``cv_bridge`` and ``sensor_msgs_py`` are not installable from the registries this project uses
(they ship only with a full ROS distribution), so this module is our small replacement. The
functions only read attributes (``height``, ``width``, ``encoding``, ``step``, ``data``, ...), so
they accept rclpy messages and rosbags' deserialised messages alike (replay uses the latter).

Every malformed message raises :class:`ConversionError` (a ``ValueError``) whose text names the
message field that is wrong, so a node can log it, count it and keep serving.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from ood_perception.geometry import Calibration


class ConversionError(ValueError):
    """A message cannot be converted; the text says which field is wrong and how."""


#: Image encodings we read and write: encoding -> (numpy dtype, channels).
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

#: sensor_msgs/PointField datatypes -> numpy dtypes (little-endian; swapped for big-endian clouds).
POINTFIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("i1"),  # INT8
    2: np.dtype("u1"),  # UINT8
    3: np.dtype("<i2"),  # INT16
    4: np.dtype("<u2"),  # UINT16
    5: np.dtype("<i4"),  # INT32
    6: np.dtype("<u4"),  # UINT32
    7: np.dtype("<f4"),  # FLOAT32
    8: np.dtype("<f8"),  # FLOAT64
}
_DTYPE_TO_POINTFIELD = {v.newbyteorder("<"): k for k, v in POINTFIELD_DTYPES.items()}

_MAX_IMAGE_BYTES = 1 << 30  # 1 GiB: anything larger is a corrupt header, not a camera


def _buffer(data: Any) -> np.ndarray:
    """The message's ``data`` as a flat uint8 array without copying where possible."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


# --------------------------------------------------------------------------- images


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image into an ``[H, W]`` or ``[H, W, C]`` array in its own encoding.

    ``step`` (row padding) is honoured and multi-byte encodings with ``is_bigendian`` set are
    byte-swapped to native order. The result is a read-only view or a copy; never modify it.

    Raises:
        ConversionError: unknown encoding, zero size, step shorter than a row, or too few bytes.
    """
    enc = str(msg.encoding)
    if enc not in IMAGE_ENCODINGS:
        raise ConversionError(f"image encoding {enc!r} not supported (supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype, channels = IMAGE_ENCODINGS[enc]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ConversionError(f"image size must be positive, got {width}x{height}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ConversionError(f"image step {step} is shorter than a row of {width} {enc} pixels ({row_bytes} bytes)")
    if step * height > _MAX_IMAGE_BYTES:
        raise ConversionError(f"image header claims {step * height} bytes (step {step} x height {height}): too large")
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise ConversionError(f"image data has {buf.size} bytes, expected step*height = {step}*{height} = {step * height}")
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    order = ">" if bool(msg.is_bigendian) else "<"
    src = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
    arr = rows.view(src)  # rows are contiguous along the last axis: zero-copy view
    arr = arr.reshape(height, width, channels) if channels > 1 else arr.reshape(height, width)
    if not src.isnative:
        arr = arr.astype(src.newbyteorder("="))
    return arr


def image_to_rgb8(msg: Any) -> np.ndarray:
    """Decode a colour or mono sensor_msgs/Image into a contiguous ``uint8 [H, W, 3]`` RGB array.

    mono16 is scaled by 1/256; 32FC1 images are not colour images and are rejected.
    """
    arr = image_to_numpy(msg)
    enc = str(msg.encoding)
    if enc == "rgb8":
        return np.ascontiguousarray(arr)
    if enc == "bgr8":
        return np.ascontiguousarray(arr[:, :, ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(arr[:, :, :3])
    if enc == "bgra8":
        return np.ascontiguousarray(arr[:, :, 2::-1])
    if enc in ("mono8", "8UC1"):
        return np.repeat(arr[:, :, None], 3, axis=2)
    if enc in ("mono16", "16UC1"):
        return np.repeat((arr >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    raise ConversionError(f"image encoding {enc!r} is not a colour image")


def numpy_to_image(arr: np.ndarray, encoding: str, header: Any = None, msg_type: Any = None) -> Any:
    """Encode an array as a sensor_msgs/Image (little-endian, no row padding).

    Args:
        arr: ``[H, W]`` or ``[H, W, C]`` matching ``encoding`` (see :data:`IMAGE_ENCODINGS`).
        encoding: the ROS encoding name.
        header: copied into the message when given.
        msg_type: the Image class (defaults to ``sensor_msgs.msg.Image``).
    """
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(f"image encoding {encoding!r} not supported")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    arr = np.asarray(arr)
    if arr.ndim == 2 and channels == 1:
        pass
    elif arr.ndim == 3 and arr.shape[2] == channels:
        pass
    else:
        raise ConversionError(f"array of shape {arr.shape} does not fit encoding {encoding} ({channels} channels)")
    if arr.dtype != dtype:
        raise ConversionError(f"array dtype {arr.dtype} does not fit encoding {encoding} ({dtype})")
    if msg_type is None:
        raise ConversionError("numpy_to_image needs msg_type (sensor_msgs/Image of rclpy or rosbags)")
    msg = msg_type()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * dtype.itemsize)
    msg.data = array.array("B", np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<")).tobytes())
    return msg


# --------------------------------------------------------------------------- point clouds


def pointcloud2_dtype(msg: Any) -> np.dtype:
    """The numpy structured dtype of one point of a sensor_msgs/PointCloud2 (padding kept).

    Fields are placed at their declared offsets in a record of ``point_step`` bytes; ``count > 1``
    gives a sub-array. Big-endian clouds get big-endian fields (converted on use).
    """
    point_step = int(msg.point_step)
    if point_step <= 0:
        raise ConversionError(f"point_step must be positive, got {point_step}")
    order = ">" if bool(msg.is_bigendian) else "<"
    names, formats, offsets = [], [], []
    for f in msg.fields:
        name = str(f.name)
        if int(f.datatype) not in POINTFIELD_DTYPES:
            raise ConversionError(f"field {name!r} has unknown datatype {int(f.datatype)}")
        base = POINTFIELD_DTYPES[int(f.datatype)]
        if base.itemsize > 1:
            base = base.newbyteorder(order)
        count = max(int(f.count), 1)
        off = int(f.offset)
        if off < 0 or off + base.itemsize * count > point_step:
            raise ConversionError(
                f"field {name!r} at offset {off} ({count} x {base.itemsize} bytes) does not fit point_step {point_step}"
            )
        if name in names:
            raise ConversionError(f"field {name!r} appears twice")
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(off)
    if not names:
        raise ConversionError("point cloud has no fields")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/PointCloud2 into a structured array ``[H*W]`` (organised clouds flattened).

    Any field layout (padding, extra fields like ouster's t/ring/ambient or Velodyne's ring/time)
    is read by name, offset and datatype; ``row_step`` padding is honoured.
    """
    dtype = pointcloud2_dtype(msg)
    height, width = int(msg.height), int(msg.width)
    if height < 0 or width < 0:
        raise ConversionError(f"cloud size must be >= 0, got {width}x{height}")
    n = height * width
    if n == 0:
        return np.zeros(0, dtype=dtype)
    row_step = int(msg.row_step)
    if row_step < width * dtype.itemsize:
        raise ConversionError(f"row_step {row_step} is shorter than width*point_step = {width}*{dtype.itemsize}")
    buf = _buffer(msg.data)
    if buf.size < row_step * height:
        raise ConversionError(f"cloud data has {buf.size} bytes, expected row_step*height = {row_step}*{height} = {row_step * height}")
    if row_step == width * dtype.itemsize:
        return np.frombuffer(buf, dtype=dtype, count=n)
    rows = np.ascontiguousarray(buf[: row_step * height].reshape(height, row_step)[:, : width * dtype.itemsize])
    return rows.view(dtype).reshape(n)


def cloud_field(arr: np.ndarray, name: str, dtype: Any = np.float32) -> np.ndarray:
    """One field of a decoded cloud as a native-order ``[N]`` array of ``dtype``."""
    if arr.dtype.names is None or name not in arr.dtype.names:
        raise ConversionError(f"point cloud has no field {name!r} (fields: {list(arr.dtype.names or [])})")
    col = arr[name]
    if col.ndim > 1:
        col = col[:, 0]
    return col.astype(dtype)


@dataclass
class CloudXYZI:
    """Finite points of a cloud as ``float32 [N, 4]`` (x, y, z, intensity) and what was dropped.

    Attributes:
        points: finite points (intensity 0 when the cloud has no intensity field).
        num_input: points in the message (organised clouds: height*width).
        num_nonfinite: points dropped because x, y or z was NaN/Inf.
        has_intensity: the cloud carried the intensity field.
    """

    points: np.ndarray
    num_input: int
    num_nonfinite: int
    has_intensity: bool


def pointcloud2_to_xyzi(msg: Any, intensity_field: str = "intensity", negate_y: bool = False) -> CloudXYZI:
    """Decode x, y, z (+ intensity) of a PointCloud2, dropping non-finite points.

    Args:
        intensity_field: name of the intensity field (``intensity`` in ROS drivers, ``reflectivity``
            is another choice for ouster); missing -> zeros.
        negate_y: flip y (for sources whose y axis points right instead of ROS's left).
    """
    arr = pointcloud2_to_array(msg)
    names = arr.dtype.names or ()
    missing = [c for c in ("x", "y", "z") if c not in names]
    if missing:
        raise ConversionError(f"point cloud lacks field(s) {missing} (fields: {list(names)})")
    pts = np.empty((arr.shape[0], 4), dtype=np.float32)
    for i, c in enumerate(("x", "y", "z")):
        pts[:, i] = cloud_field(arr, c)
    has_i = intensity_field in names
    pts[:, 3] = cloud_field(arr, intensity_field) if has_i else 0.0
    n_bad = 0
    if not np.isfinite(pts).all():  # dense, finite clouds (the usual case) stop at this one cheap pass
        finite = np.isfinite(pts[:, 0]) & np.isfinite(pts[:, 1]) & np.isfinite(pts[:, 2])
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            pts = pts[finite]
        if not np.isfinite(pts[:, 3]).all():
            pts[:, 3] = np.nan_to_num(pts[:, 3], nan=0.0, posinf=0.0, neginf=0.0)
    if negate_y:
        pts[:, 1] = -pts[:, 1]
    return CloudXYZI(points=pts, num_input=int(arr.shape[0]), num_nonfinite=n_bad, has_intensity=has_i)


def array_to_pointcloud2(arr: np.ndarray, header: Any = None, msg_type: Any = None, field_type: Any = None) -> Any:
    """Encode a structured array (one record per point, little-endian) as an unorganised PointCloud2."""
    arr = np.asarray(arr)
    if arr.dtype.names is None:
        raise ConversionError("array_to_pointcloud2 needs a structured array")
    if msg_type is None or field_type is None:
        raise ConversionError("array_to_pointcloud2 needs msg_type and field_type (PointCloud2, PointField)")
    fields = []
    for name in arr.dtype.names:
        fdt, off = arr.dtype.fields[name][:2]
        base, count = (fdt.base, int(np.prod(fdt.shape))) if fdt.shape else (fdt, 1)
        key = base.newbyteorder("<") if base.itemsize > 1 else base
        if key not in _DTYPE_TO_POINTFIELD:
            raise ConversionError(f"field {name!r} has dtype {base} with no PointField datatype")
        if base.byteorder == ">":
            raise ConversionError(f"field {name!r} is big-endian; convert to little-endian first")
        fields.append(field_type(name=name, offset=int(off), datatype=_DTYPE_TO_POINTFIELD[key], count=count))
    msg = msg_type()
    if header is not None:
        msg.header = header
    msg.height, msg.width = 1, int(arr.shape[0])
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = int(arr.dtype.itemsize)
    msg.row_step = int(arr.dtype.itemsize * arr.shape[0])
    msg.is_dense = True
    msg.data = array.array("B", np.ascontiguousarray(arr).tobytes())
    return msg


#: Layout of the ``ood/points`` output cloud.
SCORED_POINT_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("label", "<i4"), ("ood_score", "<f4")]
)


def scored_points_to_pointcloud2(points: np.ndarray, labels: np.ndarray, scores: np.ndarray, header: Any = None,
                                 msg_type: Any = None, field_type: Any = None) -> Any:
    """Build the ``ood/points`` cloud (x, y, z, intensity float32; label int32; ood_score float32)."""
    points = np.asarray(points)
    n = points.shape[0]
    if points.ndim != 2 or points.shape[1] < 3 or len(labels) != n or len(scores) != n:
        raise ConversionError(f"points {points.shape}, labels {len(labels)}, scores {len(scores)} do not match")
    rec = np.zeros(n, dtype=SCORED_POINT_DTYPE)
    rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
    if points.shape[1] > 3:
        rec["intensity"] = points[:, 3]
    rec["label"] = labels
    rec["ood_score"] = scores
    return array_to_pointcloud2(rec, header, msg_type, field_type)


# --------------------------------------------------------------------------- camera info


def camera_info_to_calibration(msg: Any, T_cam_lidar: np.ndarray | None = None) -> Calibration:
    """Intrinsics (``K``, width, height) of a sensor_msgs/CameraInfo as a :class:`Calibration`.

    Distortion is not applied (the nodes work on the image as published: use a rectified
    stream for strongly distorted lenses). Binning (``binning_x/y`` > 1) divides the focal length
    and principal point, as image_geometry does.
    """
    k = np.asarray(msg.k, dtype=np.float64)
    if k.size != 9:
        raise ConversionError(f"CameraInfo.k must have 9 values, has {k.size}")
    k = k.reshape(3, 3)
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise ConversionError(f"CameraInfo size must be positive, got {width}x{height}")
    if not np.all(np.isfinite(k)):
        bad = [f"{n}={k[i, j]}" for n, (i, j) in zip(("fx", "skew", "cx", "fy", "cy"), ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2)), strict=True)
               if not np.isfinite(k[i, j])] or [f"k={k.ravel().tolist()}"]
        raise ConversionError(f"CameraInfo.k is not finite: {', '.join(bad)}")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ConversionError(f"CameraInfo.k has no valid focal lengths: fx={k[0, 0]}, fy={k[1, 1]}")
    bx, by = max(int(getattr(msg, "binning_x", 0)), 1), max(int(getattr(msg, "binning_y", 0)), 1)
    if bx > 1 or by > 1:
        k = k.copy()
        k[0] /= bx
        k[1] /= by
        width, height = width // bx, height // by
    try:
        return Calibration(k, width, height, np.eye(4) if T_cam_lidar is None else T_cam_lidar)
    except ValueError as exc:
        raise ConversionError(f"CameraInfo: {exc}") from None


def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time -> seconds as float."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9
