"""tf2_msgs/TFMessage <-> 4x4 matrices, and a small static transform tree (``/tf_static``).

``tf2_ros`` is not installable from the registries this project uses, so this is the part of it
replay needs: static transforms only, no time interpolation. Duck-typed like the rest of the codec
room (reads ``transforms[i].header.frame_id``, ``.child_frame_id``, ``.transform.translation`` and
``.transform.rotation``), so rclpy and rosbags messages both work.

ROS convention (REP 103 / tf2): a ``TransformStamped`` with parent ``header.frame_id`` = P and
``child_frame_id`` = C holds the pose of C in P, i.e. the matrix that maps coordinates in C to
coordinates in P. ``lookup(target, source)`` returns the matrix mapping ``source`` coordinates to
``target`` coordinates (tf2's ``lookupTransform(target, source)``), so the fusion node's extrinsics
``T_cam_lidar`` are ``lookup(camera_frame, lidar_frame)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation


def frame_name(frame_id: str) -> str:
    """A frame id without tf1's leading ``/`` (tf2 refuses it; old bags still carry it)."""
    return str(frame_id).lstrip("/")


def transform_to_matrix(transform: Any) -> np.ndarray:
    """``geometry_msgs/Transform`` (translation + unit quaternion) -> 4x4 float64.

    Raises:
        ValueError: a zero or non-finite quaternion or translation.
    """
    t, q = transform.translation, transform.rotation
    quat = np.array([q.x, q.y, q.z, q.w], float)
    xyz = np.array([t.x, t.y, t.z], float)
    if not (np.isfinite(quat).all() and np.isfinite(xyz).all()) or np.linalg.norm(quat) < 1e-9:
        raise ValueError(f"transform with a non-finite translation or a zero/non-finite quaternion: {xyz}, {quat}")
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(quat).as_matrix()  # scipy normalises the quaternion
    m[:3, 3] = xyz
    return m


def matrix_to_translation_quaternion(m: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """4x4 rigid transform -> ((x, y, z), (qx, qy, qz, qw)) for a ``geometry_msgs/Transform``."""
    m = np.asarray(m, float)
    if m.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {m.shape}")
    qx, qy, qz, qw = Rotation.from_matrix(m[:3, :3]).as_quat()
    return (float(m[0, 3]), float(m[1, 3]), float(m[2, 3])), (float(qx), float(qy), float(qz), float(qw))


class StaticTransforms:
    """The static transform tree of one or more ``TFMessage`` s; later transforms of the same
    (parent, child) pair replace earlier ones, as tf2's static buffer does."""

    def __init__(self, messages: Iterable[Any] = ()) -> None:
        self._edges: dict[tuple[str, str], np.ndarray] = {}  # (parent, child) -> pose of child in parent
        for msg in messages:
            self.add(msg)

    def add(self, message: Any) -> None:
        """Add the transforms of a ``tf2_msgs/TFMessage`` (a bad transform raises ValueError
        naming its frames)."""
        for tf in message.transforms:
            parent, child = frame_name(tf.header.frame_id), frame_name(tf.child_frame_id)
            try:
                m = transform_to_matrix(tf.transform)
            except ValueError as exc:
                raise ValueError(f"/tf_static {parent} -> {child}: {exc}") from None
            self._edges.pop((child, parent), None)  # one direction per pair: the latest wins
            self._edges[(parent, child)] = m

    @property
    def frames(self) -> set[str]:
        """Every frame named by a transform."""
        return {f for edge in self._edges for f in edge}

    def __len__(self) -> int:
        return len(self._edges)

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """The 4x4 mapping ``source`` coordinates to ``target`` coordinates through the tree (any
        chain of transforms, either direction); None when the two frames are not connected."""
        target, source = frame_name(target), frame_name(source)
        if target == source:
            return np.eye(4) if target in self.frames else None
        graph: dict[str, list[tuple[str, np.ndarray]]] = {}
        for (parent, child), m in self._edges.items():
            graph.setdefault(child, []).append((parent, m))  # child coords -> parent coords
            graph.setdefault(parent, []).append((child, np.linalg.inv(m)))
        # breadth-first from source; each entry: frame, matrix source -> frame
        seen = {source}
        queue: deque[tuple[str, np.ndarray]] = deque([(source, np.eye(4))])
        while queue:
            frame, to_frame = queue.popleft()
            for nxt, step in graph.get(frame, []):
                if nxt in seen:
                    continue
                m = step @ to_frame
                if nxt == target:
                    return m
                seen.add(nxt)
                queue.append((nxt, m))
        return None
