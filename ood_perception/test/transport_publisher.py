"""Sensor publisher for the DDS transport test, run as its own process (so samples cross a real
DDS transport instead of Fast DDS's intra-process path).

    python transport_publisher.py --frames 50 [--rate 10] [--width 1024] [--height 512] [--points 65536]

Publishes ``camera/image`` (rgb8), ``camera/camera_info`` and ``lidar/points`` (x, y, z, intensity
float32) with SensorDataQoS (BEST_EFFORT, KEEP_LAST 5) -- what camera and LiDAR drivers use --
after every topic has a subscriber; each frame's image and cloud carry the same stamp. Prints one
JSON line: the stamps published ([sec, nanosec]) and the achieved rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def scene(width: int, height: int, points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A road-like frame: a sky/road gradient image and a cloud of ground plus a wall ahead of the
    LiDAR (x forward), most of it in the camera's view."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2] = (150, 180, 220)
    img[height // 2:] = (90, 90, 90)
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    n_wall = points // 4
    n_ground = points - n_wall
    ground = np.column_stack([rng.uniform(3, 40, n_ground), rng.uniform(-12, 12, n_ground),
                              np.full(n_ground, -1.7), rng.uniform(0, 1, n_ground)])
    wall = np.column_stack([np.full(n_wall, 25.0), rng.uniform(-10, 10, n_wall),
                            rng.uniform(-1.7, 3, n_wall), rng.uniform(0, 1, n_wall)])
    return img, np.vstack([ground, wall]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--points", type=int, default=65536)
    parser.add_argument("--match-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from ood_perception.ros import messages as rosmsg
    from ood_perception.ros.common import stamp_from_sec

    rclpy.init()
    node = rclpy.create_node("transport_test_publisher")
    pubs = {
        "image": node.create_publisher(Image, "camera/image", qos_profile_sensor_data),
        "info": node.create_publisher(CameraInfo, "camera/camera_info", qos_profile_sensor_data),
        "points": node.create_publisher(PointCloud2, "lidar/points", qos_profile_sensor_data),
    }
    img, pts = scene(args.width, args.height, args.points)
    image = rosmsg.image_msg(img, "rgb8")
    image.header.frame_id = "camera_optical"
    rec = np.zeros(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    for i, k in enumerate(("x", "y", "z", "intensity")):
        rec[k] = pts[:, i]
    cloud = rosmsg.cloud_msg(rec)
    cloud.header.frame_id = "lidar"
    info = CameraInfo(width=args.width, height=args.height, distortion_model="plumb_bob")
    info.header.frame_id = "camera_optical"
    f = 0.5 * args.width
    info.k = [f, 0.0, args.width / 2, 0.0, f, args.height / 2, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, args.width / 2, 0.0, 0.0, f, args.height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]

    deadline = time.monotonic() + args.match_timeout
    while any(p.get_subscription_count() < 1 for p in pubs.values()):
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no subscriber matched"}), flush=True)
            return 1
        time.sleep(0.05)
    time.sleep(0.5)  # both sides have matched

    period = 1.0 / args.rate
    stamps: list[list[int]] = []
    t0 = time.monotonic()
    for i in range(args.frames):
        target = t0 + i * period
        now = time.monotonic()
        if now < target:
            time.sleep(target - now)
        stamp = stamp_from_sec(time.time())
        for m in (image, cloud, info):
            m.header.stamp = stamp
        pubs["info"].publish(info)
        pubs["image"].publish(image)
        pubs["points"].publish(cloud)
        stamps.append([stamp.sec, stamp.nanosec])
    elapsed = time.monotonic() - t0
    print(json.dumps({"stamps": stamps, "rate_hz": (args.frames - 1) / elapsed if elapsed > 0 else 0.0,
                      "image_bytes": len(image.data), "cloud_bytes": len(cloud.data)}), flush=True)
    time.sleep(0.5)  # let the last samples leave before the participant goes
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
