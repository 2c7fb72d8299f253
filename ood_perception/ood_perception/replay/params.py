"""Replay settings from the nodes' ROS params file (``config/vehicle.yaml``) and CLI overrides.

A ROS 2 params file maps node names (or ``/**``) to ``ros__parameters``. Replay reads the fusion
node's section (``/**`` first, then ``fusion_segmentation`` / ``fusion_segmentation_node``
overriding it) and maps the parameters with the node's own code
(:mod:`ood_perception.pipeline.frame_handler`: same table, validation and mapping): pipeline (``threshold`` NaN = the model's,
``min_region_pixels`` ...), alert state machine (``raise_k``, ``raise_n``, ``clear_frames``,
``cooldown_s``), synchroniser (``slop``, ``stale_timeout``, ``clock_jump``, ``sync_queue_size``),
extrinsics (``lidar_to_camera.matrix``, else the camera pose ``lidar_to_camera.xyz`` +
``.rpy`` in the LiDAR frame, inverted; used when the bag has no ``/tf_static`` between the sensors'
frames, or always with ``--extrinsics params``), ``intensity_field``, ``negate_lidar_y``. Input topics come
from ``--topic`` (the node's are remapped at launch, not parameters).

``--calib calib.txt`` (a KITTI / SemanticKITTI calibration file, e.g. a synthetic sequence's
``sequences/XX/calib.txt``) sets the extrinsics from its ``Tr`` (with ``P2``'s offset folded in,
as the dataset readers do: :func:`extrinsics_from_kitti_calib`) and overrides the params file's and
the bag's ``/tf_static``;
the intrinsics always come from the bag's CameraInfo. A ``synth --bag`` drive carries the same
extrinsics in its ``/tf_static``, so replay needs no ``--calib`` for it (see :mod:`.extrinsics`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ood_perception.geometry import load_kitti_calib
from ood_perception.pipeline.frame_handler import (
    MATRIX_PARAM,
    coerce_fusion_params,
    extrinsics_from_params,
    fusion_config_kwargs,
    fusion_param_defaults,
    sync_kwargs,
    validate_fusion_params,
)
from ood_perception.replay.engine import DEFAULT_INPUT_TOPICS, ReplaySettings

NODE_KEYS = ("fusion_segmentation", "fusion_segmentation_node", "/**")


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


def fusion_parameter_names() -> list[str]:
    """Every parameter name of the fusion node (the table plus ``lidar_to_camera.matrix``)."""

    return list(fusion_param_defaults())


def _stderr_warning(text: str) -> None:
    print(f"ood-perception replay: warning: {text}", file=sys.stderr)


def node_parameters(path: str | Path, warn: Callable[[str], None] | None = _stderr_warning) -> dict[str, Any]:
    """The fusion node's ``ros__parameters`` (flattened) from a ROS params file.

    ``warn`` (stderr by default; None = silent) gets one line per section that matches no node of
    this package and per fusion parameter name that is not in the node's table, with a
    did-you-mean (:func:`ood_perception.pipeline.params.params_file_warnings`): a misspelt name
    would otherwise be silently ignored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a ROS params file (names the file and what is missing).
    """

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
    if warn is not None:
        from ood_perception.pipeline.params import params_file_warnings

        names = fusion_parameter_names()
        # the recognition node's section is known (replay ignores it); its names are not checked here
        tables = {"fusion_segmentation": names, "fusion_segmentation_node": names, "action_recognition": None}
        for text in params_file_warnings(data, tables, str(path)):
            warn(text)
    return merged


def settings_from_params(params: dict[str, Any], base: ReplaySettings | None = None) -> ReplaySettings:
    """Fill :class:`ReplaySettings` from the fusion node's flattened parameters with the node's own
    mapping (:mod:`ood_perception.pipeline.frame_handler`): only the parameters present override
    ``base``; unknown keys are ignored.

    Raises:
        ValueError: a parameter value the node would refuse (names it).
    """

    defaults = fusion_param_defaults()
    params = coerce_fusion_params(params)  # slop: 1 -> 1.0; qos_depth: 5.5 or stale_timeout: fast refused
    validate_fusion_params({**defaults, **{k: v for k, v in params.items() if k in defaults}})
    s = dataclasses.replace(base) if base else ReplaySettings()
    s.fusion = {**s.fusion, **fusion_config_kwargs(params)}
    s.sync = {**s.sync, **sync_kwargs(params)}
    if any(k in params for k in (MATRIX_PARAM, "lidar_to_camera.xyz", "lidar_to_camera.rpy")):
        s.T_cam_lidar = extrinsics_from_params(params)
        s.extrinsics_source = "params"
    if "negate_lidar_y" in params:
        s.negate_y = bool(params["negate_lidar_y"])
    if "intensity_field" in params:
        s.intensity_field = str(params["intensity_field"])
    if "max_points" in params:
        s.max_points = int(params["max_points"])
    if "publish_points" in params:
        s.publish_points = bool(params["publish_points"])
    return s


def extrinsics_from_kitti_calib(path: str | Path, camera: str = "P2") -> Any:
    """T_cam_lidar (4x4, LiDAR -> camera optical frame) from a KITTI ``calib.txt``: ``Tr`` with the
    offset of the projection ``camera`` folded in, read by :func:`ood_perception.geometry.load_kitti_calib`
    (the same function the SemanticKITTI reader uses, so the numbers are identical).

    Raises:
        FileNotFoundError: no such file. ValueError: a malformed file (names the file and key).
    """

    return load_kitti_calib(path, 1, 1, camera=camera).T_cam_lidar  # size is irrelevant to the extrinsics


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
