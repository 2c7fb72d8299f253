"""The fusion node's per-frame decisions without ROS, shared by the live node and rosbag replay.

Both ``ros/fusion_node.py`` and ``replay/engine.py`` call the objects here, so they cannot drift
apart:

* :data:`FUSION_PARAMETERS` - the node's parameter table (name, default, description);
  :func:`validate_fusion_params` checks a value dict and :meth:`FrameSettings.from_params`
  maps a plain dict of parameter values (the node builds it from its declared parameters,
  replay from the params YAML) to the pipeline, synchroniser, extrinsics and output settings.
  :func:`fusion_config_kwargs`, :func:`sync_kwargs` and :func:`extrinsics_from_params` are the
  same mapping for partial dicts (only the keys present), used by replay's override settings.
* :class:`FusionFrameProcessor` - owns the synchroniser, the latest CameraInfo and the camera
  frame name; takes decoded camera / LiDAR / CameraInfo inputs with their stamps and headers and
  returns, per synchronised frame, a :class:`FrameOutputs`: the pipeline result, the header of
  mask/score/alert, the header of the scored points (or None when they are not published), the
  extrinsics for region geometry, and the bad-input notes to count.

Arrival times (staleness, start-up grace) are read from an injectable clock: the node passes its
ROS clock (simulation/bag time under ``use_sim_time``), replay the bag's receive time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ood_perception.geometry import Calibration, transform_from_xyz_rpy
from ood_perception.pipeline.alerts import DEFAULT_PERSISTENCE, AlertConfig
from ood_perception.pipeline.fusion import (
    FusionConfig,
    FusionFrame,
    FusionPipeline,
    FusionResult,
    PendingFrame,
)
from ood_perception.pipeline.objects import ObjectConfig, parse_names
from ood_perception.pipeline.params import coerce_params
from ood_perception.pipeline.sync import ApproximateSync, SyncedFrame

#: Orientation of a camera optical frame (x right, y down, z forward) in a REP 103 LiDAR frame
#: (x forward, y left, z up) as roll/pitch/yaw: the default extrinsics, a camera at the LiDAR
#: looking forward (the usual ``*_optical_frame`` joint in a URDF).
LIDAR_TO_OPTICAL_RPY = (-math.pi / 2, 0.0, -math.pi / 2)

#: The optional 4x4 extrinsics parameter (statically typed double array, unset by default).
MATRIX_PARAM = "lidar_to_camera.matrix"

#: Source name in the alerts of the fusion node.
FUSION_SOURCE = "fusion_segmentation"

#: (name, default, description) of every fusion node parameter.
FUSION_PARAMETERS: list[tuple[str, Any, str]] = [
    ("model_dir", "", "exported model directory with model.json ('' = the packaged default model)"),
    ("backend", "onnxruntime", "inference backend: onnxruntime, torch or tensorrt"),
    ("device", "cpu", "cpu or cuda[:N]"),
    ("threshold", float("nan"), "OOD score threshold; NaN = the model's calibrated threshold"),
    ("autostart", False, "configure and activate right after start (no lifecycle manager needed)"),
    ("reliability", "best_effort", "input QoS reliability: best_effort (matches any publisher) or reliable"),
    ("qos_depth", 5, "input QoS depth (KEEP_LAST)"),
    ("slop", 0.05, "largest camera/LiDAR stamp difference of a pair [s]"),
    ("stale_timeout", 0.5, "a stream silent this long [s of the node's clock; sim time under use_sim_time] is stale: "
     "the other runs alone, alerts DEGRADED; the start-up grace counts from the first message"),
    ("clock_jump", 1.0, "a stamp this far [s] behind the newest resets sync and alert history (bag loops)"),
    ("sync_queue_size", 5, "messages kept per stream while waiting for a partner"),
    ("lidar_to_camera.xyz", [0.0, 0.0, 0.0],
     "position [m] of the camera optical frame in the LiDAR frame, as a static transform lidar -> camera "
     "(used when .matrix is unset)"),
    ("lidar_to_camera.rpy", list(LIDAR_TO_OPTICAL_RPY),
     "orientation (roll, pitch, yaw [rad], fixed axes) of the camera optical frame in the LiDAR frame"),
    ("intensity_field", "intensity", "PointCloud2 field read as intensity (missing -> 0)"),
    ("negate_lidar_y", False, "negate y of incoming points (sources with a left-handed LiDAR frame)"),
    ("max_points", 2_000_000, "clouds with more points are rejected as bad input"),
    ("crop_model", "", "crop checkpoint (ood-perception train crops --out) classifying each reported region's image "
     "crop: the nearest known class or 'unknown object' goes into the alert description; empty = off"),
    ("crop_context", 0.15, "crop margin around a region's box, as a share of its size (as in training)"),
    ("crop_min_side", 8, "regions whose box side is smaller [px] are not classified"),
    ("min_lidar_points_in_view", 1, "a cloud with fewer points in the camera's view is unusable: the frame is "
     "scored camera-only (its unimodal head) and DEGRADED, as for a stale LiDAR"),
    ("min_region_pixels", 50, "smallest 2D anomalous component counted as evidence [camera pixels]"),
    ("min_region_points", 5, "smallest 3D anomalous cluster counted as evidence [points]"),
    ("cluster_eps", 0.6, "DBSCAN radius for anomalous points [m]"),
    ("cluster_min_points", 5, "DBSCAN min_points"),
    ("max_cluster_points", 5000, "more anomalous points than this are voxel-downsampled (eps/2 grid) before DBSCAN"),
    ("frame_score_percentile", 99.0, "percentile of the score map reported as the frame score (pixel decisions)"),
    ("mask_source", "pixels", "ood/mask holds: pixels = every pixel at or above the threshold; regions = only those "
     "inside the 2D boxes of the reported regions (object decisions: the alerted objects)"),
    ("decision", "auto", "auto | objects | pixels: decide on LiDAR objects (ground, location on the drivable area, "
     "tracking; docs/architecture.md) or on mask pixels; auto = objects when the frame has usable LiDAR and the "
     "model names a drivable class"),
    ("region_threshold", float("nan"), "a tracked object whose score (0..1) is at or above is anomalous; "
     "NaN = the model's calibrated value (ood-perception calibrate), else 0.5"),
    ("scene_shift_fraction", float("nan"), "share of anomalous pixels from which the whole view is outside the "
     "model's domain: DEGRADED, no regions; NaN = the model's calibrated value, else 0.5"),
    ("object.min_height", 0.25, "a point this far [m] above the fitted ground plane belongs to an object candidate"),
    ("object.max_height", 4.0, "points higher than this [m] above the ground are ignored"),
    ("object.low_height", 0.06, "0: off; else points from this height [m] up to object.min_height join the candidates "
     "too unless the model labels them a ground class that is not drivable (sidewalk, verge): objects lower than "
     "min_height on the road (a tyre lying flat)"),
    ("object.min_points", 10, "smallest object candidate [points]: sparser clusters are not judged (see object.support_points "
     "for how little a candidate of few points weighs)"),
    ("object.max_extent", 8.0, "clusters wider than this [m] are structures, not objects"),
    ("object.min_visible", 0.0, "smallest share (0..1) of an object's LiDAR points in the camera's view and not "
     "hidden: slivers of objects cut by the image border or seen through a gap are not judged; 0 = judge all"),
    ("object.cluster_eps", 0.6, "object candidates: above-ground points in 8-connected bird's-eye-view cells of "
     "cluster_eps / 2 [m] form one object"),
    ("object.context_radius", 1.0, "ground points this far [m] around an object's footprint judge its location"),
    ("object.min_context_points", 5, "fewer ground points around an object: location unknown"),
    ("object.location_unknown", 0.0, "the location term (0..1) of an object whose surroundings cannot be judged"),
    ("object.drivable_gate", 0.0, "0: the location weighs an object's evidence (object.location_floor); > 0: the "
     "location is a gate instead: the evidence itself where the drivable share is at least this, else 0"),
    ("object.location_floor", 0.5, "in [0, 1]: an object's evidence is weighed by f + (1 - f) x its drivable share, "
     "so an unknown object off the drivable area keeps f of its score (0: weighed by the drivable share alone); "
     "not used when object.drivable_gate > 0"),
    ("object.w_unknown", 1.0, "weight of the share of an object's points not labelled as a known object class"),
    ("object.w_conflict", 0.0, "weight of the share of its points labelled ground though above the ground"),
    ("object.w_ood", 1.0, "weight of the share of its points with a score >= threshold (0 for a model whose score "
                          "ranks anomalies below known objects)"),
    ("object.w_extra", 1.0, "weight of the object bank's term (is there a training object of this appearance and size? "
     "pipeline/object_bank.py; no effect for a model without object_bank.npz) or of a plug-in region term"),
    ("object.extra_alone_points", 50.0, "0: off; > 0: the bank's term alone can make an object anomalous, weighed "
     "by n / (n + this) for an object of n points (a well-seen object unlike every training object)"),
    ("object.extra_alone_from", 0.98, "in [0, 1): the bank's term from which it counts alone (ramps to 1)"),
    ("object.support_points", 10.0, "0: off; > 0: an object's region score is weighed by n / (n + this) for an "
     "object of n points (the evidence of a few points is weak evidence)"),
    ("object.track_gate", 2.0, "largest distance [m] between a track's predicted centroid and a candidate"),
    ("object.track_window", 0, "frames a track's score averages over (unseen frames count 0); 0 = the model's "
     "calibrated value, else 3"),
    ("object.track_max_missed", 2, "a track unseen this many frames in a row is dropped"),
    ("object.known_classes", "car,bicycle,truck,person,bicyclist,motorcycle,motorcyclist,bus,other-vehicle,on-rails",
     "comma-separated model class names of known objects"),
    ("object.ground_classes", "road,sidewalk,terrain,parking,lane-marking,other-ground",
     "comma-separated model class names of ground"),
    ("object.drivable_classes", "road,parking,lane-marking", "comma-separated model class names of drivable ground"),
    ("object.ground_inlier", 0.15, "RANSAC inlier distance of the ground plane [m]"),
    ("object.ground_max_tilt_deg", 15.0, "largest tilt of the ground plane [deg]"),
    ("object.ground_fallback_z", -1.73, "ground height [m] in the LiDAR frame when no plane can be fitted"),
    ("raise_k", 0, "ALERT when raise_k of the last raise_n frames had an anomalous region; 0 (with raise_n 0) = "
     "model.json's calibrated persistence, else 3 of 5"),
    ("raise_n", 0, "window of the k-of-n rule [frames]; 0 = model.json's calibrated value (see raise_k; one of the "
     "two set alone: the other at 3 of 5)"),
    ("clear_frames", 5, "consecutive frames without evidence needed to clear an ALERT"),
    ("cooldown_s", 1.0, "an ALERT is held at least this long [s of stamp time]"),
    ("publish_points", True, "publish ood/points"),
    ("publish_markers", True, "publish ood/markers (RViz)"),
    ("max_output_pixels", 8_388_608, "ood/mask and ood/score of a larger camera image are published downscaled by the "
     "smallest integer factor that fits (block maximum: no anomalous pixel is lost); 0 = always camera resolution"),
    ("diagnostics_period", 1.0, "period of /diagnostics [s]"),
    ("diagnostics_window", 10.0, "bad inputs are judged over this window [s]: a /diagnostics WARN clears once a "
     "window passes without one (counts since start are reported too)"),
    ("log_throttle_s", 5.0, "each bad-input reason is logged at most once per this many seconds"),
]

#: Parameter -> FusionConfig field (same name), with its parameter default.
_FUSION_FIELDS = ("frame_score_percentile", "min_region_pixels", "min_region_points", "cluster_eps",
                  "cluster_min_points", "max_cluster_points", "clock_jump", "min_lidar_points_in_view",
                  "crop_model", "crop_context", "crop_min_side", "mask_source")
_ALERT_FIELDS = ("raise_k", "raise_n", "clear_frames", "cooldown_s")
#: Prefix of the object decisions' parameters (:class:`ObjectConfig` fields).
OBJECT_PREFIX = "object."
#: Parameter -> ApproximateSync keyword.
SYNC_PARAMS = {"slop": "slop", "stale_timeout": "stale_timeout", "clock_jump": "clock_jump", "sync_queue_size": "queue_size"}


def fusion_param_defaults() -> dict[str, Any]:
    """Every parameter's default (``lidar_to_camera.matrix`` None = unset)."""
    out = {name: (list(default) if isinstance(default, list) else default) for name, default, _ in FUSION_PARAMETERS}
    out[MATRIX_PARAM] = None
    return out


_DEFAULTS = fusion_param_defaults()


def coerce_fusion_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each fusion parameter converted to its table type where lossless (an int for
    a double, an integral double for an int; see :func:`ood_perception.pipeline.params.coerce_value`);
    other keys unchanged. Raises ValueError naming the first parameter of the wrong type."""
    return coerce_params(values, _DEFAULTS)


def validate_fusion_params(values: Mapping[str, Any]) -> None:
    """Check a complete parameter dict (types first, see :func:`coerce_fusion_params`); raise
    ValueError naming the first bad value."""
    values = coerce_fusion_params(values)
    positive = ["slop", "clock_jump", "diagnostics_period", "diagnostics_window", "cluster_eps", "log_throttle_s"]
    for name in positive:
        if not float(values[name]) > 0:
            raise ValueError(f"parameter {name} must be > 0, got {values[name]}")
    if not float(values["crop_context"]) >= 0:
        raise ValueError(f"parameter crop_context must be >= 0, got {values['crop_context']}")
    if int(values["max_output_pixels"]) < 0:
        raise ValueError(f"parameter max_output_pixels must be >= 0 (0 = no limit), got {values['max_output_pixels']}")
    for name in ["qos_depth", "sync_queue_size", "max_points", "min_region_pixels", "min_region_points",
                 "cluster_min_points", "max_cluster_points", "clear_frames",
                 "min_lidar_points_in_view", "crop_min_side"]:
        if int(values[name]) < 1:
            raise ValueError(f"parameter {name} must be >= 1, got {values[name]}")
    if values["reliability"] not in ("best_effort", "reliable"):
        raise ValueError(f"parameter reliability must be one of ('best_effort', 'reliable'), got {values['reliability']!r}")
    k, n = int(values["raise_k"]), int(values["raise_n"])
    if k < 0 or n < 0:
        raise ValueError(f"parameters raise_k and raise_n must be >= 0 (0 and 0 = the model's calibrated "
                         f"persistence), got {k} and {n}")
    if k and n and k > n:
        raise ValueError(f"parameter raise_k ({k}) must be <= raise_n ({n})")
    if not float(values["cooldown_s"]) >= 0 or not float(values["stale_timeout"]) >= 0:
        raise ValueError("parameters cooldown_s and stale_timeout must be >= 0")
    if not 0 <= float(values["frame_score_percentile"]) <= 100:
        raise ValueError(f"parameter frame_score_percentile must be in [0, 100], got {values['frame_score_percentile']}")
    if values["mask_source"] not in ("pixels", "regions"):
        raise ValueError(f"parameter mask_source must be pixels or regions, got {values['mask_source']!r}")
    if values["decision"] not in ("auto", "objects", "pixels"):
        raise ValueError(f"parameter decision must be auto, objects or pixels, got {values['decision']!r}")
    if math.isinf(float(values["region_threshold"])):
        raise ValueError("parameter region_threshold must be finite or NaN (= the model's)")
    shift = float(values["scene_shift_fraction"])
    if not math.isnan(shift) and not 0 < shift <= 1:
        raise ValueError(f"parameter scene_shift_fraction must be in (0, 1] or NaN (= the model's), got {shift}")
    object_config(values)
    if values["backend"] not in ("onnxruntime", "torch", "tensorrt"):
        raise ValueError(f"parameter backend must be onnxruntime, torch or tensorrt, got {values['backend']!r}")
    thr = float(values["threshold"])
    if math.isinf(thr):
        raise ValueError(f"parameter threshold must be finite or NaN (= the model's), got {thr}")
    for name in ("lidar_to_camera.xyz", "lidar_to_camera.rpy"):
        v = list(values[name])
        if len(v) != 3 or not all(math.isfinite(float(x)) for x in v):
            raise ValueError(f"parameter {name} must be 3 finite numbers, got {v}")
    m = values.get(MATRIX_PARAM)
    if m is not None:
        a = np.asarray(list(m), float)
        if a.size != 16 or not np.all(np.isfinite(a)) or not np.allclose(a.reshape(4, 4)[3], [0, 0, 0, 1]):
            raise ValueError(f"parameter {MATRIX_PARAM} must be 16 finite numbers (row-major 4x4, last row 0 0 0 1)")


def fusion_config_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`FusionConfig` keyword arguments for the parameters present in ``values``
    (``threshold`` NaN -> None = the model's; any of raise_k/raise_n/clear_frames/cooldown_s ->
    ``alert``, the missing ones at their parameter defaults)."""
    out: dict[str, Any] = {}
    for key in _FUSION_FIELDS:
        if key in values:
            out[key] = type(_DEFAULTS[key])(values[key])
    if "threshold" in values:
        thr = float(values["threshold"])
        out["threshold"] = None if math.isnan(thr) else thr
    if any(k in values for k in _ALERT_FIELDS):
        k, n = (int(values.get(name, 0)) for name in ("raise_k", "raise_n"))
        if (k == 0) != (n == 0):  # one of the two set: the other at its default (3 of 5), k <= n kept
            k, n = (k, max(n or DEFAULT_PERSISTENCE[1], k)) if k else (min(DEFAULT_PERSISTENCE[0], n), n)
        out["alert"] = AlertConfig(k, n, *(type(_DEFAULTS[f])(values.get(f, _DEFAULTS[f])) for f in _ALERT_FIELDS[2:]))
    if "decision" in values:
        out["decision"] = str(values["decision"])
    for key in ("region_threshold", "scene_shift_fraction"):
        if key in values:
            v = float(values[key])
            out[key] = None if math.isnan(v) else v
    if any(k.startswith(OBJECT_PREFIX) for k in values):
        out["objects"] = object_config(values)
    return out


def object_config(values: Mapping[str, Any]) -> ObjectConfig:
    """The :class:`ObjectConfig` of the ``object.*`` parameters in ``values`` (the missing ones at their
    parameter defaults). Raises ValueError naming the parameters when they are inconsistent."""
    kw: dict[str, Any] = {}
    for name, default, _ in FUSION_PARAMETERS:
        if not name.startswith(OBJECT_PREFIX):
            continue
        value = values.get(name, default)
        field_name = name[len(OBJECT_PREFIX):]
        kw[field_name] = parse_names(value) if field_name.endswith("_classes") else type(default)(value)
    try:
        return ObjectConfig(**kw)
    except ValueError as exc:
        raise ValueError(f"object.* parameters: {exc}") from exc


def sync_kwargs(values: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`ApproximateSync` keyword arguments for the parameters present in ``values``."""
    return {arg: type(_DEFAULTS[key])(values[key]) for key, arg in SYNC_PARAMS.items() if key in values}


def extrinsics_from_params(values: Mapping[str, Any]) -> np.ndarray:
    """T_cam_lidar (LiDAR -> camera optical frame): ``lidar_to_camera.matrix`` when set, else the
    inverse of the camera pose ``lidar_to_camera.xyz`` + ``.rpy`` in the LiDAR frame (missing keys at
    their defaults: the camera at the LiDAR origin looking forward). A TF lookup would replace this
    where tf2_ros is installed."""
    m = values.get(MATRIX_PARAM)
    if m is not None:
        a = np.asarray(list(m), float)
        if a.size != 16:
            raise ValueError(f"parameter {MATRIX_PARAM} must be 16 numbers (row-major 4x4), got {a.size}")
        return a.reshape(4, 4)
    xyz = values.get("lidar_to_camera.xyz", _DEFAULTS["lidar_to_camera.xyz"])
    rpy = values.get("lidar_to_camera.rpy", _DEFAULTS["lidar_to_camera.rpy"])
    return np.linalg.inv(transform_from_xyz_rpy(xyz, rpy))


@dataclass
class FrameSettings:
    """What the frame processor and the input decoding need, from the node's parameters.

    Attributes:
        fusion: the pipeline's configuration.
        sync: :class:`ApproximateSync` keyword arguments.
        T_cam_lidar: 4x4 extrinsics (LiDAR -> camera optical frame).
        intensity_field, negate_lidar_y, max_points: PointCloud2 decoding.
        publish_points, publish_markers: which optional outputs are published.
        max_output_pixels: larger ood/mask and ood/score are downscaled (see :func:`output_factor`).
    """

    fusion: FusionConfig = field(default_factory=FusionConfig)
    sync: dict[str, Any] = field(default_factory=dict)
    T_cam_lidar: np.ndarray = field(default_factory=lambda: extrinsics_from_params({}))
    intensity_field: str = "intensity"
    negate_lidar_y: bool = False
    max_points: int = 2_000_000
    publish_points: bool = True
    publish_markers: bool = True
    max_output_pixels: int = 8_388_608

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> FrameSettings:
        """Coerce and validate ``values`` (missing parameters take their defaults; unknown keys are
        ignored here: the params-file readers warn about them) and map them. Raises ValueError
        naming a bad value."""
        full = coerce_fusion_params({**_DEFAULTS, **{k: v for k, v in values.items() if k in _DEFAULTS}})
        validate_fusion_params(full)
        return cls(
            fusion=FusionConfig(**fusion_config_kwargs(full)),
            sync=sync_kwargs(full),
            T_cam_lidar=extrinsics_from_params(full),
            intensity_field=str(full["intensity_field"]),
            negate_lidar_y=bool(full["negate_lidar_y"]),
            max_points=int(full["max_points"]),
            publish_points=bool(full["publish_points"]),
            publish_markers=bool(full["publish_markers"]),
            max_output_pixels=int(full["max_output_pixels"]),
        )


@dataclass(frozen=True)
class FrameHeader:
    """A ROS-free ``std_msgs/Header``: stamp in integer nanoseconds (exact) and frame id."""

    stamp_ns: int
    frame_id: str

    @classmethod
    def of(cls, header: Any) -> FrameHeader:
        """From any header-like object (rclpy or rosbags ``std_msgs/Header``)."""
        return cls(int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec), str(header.frame_id))

    @property
    def sec(self) -> int:
        """Whole seconds of the stamp."""
        return self.stamp_ns // 1_000_000_000

    @property
    def nanosec(self) -> int:
        """Nanoseconds part of the stamp."""
        return self.stamp_ns % 1_000_000_000

    @property
    def stamp(self) -> float:
        """The stamp in float seconds (the synchroniser's unit), ``sec + nanosec * 1e-9``."""
        return self.sec + self.nanosec * 1e-9


@dataclass
class CameraInput:
    """A decoded camera image: RGB uint8 ``[H, W, 3]``, its header, and an opaque ``source``
    (e.g. the original message, for label look-ups in replay). ``received`` is the wall
    (monotonic) time of arrival, for latency figures only."""

    header: FrameHeader
    image: np.ndarray
    source: Any = None
    received: float = field(default_factory=time.monotonic)


@dataclass
class LidarInput:
    """A decoded LiDAR cloud: float32 ``[N, 4]`` x, y, z, intensity (finite points only)."""

    header: FrameHeader
    points: np.ndarray
    source: Any = None
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Note:
    """Something a caller should count and log: ``bad`` ones are bad inputs (counted on
    /diagnostics per ``reason``), the others informational (e.g. a clock reset)."""

    reason: str
    detail: str
    bad: bool = True


@dataclass
class FrameOutputs:
    """Everything published for one synchronised frame.

    Attributes:
        result: the pipeline's result.
        header: header of ood/mask, ood/score, ood/alerts and ood/markers: the camera image's, or
            without a camera image the LiDAR stamp with the last camera frame id seen.
        points_header: header of ood/points (the LiDAR's), None when no scored points are published.
        T_cam_lidar: extrinsics used to express 3D regions in ``header.frame_id``.
        camera, lidar: the inputs of the frame.
        calib: the calibration the pipeline used (None without CameraInfo).
        points: the LiDAR points given to the pipeline (None when not projectable).
        notes: bad-input notes of this frame.
        output_factor: ood/mask and ood/score are downscaled by this integer factor (1 = camera
            resolution; see :func:`output_factor`); :attr:`mask` and :attr:`score` are the published maps.
    """

    result: FusionResult
    header: FrameHeader
    points_header: FrameHeader | None
    T_cam_lidar: np.ndarray
    camera: CameraInput | None
    lidar: LidarInput | None
    calib: Calibration | None
    points: np.ndarray | None
    notes: list[Note] = field(default_factory=list)
    output_factor: int = 1

    @property
    def publish_mask(self) -> bool:
        """Whether ood/mask and ood/score are published (the frame was scored)."""
        return self.result.mask is not None

    @property
    def mask(self) -> np.ndarray | None:
        """ood/mask as published: the result's mask, block-max downscaled by :attr:`output_factor`."""
        m = self.result.mask
        return m if m is None or self.output_factor == 1 else block_max(m, self.output_factor)

    @property
    def score(self) -> np.ndarray | None:
        """ood/score as published (block maximum, NaN only where the whole block is NaN)."""
        s = self.result.score
        return s if s is None or self.output_factor == 1 else block_max(s, self.output_factor)


def output_factor(height: int, width: int, max_pixels: int) -> int:
    """The smallest integer factor ``f`` with ``ceil(H/f) * ceil(W/f) <= max_pixels`` (1 when the
    image fits or ``max_pixels`` is 0). A 4000x3000 image under the default 8388608 (8 MP: 3840x2160
    fits) gives 2: 2000x1500 outputs, 15 MB instead of 60 MB per frame."""
    if max_pixels <= 0:
        return 1
    f = 1
    while math.ceil(height / f) * math.ceil(width / f) > max_pixels:
        f += 1
    return f


def block_max(a: np.ndarray, f: int) -> np.ndarray:
    """``a`` ``[H, W]`` downscaled by ``f``: each output pixel ``(v, u)`` is the maximum over camera
    pixels ``[f*v, f*v+f) x [f*u, f*u+f)`` (partial blocks at the edges; NaN ignored unless the
    whole block is NaN), so an anomalous pixel is never lost. Output ``[ceil(H/f), ceil(W/f)]``."""
    H, W = a.shape
    h, w = -(-H // f), -(-W // f)
    pad = np.full((h * f, w * f), np.nan if a.dtype.kind == "f" else 0, a.dtype)
    pad[:H, :W] = a
    blocks = pad.reshape(h, f, w, f)
    if a.dtype.kind == "f":
        return np.fmax.reduce(np.fmax.reduce(blocks, axis=3), axis=1)
    return blocks.max(axis=(1, 3))


def stale_reasons(frame: SyncedFrame, sync: ApproximateSync, now: float | None = None) -> list[str]:
    """Why a modality is missing from ``frame`` (``"lidar stale for 0.80 s"``, ``"camera never received"``,
    or the synchroniser's reason the streams do not pair)."""
    if frame.unpaired is not None:
        return [frame.unpaired]
    reasons = []
    for name, part in (("camera", frame.camera), ("lidar", frame.lidar)):
        if part is None:
            age = sync.age(name, now)
            reasons.append(f"{name} {'never received' if age is None else f'stale for {age:.2f} s'}")
    return reasons


def sync_note(stream: str, stamp: float, outcome: str) -> Note | None:
    """The note for an :meth:`ApproximateSync.add` outcome (None when nothing to report)."""
    if outcome == "rejected_zero":
        return Note("zero_stamp", f"{stream} message with stamp 0 ignored")
    if outcome == "rejected_old":
        return Note("old_stamp", f"{stream} stamp {stamp:.3f} is older than the last processed frame")
    if outcome == "duplicate":
        return Note("duplicate_stamp", f"{stream} stamp {stamp:.3f} repeated; the newer message replaces it")
    if outcome == "unpaired":
        return Note("unpaired_streams", f"camera stamp {stamp:.3f} sent alone: camera and lidar publish but do not pair")
    if outcome == "reset":
        return Note("clock_reset", f"{stream} stamp jumped back to {stamp:.3f}: sync and alert history reset", bad=False)
    return None


@dataclass
class StartedFrame:
    """A frame between :meth:`FusionFrameProcessor.start` and :meth:`FusionFrameProcessor.complete`."""

    pending: PendingFrame
    camera: CameraInput | None
    lidar: LidarInput | None
    calib: Calibration | None
    points: np.ndarray | None
    notes: list[Note]


class FusionFrameProcessor:
    """Synchroniser + calibration + pipeline: decoded inputs in, :class:`FrameOutputs` out.

    Args:
        pipeline: the :class:`FusionPipeline` (its config is the caller's; see :meth:`build`).
        settings: the mapped parameters.
        clock: arrival time source [s]; the node passes its ROS clock, replay the bag time.
    """

    def __init__(self, pipeline: FusionPipeline, settings: FrameSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.settings = settings or FrameSettings()
        self.sync = ApproximateSync(**{**self.settings.sync, "clock": clock})
        self.calib: Calibration | None = None  # intrinsics from the latest CameraInfo
        self.camera_frame = ""

    @classmethod
    def build(cls, backend: Any, settings: FrameSettings, clock: Callable[[], float] = time.monotonic) -> FusionFrameProcessor:
        """A processor with a new :class:`FusionPipeline` around ``backend`` and ``settings.fusion``."""
        return cls(FusionPipeline(backend, settings.fusion), settings, clock)

    # -- inputs ------------------------------------------------------------------------------

    def set_camera_info(self, calib: Calibration) -> None:
        """The latest CameraInfo's intrinsics (its extrinsics are replaced by the settings')."""
        self.calib = calib

    def add_camera(self, cam: CameraInput, arrival: float | None = None) -> list[Note]:
        """Offer a decoded camera image to the synchroniser (``arrival`` None = the clock now)."""
        self.camera_frame = cam.header.frame_id or self.camera_frame
        return self._offer("camera", cam.header.stamp, cam, arrival)

    def add_lidar(self, lid: LidarInput, arrival: float | None = None) -> list[Note]:
        """Offer a decoded LiDAR cloud to the synchroniser."""
        return self._offer("lidar", lid.header.stamp, lid, arrival)

    def _offer(self, stream: str, stamp: float, payload: Any, arrival: float | None) -> list[Note]:
        outcome = self.sync.add(stream, stamp, payload, arrival=arrival)
        note = sync_note(stream, stamp, outcome)
        if note is not None and outcome == "unpaired":
            why = self.sync.pairing_problem(arrival)
            note = Note(note.reason, f"{note.detail}: {why}" if why else note.detail)
        return [note] if note is not None else []

    def take(self) -> SyncedFrame | None:
        """The frame waiting to be processed, if any (never blocks)."""
        return self.sync.take()

    def wait(self, timeout: float | None = None) -> SyncedFrame | None:
        """Block until a frame is ready (worker threads)."""
        return self.sync.wait(timeout)

    # -- the frame ---------------------------------------------------------------------------

    def process(self, frame: SyncedFrame) -> FrameOutputs:
        """Run the pipeline on a synchronised frame and say what to publish.

        The same as ``complete(start(frame))`` with the model run in between; replay calls
        :meth:`start`, runs ``pipeline.infer`` on another thread and calls :meth:`complete` later.
        """
        started = self.start(frame)
        self.pipeline.infer(started.pending)
        return self.complete(started)

    def start(self, frame: SyncedFrame) -> StartedFrame:
        """Calibration, stale-sensor reasons (read now, from the synchroniser's current state) and
        the pipeline's :meth:`~ood_perception.pipeline.FusionPipeline.begin`."""
        cam: CameraInput | None = frame.camera.msg if frame.camera is not None else None
        lid: LidarInput | None = frame.lidar.msg if frame.lidar is not None else None
        image = cam.image if cam is not None else None
        points = lid.points if lid is not None else None
        notes: list[Note] = []
        T = self.settings.T_cam_lidar
        calib = None
        if self.calib is not None:
            calib = Calibration(self.calib.K, self.calib.width, self.calib.height, T)
            if image is not None and image.shape[:2] != (calib.height, calib.width):
                notes.append(Note("camera_info_size_mismatch",
                                  f"CameraInfo is {calib.width}x{calib.height}, image {image.shape[1]}x{image.shape[0]}: rescaled"))
                calib = calib.scaled(image.shape[1], image.shape[0])
        elif points is not None:
            notes.append(Note("missing_camera_info", "no CameraInfo received yet: LiDAR cannot be projected"))
        if image is None and calib is None:
            points = None  # nothing to project onto
        reasons = stale_reasons(frame, self.sync)
        pending = self.pipeline.begin(
            FusionFrame(stamp=frame.stamp, image=image, points=points, calib=calib, degraded="; ".join(reasons) or None)
        )
        return StartedFrame(pending, cam, lid, calib, points, notes)

    def complete(self, started: StartedFrame) -> FrameOutputs:
        """The pipeline's :meth:`~ood_perception.pipeline.FusionPipeline.finish` (in frame order)
        and the headers to publish with."""
        result = self.pipeline.finish(started.pending)
        if started.pending.lidar_unusable is not None and started.points is not None and len(started.points):
            # (an empty cloud is noted at decoding already: "empty_cloud")
            started.notes.append(Note("lidar_not_in_view", started.pending.lidar_unusable))
        cam, lid = started.camera, started.lidar
        if cam is not None:
            header = cam.header
        else:  # LiDAR alone: its stamp, in the camera frame the outputs are always given in
            assert lid is not None
            header = FrameHeader(lid.header.stamp_ns, self.camera_frame or lid.header.frame_id)
        points_header = lid.header if (lid is not None and self.settings.publish_points and result.mask is not None) else None
        factor = 1 if result.mask is None else output_factor(*result.mask.shape, self.settings.max_output_pixels)
        return FrameOutputs(result, header, points_header, self.settings.T_cam_lidar, cam, lid, started.calib,
                            started.points, started.notes, factor)
