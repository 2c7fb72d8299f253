"""rosbag2 writer for camera + LiDAR frames (sqlite3 or mcap), through rosbags' typestore.

Topics (relative names, as the nodes subscribe to them):

* ``camera/image`` sensor_msgs/Image rgb8, ``camera/camera_info`` sensor_msgs/CameraInfo (plumb_bob,
  D = 0, P = K [I | 0]), ``camera/labels`` sensor_msgs/Image mono16 of raw semantic ids;
* ``lidar/points`` sensor_msgs/PointCloud2 with x, y, z, intensity (float32 at 0/4/8/12) and
  label (uint32 at 16, raw: semantic | instance << 16), point_step 20;
* ``/tf_static`` (lidar -> camera optical) and ``/tf`` (map -> lidar from the frame pose).

With ``label_map``, the label space of the label topics (``dataset.yaml`` content: labels, learning
map, OOD ids) goes into ``metadata.yaml`` ``custom_data`` under
:data:`~ood_perception.data.bag_reader.LABEL_MAP_KEY`, so replay scores the labels with the right map
without being told (``ros2 bag`` keeps custom_data; a bare storage file has none).

Camera and LiDAR are written at their own rates (each at most the frame rate): a frame's camera
(LiDAR) messages go out when its stamp reaches the next camera (LiDAR) tick. The bag is written to
a temporary directory next to the target and renamed when complete. MCAP chunks carry CRC-32s
(:func:`~ood_perception.data.mcap_chunks.add_chunk_crcs`), so a damaged chunk is detected on reading.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores
from rosbags.typesys import get_typestore as _get

from ood_perception.atomic import replace_dir
from ood_perception.codec.tf import matrix_to_translation_quaternion
from ood_perception.data.bag_output import TF_STATIC_QOS
from ood_perception.data.bag_reader import LABEL_MAP_KEY
from ood_perception.data.config import DatasetConfig
from ood_perception.data.frame import Frame
from ood_perception.data.mcap_chunks import add_chunk_crcs

CAMERA_FRAME = "camera_optical"
LIDAR_FRAME = "lidar"
WORLD_FRAME = "map"


def get_typestore():
    """The newest ROS 2 typestore rosbags offers among Kilted, Jazzy and Humble."""

    for name in ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_HUMBLE"):
        store = getattr(Stores, name, None)
        if store is not None:
            return _get(store)
    raise RuntimeError("rosbags has no ROS 2 Humble/Jazzy/Kilted typestore; upgrade rosbags")


def label_map_text(config: DatasetConfig) -> str:
    """The label space of ``config`` as ``dataset.yaml`` text (no splits or generator record)."""
    d = config.to_dict()
    keep = ("labels", "color_map", "learning_map", "learning_map_inv", "ood_ids")
    return yaml.safe_dump({k: d[k] for k in keep}, sort_keys=False, default_flow_style=None, width=100)


class BagWriter:
    """Streams frames into a rosbag2 (use as a context manager; :meth:`close` renames it into place).

    Args:
        path: the bag directory to create (must not exist unless ``overwrite``).
        storage: ``sqlite3`` or ``mcap``.
        camera_rate, lidar_rate: Hz of the camera and LiDAR topics.
        overwrite: replace an existing bag at ``path``.
        start_ns: added to every stamp (header and bag time); ROS reads a zero stamp as unset, so
            a drive whose first frame is at t = 0 needs an offset for the nodes to accept it.
        label_map: label space of ``camera/labels`` and the clouds' ``label`` field, stored in
            the bag's metadata (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str], storage: str = "sqlite3", camera_rate: float = 10.0,
                 lidar_rate: float = 10.0, overwrite: bool = False, start_ns: int = 0,
                 label_map: DatasetConfig | None = None) -> None:

        plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
        if storage not in plugins:
            raise ValueError(f"bag storage must be 'sqlite3' or 'mcap', got {storage!r}")
        if camera_rate <= 0 or lidar_rate <= 0:
            raise ValueError(f"sensor rates must be positive, got camera {camera_rate}, lidar {lidar_rate}")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"bag already exists: {self.path} (pass overwrite)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self._tmp = self._tmpdir / self.path.name
        self.overwrite = overwrite
        if start_ns < 0:
            raise ValueError(f"start_ns must be >= 0, got {start_ns}")
        self.start_ns = int(start_ns)
        self.ts = get_typestore()
        self.periods = {"camera": 1.0 / camera_rate, "lidar": 1.0 / lidar_rate}
        self._next: dict[str, int | None] = {"camera": None, "lidar": None}
        self._writer = Writer(self._tmp, version=9, storage_plugin=plugins[storage])
        if label_map is not None:
            self._writer.set_custom_data(LABEL_MAP_KEY, label_map_text(label_map))
        self._writer.open()
        self._conns: dict[str, Any] = {}
        self._static_written = False
        self.counts: dict[str, int] = {}
        self._closed = False

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _conn(self, topic: str, msgtype: str):
        if topic not in self._conns:
            qos = [TF_STATIC_QOS] if topic == "/tf_static" else ()
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.ts, offered_qos_profiles=qos)
        return self._conns[topic]

    def _write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        conn = self._conn(topic, msg.__msgtype__)
        self._writer.write(conn, stamp_ns, self.ts.serialize_cdr(msg, msg.__msgtype__))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def _header(self, stamp_ns: int, frame_id: str):
        t = self.ts.types
        sec, nsec = divmod(stamp_ns, 1_000_000_000)
        return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=int(sec), nanosec=int(nsec)), frame_id=frame_id)

    def _transform(self, stamp_ns: int, parent: str, child: str, m: np.ndarray):
        """TransformStamped parent -> child holding ``m``, the pose of ``child`` in ``parent``."""
        t = self.ts.types
        (x, y, z), (qx, qy, qz, qw) = matrix_to_translation_quaternion(m)
        return t["geometry_msgs/msg/TransformStamped"](
            header=self._header(stamp_ns, parent), child_frame_id=child,
            transform=t["geometry_msgs/msg/Transform"](
                translation=t["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
                rotation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw)))

    def _due(self, sensor: str, stamp: float) -> bool:
        """True when ``stamp`` falls in a new period of the sensor's rate (tick = floor(stamp / period))."""
        tick = math.floor(stamp / self.periods[sensor] + 1e-6)
        if self._next[sensor] is not None and tick <= self._next[sensor]:
            return False
        self._next[sensor] = tick
        return True

    def write_frame(self, frame: Frame) -> None:
        """Write the messages of one frame that are due at its stamp (``frame.stamp`` is required)."""
        if frame.stamp is None:
            raise ValueError(f"frame {frame.sequence}/{frame.frame_id} has no stamp; bags need stamps")
        t = self.ts.types
        stamp_ns = int(round(frame.stamp * 1e9)) + self.start_ns
        calib = frame.calib
        if not self._static_written:
            tf = self._transform(stamp_ns, LIDAR_FRAME, CAMERA_FRAME, np.linalg.inv(calib.T_cam_lidar))
            self._write("/tf_static", t["tf2_msgs/msg/TFMessage"](transforms=[tf]), stamp_ns)
            self._static_written = True
        if frame.pose is not None:
            tf = self._transform(stamp_ns, WORLD_FRAME, LIDAR_FRAME, frame.pose)
            self._write("/tf", t["tf2_msgs/msg/TFMessage"](transforms=[tf]), stamp_ns)
        if frame.image is not None and self._due("camera", frame.stamp):
            h, w = frame.image.shape[:2]
            hdr = self._header(stamp_ns, CAMERA_FRAME)
            self._write("camera/image", t["sensor_msgs/msg/Image"](
                header=hdr, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                data=np.ascontiguousarray(frame.image).reshape(-1)), stamp_ns)
            k = calib.K
            p = np.hstack([k, np.zeros((3, 1))])
            self._write("camera/camera_info", t["sensor_msgs/msg/CameraInfo"](
                header=hdr, height=calib.height, width=calib.width, distortion_model="plumb_bob",
                d=np.zeros(5), k=k.reshape(-1).astype(np.float64), r=np.eye(3).reshape(-1), p=p.reshape(-1),
                binning_x=0, binning_y=0,
                roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)),
                stamp_ns)
            if frame.pixel_labels is not None:
                lab = np.ascontiguousarray(frame.pixel_labels.astype("<u2"))
                self._write("camera/labels", t["sensor_msgs/msg/Image"](
                    header=hdr, height=h, width=w, encoding="mono16", is_bigendian=0, step=w * 2,
                    data=lab.view(np.uint8).reshape(-1)), stamp_ns)
        if self._due("lidar", frame.stamp):
            n = frame.points.shape[0]
            rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("label", "<u4")])
            rec["x"], rec["y"], rec["z"], rec["intensity"] = frame.points.T
            if frame.point_labels is not None:
                rec["label"] = frame.point_labels
            field = t["sensor_msgs/msg/PointField"]
            fields = [field(name=nm, offset=off, datatype=dt, count=1)
                      for nm, off, dt in (("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("label", 16, 6))]
            self._write("lidar/points", t["sensor_msgs/msg/PointCloud2"](
                header=self._header(stamp_ns, LIDAR_FRAME), height=1, width=n, fields=fields, is_bigendian=False,
                point_step=20, row_step=20 * n, data=rec.view(np.uint8).reshape(-1), is_dense=True), stamp_ns)

    def close(self) -> Path:
        """Finish the bag and move it to ``path``."""
        if self._closed:
            return self.path
        self._writer.close()
        for f in self._tmp.glob("*.mcap"):  # rosbags writes no chunk CRCs; add them (damage is then detected)
            add_chunk_crcs(f)
        replace_dir(self._tmp, self.path)
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop the partial bag."""
        if self._closed:
            return
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the partial bag is deleted anyway
            pass
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._closed = True


def write_bag(path: str | os.PathLike[str], frames, storage: str = "sqlite3", camera_rate: float = 10.0,
              lidar_rate: float = 10.0, overwrite: bool = False, label_map: DatasetConfig | None = None) -> dict[str, int]:
    """Write an iterable of frames (one sequence, increasing stamps) as a rosbag2; returns message counts."""
    with BagWriter(path, storage, camera_rate, lidar_rate, overwrite, label_map=label_map) as bag:
        for frame in frames:
            bag.write_frame(frame)
    return dict(bag.counts)
