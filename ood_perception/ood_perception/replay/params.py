"""Replay settings from the nodes' ROS params file (``config/vehicle.yaml``) and CLI overrides.

A ROS 2 params file maps node names (or ``/**``) to ``ros__parameters``. Replay reads the fusion
node's section (``fusion_segmentation_node``, ``fusion_segmentation``, then ``/**``) so that a
bag replays with the parameters the vehicle runs: pipeline (threshold, region sizes, clustering),
alert state machine (``alert.raise_k`` ... or flat ``raise_k`` ...), synchroniser (``slop``,
``stale_timeout``, ``clock_jump``, ``queue_size``), extrinsics (``T_cam_lidar`` as 16 row-major
values, or ``extrinsics_xyz_rpy``: x, y, z, roll, pitch, yaw), LiDAR options
(``negate_y``, ``intensity_field``) and input topics (``*_topic`` keys or a ``topics`` mapping).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.replay.engine import DEFAULT_INPUT_TOPICS, ReplaySettings

NODE_KEYS = ("fusion_segmentation_node", "fusion_segmentation", "/**")
SYNC_KEYS = ("slop", "stale_timeout", "clock_jump", "queue_size")
TOPIC_KEYS = {"image_topic": "image", "camera_info_topic": "camera_info", "points_topic": "points",
              "lidar_topic": "points", "labels_topic": "labels"}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter dicts -> dotted names (``alert: {raise_k: 3}`` -> ``alert.raise_k``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and k != "topics":
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def node_parameters(path: str | Path) -> dict[str, Any]:
    """The fusion node's ``ros__parameters`` (flattened) from a ROS params file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ROS params file (names the file and what is missing).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"params file {path}: top level must be a mapping of node names")
    merged: dict[str, Any] = {}
    found = False
    for key in ("/**", *NODE_KEYS[:2]):  # wildcard first, the node's own section overrides it
        section = data.get(key)
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            merged.update(flatten(section["ros__parameters"]))
            found = True
    if not found:
        raise ValueError(f"params file {path}: no ros__parameters for any of {', '.join(NODE_KEYS)} (has: {', '.join(map(str, data))})")
    return merged


def rpy_matrix(x: float, y: float, z: float, roll: float, pitch: float, yaw: float) -> np.ndarray:
    """4x4 transform from translation and roll/pitch/yaw [rad] (R = Rz(yaw) Ry(pitch) Rx(roll), as tf2)."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                 [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                 [-sp, cp * sr, cp * cr]]
    T[:3, 3] = [x, y, z]
    return T


def settings_from_params(params: dict[str, Any], base: ReplaySettings | None = None) -> ReplaySettings:
    """Fill :class:`ReplaySettings` from flattened node parameters (unknown keys are ignored)."""
    from ood_perception.pipeline import AlertConfig, FusionConfig

    s = dataclasses.replace(base) if base else ReplaySettings()
    fusion_fields = {f.name for f in dataclasses.fields(FusionConfig)} - {"alert"}
    alert_fields = {f.name for f in dataclasses.fields(AlertConfig)}
    fusion = dict(s.fusion)
    alert = dict(fusion.pop("alert", {}) or {})
    for key, value in params.items():
        leaf = key.split(".")[-1]
        if key.startswith("alert.") and leaf in alert_fields:
            alert[leaf] = value
        elif "." not in key and key in alert_fields:
            alert[key] = value
        elif "." not in key and key in fusion_fields:
            fusion[key] = None if key == "threshold" and (value is None or (isinstance(value, float) and value < 0)) else value
        elif key in SYNC_KEYS:
            s.sync[key] = value
    if alert:
        fusion["alert"] = AlertConfig(**alert)
    s.fusion = fusion
    if "T_cam_lidar" in params:
        s.T_cam_lidar = np.asarray(params["T_cam_lidar"], float).reshape(4, 4)
    elif "extrinsics_xyz_rpy" in params:
        s.T_cam_lidar = rpy_matrix(*[float(v) for v in params["extrinsics_xyz_rpy"]])
    if "negate_y" in params:
        s.negate_y = bool(params["negate_y"])
    if "intensity_field" in params:
        s.intensity_field = str(params["intensity_field"])
    topics = dict(DEFAULT_INPUT_TOPICS)
    topics.update(s.topics)
    for key, logical in TOPIC_KEYS.items():
        if key in params:
            topics[logical] = str(params[key])
    if isinstance(params.get("topics"), dict):
        topics.update({str(k): str(v) for k, v in params["topics"].items()})
    s.topics = topics
    return s


def parse_topic_overrides(items: list[str] | None) -> dict[str, str]:
    """``["image=/carla/.../image", ...]`` -> ``{"image": "/carla/.../image"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--topic expects NAME=TOPIC (NAME one of {', '.join(DEFAULT_INPUT_TOPICS)}), got {item!r}")
        k, v = item.split("=", 1)
        if k not in DEFAULT_INPUT_TOPICS:
            raise ValueError(f"--topic: unknown input {k!r}; expected one of {', '.join(DEFAULT_INPUT_TOPICS)}")
        out[k] = v
    return out
