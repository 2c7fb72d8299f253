"""Sensor messages -> the frame processor's inputs, exactly as the fusion node decodes them.

Used by the fusion node's subscription callbacks and by rosbag replay (which hands rosbags'
deserialised messages to the same functions), so both accept, reject and note the same inputs.
Duck-typed like :mod:`ood_perception.codec.conversions`: no rclpy import.
"""

from __future__ import annotations

from typing import Any

from ood_perception.codec import conversions as conv
from ood_perception.geometry import Calibration
from ood_perception.pipeline.frame_handler import CameraInput, FrameHeader, FrameSettings, LidarInput, Note


def decode_camera(msg: Any, source: Any = None) -> CameraInput:
    """A sensor_msgs/Image as RGB uint8 with its header. Raises ConversionError on bad input."""
    return CameraInput(FrameHeader.of(msg.header), conv.image_to_rgb8(msg), source)


def decode_lidar(msg: Any, settings: FrameSettings, source: Any = None) -> tuple[LidarInput, list[Note]]:
    """A sensor_msgs/PointCloud2 as finite x, y, z, intensity points with its header, plus notes
    (NaN/Inf points dropped, no finite point left).

    Raises:
        ConversionError: malformed cloud, or more than ``settings.max_points`` points (checked
            before decoding).
    """
    n = int(msg.width) * int(msg.height)
    if n > settings.max_points:
        raise conv.ConversionError(f"cloud has {n} points, more than max_points={settings.max_points}")
    cloud = conv.pointcloud2_to_xyzi(msg, settings.intensity_field, settings.negate_lidar_y)
    notes = []
    if cloud.num_nonfinite:
        notes.append(Note("nonfinite_points", f"{cloud.num_nonfinite} of {cloud.num_input} points NaN/Inf, dropped"))
    if cloud.points.shape[0] == 0:
        notes.append(Note("empty_cloud", "point cloud has no finite points"))
    return LidarInput(FrameHeader.of(msg.header), cloud.points, source), notes


def decode_camera_info(msg: Any) -> Calibration:
    """A sensor_msgs/CameraInfo's intrinsics. Raises ConversionError on bad input."""
    return conv.camera_info_to_calibration(msg)
