"""Shared pieces of the nodes: QoS from parameters, throttled per-reason error accounting,
diagnostics messages, and parameter declaration helpers."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor

from ood_perception.pipeline.params import unknown_names

#: Accepted values of the ``reliability`` parameter.
RELIABILITY = ("best_effort", "reliable")


def sensor_qos(reliability: str = "best_effort", depth: int = 5) -> Any:
    """Subscription QoS for sensor streams: KEEP_LAST ``depth``, VOLATILE, ``reliability``.

    ``best_effort`` (the default, as SensorDataQoS) matches both BEST_EFFORT and RELIABLE
    publishers; ``reliable`` only RELIABLE ones (a RELIABLE subscriber receives nothing from a
    BEST_EFFORT publisher).
    """
    from rclpy.qos import (  # lazy: rclpy is heavy to import and only this path needs it
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
    )

    if reliability not in RELIABILITY:
        raise ValueError(f"reliability must be one of {RELIABILITY}, got {reliability!r}")
    if int(depth) < 1:
        raise ValueError(f"qos_depth must be >= 1, got {depth}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def output_qos(depth: int = 5) -> Any:
    """Publisher QoS for outputs: RELIABLE KEEP_LAST (reaches reliable and best-effort subscribers)."""
    from rclpy.qos import (  # lazy: rclpy is heavy to import and only this path needs it
        QoSProfile,
        ReliabilityPolicy,
    )

    return QoSProfile(depth=int(depth), reliability=ReliabilityPolicy.RELIABLE)


class BadInputLog:
    """Counts bad inputs per reason (since start, and over the last ``window`` seconds: what
    /diagnostics judges by, so a WARN clears once the input is good again) and logs each reason at
    most once per ``period`` seconds."""

    def __init__(self, logger: Any, period: float = 5.0, window: float = 10.0, clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.period = float(period)
        self.window = float(window)
        self.counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._recent: deque[tuple[float, str]] = deque()
        self._clock = clock
        self._lock = threading.Lock()

    def report(self, reason: str, detail: str) -> None:
        """Count one bad input under ``reason`` and log ``detail`` (throttled per reason)."""
        now = self._clock()
        with self._lock:
            self._recent.append((now, reason))
            self._trim(now)
            self.counts[reason] += 1
            n = self.counts[reason]
            due = now - self._last.get(reason, -1e18) >= self.period
            if due:
                self._last[reason] = now
        if due:
            try:
                self.logger.warning(f"{reason}: {detail} ({n} so far)")
            except Exception:  # noqa: BLE001 - logging must never take the node down
                pass

    def _trim(self, now: float) -> None:
        while self._recent and now - self._recent[0][0] > self.window:
            self._recent.popleft()

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts since start."""
        with self._lock:
            return dict(self.counts)

    def recent(self) -> dict[str, int]:
        """Counts per reason over the last ``window`` seconds."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            return dict(Counter(reason for _, reason in self._recent))


def diagnostic_status(name: str, hardware_id: str, level: int, message: str, values: dict[str, Any]) -> Any:
    """A diagnostic_msgs/DiagnosticStatus with ``values`` as key/value strings."""

    st = DiagnosticStatus()
    st.level = bytes([int(level)])
    st.name = name
    st.hardware_id = hardware_id
    st.message = message
    st.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    return st


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def declare(node: Any, name: str, default: Any, description: str) -> None:
    """Declare a parameter with a descriptor carrying ``description``.

    Dynamically typed: rclpy accepts any type at declaration (a statically typed parameter makes
    the constructor raise ``InvalidParameterTypeException`` for ``slop: 1``, an int for a double,
    leaving a half-built node), and the node coerces the value to the table type at configure
    (:func:`ood_perception.pipeline.params.coerce_params`: lossless conversions, else one line
    naming the parameter). ``default`` None declares an unset parameter (e.g. an optional matrix).
    """

    node.declare_parameter(name, default, ParameterDescriptor(description=description, dynamic_typing=True))


def warn_unknown_overrides(node: Any, known: Any) -> list[str]:
    """Log (warning) and return one line per parameter given to ``node`` (params file, launch,
    ``-p``) that it does not have, with a did-you-mean: rclpy ignores such names silently."""

    given = list(getattr(node, "_parameter_overrides", {}) or {})  # rclpy keeps them on the node
    lines = unknown_names(given, list(known), "")  # the logger names the node
    for line in lines:
        node.get_logger().warning(line)
    return lines


def stamp_from_sec(sec: float) -> Any:
    """builtin_interfaces/Time from float seconds."""

    s = int(sec // 1)
    return Time(sec=s, nanosec=min(int(round((sec - s) * 1e9)), 999_999_999))


def run_node_main(node_cls: Any, prog: str, argv: list[str] | None = None) -> int:
    """Console entry point shared by the nodes: ``PROG [--autostart] [--ros-args ...]``.

    Applies the shipped DDS transport profile (unless chosen otherwise, see
    :mod:`ood_perception.ros.transport`), initialises rclpy with the ROS arguments, builds
    ``node_cls`` (with ``autostart`` set when ``--autostart`` is given, i.e. straight to active),
    spins it on a MultiThreadedExecutor until Ctrl-C, and shuts down cleanly.
    """

    from ood_perception.ros.transport import apply_transport_profile

    apply_transport_profile(log=lambda m: print(f"{prog}: {m}", file=sys.stderr, flush=True))

    import rclpy  # lazy: rclpy after the transport profile is in the environment (read when the first DDS participant starts)
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--autostart", action="store_true", help="configure and activate immediately")
    args, _ = parser.parse_known_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    try:
        node = node_cls(parameter_overrides=[Parameter("autostart", value=True)] if args.autostart else [])
    except Exception as exc:  # noqa: BLE001 - one clear line, never a half-built node's traceback
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if rclpy.ok():
            rclpy.shutdown()
        return 1
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
