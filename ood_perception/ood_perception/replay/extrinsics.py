"""Which LiDAR -> camera extrinsics a replay uses: the bag's ``/tf_static`` by default.

The ROS convention for a rig's extrinsics is ``/tf_static`` (tf2_msgs/TFMessage), which recorded
bags, ``ood-perception synth --bag`` and the carla-ros-bridge carry. The fusion node itself takes
them from its parameters (``lidar_to_camera.*``, default: camera at the LiDAR origin), so replay
resolves them per bag:

* ``auto`` (default): the transform from the cloud's frame to the image's frame through the bag's
  ``/tf_static`` tree (chains such as lidar -> base_link -> camera are followed); when the bag has
  none, the settings' matrix (params file, else the node's default).
* ``fixed``: always the settings' matrix (``--calib``, or ``--extrinsics params``: what the node
  does live); it is still compared with ``/tf_static`` and a difference reported.

The choice lands in ``metrics.json`` (``bags[].extrinsics``: source, frames, matrix, and the check
against ``/tf_static``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from ood_perception.codec.tf import StaticTransforms, frame_name
from ood_perception.data.bag_reader import BagReadError, BagSource

#: The extrinsics in use "agree" with the bag's /tf_static within these bounds.
TF_TOLERANCE_M = 1e-3
TF_TOLERANCE_DEG = 0.05
#: /tf_static messages read at most (static transforms are latched and come first; a recorder may
#: repeat them, there is no reason to scan a long recording).
MAX_TF_STATIC_MESSAGES = 64
MODES = ("auto", "fixed")


def read_tf_static(src: BagSource) -> StaticTransforms | None:
    """The bag's ``/tf_static`` tree, or None when the bag has no such topic.

    Raises:
        ValueError: a malformed transform (names its frames).
    """
    topic = src.resolve("/tf_static", required=False)
    if topic is None:
        return None
    tree = StaticTransforms()
    try:
        for k, m in enumerate(src.messages([topic])):
            if k >= MAX_TF_STATIC_MESSAGES:
                break
            tree.add(m.msg)
    except BagReadError:  # a damaged bag: what came before the damage still counts
        pass
    return tree


def compare(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation [m], rotation [deg]) between two rigid transforms."""
    diff = np.asarray(T_a, float) @ np.linalg.inv(np.asarray(T_b, float))
    return float(np.linalg.norm(diff[:3, 3])), float(np.degrees(Rotation.from_matrix(diff[:3, :3]).magnitude()))


def sensor_frames(src: BagSource, image_topic: str, points_topic: str) -> tuple[str, str]:
    """(camera frame id, LiDAR frame id) of the first image and cloud ('' when there is none)."""
    frames = []
    for topic in (image_topic, points_topic):
        m = src.first_message(topic)
        frames.append(frame_name(m.msg.header.frame_id) if m is not None else "")
    return frames[0], frames[1]


def resolve_extrinsics(src: BagSource, image_topic: str, points_topic: str, T_settings: np.ndarray,
                       mode: str = "auto", settings_source: str = "node default") -> tuple[np.ndarray, dict[str, Any]]:
    """The T_cam_lidar to replay ``src`` with, and its record for ``metrics.json``.

    Args:
        T_settings: the settings' matrix (params file, ``--calib`` or the node's default).
        mode: ``auto`` or ``fixed`` (see the module docstring).
        settings_source: where ``T_settings`` came from, for the record.

    Returns:
        (4x4, ``{"source", "frames", "T_cam_lidar", "status", ...}``) with ``status`` the check of the
        matrix used against ``/tf_static``: ``agrees`` / ``differs`` (with ``translation_m`` and
        ``rotation_deg``) / ``absent`` (no transform between the two frames) / ``unreadable``.
    """
    if mode not in MODES:
        raise ValueError(f"extrinsics mode must be one of {', '.join(MODES)}, got {mode!r}")
    T_settings = np.asarray(T_settings, float)
    cam, lid = sensor_frames(src, image_topic, points_topic)
    record: dict[str, Any] = {"frames": f"{lid} -> {cam}", "lidar_frame": lid, "camera_frame": cam}
    T_tf = None
    try:
        tree = read_tf_static(src)
        if tree is not None and cam and lid:
            T_tf = tree.lookup(cam, lid)
    except ValueError as exc:
        record["tf_static_error"] = str(exc)
    if mode == "auto" and T_tf is not None:
        T, record["source"] = T_tf, "/tf_static"
    else:
        T, record["source"] = T_settings, settings_source
    record["T_cam_lidar"] = [[round(float(v), 9) for v in row] for row in T]
    if T_tf is None:
        record["status"] = "unreadable" if "tf_static_error" in record else "absent"
    else:
        dist, angle = compare(T_tf, T)
        ok = dist <= TF_TOLERANCE_M and angle <= TF_TOLERANCE_DEG
        record.update(status="agrees" if ok else "differs", translation_m=round(dist, 6), rotation_deg=round(angle, 4))
    return T, record
