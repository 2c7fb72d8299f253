"""`ood-perception run` with the shipped params files and a real exported ONNX model, in a
subprocess, talking to this test over DDS; and its clear failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")
pytest.importorskip("onnxruntime", reason="the run test uses a real ONNX model")

from conftest import spin_until  # noqa: E402

PKG = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ood_perception.cli"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch
    from runtime_helpers import tiny_checkpoint

    from ood_perception.trainer.export import export_segmentation

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("run_model")
    export_segmentation(tiny_checkpoint(d / "c.pt"), d / "model")
    return d / "model"


def test_run_command_serves_frames_with_real_model(rclpy_context, model_dir, tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from ood_perception.ros import messages as rosmsg
    from ood_perception.ros.common import stamp_from_sec
    from ood_perception_msgs.msg import OodAlert

    override = tmp_path / "override.yaml"
    override.write_text("fusion_segmentation:\n  ros__parameters:\n    threshold: 0.0\n    stale_timeout: 5.0\n")
    proc = subprocess.Popen(
        [*CLI, "run", "--params", str(PKG / "config" / "vehicle.yaml"), "--params", str(override),
         "--model", str(model_dir), "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # without the transport variables conftest set: `run` must apply the shipped profile itself
        env={**{k: v for k, v in os.environ.items() if not k.endswith("_DEFAULT_PROFILES_FILE")}, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,  # not the repository root, whose ood_perception/ folder would shadow the package
    )
    io = rclpy.create_node("run_io", context=rclpy_context)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub_img = io.create_publisher(Image, "camera/image", qos)
    pub_info = io.create_publisher(CameraInfo, "camera/camera_info", qos)
    pub_pts = io.create_publisher(PointCloud2, "lidar/points", qos)
    alerts, masks = [], []
    io.create_subscription(OodAlert, "ood/alerts", alerts.append, qos)
    io.create_subscription(Image, "ood/mask", masks.append, qos)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(io)
    try:
        assert spin_until(ex, lambda: pub_pts.get_subscription_count() > 0 or proc.poll() is not None, 60.0)
        assert proc.poll() is None, proc.stdout.read()
        rng = np.random.default_rng(0)
        img = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
        info = CameraInfo(width=80, height=48)
        info.k = [40.0, 0, 40, 0, 40.0, 24, 0, 0, 1]
        # REP 103 LiDAR points ahead of the camera (default extrinsics: camera at the LiDAR)
        pts = np.column_stack([rng.uniform(5, 20, 500), rng.uniform(-5, 5, 500), rng.uniform(-1, 1, 500),
                               rng.random(500)]).astype(np.float32)
        rec = np.zeros(500, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
        for i, k in enumerate(rec.dtype.names):
            rec[k] = pts[:, i]
        k = 0

        def send() -> bool:
            nonlocal k
            k += 1
            stamp = stamp_from_sec(10.0 + 0.1 * k)
            m = rosmsg.image_msg(img, "rgb8")
            m.header.stamp, m.header.frame_id = stamp, "camera_optical"
            c = rosmsg.cloud_msg(rec)
            c.header.stamp, c.header.frame_id = stamp, "lidar"
            pub_info.publish(info)
            pub_img.publish(m)
            pub_pts.publish(c)
            return any(list(a.modalities) == ["camera", "lidar"] for a in alerts) and bool(masks)

        assert spin_until(ex, send, 60.0, step=0.1), (alerts[-1:], proc.poll())
        a = next(a for a in alerts if list(a.modalities) == ["camera", "lidar"])
        assert a.level in (OodAlert.CLEAR, OodAlert.WARNING, OodAlert.ALERT) and a.header.frame_id == "camera_optical"
        assert (masks[-1].width, masks[-1].height) == (80, 48)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "fusion_segmentation active" in out
        if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp":
            assert "ood-perception run: transport: Fast DDS profile" in out and "fastdds_large_data.xml" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        ex.shutdown()
        io.destroy_node()


def _run_cli(argv):
    """Parse ``ood-perception run ...`` with the command's own parser and run its handler (the
    repository root's ood_perception/ folder shadows the package for ``ood_perception.cli`` here)."""
    import argparse

    from ood_perception.commands import run as cmd

    parser = argparse.ArgumentParser(prog="ood-perception")
    cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_run_fails_clearly(tmp_path, capsys):
    vehicle = str(PKG / "config" / "vehicle.yaml")
    assert _run_cli(["run", "--params", vehicle, "--model", str(tmp_path / "missing"), "--duration", "1"]) == 1
    assert "failed to become active" in capsys.readouterr().out
    no_section = tmp_path / "other.yaml"
    no_section.write_text("some_node:\n  ros__parameters:\n    a: 1\n")
    with pytest.raises(ValueError, match="has a section for"):
        _run_cli(["run", "--params", str(no_section)])
    with pytest.raises(FileNotFoundError, match="params file not found"):
        _run_cli(["run", "--params", str(tmp_path / "nope.yaml")])
    with pytest.raises(ValueError, match="FROM:=TO"):
        _run_cli(["run", "--params", vehicle, "--remap", "camera/image"])
    with pytest.raises(ValueError, match="unknown node"):
        _run_cli(["run", "--params", vehicle, "--nodes", "radar_node"])


def test_shipped_params_files_name_our_nodes_and_parameters():
    import yaml

    from ood_perception.ros.fusion_node import PARAMETERS as FUSION
    from ood_perception.ros.recognition_node import PARAMETERS as REC
    from ood_perception.ros.runner import nodes_in_params

    for name, table, node in [("vehicle.yaml", FUSION, "fusion_segmentation"), ("carla.yaml", FUSION, "fusion_segmentation"),
                              ("recognition.yaml", REC, "action_recognition")]:
        path = PKG / "config" / name
        assert nodes_in_params([path]) == [node]
        params = yaml.safe_load(path.read_text())[node]["ros__parameters"]
        known = {n for n, _, _ in table} | {"use_sim_time", "lidar_to_camera.matrix"}
        assert set(params) <= known, set(params) - known
