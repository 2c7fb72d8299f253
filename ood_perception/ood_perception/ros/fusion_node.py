"""``fusion_segmentation_node``: camera + LiDAR OOD segmentation as a ROS 2 lifecycle node.

Inputs (relative, remappable): ``camera/image``, ``camera/camera_info``, ``lidar/points``.
Outputs: ``ood/mask`` (mono8, 255 = anomalous, camera resolution, the camera's stamp and frame),
``ood/score`` (32FC1, higher = more anomalous), ``ood/points`` (x, y, z, intensity, label,
ood_score; the LiDAR's stamp and frame), ``ood/alerts`` (one OodAlert per processed frame, CLEAR
included), ``ood/markers`` (RViz), ``/diagnostics`` (1 Hz).

Lifecycle (the yolo_ros layout): parameters declared with descriptors in ``__init__``;
publishers and the diagnostics timer on configure; the model, the worker thread and the
subscriptions on activate; ``autostart:=true`` (or :func:`main`'s ``--autostart``) goes
straight to active.

Threading: subscription callbacks only convert the message and hand it to the
:class:`~ood_perception.pipeline.sync.ApproximateSync` (short lock, latest-only); inference
runs on a worker thread that waits on the synchroniser, so slow inference never blocks
callbacks and stale frames are dropped and counted, not queued. Every callback catches every
exception: bad input is counted per reason, logged (throttled) and shown on /diagnostics.

Why no message_filters / tf2_ros / cv_bridge / sensor_msgs_py: they are not installable from the
registries this project uses (see :mod:`ood_perception.pipeline.sync` and
:mod:`ood_perception.ros.conversions`). Extrinsics therefore come from parameters
(``lidar_to_camera.matrix`` or ``.xyz`` + ``.rpy``); a TF lookup would plug in at
:meth:`FusionSegmentationNode._extrinsics` where tf2_ros exists.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from typing import Any

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter

from ood_perception.geometry import transform_from_xyz_rpy
from ood_perception.pipeline.alerts import DEGRADED, LEVEL_NAMES, AlertConfig
from ood_perception.pipeline.fusion import FusionConfig, FusionFrame, FusionPipeline, spec_sha256
from ood_perception.pipeline.stats import LatencyStats, RateMeter
from ood_perception.pipeline.sync import ApproximateSync, SyncedFrame
from ood_perception.ros import conversions as conv
from ood_perception.ros.common import (
    BadInputLog,
    declare,
    diagnostic_status,
    output_qos,
    sensor_qos,
    stamp_from_sec,
)

NODE_NAME = "fusion_segmentation"

#: Orientation of a camera optical frame (x right, y down, z forward) in a REP 103 LiDAR frame
#: (x forward, y left, z up) as roll/pitch/yaw: the default extrinsics, a camera at the LiDAR
#: looking forward (the usual ``*_optical_frame`` joint in a URDF).
LIDAR_TO_OPTICAL_RPY = (-math.pi / 2, 0.0, -math.pi / 2)

#: (name, default, description) of every parameter.
PARAMETERS: list[tuple[str, Any, str]] = [
    ("model_dir", "", "exported model directory with model.json ('' = the packaged default model)"),
    ("backend", "onnxruntime", "inference backend: onnxruntime, torch or tensorrt"),
    ("device", "cpu", "cpu or cuda[:N]"),
    ("threshold", float("nan"), "OOD score threshold; NaN = the model's calibrated threshold"),
    ("autostart", False, "configure and activate right after start (no lifecycle manager needed)"),
    ("reliability", "best_effort", "input QoS reliability: best_effort (matches any publisher) or reliable"),
    ("qos_depth", 5, "input QoS depth (KEEP_LAST)"),
    ("slop", 0.05, "largest camera/LiDAR stamp difference of a pair [s]"),
    ("stale_timeout", 0.5, "a stream silent this long [s] is stale: the other runs alone, alerts DEGRADED"),
    ("clock_jump", 1.0, "a stamp this far [s] behind the newest resets sync and alert history (bag loops)"),
    ("sync_queue_size", 5, "messages kept per stream while waiting for a partner"),
    ("lidar_to_camera.xyz", [0.0, 0.0, 0.0],
     "position [m] of the camera optical frame in the LiDAR frame, as a static transform lidar -> camera "
     "(used when .matrix is unset)"),
    ("lidar_to_camera.rpy", list(LIDAR_TO_OPTICAL_RPY),
     "orientation (roll, pitch, yaw [rad], fixed axes) of the camera optical frame in the LiDAR frame"),
    ("intensity_field", "intensity", "PointCloud2 field read as intensity (missing -> 0)"),
    ("negate_lidar_y", False, "negate y of incoming points (sources with a left-handed LiDAR frame)"),
    ("max_points", 2_000_000, "clouds with more points are rejected as bad input"),
    ("min_region_pixels", 50, "smallest 2D anomalous component counted as evidence [camera pixels]"),
    ("min_region_points", 5, "smallest 3D anomalous cluster counted as evidence [points]"),
    ("cluster_eps", 0.6, "DBSCAN radius for anomalous points [m]"),
    ("cluster_min_points", 5, "DBSCAN min_points"),
    ("max_cluster_points", 20000, "anomalous points beyond this are subsampled before DBSCAN"),
    ("frame_score_percentile", 99.0, "percentile of the score map reported as the frame score"),
    ("raise_k", 3, "ALERT when raise_k of the last raise_n frames had an anomalous region"),
    ("raise_n", 5, "window of the k-of-n rule [frames]"),
    ("clear_frames", 5, "consecutive frames without evidence needed to clear an ALERT"),
    ("cooldown_s", 1.0, "an ALERT is held at least this long [s of stamp time]"),
    ("publish_points", True, "publish ood/points"),
    ("publish_markers", True, "publish ood/markers (RViz)"),
    ("diagnostics_period", 1.0, "period of /diagnostics [s]"),
    ("log_throttle_s", 5.0, "each bad-input reason is logged at most once per this many seconds"),
]


def _validate(values: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad parameter value."""
    from ood_perception.ros.common import RELIABILITY

    positive = ["slop", "clock_jump", "diagnostics_period", "cluster_eps", "log_throttle_s"]
    for name in positive:
        if not float(values[name]) > 0:
            raise ValueError(f"parameter {name} must be > 0, got {values[name]}")
    for name in ["qos_depth", "sync_queue_size", "max_points", "min_region_pixels", "min_region_points",
                 "cluster_min_points", "max_cluster_points", "raise_k", "raise_n", "clear_frames"]:
        if int(values[name]) < 1:
            raise ValueError(f"parameter {name} must be >= 1, got {values[name]}")
    if values["reliability"] not in RELIABILITY:
        raise ValueError(f"parameter reliability must be one of {RELIABILITY}, got {values['reliability']!r}")
    if int(values["raise_k"]) > int(values["raise_n"]):
        raise ValueError(f"parameter raise_k ({values['raise_k']}) must be <= raise_n ({values['raise_n']})")
    if not float(values["cooldown_s"]) >= 0 or not float(values["stale_timeout"]) >= 0:
        raise ValueError("parameters cooldown_s and stale_timeout must be >= 0")
    if not 0 <= float(values["frame_score_percentile"]) <= 100:
        raise ValueError(f"parameter frame_score_percentile must be in [0, 100], got {values['frame_score_percentile']}")
    if values["backend"] not in ("onnxruntime", "torch", "tensorrt"):
        raise ValueError(f"parameter backend must be onnxruntime, torch or tensorrt, got {values['backend']!r}")
    for name in ("lidar_to_camera.xyz", "lidar_to_camera.rpy"):
        v = list(values[name])
        if len(v) != 3 or not all(math.isfinite(float(x)) for x in v):
            raise ValueError(f"parameter {name} must be 3 finite numbers, got {v}")
    m = values.get("lidar_to_camera.matrix")
    if m is not None:
        a = np.asarray(list(m), float)
        if a.size != 16 or not np.all(np.isfinite(a)) or not np.allclose(a.reshape(4, 4)[3], [0, 0, 0, 1]):
            raise ValueError("parameter lidar_to_camera.matrix must be 16 finite numbers (row-major 4x4, last row 0 0 0 1)")


class FusionSegmentationNode(LifecycleNode):
    """The camera + LiDAR OOD segmentation node (see the module docstring).

    Args:
        node_name: ROS node name.
        backend: an already-loaded backend (tests, benchmarks); None = load ``model_dir`` on activate.
        **kwargs: passed to rclpy's Node (``context``, ``parameter_overrides``, ``cli_args``, ...).
    """

    def __init__(self, node_name: str = NODE_NAME, *, backend: Any = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, default, desc in PARAMETERS:
            declare(self, name, default, desc)
        from rcl_interfaces.msg import ParameterDescriptor

        self.declare_parameter(
            "lidar_to_camera.matrix",
            Parameter.Type.DOUBLE_ARRAY,
            ParameterDescriptor(description="T_cam_lidar as 16 row-major numbers; overrides .xyz/.rpy when set"),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._injected_backend = backend
        self.backend: Any = None
        self.pipeline: FusionPipeline | None = None
        self.bad = BadInputLog(self.get_logger(), 5.0)
        self.rates = {k: RateMeter() for k in ("camera", "lidar", "camera_info", "processed")}
        self.latency = LatencyStats()
        self.model_latency = LatencyStats()
        self.sync: ApproximateSync | None = None
        self._subs: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._diag_pub: Any = None
        self._diag_timer: Any = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._calib: Any = None  # intrinsics from CameraInfo (T from parameters)
        self._camera_frame = ""
        self._T = np.eye(4)
        self._last_alert: Any = None
        self._last_level = DEGRADED
        self._state = "unconfigured"
        self._frames = 0
        self._model_error = ""
        self.params: dict[str, Any] = {}
        if self.get_parameter("autostart").value:
            self.autostart()

    # ------------------------------------------------------------------ parameters

    def _values(self) -> dict[str, Any]:
        values = {name: self.get_parameter(name).value for name, _, _ in PARAMETERS}
        try:
            values["lidar_to_camera.matrix"] = self.get_parameter("lidar_to_camera.matrix").value
        except Exception:  # noqa: BLE001 - uninitialised statically typed parameter
            values["lidar_to_camera.matrix"] = None
        return values

    def _on_set_parameters(self, params: list[Parameter]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        values = self._values()
        for p in params:
            values[p.name] = p.value
        try:
            _validate(values)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True, reason="takes effect at the next configure")

    def _extrinsics(self, values: dict[str, Any]) -> np.ndarray:
        """T_cam_lidar from parameters (a TF lookup would go here where tf2_ros is installed)."""
        if values.get("lidar_to_camera.matrix") is not None:
            return np.asarray(list(values["lidar_to_camera.matrix"]), float).reshape(4, 4)
        # xyz/rpy give the camera's pose in the LiDAR frame (T_lidar_cam); points need its inverse.
        return np.linalg.inv(transform_from_xyz_rpy(values["lidar_to_camera.xyz"], values["lidar_to_camera.rpy"]))

    # ------------------------------------------------------------------ lifecycle

    def autostart(self) -> bool:
        """Configure and activate; True when the node is active."""
        return self.trigger_configure() == TransitionCallbackReturn.SUCCESS and (
            self.trigger_activate() == TransitionCallbackReturn.SUCCESS
        )

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = self._values()
            _validate(values)
            self.params = values
            self._T = self._extrinsics(values)
            thr = float(values["threshold"])
            self.fusion_config = FusionConfig(
                threshold=None if math.isnan(thr) else thr,
                frame_score_percentile=float(values["frame_score_percentile"]),
                min_region_pixels=int(values["min_region_pixels"]),
                min_region_points=int(values["min_region_points"]),
                cluster_eps=float(values["cluster_eps"]),
                cluster_min_points=int(values["cluster_min_points"]),
                max_cluster_points=int(values["max_cluster_points"]),
                alert=AlertConfig(int(values["raise_k"]), int(values["raise_n"]), int(values["clear_frames"]),
                                  float(values["cooldown_s"])),
                clock_jump=float(values["clock_jump"]),
            )
        except (ValueError, TypeError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image, PointCloud2
        from visualization_msgs.msg import MarkerArray

        from ood_perception_msgs.msg import OodAlert

        self.bad.period = float(values["log_throttle_s"])
        qos = output_qos()
        self._pubs = {
            "mask": self.create_lifecycle_publisher(Image, "ood/mask", qos),
            "score": self.create_lifecycle_publisher(Image, "ood/score", qos),
            "points": self.create_lifecycle_publisher(PointCloud2, "ood/points", qos),
            "alerts": self.create_lifecycle_publisher(OodAlert, "ood/alerts", output_qos(10)),
            "markers": self.create_lifecycle_publisher(MarkerArray, "ood/markers", qos),
        }
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(values["diagnostics_period"]), self._on_diagnostics_timer)
        self._state = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        try:
            if self._injected_backend is not None:
                self.backend = self._injected_backend
            else:
                from ood_perception import runtime

                self.backend = runtime.load(p["model_dir"] or None, backend=p["backend"], device=p["device"])
            self.pipeline = FusionPipeline(self.backend, self.fusion_config)
        except Exception as exc:  # noqa: BLE001 - a bad model must fail the transition, not the process
            self._model_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"activate failed: cannot load model: {self._model_error}")
            return TransitionCallbackReturn.FAILURE
        self._model_error = ""
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        self.sync = ApproximateSync(
            slop=float(p["slop"]),
            stale_timeout=float(p["stale_timeout"]),
            clock_jump=float(p["clock_jump"]),
            queue_size=int(p["sync_queue_size"]),
        )
        qos = sensor_qos(p["reliability"], int(p["qos_depth"]))
        self._subs = [
            self.create_subscription(Image, "camera/image", self._on_image, qos),
            self.create_subscription(CameraInfo, "camera/camera_info", self._on_camera_info, qos),
            self.create_subscription(PointCloud2, "lidar/points", self._on_points, qos),
        ]
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name=f"{self.get_name()}_worker", daemon=True)
        self._worker.start()
        self._state = "active"
        return super().on_activate(state)

    def _stop_worker(self) -> None:
        self._stop.set()
        if self.sync is not None:
            self.sync.close()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        self._state = "finalized"
        return super().on_shutdown(state)

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._stop_worker()
        super().destroy_node()

    def _release(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        if self.backend is not None and self.backend is not self._injected_backend:
            close = getattr(self.backend, "close", None)
            if close:
                close()
        self.backend = None
        self.pipeline = None

    # ------------------------------------------------------------------ callbacks (never raise)

    def _on_image(self, msg: Any) -> None:
        try:
            self.rates["camera"].tick()
            stamp = conv.stamp_to_sec(msg.header.stamp)
            rgb = conv.image_to_rgb8(msg)
            self._camera_frame = msg.header.frame_id or self._camera_frame
            self._offer("camera", stamp, (msg.header, rgb))
        except conv.ConversionError as exc:
            self.bad.report("bad_image", str(exc))
        except Exception as exc:  # noqa: BLE001 - never raise out of a callback
            self.bad.report("image_callback_error", f"{type(exc).__name__}: {exc}")

    def _on_camera_info(self, msg: Any) -> None:
        try:
            self.rates["camera_info"].tick()
            self._calib = conv.camera_info_to_calibration(msg)
        except conv.ConversionError as exc:
            self.bad.report("bad_camera_info", str(exc))
        except Exception as exc:  # noqa: BLE001
            self.bad.report("camera_info_callback_error", f"{type(exc).__name__}: {exc}")

    def _on_points(self, msg: Any) -> None:
        try:
            self.rates["lidar"].tick()
            n = int(msg.width) * int(msg.height)
            if n > int(self.params["max_points"]):
                raise conv.ConversionError(f"cloud has {n} points, more than max_points={self.params['max_points']}")
            cloud = conv.pointcloud2_to_xyzi(msg, self.params["intensity_field"], bool(self.params["negate_lidar_y"]))
            if cloud.num_nonfinite:
                self.bad.report("nonfinite_points", f"{cloud.num_nonfinite} of {cloud.num_input} points NaN/Inf, dropped")
            if cloud.points.shape[0] == 0:
                self.bad.report("empty_cloud", "point cloud has no finite points")
            stamp = conv.stamp_to_sec(msg.header.stamp)
            self._offer("lidar", stamp, (msg.header, cloud.points))
        except conv.ConversionError as exc:
            self.bad.report("bad_cloud", str(exc))
        except Exception as exc:  # noqa: BLE001
            self.bad.report("cloud_callback_error", f"{type(exc).__name__}: {exc}")

    def _offer(self, stream: str, stamp: float, payload: Any) -> None:
        sync = self.sync
        if sync is None:
            return
        outcome = sync.add(stream, stamp, payload)
        if outcome == "rejected_zero":
            self.bad.report("zero_stamp", f"{stream} message with stamp 0 ignored")
        elif outcome == "rejected_old":
            self.bad.report("old_stamp", f"{stream} stamp {stamp:.3f} is older than the last processed frame")
        elif outcome == "duplicate":
            self.bad.report("duplicate_stamp", f"{stream} stamp {stamp:.3f} repeated; the newer message replaces it")
        elif outcome == "reset":
            self.get_logger().warning(f"{stream} stamp jumped back to {stamp:.3f}: sync and alert history reset")

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while not self._stop.is_set():
            sync = self.sync
            frame = sync.wait(timeout=0.2) if sync is not None else None
            if frame is None or self._stop.is_set():
                continue
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self.bad.report("processing_error", f"{type(exc).__name__}: {exc}")

    def _process(self, frame: SyncedFrame) -> None:
        assert self.pipeline is not None and self.sync is not None
        cam_header, image = frame.camera.msg if frame.camera is not None else (None, None)
        lid_header, points = frame.lidar.msg if frame.lidar is not None else (None, None)
        reasons = []
        for name, part in (("camera", frame.camera), ("lidar", frame.lidar)):
            if part is None:
                age = self.sync.age(name)
                reasons.append(f"{name} {'never received' if age is None else f'stale for {age:.2f} s'}")
        calib = self._calib
        if calib is not None:
            calib = conv.Calibration(calib.K, calib.width, calib.height, self._T)
            if image is not None and image.shape[:2] != (calib.height, calib.width):
                self.bad.report("camera_info_size_mismatch",
                                f"CameraInfo is {calib.width}x{calib.height}, image {image.shape[1]}x{image.shape[0]}: rescaled")
                calib = calib.scaled(image.shape[1], image.shape[0])
        elif points is not None:
            self.bad.report("missing_camera_info", "no CameraInfo received yet: LiDAR cannot be projected")
        if image is None and calib is None:
            points = None  # nothing to project onto
        result = self.pipeline.process(
            FusionFrame(stamp=frame.stamp, image=image, points=points, calib=calib, degraded="; ".join(reasons) or None)
        )
        header = cam_header if cam_header is not None else self._synthetic_header(lid_header, frame.stamp)
        self._publish(result, header, lid_header)
        arrival = max(p.arrival for p in (frame.camera, frame.lidar) if p is not None)
        self.latency.add(time.monotonic() - arrival)
        if "infer" in result.timings:
            self.model_latency.add(result.timings["infer"])
        self.rates["processed"].tick()
        self._frames += 1

    def _synthetic_header(self, lid_header: Any, stamp: float) -> Any:
        from std_msgs.msg import Header

        return Header(stamp=lid_header.stamp if lid_header is not None else stamp_from_sec(stamp),
                      frame_id=self._camera_frame or (lid_header.frame_id if lid_header is not None else ""))

    def _publish(self, result: Any, header: Any, lid_header: Any) -> None:
        from ood_perception.ros.messages import build_alert, build_markers

        pubs = self._pubs
        if result.mask is not None:
            pubs["mask"].publish(conv.numpy_to_image(result.mask, "mono8", header))
            pubs["score"].publish(conv.numpy_to_image(result.score, "32FC1", header))
        if self.params.get("publish_points", True) and lid_header is not None and result.mask is not None:
            pubs["points"].publish(conv.scored_points_to_pointcloud2(
                result.points, result.point_labels, result.point_scores, lid_header))
        alert = build_alert(header, NODE_NAME, result.level, result.decision.description, result.modalities,
                            result.frame_score, result.threshold, result.anomalous_fraction, result.regions, self._T)
        pubs["alerts"].publish(alert)
        if self.params.get("publish_markers", True):
            pubs["markers"].publish(build_markers(alert))
        self._last_alert = alert
        self._last_level = result.level

    # ------------------------------------------------------------------ diagnostics

    def _on_diagnostics_timer(self) -> None:
        try:
            self.publish_diagnostics()
        except Exception as exc:  # noqa: BLE001
            self.bad.report("diagnostics_error", f"{type(exc).__name__}: {exc}")

    def diagnostics_values(self) -> dict[str, Any]:
        """Everything /diagnostics reports, as a dict (also used by tests and the benchmark)."""
        p50, p95 = self.latency.percentiles()
        m50, m95 = self.model_latency.percentiles()
        sync = self.sync
        c = sync.counters if sync is not None else None
        spec = getattr(self.backend, "spec", None)
        values: dict[str, Any] = {
            "state": self._state,
            "alert_level": LEVEL_NAMES.get(self._last_level, "?"),
            "camera_rate_hz": self.rates["camera"].rate(),
            "lidar_rate_hz": self.rates["lidar"].rate(),
            "camera_info_rate_hz": self.rates["camera_info"].rate(),
            "processed_rate_hz": self.rates["processed"].rate(),
            "frames_processed": self._frames,
            "latency_p50_ms": p50 * 1e3,
            "latency_p95_ms": p95 * 1e3,
            "model_latency_p50_ms": m50 * 1e3,
            "model_latency_p95_ms": m95 * 1e3,
            "backend": getattr(self.backend, "name", type(self.backend).__name__ if self.backend else "none"),
            "model_sha256": spec_sha256(spec) if spec is not None else "",
            "model_error": self._model_error,
            "camera_info": "yes" if self._calib is not None else "missing",
        }
        if c is not None:
            values.update({
                "paired": c.paired, "single_modality": c.single, "dropped_overwritten": c.dropped_overwritten,
                "dropped_unpaired": c.dropped_unpaired, "clock_resets": c.clock_resets,
            })
            for name in ("camera", "lidar"):
                age = sync.age(name)
                values[f"{name}_age_s"] = float("nan") if age is None else age
        bad = self.bad.snapshot()
        values["bad_inputs"] = sum(bad.values())
        values.update({f"bad.{k}": v for k, v in sorted(bad.items())})
        return values

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray; when active and both sensors are stale, also a DEGRADED alert."""
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

        values = self.diagnostics_values()
        now = self.get_clock().now().to_msg()
        stale = [n for n in ("camera", "lidar") if not values.get(f"{n}_age_s", 0.0) <= float(self.params["stale_timeout"])]
        if self._model_error or self._state != "active":
            level, msg = DiagnosticStatus.ERROR, self._model_error or f"node {self._state}"
        elif stale:
            level, msg = DiagnosticStatus.WARN, f"stale: {', '.join(stale)}"
        elif values["bad_inputs"]:
            level, msg = DiagnosticStatus.WARN, f"{values['bad_inputs']} bad inputs so far; alert {values['alert_level']}"
        else:
            level, msg = DiagnosticStatus.OK, f"alert {values['alert_level']}"
        arr = DiagnosticArray()
        arr.header.stamp = now
        arr.status = [diagnostic_status(f"{self.get_name()}: fusion pipeline", self.get_fully_qualified_name(),
                                        level[0] if isinstance(level, bytes) else level, msg, values)]
        if self._diag_pub is not None:
            self._diag_pub.publish(arr)
        if self._state == "active" and len(stale) == 2 and "alerts" in self._pubs:
            from std_msgs.msg import Header

            from ood_perception.ros.messages import build_alert

            thr = self.pipeline.threshold if self.pipeline is not None else float("nan")
            alert = build_alert(Header(stamp=now, frame_id=self._camera_frame), NODE_NAME, DEGRADED,
                                "no input: camera and lidar stale", [], float("nan"), thr, 0.0, [])
            self._pubs["alerts"].publish(alert)
            self._last_level = DEGRADED


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``fusion_segmentation_node [--autostart] [--ros-args ...]``."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fusion_segmentation_node")
    parser.add_argument("--autostart", action="store_true", help="configure and activate immediately")
    args, _ = parser.parse_known_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = FusionSegmentationNode(parameter_overrides=[Parameter("autostart", value=True)] if args.autostart else [])
    ex = MultiThreadedExecutor()
    ex.add_node(node)
    try:
        ex.spin()
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
