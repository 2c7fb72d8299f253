"""Test bags for the replay tests: small camera + LiDAR drives written directly with rosbags.

Independent of ``ood_perception.data`` on purpose, so the replay tests also cover field layouts
that our own writer never produces (ouster-like padded clouds, bgra8 images, namespaced topics,
bags without embedded message definitions).

The scene is simple and exact: a grey image with a bright red square (the "anomaly") in some
frames, per-pixel raw labels (40 = road, 150 = anomaly), and a LiDAR ring in front of the camera
whose points on the square carry the anomaly label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

W, H = 64, 32
FX = FY = 40.0
ROAD, ANOMALY = 40, 150


def _types(distro: str = "kilted"):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(getattr(Stores, f"ROS2_{distro.upper()}"))


def frame_arrays(i: int, anomaly: bool, square_label: int = ANOMALY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb uint8 [H,W,3], raw labels uint16 [H,W], points float32 [N,5] x,y,z,intensity,label).
    ``square_label``: the raw id of the red square (another id than ANOMALY: a decoy the model flags)."""
    rng = np.random.default_rng(i)
    rgb = np.full((H, W, 3), 90, np.uint8) + rng.integers(0, 10, (H, W, 3), dtype=np.uint8)
    labels = np.full((H, W), ROAD, np.uint16)
    if anomaly:
        x0 = 10 + (i % 5) * 6
        rgb[8:20, x0 : x0 + 12] = (230, 20, 20)
        labels[8:20, x0 : x0 + 12] = square_label
    # LiDAR frame = camera optical frame rotated: x forward, y left, z up.
    u = np.arange(0, W, 2, dtype=np.float32)
    v = np.arange(0, H, 2, dtype=np.float32)
    uu, vv = np.meshgrid(u, v)
    depth = 10.0
    xc = (uu - W / 2) / FX * depth
    yc = (vv - H / 2) / FY * depth
    pts = np.stack([np.full_like(xc, depth), -xc, -yc], -1).reshape(-1, 3)
    lab = labels[vv.astype(int), uu.astype(int)].reshape(-1).astype(np.float32)
    inten = np.where(lab == ANOMALY, 0.9, 0.3).astype(np.float32)
    return rgb, labels, np.column_stack([pts, inten, lab]).astype(np.float32)


T_CAM_LIDAR = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], np.float64)


def write_drive_bag(
    path: Path,
    storage: str = "mcap",
    frames: int = 6,
    encoding: str = "rgb8",
    layout: str = "plain",
    prefix: str = "",
    anomaly_frames: tuple[int, ...] = (2, 3, 4),
    distro: str = "kilted",
    labels: bool = True,
    rate_hz: float = 10.0,
    lidar_gap: tuple[int, ...] = (),
    decoy_frames: tuple[int, ...] = (),
    decoy_label: int = ROAD,
) -> Path:
    """Write a drive bag; returns its path. ``layout``: ``plain`` (x,y,z,intensity,label float32,
    point_step 20) or ``ouster`` (x,y,z + padding, intensity, t, reflectivity, ring, label;
    point_step 48). ``lidar_gap``: frames without a LiDAR message (a sensor drop-out). ``decoy_frames``:
    frames whose red square is labelled ``decoy_label`` (not an anomaly; see :func:`frame_arrays`)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = _types(distro)
    T = ts.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    Image, Info = T["sensor_msgs/msg/Image"], T["sensor_msgs/msg/CameraInfo"]
    PC2, PF = T["sensor_msgs/msg/PointCloud2"], T["sensor_msgs/msg/PointField"]
    RoI = T["sensor_msgs/msg/RegionOfInterest"]
    with Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as w:
        c_img = w.add_connection(f"{prefix}/camera/image", "sensor_msgs/msg/Image", typestore=ts)
        c_info = w.add_connection(f"{prefix}/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_pts = w.add_connection(f"{prefix}/lidar/points", "sensor_msgs/msg/PointCloud2", typestore=ts)
        c_lab = (
            w.add_connection(f"{prefix}/camera/labels", "sensor_msgs/msg/Image", typestore=ts) if labels else None
        )
        for i in range(frames):
            t_ns = 1_000_000_000 + int(i * 1e9 / rate_hz)
            stamp = Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9)
            rgb, lab, pts = frame_arrays(i, i in anomaly_frames or i in decoy_frames,
                                         decoy_label if i in decoy_frames else ANOMALY)
            if encoding == "rgb8":
                data, step = rgb.reshape(-1), W * 3
            elif encoding == "bgra8":
                bgra = np.concatenate([rgb[..., ::-1], np.full((H, W, 1), 255, np.uint8)], -1)
                data, step = bgra.reshape(-1), W * 4
            else:
                raise ValueError(encoding)
            hdr = Header(stamp=stamp, frame_id="camera")
            img = Image(header=hdr, height=H, width=W, encoding=encoding, is_bigendian=0, step=step, data=data)
            info = Info(
                header=hdr, height=H, width=W, distortion_model="plumb_bob", d=np.zeros(5),
                k=np.array([FX, 0, W / 2, 0, FY, H / 2, 0, 0, 1], float), r=np.eye(3).reshape(-1),
                p=np.array([FX, 0, W / 2, 0, 0, FY, H / 2, 0, 0, 0, 1, 0], float),
                binning_x=0, binning_y=0, roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
            )
            if layout == "plain":
                fields = [PF(name=n, offset=4 * k, datatype=7, count=1) for k, n in enumerate(["x", "y", "z", "intensity", "label"])]
                cloud = pts.tobytes()
                step_p = 20
            elif layout == "ouster":
                dt = np.dtype({
                    "names": ["x", "y", "z", "intensity", "t", "reflectivity", "ring", "label"],
                    "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u2", "<u2", "<f4"],
                    "offsets": [0, 4, 8, 16, 20, 24, 26, 32], "itemsize": 48,
                })
                arr = np.zeros(len(pts), dt)
                for k, n in enumerate(["x", "y", "z", "intensity"]):
                    arr[n] = pts[:, k]
                arr["label"] = pts[:, 4]
                arr["ring"] = np.arange(len(pts)) % 16
                fields = [
                    PF(name="x", offset=0, datatype=7, count=1), PF(name="y", offset=4, datatype=7, count=1),
                    PF(name="z", offset=8, datatype=7, count=1), PF(name="intensity", offset=16, datatype=7, count=1),
                    PF(name="t", offset=20, datatype=6, count=1), PF(name="reflectivity", offset=24, datatype=4, count=1),
                    PF(name="ring", offset=26, datatype=4, count=1), PF(name="label", offset=32, datatype=7, count=1),
                ]
                cloud = arr.tobytes()
                step_p = 48
            else:
                raise ValueError(layout)
            n = len(pts)
            pc = PC2(
                header=Header(stamp=stamp, frame_id="lidar"), height=1, width=n, fields=fields, is_bigendian=False,
                point_step=step_p, row_step=step_p * n, data=np.frombuffer(cloud, np.uint8), is_dense=True,
            )
            w.write(c_info, t_ns, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            w.write(c_img, t_ns + 1000, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
            if i not in lidar_gap:
                w.write(c_pts, t_ns + 2000, ts.serialize_cdr(pc, "sensor_msgs/msg/PointCloud2"))
            if c_lab is not None:
                limg = Image(header=hdr, height=H, width=W, encoding="mono16", is_bigendian=0, step=W * 2,
                             data=np.frombuffer(lab.astype("<u2").tobytes(), np.uint8))
                w.write(c_lab, t_ns + 3000, ts.serialize_cdr(limg, "sensor_msgs/msg/Image"))
    return path


def storage_file(bag: Path) -> Path:
    """The single .mcap/.db3 file of a bag directory."""
    (f,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    return f


def truncate_bag(bag: Path, fraction: float = 0.5) -> Path:
    """Cut the bag's storage file to ``fraction`` of its size (a copy cut short)."""
    f = storage_file(bag)
    size = f.stat().st_size
    with f.open("r+b") as fh:
        fh.truncate(int(size * fraction))
    return bag
