"""``action_recognition_node``: video (+ optical flow) clip recognition with OOD scores, as a
ROS 2 lifecycle node.

Input ``video/image`` (any colour encoding of :mod:`ood_perception.codec.conversions`); outputs
``recognition/result`` (ood_perception_msgs/Recognition, one per clip), ``ood/alerts`` (one
OodAlert per clip from the same alert state machine as the fusion node: ``is_ood`` is the
evidence) and ``/diagnostics``. The clip buffer and model call are
``ood_perception.pipeline.recognition.ClipRecognizer`` (``push(frame_rgb, stamp) ->
RecognitionResult | None``). Callbacks only decode and enqueue frames (bounded; the oldest are
dropped and counted when the worker falls behind); the worker thread feeds the recogniser.
Lifecycle as in :mod:`ood_perception.ros.fusion_node`.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
import time
from collections import deque
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ood_perception.codec import conversions as conv
from ood_perception.pipeline.alerts import (
    ALERT_STANDING,
    DEGRADED,
    LEVEL_NAMES,
    AlertConfig,
)
from ood_perception.pipeline.fusion import spec_sha256
from ood_perception.pipeline.params import coerce_params
from ood_perception.pipeline.recognition import REJECT_ZERO_STAMP, ClipRecognizer, RecognitionFrameProcessor
from ood_perception.pipeline.stats import LatencyStats, RateMeter
from ood_perception.ros.common import (
    RELIABILITY,
    BadInputLog,
    declare,
    diagnostic_status,
    output_qos,
    run_node_main,
    sensor_qos,
    warn_unknown_overrides,
)
from ood_perception.ros.lifecycle import WorkerLifecycleNode
from ood_perception.ros.messages import build_alert
from ood_perception_msgs.msg import OodAlert, Recognition

NODE_NAME = "action_recognition"

PARAMETERS: list[tuple[str, Any, str]] = [
    ("model_dir", "", "exported recognition model directory with model.json; empty = the default recognition "
     "model (runtime.default_recognition_model_dir(), docs/recognition_model.md)"),
    ("backend", "onnxruntime", "inference backend: onnxruntime, torch or tensorrt"),
    ("device", "cpu", "cpu or cuda[:N]"),
    ("threshold", float("nan"), "OOD threshold; NaN = the model's calibrated threshold"),
    ("autostart", False, "configure and activate right after start"),
    ("reliability", "best_effort", "input QoS reliability: best_effort or reliable"),
    ("qos_depth", 5, "input QoS depth"),
    ("clip_length", 0, "frames per clip; 0 = the model's clip_len (another value must equal it)"),
    ("clip_stride", 8, "frames between the starts of consecutive clips"),
    ("frame_queue", 64, "frames buffered for the worker; older ones are dropped and counted"),
    ("stale_timeout", 1.0, "video silent this long [s] -> DEGRADED alert"),
    ("clock_jump", 1.0, "a stamp this far [s] behind the newest resets the clip buffer and alert history (bag loops)"),
    ("raise_k", 2, "ALERT when raise_k of the last raise_n clips are OOD"),
    ("raise_n", 3, "window of the k-of-n rule [clips]"),
    ("clear_frames", 2, "consecutive in-distribution clips needed to clear an ALERT"),
    ("cooldown_s", 2.0, "an ALERT is held at least this long [s]"),
    ("diagnostics_period", 1.0, "period of /diagnostics [s]"),
    ("diagnostics_window", 10.0, "bad inputs are judged over this window [s]: a /diagnostics WARN clears once a "
     "window passes without one"),
    ("log_throttle_s", 5.0, "each bad-input reason is logged at most once per this many seconds"),
]


#: Every parameter's default (the types values are coerced to).
DEFAULTS: dict[str, Any] = {name: default for name, default, _ in PARAMETERS}


def _validate(v: dict[str, Any]) -> None:
    v = coerce_params(v, DEFAULTS)  # types first: lossless conversions or one line naming the parameter
    for name in ("qos_depth", "clip_length", "clip_stride", "frame_queue", "raise_k", "raise_n", "clear_frames"):
        if int(v[name]) < (0 if name == "clip_length" else 1):
            raise ValueError(f"parameter {name} must be >= {0 if name == 'clip_length' else 1}, got {v[name]}")
    for name in ("diagnostics_period", "diagnostics_window", "log_throttle_s", "stale_timeout", "clock_jump"):
        if not float(v[name]) > 0:
            raise ValueError(f"parameter {name} must be > 0, got {v[name]}")
    if v["reliability"] not in RELIABILITY:
        raise ValueError(f"parameter reliability must be one of {RELIABILITY}, got {v['reliability']!r}")
    if int(v["raise_k"]) > int(v["raise_n"]):
        raise ValueError("parameter raise_k must be <= raise_n")
    if not float(v["cooldown_s"]) >= 0:
        raise ValueError("parameter cooldown_s must be >= 0")


def make_recognizer(backend: Any, params: dict[str, Any]) -> Any:
    """Build ``pipeline.recognition.ClipRecognizer`` for ``backend`` from node parameters (only the
    keyword arguments its constructor accepts are passed)."""

    thr = float(params["threshold"])
    offered = {"clip_length": int(params["clip_length"]) or None, "stride": int(params["clip_stride"]),
               "clip_stride": int(params["clip_stride"]), "threshold": None if math.isnan(thr) else thr}
    accepted = inspect.signature(ClipRecognizer).parameters
    return ClipRecognizer(backend, **{k: v for k, v in offered.items() if k in accepted})


class ActionRecognitionNode(WorkerLifecycleNode):
    """The clip recognition node (see the module docstring).

    Args:
        recognizer: an object with ``push(frame_rgb, stamp)`` (tests); None = build the
            ``ClipRecognizer`` around the loaded model on activate.
    """

    def __init__(self, node_name: str = NODE_NAME, *, recognizer: Any = None, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, default, desc in PARAMETERS:
            declare(self, name, default, desc)
        warn_unknown_overrides(self, DEFAULTS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._injected = recognizer
        self.recognizer: Any = None
        self.bad = BadInputLog(self.get_logger())
        self.rate = RateMeter()
        self.latency = LatencyStats()
        self._frames: deque[tuple[Any, Any, float]] = deque()
        self._cond = threading.Condition()
        self._dropped = 0
        self._clips = 0
        self._last_arrival: float | None = None
        self._last_header: Any = None
        self.processor: RecognitionFrameProcessor | None = None
        self._resets = 0
        self._model_error = ""
        self._level = DEGRADED
        self.params: dict[str, Any] = {}
        if self.get_parameter("autostart").value:
            self.autostart()

    def _values(self) -> dict[str, Any]:
        return {name: self.get_parameter(name).value for name, _, _ in PARAMETERS}

    def _on_set_parameters(self, params: list[Parameter]) -> Any:

        values = self._values()
        values.update({p.name: p.value for p in params})
        try:
            _validate(values)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True, reason="takes effect at the next configure")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = coerce_params(self._values(), DEFAULTS)
            _validate(values)
        except (ValueError, TypeError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE


        self.params = values
        self.bad.period = float(values["log_throttle_s"])
        self.bad.window = float(values["diagnostics_window"])
        self._alert_config = AlertConfig(int(values["raise_k"]), int(values["raise_n"]),
                                         int(values["clear_frames"]), float(values["cooldown_s"]))
        self.processor: RecognitionFrameProcessor | None = None
        self._pubs = {
            "result": self.create_lifecycle_publisher(Recognition, "recognition/result", output_qos(10)),
            "alerts": self.create_lifecycle_publisher(OodAlert, "ood/alerts", output_qos(10)),
        }
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(values["diagnostics_period"]), self._on_timer)
        self._state = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        try:
            if self._injected is not None:
                self.recognizer = self._injected
            else:
                from ood_perception import runtime

                model_dir = p["model_dir"] or runtime.default_recognition_model_dir()
                self.backend = runtime.load(model_dir, backend=p["backend"], device=p["device"])
                self.recognizer = make_recognizer(self.backend, p)
        except Exception as exc:  # noqa: BLE001 - fail the transition with a clear reason
            self._model_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"activate failed: {self._model_error}")
            return TransitionCallbackReturn.FAILURE

        self.processor = RecognitionFrameProcessor(self.recognizer, self._alert_config, float(p["clock_jump"]))
        self._subs = [self.create_subscription(Image, "video/image", self._on_image,
                                               sensor_qos(p["reliability"], int(p["qos_depth"])))]
        self._start_worker()
        self._state = "active"
        return super().on_activate(state)

    def _wake_worker(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _forget(self) -> None:
        self.recognizer = None
        self.processor = None

    # ------------------------------------------------------------------ callbacks / worker

    def _on_image(self, msg: Any) -> None:
        try:
            self.rate.tick()
            stamp = conv.stamp_to_sec(msg.header.stamp)
            processor = self.processor
            if processor is None:
                return
            rgb = conv.image_to_rgb8(msg)
            reset, reason = processor.admit(stamp)
            if reason == REJECT_ZERO_STAMP:
                self.bad.report(reason, "video frame with stamp 0 ignored")
                return
            if reason is not None:  # the clip buffer would drop it silently; say so and count it
                self.bad.report(reason, f"video stamp {stamp:.3f} not after the newest "
                                        f"{processor.newest_stamp:.3f}: frame ignored")
                return
            with self._cond:
                if reset:  # bag loop / simulator restart: start clips and alert history afresh
                    self._frames.clear()
                    self._frames.append((None, None, 0.0))
                    self._resets += 1
                    self.get_logger().warning(f"video stamp jumped back to {stamp:.3f}: clip buffer and alerts reset")
                self._frames.append((msg.header, rgb, time.monotonic()))
                while len(self._frames) > int(self.params["frame_queue"]):
                    self._frames.popleft()
                    self._dropped += 1
                self._cond.notify()
            self._last_arrival = time.monotonic()
            self._last_header = msg.header
        except conv.ConversionError as exc:
            self.bad.report("bad_image", str(exc))
        except Exception as exc:  # noqa: BLE001 - never raise out of a callback
            self.bad.report("image_callback_error", f"{type(exc).__name__}: {exc}")

    @property
    def _newest_stamp(self) -> float | None:
        """The newest admitted video stamp (None before the first)."""
        return None if self.processor is None else self.processor.newest_stamp

    @property
    def alerts(self) -> Any:
        """The alert state machine (the processor's)."""
        return None if self.processor is None else self.processor.alerts

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._frames:
                    self._cond.wait(0.2)
                if not self._frames:
                    continue
                header, rgb, arrival = self._frames.popleft()
            processor = self.processor
            if processor is None:
                continue
            if header is None:  # reset marker (clock jump)
                processor.reset()
                continue
            out = processor.process(rgb, conv.stamp_to_sec(header.stamp))
            if out is None:
                continue
            if out.error is not None:
                self.bad.report("recognition_error", out.error)
            else:
                self._publish(out.result, header)
                self.latency.add(time.monotonic() - arrival)
                self._clips += 1
            self._publish_alert(header, out.level, out.description, out.modalities, out.score, out.threshold)

    def _publish(self, r: Any, header: Any) -> None:

        msg = Recognition()
        msg.header = header
        msg.class_id = int(getattr(r, "class_id", -1))
        msg.class_name = str(getattr(r, "class_name", ""))
        msg.confidence = float(getattr(r, "confidence", 0.0))
        msg.ood_score = float(getattr(r, "ood_score", float("nan")))
        msg.score_name = str(getattr(r, "score_name", ""))
        msg.threshold = float(getattr(r, "threshold", float("nan")))
        msg.is_ood = bool(getattr(r, "is_ood", False))
        msg.modality_names = [str(n) for n in getattr(r, "modality_names", [])]
        msg.modality_scores = [float(s) for s in getattr(r, "modality_scores", [])]
        msg.num_frames = int(getattr(r, "num_frames", 0))
        msg.clip_duration = float(getattr(r, "clip_duration", 0.0))
        self._pubs["result"].publish(msg)

    def _publish_alert(self, header: Any, level: int, description: str, modalities: list[str], score: float,
                       threshold: float) -> None:

        if "alerts" in self._pubs:
            self._pubs["alerts"].publish(build_alert(header, NODE_NAME, level, description, modalities, score,
                                                     threshold if math.isfinite(threshold) else 0.0, 0.0, []))
        self._level = level

    def _on_timer(self) -> None:
        try:
            self.publish_diagnostics()
        except Exception as exc:  # noqa: BLE001
            self.bad.report("diagnostics_error", f"{type(exc).__name__}: {exc}")

    def diagnostics_values(self) -> dict[str, Any]:
        """Everything /diagnostics reports."""
        p50, p95 = self.latency.percentiles()
        age = None if self._last_arrival is None else time.monotonic() - self._last_arrival
        spec = getattr(self.backend, "spec", None)
        bad = self.bad.snapshot()
        values = {
            "state": self._state, "alert_level": LEVEL_NAMES.get(self._level, "?"),
            "video_rate_hz": self.rate.rate(), "video_age_s": float("nan") if age is None else age,
            "clips": self._clips, "dropped_frames": self._dropped, "clock_resets": self._resets,
            "latency_p50_ms": p50 * 1e3, "latency_p95_ms": p95 * 1e3,
            "backend": getattr(self.backend, "name", type(self.backend).__name__ if self.backend is not None else "none"),
            "model_sha256": spec_sha256(spec) if spec is not None else "", "model_error": self._model_error,
            "bad_inputs": sum(bad.values()), "bad_inputs_recent": sum(self.bad.recent().values()),
        }
        values.update({f"bad.{k}": v for k, v in sorted(bad.items())})
        return values

    def publish_diagnostics(self) -> None:
        """Publish /diagnostics; when active and the video is stale, also a DEGRADED alert."""

        v = self.diagnostics_values()
        stale = not v["video_age_s"] <= float(self.params.get("stale_timeout", 1.0))
        if self._model_error or self._state != "active":
            level, text = 2, self._model_error or f"node {self._state}"
        elif stale:
            level, text = 1, "video stale"
        else:
            level, text = (1 if v["bad_inputs_recent"] else 0), f"alert {v['alert_level']}"
            if v["bad_inputs_recent"]:
                text = f"{v['bad_inputs_recent']} bad inputs in the last {self.bad.window:g} s; {text}"
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [diagnostic_status(f"{self.get_name()}: action recognition", self.get_fully_qualified_name(),
                                        level, text, v)]
        if self._diag_pub is not None:
            self._diag_pub.publish(arr)
        if self._state == "active" and stale:
            # DEGRADED even while an ALERT stands (a consumer reading only the level must see it)
            frame = self._last_header.frame_id if self._last_header is not None else ""
            alerts = getattr(self, "alerts", None)
            text = f"{ALERT_STANDING}; degraded: video stale" if alerts is not None and alerts.alerting else "video stale"
            self._publish_alert(Header(stamp=arr.header.stamp, frame_id=frame), DEGRADED, text, [],
                                float("nan"), float("nan"))


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``action_recognition_node [--autostart] [--ros-args ...]``."""
    return run_node_main(ActionRecognitionNode, "action_recognition_node", argv)


if __name__ == "__main__":
    sys.exit(main())
