"""The live path for comparison with replay: the real fusion node fed a bag over rclpy (DDS).

:func:`run_live` starts ``FusionSegmentationNode`` in-process, publishes the bag's camera,
CameraInfo and LiDAR messages (their recorded CDR bytes, unchanged) in bag-time order and records
what the node publishes. Pacing: after a message that completes a frame (known from a replay of
the same bag), it waits for that frame's alert, so the node's latest-only worker drops nothing
and live and replay see the same frames.

Clock: with ``sim_time`` (the default) the node runs with ``use_sim_time`` and this feeder
publishes ``/clock`` = the bag time of each message before the message (and waits until the node's
clock shows it), as ``ros2 bag play --clock`` does. The node's stale-sensor logic reads arrival
times from its ROS clock, so it then sees exactly replay's arrival times and both give identical
masks and alerts whatever the machine's load. Without sim time the node's clock is wall time;
the start-up grace counts from the first message in both, so they still agree unless a frame
takes longer than ``stale_timeout`` of wall time.

This module imports rclpy; replay itself does not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ood_perception.codec import conversions as conv
from ood_perception.data.bag_reader import BagSource
from ood_perception.replay.engine import DEFAULT_INPUT_TOPICS
from ood_perception_msgs.msg import OodAlert


@dataclass
class LiveRecord:
    """What the node published, per camera stamp (ns): mask (uint8), score (float32), alert fields."""

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    alerts: dict[int, tuple[int, str, int]] = field(default_factory=dict)  # level, description, regions
    #: stamps (ns) of the node's timer alerts ("no input"), which belong to no frame and replay has not
    timer_alerts: list[int] = field(default_factory=list)
    raw: list[tuple[str, str, int, bytes]] = field(default_factory=list)  # topic, type, time, CDR
    wall_s: float = 0.0


def _ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def run_live(bag: str | Path, frame_stamps: dict[int, int], params: dict[str, Any], backend: Any = None,
             topics: dict[str, str] | None = None, timeout_s: float = 30.0, sim_time: bool = True) -> LiveRecord:
    """Feed ``bag`` to a live fusion node and record its outputs.

    Args:
        frame_stamps: bag time (ns) of the message that completes a frame -> that frame's stamp
            (ns), from a replay of the same bag with the same parameters.
        params: node parameters (ROS names, e.g. ``{"stale_timeout": 30.0}``).
        backend: a loaded backend to inject (None: the node loads ``model_dir``).
        sim_time: drive the node's clock with ``/clock`` = bag time (see the module docstring).
    """
    import rclpy  # lazy: rclpy is heavy to import and only this path needs it
    from rclpy.executors import (  # lazy: rclpy is heavy to import and only this path needs it
        SingleThreadedExecutor,
    )
    from rclpy.parameter import Parameter  # lazy: rclpy is heavy to import and only this path needs it
    from rclpy.qos import (  # lazy: rclpy is heavy to import and only this path needs it
        QoSProfile,
        ReliabilityPolicy,
    )
    from rclpy.serialization import (  # lazy: rclpy is heavy to import and only this path needs it
        serialize_message,
    )

    from ood_perception.ros.fusion_node import (  # lazy: rclpy is heavy to import and only this path needs it
        NO_INPUT_DESCRIPTION,
        FusionSegmentationNode,
    )

    names = {**DEFAULT_INPUT_TOPICS, **(topics or {})}
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    rec = LiveRecord()
    try:
        overrides = [Parameter(k, value=v) for k, v in {"autostart": True, **params}.items()]
        if sim_time:
            overrides.append(Parameter("use_sim_time", value=True))
        node = FusionSegmentationNode("fusion_segmentation", context=ctx, backend=backend, parameter_overrides=overrides)
        if node._state != "active":
            raise RuntimeError(f"fusion node did not activate: {node._model_error or 'see its log'}")
        io = rclpy.create_node("replay_live_io", context=ctx)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {
            "image": io.create_publisher(Image, "camera/image", qos),
            "camera_info": io.create_publisher(CameraInfo, "camera/camera_info", qos),
            "points": io.create_publisher(PointCloud2, "lidar/points", qos),
        }
        clock_pub = io.create_publisher(Clock, "/clock", qos) if sim_time else None
        types = {"mask": Image, "score": Image, "points": PointCloud2, "alerts": OodAlert}
        typenames = {"mask": "sensor_msgs/msg/Image", "score": "sensor_msgs/msg/Image",
                     "points": "sensor_msgs/msg/PointCloud2", "alerts": "ood_perception_msgs/msg/OodAlert"}

        def recorder(key: str):
            def cb(msg: Any) -> None:
                t = time.monotonic_ns()
                rec.raw.append((f"/ood/{key}", typenames[key], t, serialize_message(msg)))
                if key == "mask":
                    rec.masks[_ns(msg.header.stamp)] = conv.image_to_numpy(msg).copy()
                elif key == "score":
                    rec.scores[_ns(msg.header.stamp)] = conv.image_to_numpy(msg).copy()
                elif key == "alerts" and msg.description == NO_INPUT_DESCRIPTION:
                    rec.timer_alerts.append(_ns(msg.header.stamp))
                elif key == "alerts":
                    rec.alerts[_ns(msg.header.stamp)] = (int(msg.level), msg.description, len(msg.regions))
            return cb

        for key, typ in types.items():
            io.create_subscription(typ, f"ood/{key}", recorder(key), qos)
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(io)
        ex.add_node(node)

        def spin_until(pred, limit: float) -> bool:
            end = time.monotonic() + limit
            while time.monotonic() < end:
                if pred():
                    return True
                ex.spin_once(timeout_sec=0.02)
            return pred()

        waited = [*pubs.values(), *([clock_pub] if clock_pub is not None else [])]
        if not spin_until(lambda: all(p.get_subscription_count() > 0 for p in waited), 15.0):
            raise RuntimeError("the fusion node's subscriptions were not discovered within 15 s")
        t0 = time.perf_counter()
        with BagSource(bag) as src:
            resolved = {k: src.resolve(names[k]) for k in ("image", "camera_info", "points")}
            kinds = {v: k for k, v in resolved.items()}
            pending: tuple[int, int] | None = None  # (bag time, frame stamp) whose alert is awaited

            def await_alert(stamp: int) -> None:
                if not spin_until(lambda s=stamp: s in rec.alerts, timeout_s):
                    raise RuntimeError(f"no alert from the live node for frame stamp {stamp} within {timeout_s} s")

            for m in src.messages(kinds):
                # camera, CameraInfo and LiDAR often share a bag time: the frame is awaited only after
                # every message of that bag time went out (replay processed it at one of them)
                if pending is not None and m.timestamp_ns != pending[0]:
                    await_alert(pending[1])
                    pending = None
                if clock_pub is not None:
                    t = m.timestamp_ns
                    clock_pub.publish(Clock(clock=_time_msg(t)))
                    if not spin_until(lambda t=t: node.get_clock().now().nanoseconds == t, timeout_s):
                        raise RuntimeError(f"the node's sim clock did not reach bag time {t} ns within {timeout_s} s")
                msg = _to_rclpy(m.msg, kinds[m.topic])
                pubs[kinds[m.topic]].publish(msg)
                ex.spin_once(timeout_sec=0.0)
                stamp = frame_stamps.get(m.timestamp_ns)
                if stamp is not None:
                    pending = (m.timestamp_ns, stamp)
            if pending is not None:
                await_alert(pending[1])
        rec.wall_s = time.perf_counter() - t0
        spin_until(lambda: False, 0.2)
        ex.shutdown()
        node.destroy_node()
        io.destroy_node()
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)
    return rec


def _time_msg(ns: int) -> Any:

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def _to_rclpy(msg: Any, kind: str) -> Any:
    """A rosbags message of the input types as the rclpy message (field by field, arrays as bytes)."""

    hdr = Header(stamp=Time(sec=int(msg.header.stamp.sec), nanosec=int(msg.header.stamp.nanosec)), frame_id=msg.header.frame_id)
    if kind == "image":
        return Image(header=hdr, height=int(msg.height), width=int(msg.width), encoding=msg.encoding,
                     is_bigendian=int(msg.is_bigendian), step=int(msg.step), data=bytes(msg.data))
    if kind == "points":
        fields = [PointField(name=f.name, offset=int(f.offset), datatype=int(f.datatype), count=int(f.count)) for f in msg.fields]
        return PointCloud2(header=hdr, height=int(msg.height), width=int(msg.width), fields=fields,
                           is_bigendian=bool(msg.is_bigendian), point_step=int(msg.point_step), row_step=int(msg.row_step),
                           data=bytes(msg.data), is_dense=bool(msg.is_dense))
    out = CameraInfo(header=hdr, height=int(msg.height), width=int(msg.width), distortion_model=msg.distortion_model)
    out.d = [float(v) for v in msg.d]
    out.k = [float(v) for v in msg.k]
    out.r = [float(v) for v in msg.r]
    out.p = [float(v) for v in msg.p]
    return out
