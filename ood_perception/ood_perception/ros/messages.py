"""Pipeline results -> ROS messages: OodAlert (+ OodRegion) and the RViz MarkerArray."""

from __future__ import annotations

from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from ood_perception.codec import conversions as conv
from ood_perception.geometry import region_in_camera
from ood_perception.pipeline.regions import Region
from ood_perception_msgs.msg import OodAlert, OodRegion

#: RGBA colour of markers per alert level (CLEAR, WARNING, ALERT, DEGRADED).
LEVEL_COLORS = {0: (0.2, 0.8, 0.2, 0.5), 1: (1.0, 0.8, 0.0, 0.6), 2: (1.0, 0.1, 0.1, 0.7), 3: (0.5, 0.5, 0.5, 0.5)}


def build_alert(
    header: Any,
    source: str,
    level: int,
    description: str,
    modalities: list[str],
    score: float,
    threshold: float,
    fraction: float,
    regions: list[Region],
    T_cam_lidar: np.ndarray | None = None,
) -> Any:
    """An ``ood_perception_msgs/OodAlert``; 3D region geometry is given in ``header.frame_id``
    (the camera frame; moved there with ``T_cam_lidar``)."""

    msg = OodAlert()
    msg.header = header
    msg.source = source
    msg.modalities = list(modalities)
    msg.level = int(level)
    msg.score = float(score) if np.isfinite(score) else 0.0
    msg.threshold = float(threshold)
    msg.anomalous_fraction = float(fraction)
    msg.description = description
    out = []
    for r in regions:
        m = OodRegion()
        m.has_2d, m.has_3d = bool(r.has_2d), bool(r.has_3d)
        m.x_min, m.y_min, m.width, m.height = int(r.x_min), int(r.y_min), int(r.width), int(r.height)
        if r.has_3d:
            c, s = region_in_camera(r, T_cam_lidar if T_cam_lidar is not None else np.eye(4))
            m.centroid.x, m.centroid.y, m.centroid.z = (float(v) for v in c)
            m.size.x, m.size.y, m.size.z = (float(v) for v in s)
        m.score, m.max_score = float(r.score), float(r.max_score)
        m.num_points, m.num_pixels = int(r.num_points), int(r.num_pixels)
        out.append(m)
    msg.regions = out
    return msg


def build_markers(alert: Any, lifetime_s: float = 0.5) -> Any:
    """MarkerArray for RViz: a DELETEALL, then one translucent cube per 3D region of ``alert``,
    coloured by the alert level, and a text label with the level and score."""

    arr = MarkerArray()
    clear = Marker()
    clear.header = alert.header
    clear.action = Marker.DELETEALL
    arr.markers.append(clear)
    color = LEVEL_COLORS.get(int(alert.level), LEVEL_COLORS[3])
    sec = int(lifetime_s)
    for i, r in enumerate(alert.regions):
        if not r.has_3d:
            continue
        m = Marker()
        m.header = alert.header
        m.ns, m.id, m.type, m.action = "ood_regions", i, Marker.CUBE, Marker.ADD
        m.pose.position = r.centroid
        m.pose.orientation.w = 1.0
        m.scale.x, m.scale.y, m.scale.z = (max(float(v), 0.1) for v in (r.size.x, r.size.y, r.size.z))
        m.color.r, m.color.g, m.color.b, m.color.a = color
        m.lifetime.sec, m.lifetime.nanosec = sec, int((lifetime_s - sec) * 1e9)
        arr.markers.append(m)
        t = Marker()
        t.header = alert.header
        t.ns, t.id, t.type, t.action = "ood_labels", i, Marker.TEXT_VIEW_FACING, Marker.ADD
        t.pose.position.x, t.pose.position.y = r.centroid.x, r.centroid.y - m.scale.y
        t.pose.position.z = r.centroid.z
        t.pose.orientation.w = 1.0
        t.scale.z = 0.5
        t.color.r, t.color.g, t.color.b, t.color.a = 1.0, 1.0, 1.0, 1.0
        t.text = f"OOD {r.max_score:.2f}"
        t.lifetime = m.lifetime
        arr.markers.append(t)
    return arr


def header_msg(header: Any) -> Any:
    """The rclpy ``std_msgs/Header`` of a :class:`~ood_perception.pipeline.frame_handler.FrameHeader` (imports rclpy's message types)."""

    return Header(stamp=Time(sec=header.sec, nanosec=header.nanosec), frame_id=header.frame_id)


def image_msg(arr: np.ndarray, encoding: str, header: Any = None) -> Any:
    """An rclpy ``sensor_msgs/Image`` of ``arr`` (:func:`ood_perception.codec.conversions.numpy_to_image`)."""

    return conv.numpy_to_image(arr, encoding, header, msg_type=Image)


def cloud_msg(arr: np.ndarray, header: Any = None) -> Any:
    """An rclpy ``sensor_msgs/PointCloud2`` of a structured array (:func:`~ood_perception.codec.conversions.array_to_pointcloud2`)."""

    return conv.array_to_pointcloud2(arr, header, msg_type=PointCloud2, field_type=PointField)


def scored_cloud_msg(points: np.ndarray, labels: np.ndarray, scores: np.ndarray, header: Any = None) -> Any:
    """The rclpy ``ood/points`` cloud (:func:`~ood_perception.codec.conversions.scored_points_to_pointcloud2`)."""

    return conv.scored_points_to_pointcloud2(points, labels, scores, header, msg_type=PointCloud2, field_type=PointField)
