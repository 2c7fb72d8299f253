"""Replay settings from the nodes' ROS params file (``config/vehicle.yaml``) and CLI overrides.

A ROS 2 params file maps node names (or ``/**``) to ``ros__parameters``. Replay reads the fusion
node's section (``/**`` first, then ``fusion_segmentation`` / ``fusion_segmentation_node``
overriding it) and interprets the parameters exactly as ``ros/fusion_node.py`` does (same names,
same meaning; see its ``PARAMETERS`` table): pipeline (``threshold`` NaN = the model's,
``min_region_pixels`` ...), alert state machine (``raise_k``, ``raise_n``, ``clear_frames``,
``cooldown_s``), synchroniser (``slop``, ``stale_timeout``, ``clock_jump``, ``sync_queue_size``),
extrinsics (``lidar_to_camera.matrix``, else the camera pose ``lidar_to_camera.xyz`` +
``.rpy`` in the LiDAR frame, inverted), ``intensity_field``, ``negate_lidar_y``. Input topics come
from ``--topic`` (the node's are remapped at launch, not parameters).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.replay.engine import DEFAULT_INPUT_TOPICS, ReplaySettings

NODE_KEYS = ("fusion_segmentation", "fusion_segmentation_node", "/**")
FUSION_KEYS = ("frame_score_percentile", "min_region_pixels", "min_region_points", "cluster_eps",
               "cluster_min_points", "max_cluster_points", "clock_jump")
ALERT_KEYS = ("raise_k", "raise_n", "clear_frames", "cooldown_s")
SYNC_KEYS = {"slop": "slop", "stale_timeout": "stale_timeout", "clock_jump": "clock_jump", "sync_queue_size": "queue_size"}
#: Defaults of the node (ros/fusion_node.py PARAMETERS) that replay needs.
LIDAR_TO_OPTICAL_RPY = (-np.pi / 2, 0.0, -np.pi / 2)


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


def settings_from_params(params: dict[str, Any], base: ReplaySettings | None = None) -> ReplaySettings:
    """Fill :class:`ReplaySettings` from the fusion node's flattened parameters, as the node's
    ``on_configure`` / ``on_activate`` do (unknown keys are ignored)."""
    import math

    from ood_perception.geometry import transform_from_xyz_rpy
    from ood_perception.pipeline import AlertConfig

    s = dataclasses.replace(base) if base else ReplaySettings()
    fusion = dict(s.fusion)
    for key in FUSION_KEYS:
        if key in params:
            fusion[key] = type(_FUSION_DEFAULTS[key])(params[key])
    if "threshold" in params:
        thr = float(params["threshold"])
        fusion["threshold"] = None if math.isnan(thr) else thr
    if any(k in params for k in ALERT_KEYS):
        d = AlertConfig()
        fusion["alert"] = AlertConfig(int(params.get("raise_k", d.raise_k)), int(params.get("raise_n", d.raise_n)),
                                      int(params.get("clear_frames", d.clear_frames)), float(params.get("cooldown_s", d.cooldown_s)))
    s.fusion = fusion
    s.sync = dict(s.sync)
    for key, arg in SYNC_KEYS.items():
        if key in params:
            s.sync[arg] = params[key]
    if params.get("lidar_to_camera.matrix") is not None:
        a = np.asarray(list(params["lidar_to_camera.matrix"]), float)
        if a.size != 16:
            raise ValueError("parameter lidar_to_camera.matrix must be 16 numbers (row-major 4x4)")
        s.T_cam_lidar = a.reshape(4, 4)
    elif "lidar_to_camera.xyz" in params or "lidar_to_camera.rpy" in params:
        xyz = params.get("lidar_to_camera.xyz", [0.0, 0.0, 0.0])
        rpy = params.get("lidar_to_camera.rpy", list(LIDAR_TO_OPTICAL_RPY))
        s.T_cam_lidar = np.linalg.inv(transform_from_xyz_rpy(xyz, rpy))
    if "negate_lidar_y" in params:
        s.negate_y = bool(params["negate_lidar_y"])
    if "intensity_field" in params:
        s.intensity_field = str(params["intensity_field"])
    return s


_FUSION_DEFAULTS = {"frame_score_percentile": 99.0, "min_region_pixels": 50, "min_region_points": 5, "cluster_eps": 0.6,
                    "cluster_min_points": 5, "max_cluster_points": 20000, "clock_jump": 1.0}


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
