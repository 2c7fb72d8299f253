"""DDS transport for sensor-sized messages: the shipped profiles, applied before rclpy starts,
and the accounting of frames lost on the way to the callbacks.

Why: Fast DDS's shared-memory segment defaults to 512 KiB; camera images (1-6 MB) and LiDAR
clouds (1-4 MB) published BEST_EFFORT (SensorDataQoS, what drivers use) then mostly never reach
a subscriber, silently (bench/results/transport.md). The package ships
``config/fastdds_large_data.xml`` (64 MiB SHM segment, larger UDP socket buffers) and
``config/cyclonedds.xml``; :func:`apply_transport_profile` points the RMW at the one that fits
``RMW_IMPLEMENTATION`` by setting ``FASTDDS_DEFAULT_PROFILES_FILE`` (and the deprecated
``FASTRTPS_DEFAULT_PROFILES_FILE`` on distros whose Fast DDS 2.x reads only that) or
``CYCLONEDDS_URI`` -- unless you set one of them yourself, or ``OOD_PERCEPTION_TRANSPORT=off``.

The variables are read when a process creates its first DDS participant (``rclpy.init`` plus
the first node), so this must run before that; ``ood-perception run``, the node entry points
and the launch files (through :func:`transport_environment`) do. The segment that matters is
the *publisher's*: drivers publishing the images and clouds need the profile too.

:class:`TransportLossMonitor` counts frames lost before the callback, per input: from the
publisher's sequence numbers (rmw ``MessageInfo``, rclpy >= Iron) when available, else from
gaps in header stamps (> 1.5 x the median stamp period), and reports them over a recent window
for /diagnostics.

No rclpy import at module level: launch files and the CLI import this before rclpy exists.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

#: Environment variable that turns the shipped profiles off (``off``, ``0``, ``false``, ``none``).
OPT_OUT_ENV = "OOD_PERCEPTION_TRANSPORT"
FASTDDS_PROFILE = "fastdds_large_data.xml"
CYCLONEDDS_CONFIG = "cyclonedds.xml"
FASTDDS_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")
CYCLONEDDS_RMWS = ("rmw_cyclonedds_cpp",)
#: The RMW ROS 2 uses when RMW_IMPLEMENTATION is unset (Humble through Kilted).
DEFAULT_RMW = "rmw_fastrtps_cpp"
#: ROS distributions whose Fast DDS (2.x) reads only FASTRTPS_DEFAULT_PROFILES_FILE.
FASTRTPS_NAME_DISTROS = ("humble", "iron", "jazzy")
#: Variables by which a user has already chosen a Fast DDS transport set-up.
FASTDDS_USER_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")

__all__ = [
    "OPT_OUT_ENV",
    "TransportLossMonitor",
    "TransportSetup",
    "apply_transport_profile",
    "config_dir",
    "plan_transport",
    "message_lost_callbacks",
    "transport_environment",
    "with_message_info",
]


def config_dir() -> Path:
    """The package's config/ folder: the source tree, the install prefix's share/, or the ament index."""
    here = Path(__file__).resolve().parents[2] / "config"
    candidates = [here, Path(sys.prefix) / "share" / "ood_perception" / "config"]
    for c in candidates:
        if (c / FASTDDS_PROFILE).is_file():
            return c
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("ood_perception")) / "config"
        if (share / FASTDDS_PROFILE).is_file():
            return share
    except Exception:  # noqa: BLE001 - ament index absent or package not installed through colcon
        pass
    return here


@dataclass(frozen=True)
class TransportSetup:
    """What :func:`plan_transport` decided: the RMW, the variables to set, and one line saying so."""

    rmw: str
    variables: dict[str, str] = field(default_factory=dict)
    message: str = ""


def _fastdds_reads_old_name(environ: MutableMapping[str, str]) -> bool:
    """True where Fast DDS is 2.x (reads FASTRTPS_DEFAULT_PROFILES_FILE): by ROS_DISTRO, else the
    installed ros-fastdds wheel's version; False when neither says (Kilted and later: 3.x)."""
    distro = environ.get("ROS_DISTRO", "").strip().lower()
    if distro:
        return distro in FASTRTPS_NAME_DISTROS
    try:
        return int(metadata.version("ros-fastdds").split(".")[0]) < 3
    except (metadata.PackageNotFoundError, ValueError):
        return False


def plan_transport(environ: MutableMapping[str, str] | None = None, config: Path | None = None) -> TransportSetup:
    """Decide the transport variables for the RMW in ``environ`` (default ``os.environ``), without
    changing anything. Variables the user already set are kept and named in the message."""
    env = os.environ if environ is None else environ
    rmw = env.get("RMW_IMPLEMENTATION", "").strip() or DEFAULT_RMW
    cfg = config_dir() if config is None else Path(config)
    if env.get(OPT_OUT_ENV, "").strip().lower() in ("off", "0", "false", "none", "no"):
        return TransportSetup(rmw, {}, f"transport: {OPT_OUT_ENV}={env[OPT_OUT_ENV]}: DDS defaults for {rmw} "
                              "(large BEST_EFFORT samples may be lost)")
    if rmw in FASTDDS_RMWS:
        mine = [k for k in FASTDDS_USER_VARS if env.get(k)]
        if mine:
            return TransportSetup(rmw, {}, "transport: your " + ", ".join(f"{k}={env[k]}" for k in mine)
                                  + " applies (the shipped Fast DDS profile is not used)")
        path = cfg / FASTDDS_PROFILE
        if not path.is_file():
            return TransportSetup(rmw, {}, f"transport: shipped profile {path} not found: Fast DDS defaults")
        variables = {"FASTDDS_DEFAULT_PROFILES_FILE": str(path)}
        if _fastdds_reads_old_name(env):
            variables["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(path)
        return TransportSetup(rmw, variables, f"transport: Fast DDS profile {path} (64 MiB shared-memory segment, "
                              "8 MiB UDP buffers) for sensor-sized messages")
    if rmw in CYCLONEDDS_RMWS:
        if env.get("CYCLONEDDS_URI"):
            return TransportSetup(rmw, {}, f"transport: your CYCLONEDDS_URI={env['CYCLONEDDS_URI']} applies")
        path = cfg / CYCLONEDDS_CONFIG
        if not path.is_file():
            return TransportSetup(rmw, {}, f"transport: shipped config {path} not found: Cyclone DDS defaults")
        return TransportSetup(rmw, {"CYCLONEDDS_URI": path.as_uri()},
                              f"transport: Cyclone DDS config {path} (16 MB socket receive buffer, "
                              "capped by net.core.rmem_max)")
    return TransportSetup(rmw, {}, f"transport: no shipped configuration for {rmw}: its defaults apply")


def transport_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The variables to add to a launch description (``SetEnvironmentVariable``), {} when none."""
    return dict(plan_transport(environ).variables)


def apply_transport_profile(environ: MutableMapping[str, str] | None = None,
                            log: Callable[[str], Any] | None = print) -> TransportSetup:
    """Set the shipped transport variables in ``environ`` (default ``os.environ``) unless already
    chosen; log which configuration applies. Call before the first DDS participant exists."""
    env = os.environ if environ is None else environ
    setup = plan_transport(env)
    for k, v in setup.variables.items():
        env[k] = v
    if log is not None:
        log(setup.message)
    return setup


def with_message_info(callback: Callable[[Any, Any], None]) -> Callable[..., None]:
    """A subscription callback that receives rmw's MessageInfo where rclpy passes it (Iron and
    later: two positional parameters), else the message alone (Humble) with ``info=None``."""
    try:
        from rclpy.subscription import MessageInfo  # noqa: F401 - presence test only
    except ImportError:
        return lambda msg: callback(msg, None)
    return lambda msg, info: callback(msg, info)


def message_lost_callbacks(callback: Callable[[int], None]) -> Any:
    """``event_callbacks`` for a subscription calling ``callback(count_change)`` on the DDS
    sample-lost event (samples the middleware knows it lost: a missing fragment, a best-effort gap),
    or None where rclpy has no such event. The caller retries without it on UnsupportedEventTypeError."""
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:  # Humble
        try:
            from rclpy.qos_event import SubscriptionEventCallbacks
        except ImportError:
            return None
    try:
        return SubscriptionEventCallbacks(message_lost=lambda ev: callback(int(ev.total_count_change)))
    except TypeError:  # an rclpy without the message_lost event
        return None


# ----------------------------------------------------------------------------- loss accounting


@dataclass
class _Stream:
    last_stamp: float | None = None
    deltas: deque = field(default_factory=lambda: deque(maxlen=50))
    last_seq: dict = field(default_factory=dict)  # publisher gid -> last publication sequence number
    seq_known: bool = False
    received: int = 0
    lost_seq: int = 0
    stamp_gaps: int = 0
    lost_dds: int = 0
    # (arrival, received 0/1, lost by seq, missing by stamps, lost by DDS events)
    events: deque = field(default_factory=deque)


class TransportLossMonitor:
    """Frames lost before the callback, per input stream, over a recent window.

    Three estimates, per stream:

    * ``transport``: samples the DDS middleware reports lost (the sample-lost event: a fragment
      that never arrived, a best-effort sequence gap) -- transport loss proper, and the only one
      that also fires when *no* sample gets through;
    * ``lost``: gaps in the publisher's sequence numbers (per publisher; exact, needs rmw
      MessageInfo): the samples the publisher wrote that never reached this callback -- lost in
      transport or overwritten in the subscription queue;
    * ``stamp_gaps``: frames missing from the header stamps, ``round(dt / period) - 1`` for every
      stamp step ``dt > gap_factor * period``, with ``period`` the median of the last 50 positive
      steps (needs ``min_deltas`` of them). Counts what the publisher skipped too; the only
      estimate where sequence numbers are not available.

    A stamp going backwards (bag loop, simulator restart) or a publisher's sequence number going
    backwards restarts that baseline without counting anything.
    """

    def __init__(self, window_s: float = 10.0, gap_factor: float = 1.5, min_deltas: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if not gap_factor > 1.0:
            raise ValueError(f"gap_factor must be > 1, got {gap_factor}")
        self.window_s = float(window_s)
        self.gap_factor = float(gap_factor)
        self.min_deltas = int(min_deltas)
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()

    def observe(self, name: str, stamp: float, info: Any = None, now: float | None = None) -> None:
        """Record one message of stream ``name`` with header stamp ``stamp`` [s] and the rmw
        MessageInfo (a mapping with ``publication_sequence_number`` and ``publisher_gid``) or None."""
        now = self._clock() if now is None else now
        with self._lock:
            s = self._streams.setdefault(name, _Stream())
            s.received += 1
            lost = self._seq_gap(s, info)
            missing = self._stamp_gap(s, float(stamp))
            s.lost_seq += lost
            s.stamp_gaps += missing
            s.events.append((now, 1, lost, missing, 0))
            self._trim(s, now)

    def lost_in_transport(self, name: str, count: int, now: float | None = None) -> None:
        """Record ``count`` samples of stream ``name`` that the middleware reported lost."""
        if count <= 0:
            return
        now = self._clock() if now is None else now
        with self._lock:
            s = self._streams.setdefault(name, _Stream())
            s.lost_dds += int(count)
            s.events.append((now, 0, 0, 0, int(count)))
            self._trim(s, now)

    @staticmethod
    def _seq_gap(s: _Stream, info: Any) -> int:
        seq = None
        gid: Any = None
        if info is not None:
            try:
                seq = info.get("publication_sequence_number")
                gid = info.get("publisher_gid")
            except AttributeError:
                seq = getattr(info, "publication_sequence_number", None)
                gid = getattr(info, "publisher_gid", None)
        if seq is None or int(seq) <= 0:
            return 0
        s.seq_known = True
        key = repr(gid.get("data") if isinstance(gid, dict) else gid)
        last = s.last_seq.get(key)
        s.last_seq[key] = int(seq)
        if last is None or int(seq) <= last:
            return 0
        return int(seq) - last - 1

    def _stamp_gap(self, s: _Stream, stamp: float) -> int:
        last = s.last_stamp
        if last is not None and stamp < last:  # clock reset: new baseline
            s.deltas.clear()
            s.last_stamp = stamp
            return 0
        s.last_stamp = stamp
        if last is None or stamp == last:
            return 0
        dt = stamp - last
        missing = 0
        if len(s.deltas) >= self.min_deltas:
            period = statistics.median(s.deltas)
            if period > 0 and dt > self.gap_factor * period:
                missing = max(int(round(dt / period)) - 1, 1)
        if missing == 0:
            s.deltas.append(dt)  # gaps would inflate the period estimate
        return missing

    def _trim(self, s: _Stream, now: float) -> None:
        while s.events and now - s.events[0][0] > self.window_s:
            s.events.popleft()

    def period(self, name: str) -> float | None:
        """The publisher's period [s] estimated from stamps, None before ``min_deltas`` steps."""
        with self._lock:
            s = self._streams.get(name)
            if s is None or len(s.deltas) < self.min_deltas:
                return None
            return statistics.median(s.deltas)

    def recent(self, name: str, now: float | None = None) -> dict[str, Any]:
        """Counts in the window: ``received``; ``transport`` (DDS sample-lost events); ``lost``
        (sequence gaps, or stamp gaps where sequence numbers are unknown; includes the transport
        losses the gaps reveal); ``loss`` = lost share of what was published, and ``by``."""
        now = self._clock() if now is None else now
        with self._lock:
            s = self._streams.get(name)
            if s is None:
                return {"received": 0, "lost": 0, "transport": 0, "loss": 0.0, "by": "none"}
            self._trim(s, now)
            received = sum(e[1] for e in s.events)
            transport = sum(e[4] for e in s.events)
            by = "sequence" if s.seq_known else "stamps"
            lost = max(sum(e[2] if s.seq_known else e[3] for e in s.events), transport)
            total = received + lost
            return {"received": received, "lost": lost, "transport": transport,
                    "loss": lost / total if total else 0.0, "by": by}

    def values(self, names: tuple[str, ...], now: float | None = None) -> dict[str, Any]:
        """Diagnostics key/values for ``names``: totals, the recent window and the stamp period."""
        out: dict[str, Any] = {}
        for name in names:
            r = self.recent(name, now)
            per = self.period(name)
            with self._lock:
                s = self._streams.get(name, _Stream())
                out[f"{name}_lost_total"] = max(s.lost_seq if s.seq_known else s.stamp_gaps, s.lost_dds)
                out[f"{name}_lost_in_transport_total"] = s.lost_dds
                out[f"{name}_stamp_gaps_total"] = s.stamp_gaps
            out[f"{name}_lost_recent"] = r["lost"]
            out[f"{name}_loss_recent_pct"] = 100.0 * r["loss"]
            out[f"{name}_loss_by"] = r["by"]
            out[f"{name}_publisher_hz"] = float("nan") if per is None else 1.0 / per
        return out

    def summary(self, names: tuple[str, ...], min_loss: float = 0.05, now: float | None = None) -> str:
        """One line naming every stream that lost at least ``min_loss`` of its frames in the window
        (and at least one frame), '' when none did. Says where they were lost: in transport (DDS
        sample-lost events), before the callback (sequence gaps the middleware did not report: the
        subscription queue overflowed), or unknown (header-stamp gaps only)."""
        parts = []
        for name in names:
            r = self.recent(name, now)
            if r["lost"] < 1 or r["loss"] < min_loss:
                continue
            per = self.period(name)
            hz = f", publisher ~{1.0 / per:.1f} Hz by stamps" if per else ""
            if r["transport"] >= 1:
                what = "lost in transport"
            elif r["by"] == "sequence":
                what = "dropped before the callback (subscription queue overflow)"
            else:
                what = "missing from header stamps"
            parts.append(f"{name} {r['loss']:.0%} of frames {what} in the last {self.window_s:g} s "
                         f"({r['lost']} lost, {r['received']} received{hz})")
        return "; ".join(parts)
