"""Shared pieces of the nodes: QoS from parameters, throttled per-reason error accounting,
diagnostics messages, and parameter declaration helpers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

#: Accepted values of the ``reliability`` parameter.
RELIABILITY = ("best_effort", "reliable")


def sensor_qos(reliability: str = "best_effort", depth: int = 5) -> Any:
    """Subscription QoS for sensor streams: KEEP_LAST ``depth``, VOLATILE, ``reliability``.

    ``best_effort`` (the default, as SensorDataQoS) matches both BEST_EFFORT and RELIABLE
    publishers; ``reliable`` only RELIABLE ones (a RELIABLE subscriber receives nothing from a
    BEST_EFFORT publisher).
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

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
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=int(depth), reliability=ReliabilityPolicy.RELIABLE)


class BadInputLog:
    """Counts bad inputs per reason and logs each reason at most once per ``period`` seconds."""

    def __init__(self, logger: Any, period: float = 5.0) -> None:
        self.logger = logger
        self.period = float(period)
        self.counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def report(self, reason: str, detail: str) -> None:
        """Count one bad input under ``reason`` and log ``detail`` (throttled per reason)."""
        now = time.monotonic()
        with self._lock:
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

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts."""
        with self._lock:
            return dict(self.counts)


def diagnostic_status(name: str, hardware_id: str, level: int, message: str, values: dict[str, Any]) -> Any:
    """A diagnostic_msgs/DiagnosticStatus with ``values`` as key/value strings."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

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
    """Declare a parameter with a descriptor carrying ``description`` (types fixed by the default)."""
    from rcl_interfaces.msg import ParameterDescriptor

    node.declare_parameter(name, default, ParameterDescriptor(description=description))


def stamp_from_sec(sec: float) -> Any:
    """builtin_interfaces/Time from float seconds."""
    from builtin_interfaces.msg import Time

    s = int(sec // 1)
    return Time(sec=s, nanosec=min(int(round((sec - s) * 1e9)), 999_999_999))


def run_node_main(node_cls: Any, prog: str, argv: list[str] | None = None) -> int:
    """Console entry point shared by the nodes: ``PROG [--autostart] [--ros-args ...]``.

    Applies the shipped DDS transport profile (unless chosen otherwise, see
    :mod:`ood_perception.ros.transport`), initialises rclpy with the ROS arguments, builds
    ``node_cls`` (with ``autostart`` set when ``--autostart`` is given, i.e. straight to active),
    spins it on a MultiThreadedExecutor until Ctrl-C, and shuts down cleanly.
    """
    import argparse
    import sys

    from ood_perception.ros.transport import apply_transport_profile

    apply_transport_profile(log=lambda m: print(f"{prog}: {m}", file=sys.stderr, flush=True))

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--autostart", action="store_true", help="configure and activate immediately")
    args, _ = parser.parse_known_args(rclpy.utilities.remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = node_cls(parameter_overrides=[Parameter("autostart", value=True)] if args.autostart else [])
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
