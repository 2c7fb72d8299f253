"""Benchmark of DDS delivery for sensor-sized messages: default Fast DDS vs the shipped profile.

    .venv/bin/python bench/transport.py [--messages 15] [--rate 10] [--quick] [--configs NAME ...]
        [--out bench/results/transport.json]

Publishes sensor_msgs/Image payloads of real sensor sizes at 10 Hz from one process to a
subscriber in another (one host), with BEST_EFFORT (SensorDataQoS: KEEP_LAST 5) and RELIABLE
(KEEP_LAST 5) QoS, and counts what reaches the subscriber's callback. Configurations, each a
separate pair of processes since Fast DDS reads its profile when a process's first participant
is created:

* ``default``: no profile (Fast DDS's built-in SHM 512 KiB segment + UDP);
* ``shipped``: ``config/fastdds_large_data.xml`` on both sides;
* ``default->shipped``: only the subscriber (our node) has the profile, the publisher (a
  driver started elsewhere) has not -- the case the README warns about;
* ``LARGE_DATA``: ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` on both sides, Fast DDS's own
  large-data mode (TCP for data between hosts, SHM on one host with its default segment);
* ``udp:default`` / ``udp:shipped``: UDP only (no SHM: the path samples take between hosts),
  here over loopback, with default socket buffers vs the shipped profile's. Loopback has no
  wire losses: what is lost here is lost in the two hosts' stacks (socket buffers -- the kernel's
  UDP counters over the run are recorded -- or the DDS fragment handling), a lower bound for a
  real network.

Cells are measured side by side: for each (message, QoS) every configuration runs in turn, so
machine load drifts affect them alike. The output is the delivered share and rate per cell.
Written atomically to bench/results/transport.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROFILE = ROOT / "ood_perception" / "config" / "fastdds_large_data.xml"

#: (name, width, height, bytes per pixel): payloads of real sensors, sent as Images.
#: Clouds are sent as Images of the same byte size (the transport only sees bytes).
MESSAGES: list[tuple[str, int, int, int]] = [
    ("image 320x240 rgb8 (0.23 MB)", 320, 240, 3),
    ("cloud 32x1024 xyzi (0.52 MB)", 1024, 32, 16),
    ("cloud 64k pts xyzi (1.05 MB)", 65536, 1, 16),
    ("image 1024x512 rgb8 (1.57 MB)", 1024, 512, 3),
    ("cloud 128x2048 xyzi (4.19 MB)", 2048, 128, 16),
    ("image 1920x1080 rgb8 (6.22 MB)", 1920, 1080, 3),
]

#: configuration name -> (publisher profile, subscriber profile); None = no profile.
PAIRS: dict[str, tuple[str | None, str | None]] = {
    "default": (None, None),
    "shipped": ("shipped", "shipped"),
    "default->shipped": (None, "shipped"),
    "LARGE_DATA": ("large_data", "large_data"),
    "udp:default": ("udp_default", "udp_default"),
    "udp:shipped": ("udp_shipped", "udp_shipped"),
}

#: configurations also measured with RELIABLE QoS (the others only with SensorDataQoS's BEST_EFFORT).
RELIABLE_PAIRS = ("default", "shipped", "udp:default")

NS = "http://www.eprosima.com"


# ----------------------------------------------------------------------------- profiles


def udp_only_profile(path: Path, tuned: bool) -> None:
    """Write a UDP-only variant of the shipped profile (``tuned``: its socket buffers; else Fast DDS
    defaults), i.e. the path a sample takes between hosts."""
    ET.register_namespace("", NS)
    tree = ET.parse(PROFILE)
    root = tree.getroot()
    q = f"{{{NS}}}"
    descs = root.find(f"{q}profiles/{q}transport_descriptors")
    for d in list(descs):
        kind = d.find(f"{q}type").text
        if kind == "SHM":
            descs.remove(d)
        elif not tuned:
            for tag in ("sendBufferSize", "receiveBufferSize"):
                el = d.find(q + tag)
                if el is not None:
                    d.remove(el)
    user = root.find(f"{q}profiles/{q}participant/{q}rtps/{q}userTransports")
    for t in list(user):
        if "shm" in (t.text or ""):
            user.remove(t)
    tree.write(path, xml_declaration=True, encoding="UTF-8")


def profile_env(name: str | None, tmp: Path) -> dict[str, str]:
    """Environment of a worker using profile ``name`` (None: Fast DDS defaults)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                        "FASTDDS_BUILTIN_TRANSPORTS", "RMW_FASTRTPS_USE_QOS_FROM_XML")}
    env["OOD_PERCEPTION_TRANSPORT"] = "off"  # the package must not apply its own profile here
    if name == "shipped":
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    elif name == "large_data":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    elif name in ("udp_default", "udp_shipped"):
        path = tmp / f"{name}.xml"
        if not path.exists():
            udp_only_profile(path, tuned=name == "udp_shipped")
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(path)
    return env


# ----------------------------------------------------------------------------- workers


def _qos(reliable: bool) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


def worker(role: str) -> int:
    """A publisher or subscriber process driven by JSON lines on stdin (one reply line each)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node(f"bench_transport_{role}_{os.getpid()}")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    lock = threading.Lock()
    received: dict[str, set[int]] = {}
    subs: dict[str, Any] = {}
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ex.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        topic = cmd["topic"]
        if op == "sub":
            received[topic] = set()

            def cb(msg: Any, topic: str = topic) -> None:
                with lock:
                    received[topic].add(int(msg.header.frame_id))

            with lock:
                subs[topic] = node.create_subscription(Image, topic, cb, _qos(cmd["reliable"]))
            reply({"ok": True})
        elif op == "count":
            with lock:
                got = sorted(received.pop(topic, set()))
                sub = subs.pop(topic, None)
            if sub is not None:
                node.destroy_subscription(sub)
            reply({"received": got})
        elif op == "pub":
            pub = node.create_publisher(Image, topic, _qos(cmd["reliable"]))
            deadline = time.monotonic() + 10.0
            while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            matched = pub.get_subscription_count() > 0
            time.sleep(0.2)  # let the match settle on both sides
            msg = Image(width=cmd["width"], height=cmd["height"], encoding="rgb8" if cmd["bpp"] == 3 else "mono8",
                        step=cmd["width"] * cmd["bpp"])
            msg.data = bytes(cmd["width"] * cmd["height"] * cmd["bpp"])
            period = 1.0 / cmd["rate"]
            t0 = time.monotonic()
            late = 0.0
            for i in range(cmd["n"]):
                target = t0 + i * period
                now = time.monotonic()
                if now < target:
                    time.sleep(target - now)
                else:
                    late = max(late, now - target)
                msg.header.frame_id = str(i)
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                pub.publish(msg)
            elapsed = time.monotonic() - t0
            time.sleep(0.3)
            node.destroy_publisher(pub)
            reply({"matched": matched, "elapsed_s": elapsed, "max_late_s": late})
    stop.set()
    spinner.join(timeout=2.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


class Worker:
    """A worker subprocess and its JSON-lines pipe."""

    def __init__(self, role: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", role], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError(f"{role} worker failed to start (exit {self.proc.wait()})")

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - best effort shutdown
            self.proc.kill()


# ----------------------------------------------------------------------------- driver


def run(messages: int, rate: float, pairs: list[str], sizes: list[tuple[str, int, int, int]]) -> list[dict[str, Any]]:
    """Measure every (message, QoS, configuration) cell; configurations interleaved per cell."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        profiles = sorted({p for name in pairs for p in PAIRS[name]}, key=str)
        pubs = {p: Worker("pub", profile_env(p, tmp)) for p in profiles}
        subs = {p: Worker("sub", profile_env(p, tmp)) for p in profiles}
        try:
            k = 0
            # warm-up, not recorded: the first cell of a fresh process pair loses samples while
            # discovery settles (measured: 10-13 of 15 small images delivered), whatever the profile
            for name in pairs:
                pp, sp = PAIRS[name]
                topic = f"bench_transport_warmup_{pairs.index(name)}"
                subs[sp].call(op="sub", topic=topic, reliable=False)
                pubs[pp].call(op="pub", topic=topic, reliable=False, width=64, height=64, bpp=3, n=5, rate=rate)
                subs[sp].call(op="count", topic=topic)
            for label, w, h, bpp in sizes:
                for reliable in (False, True):
                    for name in pairs:
                        if reliable and name not in RELIABLE_PAIRS:
                            continue
                        pp, sp = PAIRS[name]
                        k += 1
                        topic = f"bench_transport_{k}"
                        subs[sp].call(op="sub", topic=topic, reliable=reliable)
                        res = pubs[pp].call(op="pub", topic=topic, reliable=reliable, width=w, height=h, bpp=bpp,
                                            n=messages, rate=rate)
                        got = subs[sp].call(op="count", topic=topic)["received"]
                        row = {
                            "message": label, "bytes": w * h * bpp, "qos": "reliable" if reliable else "best_effort",
                            "config": name, "published": messages, "received": len(got),
                            "delivered": len(got) / messages,
                            "rate_hz": len(got) / res["elapsed_s"] * (messages - 1) / messages if res["elapsed_s"] > 0 else 0.0,
                            "publish_rate_hz": (messages - 1) / res["elapsed_s"] if res["elapsed_s"] > 0 else 0.0,
                            "matched": res["matched"], "publisher_max_late_s": res["max_late_s"],
                        }
                        rows.append(row)
                        print(f"{label:32s} {row['qos']:12s} {name:18s} {len(got):3d}/{messages} "
                              f"({row['rate_hz']:.1f} Hz)", flush=True)
        finally:
            for wk in (*pubs.values(), *subs.values()):
                wk.close()
    return rows


def udp_counters() -> dict[str, int]:
    """Linux UDP counters (/proc/net/snmp) of this network namespace; {} where unreadable."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
        return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True)}
    except (OSError, IndexError, ValueError):
        return {}


def markdown(rows: list[dict[str, Any]], pairs: list[str], args: argparse.Namespace, info_line: str,
             data: dict[str, Any]) -> str:
    from _common import markdown_table

    out = ["# DDS transport: delivered rate per message size (one host)", "",
           f"{args.messages} messages per cell published at {args.rate:g} Hz, Fast DDS "
           f"{fastdds_version()}, rmw_fastrtps_cpp, publisher and subscriber in separate processes. "
           "Cell = delivered rate in Hz (share of published). Configurations interleaved per cell.", "",
           f"Machine: {info_line}", ""]
    for qos in ("best_effort", "reliable"):
        out += [f"## {qos}", ""]
        names = [n for n in pairs if qos == "best_effort" or n in RELIABLE_PAIRS]
        headers = ["message", *names]
        table = []
        for label in dict.fromkeys(r["message"] for r in rows):
            cells = []
            for name in names:
                r = next((r for r in rows if r["message"] == label and r["qos"] == qos and r["config"] == name), None)
                cells.append("-" if r is None else f"{r['rate_hz']:.1f} ({r['delivered']:.0%})")
            table.append([label, *cells])
        out += [markdown_table(headers, table)]
    udp = data.get("udp_counters_delta", {})
    out += ["`default`: no profile; `shipped`: config/fastdds_large_data.xml on both sides; "
            "`default->shipped`: only the subscriber has it; `LARGE_DATA`: FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA "
            "on both sides; `udp:*`: UDP only (the path between hosts), "
            "over loopback, default vs shipped socket buffers (kernel caps: "
            f"rmem_max {sysctl('net/core/rmem_max')}, wmem_max {sysctl('net/core/wmem_max')}). "
            "UDP counters of this network namespace over the whole run (all processes on it): "
            + (", ".join(f"{k} +{v}" for k, v in udp.items()) or "n/a") + ".", ""]
    return "\n".join(out)


def sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "?"


def fastdds_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ros-fastdds")
    except metadata.PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["pub", "sub"], help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=15, help="messages per cell (default 15)")
    parser.add_argument("--rate", type=float, default=10.0, help="publish rate [Hz] (default 10)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and configurations (a smoke run)")
    parser.add_argument("--configs", nargs="*", default=None, choices=list(PAIRS),
                        help="configurations to measure (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.messages < 2 or not args.rate > 0:
        parser.error("--messages must be >= 2 and --rate > 0")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(180 + os.getpid() % 50))
    from _common import machine_info, machine_line, write_results

    pairs = list(PAIRS)
    sizes = MESSAGES
    if args.quick:
        pairs = ["default", "shipped"]
        sizes = [MESSAGES[0], MESSAGES[3]]
    if args.configs:
        pairs = list(args.configs)
    info = machine_info()
    t0 = time.perf_counter()
    udp0 = udp_counters()
    rows = run(args.messages, args.rate, pairs, sizes)
    udp1 = udp_counters()
    data = {
        "messages_per_cell": args.messages, "rate_hz": args.rate, "fastdds": fastdds_version(),
        "profile": str(PROFILE.relative_to(ROOT)), "configs": {k: PAIRS[k] for k in pairs},
        "sysctl": {k: sysctl(k) for k in ("net/core/rmem_max", "net/core/wmem_max")},
        "udp_counters_delta": {k: udp1[k] - udp0.get(k, 0) for k in ("InDatagrams", "RcvbufErrors", "InErrors",
                                                                     "SndbufErrors") if k in udp1},
        "rows": rows, "wall_s": time.perf_counter() - t0, "machine": info,
    }
    j, m = write_results("transport", data, markdown(rows, pairs, args, machine_line(info), data), args.out)
    print(f"wrote {j} and {m} in {data['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
