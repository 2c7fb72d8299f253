"""Sustained rate of the fusion node on world frames with the shipped vehicle config (issue 17's
"bench/node >= 10 Hz sustained end to end at the default sizes on this 2-core CPU").

    .venv/bin/python bench/node_world.py [--seconds 60] [--rate 10] [--seed 8240]
        [--out bench/results/node_world.json]

What runs: a held-out test drive of the synthetic world (``synth --split test``, default camera
512x256, the world's 32-beam LiDAR, default anomaly rate) is rendered into a temporary folder;
its frames are published over DDS (camera image + CameraInfo + PointCloud2, one stamp per frame,
looping the drive with increasing stamps) at ``--rate`` Hz for ``--seconds``; the fusion node
runs with ``ood_perception/config/vehicle.yaml`` (object decisions, the default model and its
calibrated decision block), the rig's extrinsics given as ``lidar_to_camera.matrix`` as a user with
a calibrated rig would. Unlike ``bench/node.py`` (random pixels, pixel threshold 0: the overhead of
the node around the model), the scenes here have ground, objects and anomalies, so the object
decisions (LiDAR clustering, ground fit, tracking) do their real work.

Reported: frames sent, alerts published for them and the share, fused share, the node's
arrival->published latency (p50/p95), model time inside the node, frames the worker skipped while
busy, levels, the load average and the CPU count. Written atomically (JSON and a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ood_perception.atomic import atomic_write_text
from ood_perception.replay.params import node_parameters

HERE = Path(__file__).resolve().parent
VEHICLE = HERE.parent / "ood_perception" / "config" / "vehicle.yaml"


def publish_drive(root: Path, rate: float, seconds: float, warm: int) -> dict:
    """The sensors' process: publish the drive's frames (camera image, CameraInfo, PointCloud2, one stamp
    each) at ``rate`` Hz with sensor-data QoS for ``warm`` frames plus ``seconds``; returns the stamps sent
    after the warm-up, each with 1 when the frame has >= 200 labelled anomaly pixels."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from ood_perception.data.semantickitti import SemanticKittiReader
    from ood_perception.ros import messages as rosmsg
    from ood_perception.ros.common import stamp_from_sec

    reader = SemanticKittiReader(root)
    frames = list(reader)
    calib = frames[0].calib
    H, W = frames[0].image.shape[:2]
    cloud_dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    msgs = []
    for f in frames:
        rec = np.zeros(len(f.points), cloud_dtype)
        for i, name in enumerate(("x", "y", "z", "intensity")):
            rec[name] = f.points[:, i]
        img = rosmsg.image_msg(f.image, "rgb8")
        img.header.frame_id = "camera"
        cloud = rosmsg.cloud_msg(rec)
        cloud.header.frame_id = "lidar"
        msgs.append((img, cloud, int(f.pixel_labels is not None and reader.config.ood_mask(f.pixel_labels).sum() >= 200)))
    info = CameraInfo(width=W, height=H)
    info.k = [float(v) for v in calib.K.ravel()]
    info.header.frame_id = "camera"

    rclpy.init()
    io = rclpy.create_node("bench_world_sensors")
    sensor = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    pubs = {"img": io.create_publisher(Image, "camera/image", sensor),
            "info": io.create_publisher(CameraInfo, "camera/camera_info", QoSProfile(depth=5)),
            "pts": io.create_publisher(PointCloud2, "lidar/points", sensor)}
    deadline = time.monotonic() + 10.0
    while pubs["pts"].get_subscription_count() == 0 or pubs["img"].get_subscription_count() == 0:
        if time.monotonic() > deadline:
            raise SystemExit("the node's subscriptions never matched")
        time.sleep(0.05)
    period = 1.0 / rate
    sent = []
    start = time.monotonic()
    k = 0
    late = 0
    while time.monotonic() - start < seconds + warm * period:
        if time.monotonic() > start + (k + 1) * period:  # this process fell a frame behind: a camera drops the
            k += 1                                        # frame, it does not send a burst later
            late += 1
            continue
        img, cloud, has_anomaly = msgs[k % len(msgs)]
        stamp = stamp_from_sec(100.0 + k * period)
        img.header.stamp = cloud.header.stamp = info.header.stamp = stamp
        pubs["info"].publish(info)
        pubs["img"].publish(img)
        pubs["pts"].publish(cloud)
        if k >= warm:
            sent.append([stamp.sec, stamp.nanosec, has_anomaly])
        k += 1
        time.sleep(max(0.0, start + k * period - time.monotonic()))
    io.destroy_node()
    rclpy.shutdown()
    return {"sent": sent, "publisher_late_skipped": late, "frames": len(frames), "camera": [H, W],
            "points_p50": int(np.median([len(f.points) for f in frames])),
            "frames_with_anomaly_200px": int(sum(m[2] for m in msgs))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=10.0, help="publish rate [Hz] (default 10)")
    ap.add_argument("--seed", type=int, default=8240, help="world seed of the test drive (not a training seed)")
    ap.add_argument("--frames", type=int, default=40, help="frames of the drive (looped)")
    ap.add_argument("--out", default=str(HERE / "results" / "node_world.json"))
    ap.add_argument("--publish-from", help=argparse.SUPPRESS)  # internal: the sensors' process
    ap.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))

    # lazy: rclpy/open3d load after the environment above is set (rclpy reads it once per process)
    from ood_perception.ros.transport import apply_transport_profile

    apply_transport_profile(log=None)
    if args.publish_from:
        print(json.dumps(publish_drive(Path(args.publish_from), args.rate, args.seconds, args.warm)))
        return 0
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from ood_perception.data.semantickitti import SemanticKittiReader
    from ood_perception.ros.fusion_node import FusionSegmentationNode
    from ood_perception.world.synth import generate_dataset
    from ood_perception_msgs.msg import OodAlert

    tmp = Path(tempfile.mkdtemp(prefix="bench_node_world_"))
    t0 = time.perf_counter()
    generate_dataset(tmp / "drive", sequences=1, frames=args.frames, seed=args.seed, split="test", progress=False)
    render_s = time.perf_counter() - t0
    calib = SemanticKittiReader(tmp / "drive")[0].calib
    params = node_parameters(VEHICLE, warn=None)
    params = {k: v for k, v in params.items() if not (isinstance(v, float) and math.isnan(v))}
    params.pop("lidar_to_camera.xyz", None)
    params.pop("lidar_to_camera.rpy", None)
    params.update({"autostart": True, "lidar_to_camera.matrix": [float(v) for v in calib.T_cam_lidar.ravel()],
                   "log_throttle_s": 60.0})

    rclpy.init()
    node = FusionSegmentationNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    if node._state != "active":
        raise SystemExit(f"node not active: {getattr(node, '_model_error', '')}")
    io = rclpy.create_node("bench_world_io")
    alerts: dict[tuple[int, int], OodAlert] = {}
    io.create_subscription(OodAlert, "ood/alerts", lambda a: alerts.__setitem__(
        (a.header.stamp.sec, a.header.stamp.nanosec), a), QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    ex.add_node(io)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    # the sensors publish from their own process, as drivers do (one process would share one GIL)
    load_before = os.getloadavg()
    warm = int(2 * args.rate)  # the first 2 s are not counted (discovery, first frames)
    pub = subprocess.Popen([sys.executable, __file__, "--publish-from", str(tmp / "drive"), "--rate", str(args.rate),
                            "--seconds", str(args.seconds), "--warm", str(warm)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    while len(alerts) < warm and pub.poll() is None:  # latency counted after the warm-up frames
        time.sleep(0.02)
    node.latency._values.clear()
    node.model_latency._values.clear()
    stdout, stderr = pub.communicate(timeout=args.seconds + 120)
    if pub.returncode != 0:
        raise SystemExit(f"publisher failed: {stderr[-2000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    sent = [((sec, ns), flag) for sec, ns, flag in report["sent"]]
    msgs_flags = report["frames_with_anomaly_200px"]
    time.sleep(1.0)
    d = node.diagnostics_values()
    e2e = np.asarray(node.latency._values) * 1e3
    model = np.asarray(node.model_latency._values) * 1e3
    got = [alerts[s] for s, _ in sent if s in alerts]
    fused = [a for a in got if list(a.modalities) == ["camera", "lidar"]]
    levels = {name: sum(a.level == getattr(OodAlert, name) for a in got) for name in ("CLEAR", "WARNING", "ALERT", "DEGRADED")}
    n = len(sent)
    result = {
        "what": "fusion node over DDS on world frames, config/vehicle.yaml, default model (bench/node_world.py)",
        "device": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "drive": {"seed": args.seed, "frames": report["frames"], "camera": report["camera"], "points_p50": report["points_p50"],
                  "frames_with_anomaly_200px": msgs_flags, "render_s": render_s},
        "rate_hz": args.rate, "seconds": args.seconds, "frames_sent": n,
        "publisher_late_skipped": report["publisher_late_skipped"],
        "alerts_published": len(got), "published_share": len(got) / n if n else None,
        "fused_share": len(fused) / n if n else None,
        "sustained_hz": len(got) / args.seconds,  # frames the sensors' process skipped count against it
        "e2e_ms": {"p50": float(np.median(e2e)), "p95": float(np.percentile(e2e, 95)), "max": float(e2e.max())} if e2e.size else None,
        "model_in_node_ms": {"p50": float(np.median(model))} if model.size else None,
        "non_model_ms_p50": float(np.median(e2e) - np.median(model)) if e2e.size and model.size else None,
        "worker_dropped_while_busy": d.get("dropped_overwritten"), "levels": levels,
        "not_published_index": [i for i, (st, _) in enumerate(sent) if st not in alerts],
        "sync": {k: v for k, v in d.items() if k.startswith(("dropped", "paired", "lost", "camera_lost", "lidar_lost"))},
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
    }
    ex.shutdown()
    node.destroy_node()
    io.destroy_node()
    rclpy.shutdown()
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    e = result["e2e_ms"] or {}
    md = (f"# Fusion node, sustained, on world frames ({time.strftime('%Y-%m-%d')})\n\n"
          f"`.venv/bin/python bench/node_world.py --seconds {args.seconds:g} --rate {args.rate:g} --seed {args.seed}`: "
          f"{result['what']}; {result['device']}, {result['cpu_count']} CPUs, load average before/after "
          f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f}. Test drive seed {args.seed}: {report['frames']} frames looped, camera "
          f"{report['camera'][1]}x{report['camera'][0]}, sensors published from a separate process, median {result['drive']['points_p50']} LiDAR points.\n\n"
          f"| sent (sensor process late: skipped) | published | share | fused | sustained | e2e p50 | e2e p95 | model p50 | non-model p50 | worker skipped | CLEAR / WARNING / ALERT / DEGRADED |\n"
          f"|---|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {n} at {args.rate:g} Hz ({result['publisher_late_skipped']}) | {len(got)} | {100 * (result['published_share'] or 0):.1f}% | "
          f"{100 * (result['fused_share'] or 0):.1f}% | {result['sustained_hz']:.2f} Hz | {e.get('p50', float('nan')):.1f} ms | "
          f"{e.get('p95', float('nan')):.1f} ms | {(result['model_in_node_ms'] or {}).get('p50', float('nan')):.1f} ms | "
          f"{result['non_model_ms_p50'] or float('nan'):.1f} ms | {result['worker_dropped_while_busy']} | "
          f"{levels['CLEAR']} / {levels['WARNING']} / {levels['ALERT']} / {levels['DEGRADED']} |\n")
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
