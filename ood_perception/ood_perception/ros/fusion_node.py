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

Frame logic: every decision about a frame (parameter mapping, pairing, stale-sensor reasons,
calibration and extrinsics, which header each output carries) lives in the ROS-free
:class:`~ood_perception.pipeline.frame_handler.FusionFrameProcessor`, which rosbag replay runs too;
messages are decoded by :mod:`ood_perception.pipeline.inputs`, also shared with replay. This node only
declares parameters, converts, publishes and keeps diagnostics. Arrival times (staleness, the
start-up grace, which counts from the first message) are read from the node's ROS clock, so under
``use_sim_time`` they follow simulation/bag time as replay does.

Threading: subscription callbacks only convert the message and hand it to the
:class:`~ood_perception.pipeline.sync.ApproximateSync` (short lock, latest-only); inference
runs on a worker thread that waits on the synchroniser, so slow inference never blocks
callbacks and stale frames are dropped and counted, not queued. Every callback catches every
exception: bad input is counted per reason, logged (throttled) and shown on /diagnostics.

Why no message_filters / tf2_ros / cv_bridge / sensor_msgs_py: they are not installable from the
registries this project uses (see :mod:`ood_perception.pipeline.sync` and
:mod:`ood_perception.codec.conversions`). Extrinsics therefore come from parameters
(``lidar_to_camera.matrix`` or ``.xyz`` + ``.rpy``); a TF lookup would plug in at
:func:`~ood_perception.pipeline.frame_handler.extrinsics_from_params` where tf2_ros exists.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from ood_perception.codec import conversions as conv
from ood_perception.pipeline import inputs
from ood_perception.pipeline.alerts import DEGRADED, LEVEL_NAMES
from ood_perception.pipeline.frame_handler import (
    FUSION_PARAMETERS,
    LIDAR_TO_OPTICAL_RPY,
    MATRIX_PARAM,
    FrameOutputs,
    FrameSettings,
    FusionFrameProcessor,
    Note,
    coerce_fusion_params,
    extrinsics_from_params,
    fusion_param_defaults,
    validate_fusion_params,
)
from ood_perception.pipeline.fusion import FusionPipeline, spec_sha256
from ood_perception.pipeline.stats import LatencyStats, RateMeter
from ood_perception.pipeline.sync import ApproximateSync, SyncedFrame
from ood_perception.ros import messages as rosmsg
from ood_perception.ros.common import (
    BadInputLog,
    declare,
    diagnostic_status,
    output_qos,
    run_node_main,
    sensor_qos,
    warn_unknown_overrides,
)
from ood_perception.ros.lifecycle import WorkerLifecycleNode
from ood_perception.ros.messages import build_alert, build_markers, header_msg
from ood_perception.ros.transport import TransportLossMonitor, message_lost_callbacks, with_message_info
from ood_perception_msgs.msg import OodAlert

NODE_NAME = "fusion_segmentation"

#: Description of the DEGRADED alert the diagnostics timer publishes while both sensors are stale
#: (not tied to a frame: stamped with the node's clock).
NO_INPUT_DESCRIPTION = "no input: camera and lidar stale"

#: (name, default, description) of every parameter (the table lives with the ROS-free frame logic).
PARAMETERS = FUSION_PARAMETERS

__all__ = ["LIDAR_TO_OPTICAL_RPY", "NODE_NAME", "NO_INPUT_DESCRIPTION", "PARAMETERS", "FusionSegmentationNode", "main"]


def _validate(values: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad parameter value."""
    validate_fusion_params(values)


class FusionSegmentationNode(WorkerLifecycleNode):
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
        declare(self, MATRIX_PARAM, None, "T_cam_lidar as 16 row-major numbers; overrides .xyz/.rpy when set")
        warn_unknown_overrides(self, fusion_param_defaults())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._injected_backend = backend
        self.pipeline: FusionPipeline | None = None
        self.processor: FusionFrameProcessor | None = None
        self.settings = FrameSettings()
        self.bad = BadInputLog(self.get_logger(), 5.0)
        self.rates = {k: RateMeter() for k in ("camera", "lidar", "camera_info", "processed")}
        # frames lost before the callbacks (publisher sequence numbers / header-stamp gaps)
        self.transport_loss = TransportLossMonitor()
        self.latency = LatencyStats()
        self.model_latency = LatencyStats()
        self.sync: ApproximateSync | None = None
        self._T = np.eye(4)
        self._last_alert: Any = None
        self._last_level = DEGRADED
        self._frames = 0
        self._model_error = ""
        self._output_factor = 1
        self.params: dict[str, Any] = {}
        if self.get_parameter("autostart").value:
            self.autostart()

    # ------------------------------------------------------------------ parameters

    def _values(self) -> dict[str, Any]:
        values = {name: self.get_parameter(name).value for name, _, _ in PARAMETERS}
        values[MATRIX_PARAM] = self.get_parameter(MATRIX_PARAM).value  # None while unset
        return values

    def _on_set_parameters(self, params: list[Parameter]) -> Any:

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
        return extrinsics_from_params(values)

    def _clock_now(self) -> float:
        """The node's clock [s] (ROS time: simulation time under use_sim_time): arrival times."""
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = coerce_fusion_params(self._values())  # types: lossless conversions or one clear line
            self.settings = FrameSettings.from_params(values)  # validates
            self.params = values
            self._T = self.settings.T_cam_lidar
            self.fusion_config = self.settings.fusion
        except (ValueError, TypeError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE


        self.bad.period = float(values["log_throttle_s"])
        self.bad.window = float(values["diagnostics_window"])
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
            self.processor = FusionFrameProcessor.build(self.backend, self.settings, clock=self._clock_now)
            self.pipeline = self.processor.pipeline
            for note in self.pipeline.decision_warnings:
                self.get_logger().warning(note)
            self.pipeline.warm_up()  # per-head sessions built now, not on the first frame
        except Exception as exc:  # noqa: BLE001 - a bad model must fail the transition, not the process
            self._model_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"activate failed: cannot load model: {self._model_error}")
            return TransitionCallbackReturn.FAILURE
        self._model_error = ""

        self.sync = self.processor.sync
        qos = sensor_qos(p["reliability"], int(p["qos_depth"]))
        self._subs = [
            self._sensor_subscription(Image, "camera/image", self._on_image, qos, "camera"),
            self.create_subscription(CameraInfo, "camera/camera_info", self._on_camera_info, qos),
            self._sensor_subscription(PointCloud2, "lidar/points", self._on_points, qos, "lidar"),
        ]
        self._start_worker()
        self._state = "active"
        return super().on_activate(state)

    def _sensor_subscription(self, msg_type: Any, topic: str, callback: Any, qos: Any, name: str) -> Any:
        """A subscription whose callback also gets rmw's MessageInfo (sequence numbers) and whose
        DDS sample-lost events are counted, where this rclpy/RMW provides them."""
        events = message_lost_callbacks(lambda n: self.transport_loss.lost_in_transport(name, n))
        if events is not None:
            try:
                return self.create_subscription(msg_type, topic, with_message_info(callback), qos, event_callbacks=events)
            except Exception as exc:  # noqa: BLE001 - UnsupportedEventTypeError: an RMW without the event
                self.get_logger().info(f"{topic}: no DDS sample-lost events ({type(exc).__name__}); "
                                       "counting sequence/stamp gaps only")
        return self.create_subscription(msg_type, topic, with_message_info(callback), qos)

    def _wake_worker(self) -> None:
        if self.sync is not None:
            self.sync.close()

    def _forget(self) -> None:
        self.pipeline = None
        self.processor = None

    # ------------------------------------------------------------------ callbacks (never raise)

    def _report(self, notes: list[Note]) -> None:
        for note in notes:
            if note.bad:
                self.bad.report(note.reason, note.detail)
            else:
                self.get_logger().warning(note.detail)

    def _on_image(self, msg: Any, info: Any = None) -> None:
        try:
            self.rates["camera"].tick()
            self.transport_loss.observe("camera", conv.stamp_to_sec(msg.header.stamp), info)
            cam = inputs.decode_camera(msg)
            proc = self.processor
            if proc is not None:
                self._report(proc.add_camera(cam))
        except conv.ConversionError as exc:
            self.bad.report("bad_image", str(exc))
        except Exception as exc:  # noqa: BLE001 - never raise out of a callback
            self.bad.report("image_callback_error", f"{type(exc).__name__}: {exc}")

    def _on_camera_info(self, msg: Any) -> None:
        try:
            self.rates["camera_info"].tick()
            calib = inputs.decode_camera_info(msg)
            if self.processor is not None:
                self.processor.set_camera_info(calib)
        except conv.ConversionError as exc:
            self.bad.report("bad_camera_info", str(exc))
        except Exception as exc:  # noqa: BLE001
            self.bad.report("camera_info_callback_error", f"{type(exc).__name__}: {exc}")

    def _on_points(self, msg: Any, info: Any = None) -> None:
        try:
            self.rates["lidar"].tick()
            self.transport_loss.observe("lidar", conv.stamp_to_sec(msg.header.stamp), info)
            lid, notes = inputs.decode_lidar(msg, self.settings)
            self._report(notes)
            proc = self.processor
            if proc is not None:
                self._report(proc.add_lidar(lid))
        except conv.ConversionError as exc:
            self.bad.report("bad_cloud", str(exc))
        except Exception as exc:  # noqa: BLE001
            self.bad.report("cloud_callback_error", f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while not self._stop.is_set():
            proc = self.processor
            frame = proc.wait(timeout=0.2) if proc is not None else None
            if frame is None or self._stop.is_set():
                continue
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self.bad.report("processing_error", f"{type(exc).__name__}: {exc}")

    def _process(self, frame: SyncedFrame) -> None:
        assert self.processor is not None
        out = self.processor.process(frame)
        self._report(out.notes)
        self._publish(out)
        received = max(p.received for p in (out.camera, out.lidar) if p is not None)
        self.latency.add(time.monotonic() - received)
        if "infer" in out.result.timings:
            self.model_latency.add(out.result.timings["infer"])
        self.rates["processed"].tick()
        self._frames += 1

    def _publish(self, out: FrameOutputs) -> None:

        pubs, result = self._pubs, out.result
        header = header_msg(out.header)
        if out.publish_mask:
            if out.output_factor != self._output_factor:
                self._output_factor = out.output_factor
                size = f"camera image {result.mask.shape[1]}x{result.mask.shape[0]}"
                self.get_logger().warning(
                    f"ood/mask and ood/score downscaled {out.output_factor}x (block maximum): {size} is over "
                    f"max_output_pixels={self.settings.max_output_pixels}" if out.output_factor > 1
                    else f"ood/mask and ood/score back at camera resolution ({size})")
            pubs["mask"].publish(rosmsg.image_msg(out.mask, "mono8", header))
            pubs["score"].publish(rosmsg.image_msg(out.score, "32FC1", header))
        if out.points_header is not None:
            pubs["points"].publish(rosmsg.scored_cloud_msg(
                result.points, result.point_labels, result.point_scores, header_msg(out.points_header)))
        alert = build_alert(header, NODE_NAME, result.level, result.decision.description, result.modalities,
                            result.frame_score, result.threshold, result.anomalous_fraction, result.regions, out.T_cam_lidar)
        pubs["alerts"].publish(alert)
        if self.settings.publish_markers:
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
            "camera_info": "yes" if self.processor is not None and self.processor.calib is not None else "missing",
            "output_downscale": self._output_factor,
        }
        if c is not None:
            values.update({
                "paired": c.paired, "single_modality": c.single, "dropped_overwritten": c.dropped_overwritten,
                "dropped_unpaired": c.dropped_unpaired, "clock_resets": c.clock_resets,
            })
            for name in ("camera", "lidar"):
                age = sync.age(name)
                values[f"{name}_age_s"] = float("nan") if age is None else age
            values["unpaired_single"] = c.unpaired_single
            values["pairing"] = sync.pairing_problem() or "ok"
        values.update(self.transport_loss.values(("camera", "lidar")))
        values["transport_loss"] = self.transport_loss.summary(("camera", "lidar"))
        bad, recent = self.bad.snapshot(), self.bad.recent()
        values["bad_inputs"] = sum(bad.values())
        values["bad_inputs_recent"] = sum(recent.values())  # over diagnostics_window: what the level judges
        values.update({f"bad.{k}": v for k, v in sorted(bad.items())})
        return values

    def _publisher_count(self, name: str) -> int:
        """Publishers matched to the ``camera`` / ``lidar`` subscription (0 before activation)."""
        subs = getattr(self, "_subs", None) or []
        index = {"camera": 0, "lidar": 2}[name]  # the order on_activate creates them in
        if len(subs) <= index:
            return 0
        try:
            return int(subs[index].get_publisher_count())
        except Exception:  # noqa: BLE001 - a subscription destroyed meanwhile
            return 0

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray; when active and both sensors are stale, also a DEGRADED alert."""

        values = self.diagnostics_values()
        now = self.get_clock().now().to_msg()
        stale = [n for n in ("camera", "lidar") if not values.get(f"{n}_age_s", 0.0) <= float(self.params["stale_timeout"])]
        if self._model_error or self._state != "active":
            level, msg = DiagnosticStatus.ERROR, self._model_error or f"node {self._state}"
        elif stale:
            level, msg = DiagnosticStatus.WARN, f"stale: {', '.join(stale)}"
            if values["transport_loss"]:
                msg += f"; {values['transport_loss']} (README: Transport)"
            else:
                silent = [n for n in stale if self._publisher_count(n) > 0]
                if silent:
                    msg += (f"; {', '.join(silent)} publisher matched but nothing arrives: "
                            "large samples lost in transport? (README: Transport)")
        elif values.get("pairing", "ok") != "ok":
            level, msg = DiagnosticStatus.WARN, f"streams do not pair: {values['pairing']}"
        elif values["transport_loss"]:
            level, msg = DiagnosticStatus.WARN, f"{values['transport_loss']} (README: Transport)"
        elif values["bad_inputs_recent"]:
            recent = ", ".join(f"{k} {v}" for k, v in sorted(self.bad.recent().items()))
            level, msg = (DiagnosticStatus.WARN, f"{values['bad_inputs_recent']} bad inputs in the last "
                          f"{self.bad.window:g} s ({recent}); alert {values['alert_level']}")
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
            frame_id = self.processor.camera_frame if self.processor is not None else ""
            alert = build_alert(Header(stamp=now, frame_id=frame_id), NODE_NAME, DEGRADED,
                                NO_INPUT_DESCRIPTION, [], float("nan"), thr, 0.0, [])
            self._pubs["alerts"].publish(alert)
            self._last_level = DEGRADED


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``fusion_segmentation_node [--autostart] [--ros-args ...]``."""
    return run_node_main(FusionSegmentationNode, "fusion_segmentation_node", argv)


if __name__ == "__main__":
    sys.exit(main())
