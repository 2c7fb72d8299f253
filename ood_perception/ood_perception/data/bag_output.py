"""The replay output bag: the nodes' output topics, with the input stamps, as a rosbag2 directory.

``DIR/output/`` holds ``metadata.yaml`` and the storage file (MCAP by default), so ``ros2 bag
info``/``ros2 bag play``, rosbags' ``AnyReader`` and Foxglove open it like any recording. The
extrinsics replay used go on ``/tf_static`` (LiDAR -> camera optical, the ROS convention), so
``/ood/points`` (LiDAR frame) and ``/ood/mask`` (camera frame) line up in a viewer.

Messages are built with rosbags' type store (kilted's standard types plus
``ood_perception_msgs`` registered from its ``.msg`` text), so no ROS installation is needed to
write them; rosbags' CDR bytes equal rclpy's for these types. The bag is written in a temporary
directory next to the target and renamed into place when complete: ``DIR/output`` is either whole
or absent (an earlier one is replaced only then).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg

from ood_perception.atomic import replace_dir
from ood_perception.codec.conversions import SCORED_POINT_DTYPE
from ood_perception.codec.tf import matrix_to_translation_quaternion
from ood_perception.data.bag_reader import typestore_for
from ood_perception.data.mcap_chunks import add_chunk_crcs
from ood_perception.geometry import region_in_camera

#: The message types of ood_perception_msgs, in dependency order.
CUSTOM_MSGS = ("OodRegion", "OodAlert", "Recognition")

#: Output topics (absolute, as recorded from nodes in the root namespace).
DEFAULT_OUTPUT_TOPICS = {
    "mask": "/ood/mask",
    "score": "/ood/score",
    "points": "/ood/points",
    "alerts": "/ood/alerts",
    "recognition": "/recognition/result",
}

#: The QoS tf2_ros' StaticTransformBroadcaster offers (``StaticBroadcasterQoS``: reliable, transient
#: local, keep last 1): recorded with ``/tf_static`` so that ``ros2 bag play`` republishes it latched
#: for late subscribers. Infinite durations as rmw's ``RMW_DURATION_INFINITE`` (metadata version 9).
_INF = QosTime(sec=9223372036, nsec=854775807)
TF_STATIC_QOS = Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                    durability=QosDurability.TRANSIENT_LOCAL, deadline=_INF, lifespan=_INF,
                    liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_INF,
                    avoid_ros_namespace_conventions=False)

_POINTFIELD = {"<f4": 7, "<i4": 5, "<u4": 6, "<u2": 4, "<i2": 3, "|u1": 2, "|i1": 1, "<f8": 8}


def msg_dirs() -> list[Path]:
    """Where the ``ood_perception_msgs/msg/*.msg`` files may be, most specific first."""
    here = Path(__file__).resolve()
    dirs = [Path(p) / "share/ood_perception_msgs/msg" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(sys.prefix) / "share/ood_perception_msgs/msg")
    dirs.append(here.parents[3] / "ood_perception_msgs/msg")  # a source checkout
    return dirs


def output_typestore(distro: str = "kilted") -> Any:
    """A rosbags type store with the distro's standard types and ood_perception_msgs.

    Raises:
        FileNotFoundError: the .msg files are nowhere to be found (lists where it looked).
    """


    store = typestore_for(distro)
    for d in msg_dirs():
        if all((d / f"{name}.msg").is_file() for name in CUSTOM_MSGS):
            for name in CUSTOM_MSGS:
                store.register(get_types_from_msg((d / f"{name}.msg").read_text(), f"ood_perception_msgs/msg/{name}"))
            return store
    looked = ", ".join(str(d) for d in msg_dirs())
    raise FileNotFoundError(f"ood_perception_msgs .msg files not found (looked in {looked})")


def _time(store: Any, stamp_ns: int) -> Any:
    return store.types["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9))


class OutputBag:
    """Writer of the output rosbag2 directory; use as a context manager or call :meth:`close`.

    Args:
        path: the bag directory to create, e.g. ``DIR/output`` (an existing one is replaced only
            when the new bag is complete).
        topics: output topic names (defaults: :data:`DEFAULT_OUTPUT_TOPICS`).
        storage: ``mcap`` (default) or ``sqlite3``.
    """

    def __init__(self, path: str | Path, topics: dict[str, str] | None = None, distro: str = "kilted",
                 storage: str = "mcap") -> None:

        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f"output bag storage must be mcap or sqlite3, got {storage!r}")
        self.path = Path(path)
        if self.path.suffix in (".mcap", ".db3"):
            raise ValueError(f"output bag {self.path}: give the bag directory (e.g. DIR/output), not a storage file")
        self.topics = {**DEFAULT_OUTPUT_TOPICS, **(topics or {})}
        self.store = output_typestore(distro)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self._bagdir = self._tmpdir / self.path.name
        self._writer = Writer(self._bagdir, version=9, storage_plugin=plugins[storage])
        self._writer.open()
        self._conns: dict[str, Any] = {}
        self.count = 0
        self._done = False

    def _conn(self, key: str, msgtype: str) -> Any:
        if key not in self._conns:
            self._conns[key] = self._writer.add_connection(self.topics[key], msgtype, typestore=self.store)
        return self._conns[key]

    def _write(self, key: str, msgtype: str, msg: Any, bag_time_ns: int) -> None:
        self._writer.write(self._conn(key, msgtype), int(bag_time_ns), self.store.serialize_cdr(msg, msgtype))
        self.count += 1

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        """A std_msgs/Header of this type store."""
        return self.store.types["std_msgs/msg/Header"](stamp=_time(self.store, stamp_ns), frame_id=frame_id)

    def image(self, arr: np.ndarray, encoding: str, header: Any) -> Any:
        """A sensor_msgs/Image (mono8 or 32FC1, little-endian, no padding) of ``arr``."""
        arr = np.ascontiguousarray(arr)
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        return self.store.types["sensor_msgs/msg/Image"](
            header=header, height=arr.shape[0], width=arr.shape[1], encoding=encoding, is_bigendian=0,
            step=arr.shape[1] * channels * arr.dtype.itemsize, data=np.frombuffer(arr.astype(arr.dtype.newbyteorder("<")).tobytes(), np.uint8),
        )

    def cloud(self, rec: np.ndarray, header: Any) -> Any:
        """An unorganised sensor_msgs/PointCloud2 of a structured little-endian array."""
        T = self.store.types
        fields = []
        for name in rec.dtype.names:
            fdt, off = rec.dtype.fields[name][:2]
            fields.append(T["sensor_msgs/msg/PointField"](name=name, offset=int(off), datatype=_POINTFIELD[fdt.str], count=1))
        return T["sensor_msgs/msg/PointCloud2"](
            header=header, height=1, width=len(rec), fields=fields, is_bigendian=False,
            point_step=rec.dtype.itemsize, row_step=rec.dtype.itemsize * len(rec),
            data=np.frombuffer(np.ascontiguousarray(rec).tobytes(), np.uint8), is_dense=True,
        )

    def alert(self, result: Any, header: Any, source: str, T_cam_lidar: np.ndarray | None = None) -> Any:
        """An ood_perception_msgs/OodAlert of a pipeline result, filled as the node's
        :func:`ood_perception.ros.messages.build_alert` does (3D geometry in the camera frame)."""

        T = self.store.types
        Point, Vec = T["geometry_msgs/msg/Point"], T["geometry_msgs/msg/Vector3"]
        regions = []
        for r in result.regions:
            c = s = np.zeros(3)
            if r.has_3d:
                c, s = region_in_camera(r, T_cam_lidar if T_cam_lidar is not None else np.eye(4))
            regions.append(T["ood_perception_msgs/msg/OodRegion"](
                has_3d=bool(r.has_3d), centroid=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])),
                size=Vec(x=float(s[0]), y=float(s[1]), z=float(s[2])),
                has_2d=bool(r.has_2d), x_min=int(r.x_min), y_min=int(r.y_min), width=int(r.width), height=int(r.height),
                score=float(r.score), max_score=float(r.max_score), num_points=int(r.num_points), num_pixels=int(r.num_pixels),
            ))
        score = float(result.frame_score)
        return T["ood_perception_msgs/msg/OodAlert"](
            header=header, source=source, modalities=list(result.modalities), level=int(result.decision.level),
            score=score if np.isfinite(score) else 0.0, threshold=float(result.threshold),
            anomalous_fraction=float(result.anomalous_fraction), regions=regions, description=str(result.decision.description),
        )

    def write_fusion(self, result: Any, stamp_ns: int, frame_id: str, bag_time_ns: int, lid_header: Any = None,
                     T_cam_lidar: np.ndarray | None = None, source: str = "fusion_segmentation") -> None:
        """Write mask and score with the header ``stamp_ns``/``frame_id``, the scored points with
        ``lid_header`` (any header-like object; None = no points) and the alert (prefer
        :meth:`write_frame`, which takes the node's own header decisions)."""
        lid = None
        if lid_header is not None:
            lid = (int(lid_header.stamp.sec) * 10**9 + int(lid_header.stamp.nanosec), str(lid_header.frame_id))
        self._write_outputs(result, stamp_ns, frame_id, bag_time_ns, lid, T_cam_lidar, source)

    def _write_outputs(self, result: Any, stamp_ns: int, frame_id: str, bag_time_ns: int,
                       lid: tuple[int, str] | None, T_cam_lidar: np.ndarray | None, source: str) -> None:
        hdr = self.header(stamp_ns, frame_id)
        if result.mask is not None:
            self._write("mask", "sensor_msgs/msg/Image", self.image(result.mask.astype(np.uint8), "mono8", hdr), bag_time_ns)
            self._write("score", "sensor_msgs/msg/Image", self.image(result.score.astype(np.float32), "32FC1", hdr), bag_time_ns)
            if lid is not None:
                rec = np.zeros(len(result.points), SCORED_POINT_DTYPE)
                if len(result.points):
                    rec["x"], rec["y"], rec["z"] = result.points[:, 0], result.points[:, 1], result.points[:, 2]
                    rec["intensity"] = result.points[:, 3]
                    rec["label"], rec["ood_score"] = result.point_labels, result.point_scores
                lhdr = self.header(*lid)
                self._write("points", "sensor_msgs/msg/PointCloud2", self.cloud(rec, lhdr), bag_time_ns)
        self._write("alerts", "ood_perception_msgs/msg/OodAlert", self.alert(result, hdr, source, T_cam_lidar), bag_time_ns)

    def write_frame(self, out: Any, bag_time_ns: int, source: str = "fusion_segmentation") -> None:
        """Write what the fusion node publishes for one
        :class:`~ood_perception.pipeline.frame_handler.FrameOutputs`, with the headers it decided
        (``out.header`` for mask, score and alert; ``out.points_header`` for the scored points)."""
        self._write_outputs(out.result, out.header.stamp_ns, out.header.frame_id, bag_time_ns,
                            None if out.points_header is None else (out.points_header.stamp_ns, out.points_header.frame_id),
                            out.T_cam_lidar, source)

    def write_message(self, key: str, msgtype: str, msg: Any, bag_time_ns: int) -> None:
        """Write any message of this type store on output topic ``key``."""
        self._write(key, msgtype, msg, bag_time_ns)

    def write_tf_static(self, T_cam_lidar: np.ndarray, camera_frame: str, lidar_frame: str, stamp_ns: int,
                        bag_time_ns: int | None = None) -> None:
        """Write ``/tf_static`` with one transform ``lidar_frame`` -> ``camera_frame`` holding the
        camera's pose in the LiDAR frame (the inverse of ``T_cam_lidar``), as tf2 expects."""
        T = self.store.types
        (x, y, z), (qx, qy, qz, qw) = matrix_to_translation_quaternion(np.linalg.inv(np.asarray(T_cam_lidar, float)))
        tf = T["geometry_msgs/msg/TransformStamped"](
            header=self.header(stamp_ns, lidar_frame), child_frame_id=camera_frame,
            transform=T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
                                                       rotation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))
        if "tf_static" not in self._conns:
            self._conns["tf_static"] = self._writer.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=self.store,
                                                                   offered_qos_profiles=[TF_STATIC_QOS])
        self._writer.write(self._conns["tf_static"], int(stamp_ns if bag_time_ns is None else bag_time_ns),
                           self.store.serialize_cdr(T["tf2_msgs/msg/TFMessage"](transforms=[tf]), "tf2_msgs/msg/TFMessage"))
        self.count += 1

    def close(self) -> Path:
        """Finish the bag and move it into place; returns the final path."""
        if self._done:
            return self.path
        self._writer.close()
        for storage in self._bagdir.glob("*.mcap"):
            add_chunk_crcs(storage)  # rosbags writes none; with them a damaged chunk is detected on reading
        replace_dir(self._bagdir, self.path)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._done = True
        return self.path

    def abort(self) -> None:
        """Drop everything written (nothing appears at :attr:`path`)."""
        if self._done:
            return
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001,S110 - the temp dir goes anyway
            pass
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._done = True

    def __enter__(self) -> OutputBag:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
