"""The replay loop: one bag through the fusion node's own frame objects, in bag-time order.

Per message, in bag-time order, exactly what the fusion node's callbacks and worker do: messages
are decoded by the node's :mod:`ood_perception.pipeline.inputs` (bad ones counted per reason, as the
node counts them) and handed to a
:class:`~ood_perception.pipeline.frame_handler.FusionFrameProcessor` (the node's synchroniser,
calibration, extrinsics, stale-sensor reasons and output headers) with the bag time as arrival
clock; every frame it emits runs through the :class:`~ood_perception.pipeline.FusionPipeline` and
is written to the output bag with the headers the processor says the node publishes. Replay processes every frame the
synchroniser forms (a live node under load may drop some: latest-only), so replay is the
reference a live run converges to when it keeps up.

Labels (optional): a ``camera/labels`` mono16 image topic with raw ids (matched to the camera image
by stamp), or a SemanticKITTI-layout folder (the bag's *i*-th camera message = frame *i* of the
sequence, counting messages the node drops too, e.g. a zero stamp), plus per-point raw ids from a
``label`` field of the cloud (or the folder's point labels). They feed
:class:`~ood_perception.evaluation.segmentation.MetricsAccumulator` (pixel / point scores) and
:class:`AlertMetrics` (the alert-level evaluation: an
:class:`~ood_perception.evaluation.AlertEvaluator` with the frame score, level and stamp of every
frame with pixel labels, and a SegmentMeIfYouCan
:class:`~ood_perception.evaluation.ComponentAccumulator` on the published mask). Anomaly objects
are told apart by the pixel instance ids of a label folder (``image_2_instance``, written by
``ood-perception synth``); the bag's ``camera/labels`` topic carries semantic ids only, so without
a label folder every anomaly class of a frame is one object (``AlertMetrics.objects_from`` says
which).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ood_perception.codec.conversions import (
    ConversionError,
    cloud_field,
    image_to_numpy,
    pointcloud2_to_array,
)
from ood_perception.codec.tf import frame_name
from ood_perception.data import DatasetConfig, SemanticKittiReader
from ood_perception.data.bag_reader import BagReadError, BagSource
from ood_perception.evaluation.segmentation import MetricsAccumulator
from ood_perception.pipeline import FusionConfig, inputs
from ood_perception.pipeline.frame_handler import FrameSettings, FusionFrameProcessor, extrinsics_from_params
from ood_perception.replay.alert_metrics import AlertMetrics
from ood_perception.replay.extrinsics import (
    TF_TOLERANCE_DEG,
    TF_TOLERANCE_M,
    compare,
    read_tf_static,
    resolve_extrinsics,
)
from ood_perception.replay.interrupt import stop_requests

#: Logical input topics (relative names, resolved in the bag by :meth:`BagSource.resolve`).
DEFAULT_INPUT_TOPICS = {
    "image": "camera/image",
    "camera_info": "camera/camera_info",
    "points": "lidar/points",
    "labels": "camera/labels",
}


def node_default_extrinsics() -> np.ndarray:
    """The fusion node's default T_cam_lidar (its ``lidar_to_camera.*`` defaults): the camera
    optical frame at the LiDAR origin looking forward (roll -pi/2, yaw -pi/2), inverted."""

    return extrinsics_from_params({})


@dataclass
class ReplaySettings:
    """Everything besides the model that decides what replay does (from the params file / CLI).

    Attributes:
        topics: logical input topic -> name in the bag (see :data:`DEFAULT_INPUT_TOPICS`).
        fusion: :class:`~ood_perception.pipeline.FusionConfig` keyword arguments.
        sync: :class:`~ood_perception.pipeline.ApproximateSync` keyword arguments (``slop``,
            ``stale_timeout``, ``clock_jump``, ``queue_size``).
        T_cam_lidar: 4x4 extrinsics (LiDAR -> camera optical frame) from the params / ``--calib``.
        extrinsics: ``auto`` (the bag's ``/tf_static`` when it connects the cloud's and the image's
            frames, else ``T_cam_lidar``) or ``fixed`` (``T_cam_lidar`` always); see
            :mod:`ood_perception.replay.extrinsics`.
        extrinsics_source: where ``T_cam_lidar`` came from (recorded in ``metrics.json``).
        negate_y: flip LiDAR y (carla-ros-bridge before its ROS conversion).
        intensity_field: cloud field read as intensity.
        max_points: clouds with more points are rejected as bad input (the node's ``max_points``).
        publish_points: write ood/points (the node's ``publish_points``).
        label_field: cloud field with per-point raw label ids (used when present).
        distro: type store for bags without embedded definitions.
        max_frames: stop after this many frames (None: all).
        thumbnails: how many best and worst frames keep an overlay for the report.
        overlap: run the model of frame *k* on a second thread while frame *k-1* is post-processed
            and written and the next messages are decoded (ONNX Runtime and torch release the GIL).
            Frames still finish in order, so outputs and metrics are the same as without overlap
            (tested); only wall time and per-frame latency change.
    """

    topics: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INPUT_TOPICS))
    fusion: dict[str, Any] = field(default_factory=dict)
    sync: dict[str, Any] = field(default_factory=dict)
    T_cam_lidar: np.ndarray = field(default_factory=lambda: node_default_extrinsics())
    extrinsics: str = "auto"
    extrinsics_source: str = "node default"
    negate_y: bool = False
    intensity_field: str = "intensity"
    max_points: int = 2_000_000
    publish_points: bool = True
    label_field: str = "label"
    distro: str = "kilted"
    max_frames: int | None = None
    thumbnails: int = 3
    overlap: bool = True

    def frame_settings(self) -> Any:
        """The node's :class:`~ood_perception.pipeline.frame_handler.FrameSettings` for these settings."""

        return FrameSettings(fusion=FusionConfig(**self.fusion), sync=dict(self.sync), T_cam_lidar=self.T_cam_lidar,
                             intensity_field=self.intensity_field, negate_lidar_y=self.negate_y,
                             max_points=self.max_points, publish_points=self.publish_points)


@dataclass
class FrameRecord:
    """What the report needs about one processed frame (small; kept for every frame)."""

    index: int
    stamp_ns: int
    bag_time_ns: int
    level: int
    description: str
    frame_score: float
    anomalous_fraction: float
    num_regions: int
    latency_s: float
    modalities: list[str]
    threshold: float = float("nan")  # what frame_score was compared against (OodAlert.threshold)
    has_labels: bool = False
    frame_auroc: float | None = None  # per-frame pixel AUROC when the frame has ID and OOD pixels
    ood_iou: float | None = None  # IoU of the anomaly mask with the OOD label


@dataclass
class BagReplay:
    """The result of replaying one bag."""

    bag: str
    frames: list[FrameRecord]
    metrics: Any  # MetricsAccumulator
    duration_s: float  # bag time covered by the processed frames' messages
    wall_s: float
    topics: dict[str, str]
    sync_counters: dict[str, Any]
    error: str | None = None  # BagReadError / skipped-damage text when the bag was damaged (results kept)
    salvaged: bool = False
    skipped: list[dict[str, Any]] = field(default_factory=list)  # damaged parts stepped over (Skipped.to_dict)
    bad_inputs: dict[str, int] = field(default_factory=dict)  # per reason, as the node counts them
    thumbnails: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    extrinsics: dict[str, Any] = field(default_factory=dict)  # which were used, checked against /tf_static
    label_map: str = ""  # where the labels' map came from (replay.labels), set by the caller
    alert_metrics: AlertMetrics | None = None  # alert-level + component metrics (frames with pixel labels)
    interrupted: str | None = None  # the signal (SIGINT/SIGTERM) that stopped the replay early; results kept

    @property
    def x_real_time(self) -> float:
        """Bag time replayed per second of wall time."""
        return self.duration_s / self.wall_s if self.wall_s > 0 else float("nan")


#: A processed frame waits this many frames for its label image before it is scored without it.
LABEL_WAIT_FRAMES = 4
#: Frames whose model may be queued or running ahead of the frame being finished (overlapped replay):
#: 2 keeps the model thread fed through the main thread's frame-to-frame jitter.
OVERLAP_DEPTH = 2


@dataclass
class _Scored:
    """A processed frame waiting for its labels."""

    rec: FrameRecord
    result: Any
    rgb: np.ndarray | None
    points: np.ndarray | None
    calib: Any
    pix_raw: np.ndarray | None
    pt_raw: np.ndarray | None
    pix_inst: np.ndarray | None = None


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class _Thumbs:
    """Keeps the k best and k worst frames by a key and renders their overlays at the end (a
    candidate holds its frame's arrays until it is evicted; no per-frame image is kept)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.best: list[tuple[float, int, Callable[[], np.ndarray]]] = []
        self.worst: list[tuple[float, int, Callable[[], np.ndarray]]] = []

    def offer(self, key: float, index: int, make: Callable[[], np.ndarray]) -> None:
        if self.k <= 0 or not np.isfinite(key):
            return
        for bucket, sign in ((self.best, -1.0), (self.worst, 1.0)):
            # best: highest key; worst: lowest key. Stored so that bucket[0] is the one to evict.
            entry = (-sign * key, index)
            if len(bucket) < self.k or entry > (bucket[0][0], bucket[0][1]):
                bucket.append((entry[0], index, make))
                bucket.sort(key=lambda e: (e[0], e[1]))
                if len(bucket) > self.k:
                    bucket.pop(0)

    def result(self) -> dict[str, list[tuple[int, np.ndarray]]]:
        best = sorted(self.best, key=lambda e: (-e[0], e[1]))
        worst = sorted(self.worst, key=lambda e: (-e[0], e[1]))
        return {"best": [(i, make()) for _, i, make in best], "worst": [(i, make()) for _, i, make in worst]}


def overlay(rgb: np.ndarray, mask: np.ndarray | None, gt_ood: np.ndarray | None = None, width: int = 320) -> np.ndarray:
    """Camera image with the anomaly mask tinted red and the OOD ground truth outlined in yellow,
    resized to ``width`` pixels (RGB uint8)."""

    out = rgb.astype(np.float32).copy()
    if mask is not None:
        m = mask > 0
        out[m] = 0.45 * out[m] + 0.55 * np.array([255, 0, 0], np.float32)
    out = out.clip(0, 255).astype(np.uint8)
    if gt_ood is not None and gt_ood.any():
        contours, _ = cv2.findContours(gt_ood.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 230, 0), 1)
    h = max(1, round(out.shape[0] * width / out.shape[1]))
    return cv2.resize(out, (width, h), interpolation=cv2.INTER_AREA)


class LabelFolder:
    """Per-frame labels from a SemanticKITTI-layout folder: camera frame *i* -> reader frame *i*."""

    def __init__(self, root: str | Path, sequence: str | None = None) -> None:

        self.reader = SemanticKittiReader(root, sequences=[sequence] if sequence else None)
        self.config = self.reader.config

    def __len__(self) -> int:
        return len(self.reader)

    def get(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(pixel raw labels, point raw labels) of frame ``i`` (None beyond the folder)."""
        pix, pts, _ = self.get_with_instances(i)
        return pix, pts

    def get_with_instances(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(pixel raw labels, point raw labels, pixel instance ids) of frame ``i`` (None beyond the
        folder; instances None when the folder has no ``image_2_instance``)."""
        if i >= len(self.reader):
            return None, None, None
        f = self.reader[i]
        return f.pixel_labels, f.point_labels, f.pixel_instances


def check_tf_static(src: BagSource, camera_frame: str, lidar_frame: str, T_cam_lidar: np.ndarray) -> dict[str, Any]:
    """Compare extrinsics with the bag's ``/tf_static`` (the transform between the cloud's and the
    image's frame ids through the static tree, chains followed).

    Returns:
        ``{"status": "agrees" | "differs" | "absent" | "unreadable", ...}`` with, when a transform
        was found, the translation [m] and rotation [deg] between the two.
    """
    try:
        tree = read_tf_static(src)
    except ValueError as exc:
        return {"status": "unreadable", "error": str(exc)}
    T_tf = tree.lookup(camera_frame, lidar_frame) if tree is not None and camera_frame and lidar_frame else None
    if T_tf is None:
        return {"status": "absent"}
    dist, angle = compare(T_tf, T_cam_lidar)
    ok = dist <= TF_TOLERANCE_M and angle <= TF_TOLERANCE_DEG
    return {"status": "agrees" if ok else "differs", "frames": f"{frame_name(lidar_frame)} -> {frame_name(camera_frame)}",
            "translation_m": round(dist, 6), "rotation_deg": round(angle, 4)}


class ReplaySession:
    """One bag through the fusion node's frame objects, step by named step (see the module docstring).

    ``ReplaySession(...).run()`` is :func:`replay_bag`. The steps, in the order a message meets them:
    :meth:`_open` (topics, extrinsics, label map, accumulators, the node's frame processor),
    :meth:`_on_message` (per message in bag-time order: :meth:`_on_camera_info`,
    :meth:`_on_label_image`, or :meth:`_on_sensor` for camera and LiDAR, which starts a frame when
    the synchroniser pairs one), :meth:`_emit` (a frame's model is done: outputs, record, labels),
    :meth:`_finish` (labels arrived: metrics, alert evaluation, thumbnails), :meth:`_drain` (the
    bag ended or broke: frames in flight are finished) and :meth:`_result`.
    Overlapped (``settings.overlap``), the model of frame k runs on a second thread while frame
    k-1 is emitted; the outputs are identical to the serial order (tested).
    """

    def __init__(self, bag_path: str | Path, pipeline: Any, settings: ReplaySettings | None = None,
                 out_bag: Any = None, dataset_config: Any = None, label_folder: LabelFolder | None = None,
                 progress: bool = False, on_frame: Callable[[FrameRecord, Any], None] | None = None,
                 sequence: str | None = None) -> None:
        self.bag_path, self.pipeline, self.out_bag = bag_path, pipeline, out_bag
        self.settings = settings or ReplaySettings()
        self.dataset_config, self.label_folder = dataset_config, label_folder
        self.progress, self.on_frame = progress, on_frame
        self.sequence = sequence or Path(bag_path).name or str(bag_path)
        self.now = 0.0  # the processor's arrival clock: the bag time of the current message
        self.bad: Counter[str] = Counter()
        self.frames: list[FrameRecord] = []
        self.pending_labels: dict[int, np.ndarray] = {}  # label images that came before their frame
        self.awaiting: dict[int, _Scored] = {}  # frames waiting for their label image
        self.image_index: dict[int, int] = {}  # camera stamp -> position among the bag's camera messages
        self.images_seen = 0
        self.inflight: deque[tuple[Any, Any, int, float]] = deque()  # (started, model future, bag ns, t0)
        self.executor: Any = None
        self.n_started = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.error: str | None = None
        self.thumbs = _Thumbs(self.settings.thumbnails)

    # ------------------------------------------------------------------ the whole run
    def run(self) -> BagReplay:
        """Replay the bag; see :func:`replay_bag` for what is returned and raised."""
        t_wall = time.perf_counter()
        self.src = BagSource(self.bag_path, distro=self.settings.distro)
        try:
            self._open()
            if self.settings.overlap:
                self.executor = ThreadPoolExecutor(1, thread_name_prefix="replay-infer")
            depth = OVERLAP_DEPTH if self.executor is not None else 0
            bar = tqdm(total=self.src.message_count(self.by_topic), desc=Path(self.bag_path).name, unit="msg",
                       leave=False, disable=not self.progress)
            stops = contextlib.ExitStack()  # Ctrl-C / SIGTERM: stop between messages, keep what was done
            self.stop = stops.enter_context(stop_requests())
            try:
                for m in self.src.messages(self.by_topic):
                    if self.stop.requested:
                        break
                    bar.update(1)
                    if self._on_message(m, depth):
                        break
            except BagReadError as exc:
                self.error = str(exc)
            finally:
                try:
                    self._drain()
                finally:
                    stops.close()  # the caller's signal handlers back, also when finishing a frame failed
                    bar.close()
            # damaged parts stepped over (skipped) come first, then a final cut (BagReadError)
            self.error = "; then ".join(e for e in (self.src.damage_report(), self.error) if e) or None
            return self._result(time.perf_counter() - t_wall)
        finally:
            self.src.close()

    # ------------------------------------------------------------------ steps
    def _open(self) -> None:
        """Resolve the topics, the extrinsics (``/tf_static``, params or ``--calib``) and the label
        map; build the accumulators and the node's frame processor."""
        src, settings = self.src, self.settings
        names = {**DEFAULT_INPUT_TOPICS, **settings.topics}
        self.topics = {
            "image": src.resolve(names["image"]),
            "points": src.resolve(names["points"]),
            "camera_info": src.resolve(names["camera_info"]),
            "labels": src.resolve(names["labels"], required=False) if names.get("labels") else None,
        }
        self.by_topic = {v: k for k, v in self.topics.items() if v}
        T_cam_lidar, self.extrinsics = resolve_extrinsics(src, self.topics["image"], self.topics["points"],
                                                          settings.T_cam_lidar, settings.extrinsics,
                                                          settings.extrinsics_source)
        self.settings = settings = dataclasses.replace(settings, T_cam_lidar=T_cam_lidar)
        if self.out_bag is not None and self.extrinsics["camera_frame"] and self.extrinsics["lidar_frame"]:
            start = src.start_ns or 0  # the extrinsics used, so the output bag's frames line up in a viewer
            self.out_bag.write_tf_static(T_cam_lidar, self.extrinsics["camera_frame"], self.extrinsics["lidar_frame"],
                                         start, start)
        if self.dataset_config is None:
            self.dataset_config = (self.label_folder.config if self.label_folder is not None
                                   else DatasetConfig.semantic_kitti())
        threshold = getattr(self.pipeline, "threshold", None)  # the pixel threshold
        self.metrics = MetricsAccumulator(self.dataset_config, threshold, getattr(self.pipeline, "input_hw", None))
        uses_objects = getattr(self.pipeline, "uses_objects", None)
        frame_threshold = (self.pipeline.region_threshold if uses_objects is not None and uses_objects(True)
                           else threshold)  # what OodAlert.score is compared against (timeline)
        self.alert_metrics = AlertMetrics(self.dataset_config, self.sequence, frame_threshold)
        self.fs = settings.frame_settings()
        self.proc = FusionFrameProcessor(self.pipeline, self.fs, clock=lambda: self.now)  # arrival clock: bag time

    def _on_message(self, m: Any, depth: int) -> bool:
        """One message in bag-time order; True when replay should stop (``max_frames`` reached)."""
        kind = self.by_topic[m.topic]
        self.first_ns = m.timestamp_ns if self.first_ns is None else self.first_ns
        self.last_ns = m.timestamp_ns
        self.now = m.timestamp_ns * 1e-9
        if kind == "camera_info":
            self._on_camera_info(m.msg)
        elif kind == "labels":
            self._on_label_image(m.msg)
        else:
            return self._on_sensor(kind, m, depth)
        return False

    def _on_camera_info(self, msg: Any) -> None:
        try:
            self.proc.set_camera_info(inputs.decode_camera_info(msg))
        except ConversionError:
            self.bad["bad_camera_info"] += 1

    def _on_label_image(self, msg: Any) -> None:
        """A ``camera/labels`` image: finishes the frame of its stamp, or waits for it."""
        stamp = _stamp_ns(msg.header)
        if stamp in self.awaiting:
            item = self.awaiting.pop(stamp)
            item.pix_raw = image_to_numpy(msg)
            self._finish(item)
        else:
            self.pending_labels[stamp] = image_to_numpy(msg)
            if len(self.pending_labels) > 64:
                self.pending_labels.pop(next(iter(self.pending_labels)))

    def _on_sensor(self, kind: str, m: Any, depth: int) -> bool:
        """A camera image or LiDAR cloud, handled as the fusion node's callbacks and worker do (same
        objects); a paired frame is started and its model queued (or run, serial)."""
        if kind == "image":  # label folder frame i = the bag's i-th camera message, dropped or not
            self.image_index[_stamp_ns(m.msg.header)] = self.images_seen
            self.images_seen += 1
            while len(self.image_index) > 256:
                self.image_index.pop(next(iter(self.image_index)))
        t0 = time.perf_counter()
        try:
            if kind == "image":
                notes = self.proc.add_camera(inputs.decode_camera(m.msg, source=m.msg))
            else:
                lid_in, notes = inputs.decode_lidar(m.msg, self.fs, source=m.msg)
                notes += self.proc.add_lidar(lid_in)
        except ConversionError:
            self.bad["bad_image" if kind == "image" else "bad_cloud"] += 1
            return False
        self.bad.update(n.reason for n in notes if n.bad)
        synced = self.proc.take()
        if synced is None:
            return False
        started = self.proc.start(synced)
        future = None
        if self.executor is not None:  # the model of this frame runs while earlier ones are finished
            future = self.executor.submit(self.proc.pipeline.infer, started.pending)
        else:
            self.proc.pipeline.infer(started.pending)
        self.inflight.append((started, future, m.timestamp_ns, t0))
        while len(self.inflight) > depth:
            self._emit(*self.inflight.popleft())
        self.n_started += 1
        return self.settings.max_frames is not None and self.n_started >= self.settings.max_frames

    def _emit(self, started: Any, future: Any, bag_ns: int, t0: float) -> None:
        """Complete a started frame (in frame order): output bag, record, labels (or wait for them)."""
        if future is not None:
            future.result()  # infer() turns model errors into a DEGRADED result itself
        out = self.proc.complete(started)
        self.bad.update(n.reason for n in out.notes if n.bad)
        result = out.result
        latency = time.perf_counter() - t0
        cam = out.camera
        stamp_ns = out.header.stamp_ns
        if self.out_bag is not None:
            self.out_bag.write_frame(out, bag_ns)
        pix_raw, pt_raw, pix_inst = self._folder_labels(cam)
        if out.lidar is not None and pt_raw is None and self.settings.label_field:
            pt_raw = self._cloud_labels(out.lidar.source)
        rec = FrameRecord(
            index=len(self.frames), stamp_ns=stamp_ns, bag_time_ns=bag_ns, level=int(result.level),
            description=result.decision.description, frame_score=float(result.frame_score),
            anomalous_fraction=float(result.anomalous_fraction), num_regions=len(result.regions),
            latency_s=latency, modalities=list(result.modalities), threshold=float(result.threshold),
        )
        self.frames.append(rec)
        item = _Scored(rec, result, cam.image if cam is not None else None, out.points, out.calib,
                       pix_raw, pt_raw, pix_inst)
        if cam is not None and pix_raw is None and self.topics["labels"]:
            if stamp_ns in self.pending_labels:  # the label image came first
                item.pix_raw = self.pending_labels.pop(stamp_ns)
                self._finish(item)
            else:
                self.awaiting[stamp_ns] = item
                while len(self.awaiting) > LABEL_WAIT_FRAMES:  # its label never came
                    self._finish(self.awaiting.pop(next(iter(self.awaiting))))
        else:
            self._finish(item)
        if self.on_frame is not None:
            self.on_frame(rec, result)

    def _folder_labels(self, cam: Any) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(pixel ids, point ids, pixel instances) of the label folder's frame of this camera image."""
        if cam is None or self.label_folder is None or cam.header.stamp_ns not in self.image_index:
            return None, None, None
        return self.label_folder.get_with_instances(self.image_index[cam.header.stamp_ns])

    def _cloud_labels(self, cloud_msg: Any) -> np.ndarray | None:
        """Per-point raw ids from the cloud's label field (finite points, as the pipeline keeps them)."""
        cloud = pointcloud2_to_array(cloud_msg)
        if self.settings.label_field not in (cloud.dtype.names or ()):
            return None
        finite = np.isfinite(cloud_field(cloud, "x")) & np.isfinite(cloud_field(cloud, "y")) & np.isfinite(cloud_field(cloud, "z"))
        return cloud_field(cloud, self.settings.label_field, np.float64)[finite].astype(np.int64)

    def _finish(self, item: _Scored) -> None:
        """A frame with its labels (or none): metrics, alert evaluation, thumbnail candidates."""
        rec, result = item.rec, item.result
        gt_ood = None
        if item.pix_raw is not None or item.pt_raw is not None:
            rec.has_labels = True
            stats = self.metrics.add(result, item.pix_raw, item.pt_raw, item.points, item.calib)
            rec.frame_auroc, rec.ood_iou = stats.get("auroc"), stats.get("ood_iou")
            if item.pix_raw is not None:
                gt_ood = self.dataset_config.ood_mask(item.pix_raw)
                self._add_alert_frame(item)
        if item.rgb is not None:
            key = rec.ood_iou if rec.ood_iou is not None else rec.frame_auroc
            if key is None:  # without labels: most / least anomalous frames
                key = rec.frame_score
            self.thumbs.offer(float(key), rec.index,  # rendered at the end, only for the frames kept
                              lambda rgb=item.rgb, mask=result.mask, gt=gt_ood: overlay(rgb, mask, gt))

    def _add_alert_frame(self, item: _Scored) -> None:
        """Feed the alert evaluation: level, frame score, labels, scored points' labels."""
        result = item.result
        if result.mask is not None:
            hw = result.mask.shape[:2]
        elif item.rgb is not None:
            hw = item.rgb.shape[:2]
        else:
            hw = np.asarray(item.pix_raw).shape[:2]
        pt_lab = None
        if item.pt_raw is not None and item.points is not None and len(item.pt_raw) == len(item.points):
            inview = getattr(result, "in_view", None)  # the pipeline's own view test, as metrics uses it
            if inview is None or len(inview) != len(item.points):
                inview = self.metrics._inview(item.points, item.calib)  # noqa: SLF001 - same test as the metrics
            if inview is not None:
                pt_lab = np.asarray(item.pt_raw)[inview]
        self.alert_metrics.add(result, item.rec.stamp_ns, hw, item.pix_raw, item.pix_inst, pt_lab)

    def _drain(self) -> None:
        """The bag ended (or broke): finish the frames in flight and those still waiting for labels."""
        try:
            while self.inflight:
                self._emit(*self.inflight.popleft())
        finally:
            if self.executor is not None:
                self.executor.shutdown(wait=True)
        for item in self.awaiting.values():
            self._finish(item)
        self.awaiting.clear()

    def _result(self, wall_s: float) -> BagReplay:
        sync = self.proc.sync
        sync_counters = {k: getattr(sync.counters, k) for k in sync.counters.__dataclass_fields__}
        duration = ((self.last_ns - self.first_ns) / 1e9) if self.first_ns is not None and self.last_ns is not None else 0.0
        return BagReplay(
            bag=str(self.bag_path), frames=self.frames, metrics=self.metrics, duration_s=duration, wall_s=wall_s,
            topics={k: v for k, v in self.topics.items() if v}, sync_counters=sync_counters, error=self.error,
            salvaged=self.src.salvaged, thumbnails=self.thumbs.result(), bad_inputs=dict(sorted(self.bad.items())),
            extrinsics=self.extrinsics, alert_metrics=self.alert_metrics,
            skipped=[sk.to_dict() for sk in self.src.skipped], interrupted=self.stop.signal,
        )


def replay_bag(
    bag_path: str | Path,
    pipeline: Any,
    settings: ReplaySettings | None = None,
    out_bag: Any = None,
    dataset_config: Any = None,
    label_folder: LabelFolder | None = None,
    progress: bool = False,
    on_frame: Callable[[FrameRecord, Any], None] | None = None,
    sequence: str | None = None,
) -> BagReplay:
    """Replay one bag through ``pipeline`` (a :class:`~ood_perception.pipeline.FusionPipeline`);
    a :class:`ReplaySession` does the work.

    Args:
        out_bag: an :class:`~ood_perception.data.bag_output.OutputBag` to record the outputs, or None.
        dataset_config: :class:`~ood_perception.data.DatasetConfig` of the label ids (needed for
            metrics when the bag carries labels; defaults to the label folder's, then SemanticKITTI's).
        on_frame: called with each frame's record and the pipeline result (tests, live views).
        sequence: the bag's name in the alert evaluation (default: the bag's file name).

    Returns:
        :class:`BagReplay`. A damaged bag does not raise: damaged parts are stepped over (listed in
        ``skipped``), the frames before a final cut are kept, and ``error`` holds the damage report
        and the :class:`~ood_perception.data.bag_reader.BagReadError` text. SIGINT/SIGTERM stop
        it between messages (:mod:`ood_perception.replay.interrupt`): the frames in flight are
        finished and the result, up to there, has ``interrupted`` set to the signal's name.

    Raises:
        MissingTopicError: a required input topic is not in the bag (lists the bag's topics).
    """
    return ReplaySession(bag_path, pipeline, settings, out_bag, dataset_config, label_folder, progress, on_frame,
                         sequence).run()
