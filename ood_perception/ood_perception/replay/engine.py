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
:class:`~ood_perception.evaluation.segmentation.MetricsAccumulator`.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from ood_perception.codec.conversions import (
    ConversionError,
    cloud_field,
    image_to_numpy,
    pointcloud2_to_array,
)
from ood_perception.data import SemanticKittiReader
from ood_perception.data.bag_reader import BagReadError, BagSource
from ood_perception.evaluation.segmentation import MetricsAccumulator
from ood_perception.pipeline import FusionConfig, inputs
from ood_perception.pipeline.frame_handler import FrameSettings, FusionFrameProcessor, extrinsics_from_params
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
        T_cam_lidar: 4x4 extrinsics (LiDAR -> camera optical frame).
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
    extrinsics: dict[str, Any] = field(default_factory=dict)  # check against the bag's /tf_static
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
        if i >= len(self.reader):
            return None, None
        f = self.reader[i]
        return f.pixel_labels, f.point_labels


#: The extrinsics in use "agree" with the bag's /tf_static within these bounds.
TF_TOLERANCE_M = 1e-3
TF_TOLERANCE_DEG = 0.05


def check_tf_static(src: BagSource, camera_frame: str, lidar_frame: str, T_cam_lidar: np.ndarray) -> dict[str, Any]:
    """Compare the extrinsics replay uses with the bag's ``/tf_static`` (a direct transform between
    the cloud's and the image's frame ids, either direction; chains are not followed).

    Returns:
        ``{"status": "agrees" | "differs" | "absent" | "unreadable", ...}`` with, when a transform
        was found, the translation [m] and rotation [deg] between the two. Replay never uses the
        bag's TF for projection (the node does not either); this only warns about a mismatch.
    """
    topic = src.resolve("/tf_static", required=False)
    if topic is None or not camera_frame or not lidar_frame:
        return {"status": "absent"}

    strip = lambda f: f.lstrip("/")  # noqa: E731
    cam, lid = strip(camera_frame), strip(lidar_frame)
    try:
        for k, m in enumerate(src.messages([topic])):
            if k >= 16:  # static transforms come first; do not scan a long recording for more
                break
            for tf in m.msg.transforms:
                parent, child = strip(tf.header.frame_id), strip(tf.child_frame_id)
                if {parent, child} != {cam, lid}:
                    continue
                t, q = tf.transform.translation, tf.transform.rotation
                pose = np.eye(4)
                pose[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
                pose[:3, 3] = (t.x, t.y, t.z)
                T_tf = np.linalg.inv(pose) if parent == lid else pose  # pose of child in parent
                diff = T_tf @ np.linalg.inv(np.asarray(T_cam_lidar, float))
                dist = float(np.linalg.norm(diff[:3, 3]))
                angle = float(np.degrees(Rotation.from_matrix(diff[:3, :3]).magnitude()))
                ok = dist <= TF_TOLERANCE_M and angle <= TF_TOLERANCE_DEG
                return {"status": "agrees" if ok else "differs", "frames": f"{lid} -> {cam}",
                        "translation_m": round(dist, 6), "rotation_deg": round(angle, 4)}
    except Exception as exc:  # noqa: BLE001 - a bad /tf_static must not stop a replay
        return {"status": "unreadable", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "absent"}


def replay_bag(
    bag_path: str | Path,
    pipeline: Any,
    settings: ReplaySettings | None = None,
    out_bag: Any = None,
    dataset_config: Any = None,
    label_folder: LabelFolder | None = None,
    progress: bool = False,
    on_frame: Callable[[FrameRecord, Any], None] | None = None,
) -> BagReplay:
    """Replay one bag through ``pipeline`` (a :class:`~ood_perception.pipeline.FusionPipeline`).

    Args:
        out_bag: an :class:`~ood_perception.data.bag_output.OutputBag` to record the outputs, or None.
        dataset_config: :class:`~ood_perception.data.DatasetConfig` of the label ids (needed for
            metrics when the bag carries labels; defaults to the label folder's, then SemanticKITTI's).
        on_frame: called with each frame's record and the pipeline result (tests, live views).

    Returns:
        :class:`BagReplay`. A damaged bag does not raise: damaged parts are stepped over (listed in
        ``skipped``), the frames before a final cut are kept, and ``error`` holds the damage report
        and the :class:`~ood_perception.data.bag_reader.BagReadError` text. SIGINT/SIGTERM stop
        it between messages (:mod:`ood_perception.replay.interrupt`): the frames in flight are
        finished and the result, up to there, has ``interrupted`` set to the signal's name.

    Raises:
        MissingTopicError: a required input topic is not in the bag (lists the bag's topics).
    """


    settings = settings or ReplaySettings()
    t_wall = time.perf_counter()
    src = BagSource(bag_path, distro=settings.distro)
    try:
        names = {**DEFAULT_INPUT_TOPICS, **settings.topics}
        topics = {
            "image": src.resolve(names["image"]),
            "points": src.resolve(names["points"]),
            "camera_info": src.resolve(names["camera_info"]),
            "labels": src.resolve(names["labels"], required=False) if names.get("labels") else None,
        }
        by_topic = {v: k for k, v in topics.items() if v}
        if dataset_config is None:
            if label_folder is not None:
                dataset_config = label_folder.config
            else:
                from ood_perception.data import DatasetConfig

                dataset_config = DatasetConfig.semantic_kitti()
        metrics = MetricsAccumulator(dataset_config, getattr(pipeline, "threshold", None), getattr(pipeline, "input_hw", None))
        now = [0.0]
        fs = settings.frame_settings()
        proc = FusionFrameProcessor(pipeline, fs, clock=lambda: now[0])  # arrival clock: bag time
        sync = proc.sync
        bad: Counter[str] = Counter()
        pending_labels: dict[int, np.ndarray] = {}
        frames: list[FrameRecord] = []
        thumbs = _Thumbs(settings.thumbnails)
        awaiting: dict[int, _Scored] = {}

        def finish(item: _Scored) -> None:
            rec, result = item.rec, item.result
            gt_ood = None
            if item.pix_raw is not None or item.pt_raw is not None:
                rec.has_labels = True
                stats = metrics.add(result, item.pix_raw, item.pt_raw, item.points, item.calib)
                rec.frame_auroc, rec.ood_iou = stats.get("auroc"), stats.get("ood_iou")
                if item.pix_raw is not None:
                    gt_ood = dataset_config.ood_mask(item.pix_raw)
            if item.rgb is not None:
                key = rec.ood_iou if rec.ood_iou is not None else rec.frame_auroc
                if key is None:  # without labels: most / least anomalous frames
                    key = rec.frame_score
                thumbs.offer(float(key), rec.index,  # rendered at the end, only for the frames kept
                             lambda rgb=item.rgb, mask=result.mask, gt=gt_ood: overlay(rgb, mask, gt))

        def emit(started: Any, future: Any, bag_ns: int, t0: float) -> None:
            """Complete a started frame (in frame order): output bag, labels, metrics, record."""
            if future is not None:
                future.result()  # infer() turns model errors into a DEGRADED result itself
            out = proc.complete(started)
            bad.update(n.reason for n in out.notes if n.bad)
            result = out.result
            latency = time.perf_counter() - t0
            cam, lid = out.camera, out.lidar
            rgb, points = (cam.image if cam is not None else None), out.points
            stamp_ns = out.header.stamp_ns
            if out_bag is not None:
                out_bag.write_frame(out, bag_ns)
            calib_used = out.calib
            # labels for metrics: from the label folder now, from the label topic when it arrives
            pt_raw = None
            has_folder_pix = False
            pix_raw = None
            if cam is not None and label_folder is not None and cam.header.stamp_ns in image_index:
                pix_raw, pt_raw = label_folder.get(image_index[cam.header.stamp_ns])
                has_folder_pix = pix_raw is not None
            if lid is not None and pt_raw is None and settings.label_field:
                cloud = pointcloud2_to_array(lid.source)
                if settings.label_field in (cloud.dtype.names or ()):
                    finite = np.isfinite(cloud_field(cloud, "x")) & np.isfinite(cloud_field(cloud, "y")) & np.isfinite(cloud_field(cloud, "z"))
                    pt_raw = cloud_field(cloud, settings.label_field, np.float64)[finite].astype(np.int64)
            rec = FrameRecord(
                index=len(frames), stamp_ns=stamp_ns, bag_time_ns=bag_ns, level=int(result.level),
                description=result.decision.description, frame_score=float(result.frame_score),
                anomalous_fraction=float(result.anomalous_fraction), num_regions=len(result.regions),
                latency_s=latency, modalities=list(result.modalities),
            )
            frames.append(rec)
            item = _Scored(rec, result, rgb, points, calib_used, pix_raw, pt_raw)
            if cam is not None and not has_folder_pix and topics["labels"]:
                if stamp_ns in pending_labels:  # the label image came first
                    item.pix_raw = pending_labels.pop(stamp_ns)
                    finish(item)
                else:
                    awaiting[stamp_ns] = item
                    while len(awaiting) > LABEL_WAIT_FRAMES:  # its label never came
                        finish(awaiting.pop(next(iter(awaiting))))
            else:
                finish(item)
            if on_frame is not None:
                on_frame(rec, result)

        executor = None
        if settings.overlap:
            from concurrent.futures import ThreadPoolExecutor

            executor = ThreadPoolExecutor(1, thread_name_prefix="replay-infer")
        # (started frame, model future or None, bag time, t0), oldest first: overlapped, up to OVERLAP_DEPTH
        # frames whose model is queued or running while earlier ones are finished; serial, none
        inflight: deque[tuple[Any, Any, int, float]] = deque()
        depth = OVERLAP_DEPTH if executor is not None else 0
        n_started = 0
        first_ns: int | None = None
        last_ns: int | None = None
        error: str | None = None
        lidar_frame = [""]  # frame id of the first cloud (for the /tf_static check)
        image_index: dict[int, int] = {}  # camera stamp -> position among the bag's camera messages
        images_seen = 0
        total = src.message_count(by_topic)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=Path(bag_path).name, unit="msg", leave=False)
        stops = contextlib.ExitStack()  # Ctrl-C / SIGTERM: stop between messages, keep what was done
        stop = stops.enter_context(stop_requests())
        try:
            for m in src.messages(by_topic):
                if stop.requested:
                    break
                if bar is not None:
                    bar.update(1)
                kind = by_topic[m.topic]
                first_ns = m.timestamp_ns if first_ns is None else first_ns
                last_ns = m.timestamp_ns
                now[0] = m.timestamp_ns * 1e-9
                if kind == "camera_info":
                    try:
                        proc.set_camera_info(inputs.decode_camera_info(m.msg))
                    except ConversionError:
                        bad["bad_camera_info"] += 1
                    continue
                if kind == "labels":
                    lstamp = _stamp_ns(m.msg.header)
                    if lstamp in awaiting:
                        item = awaiting.pop(lstamp)
                        item.pix_raw = image_to_numpy(m.msg)
                        finish(item)
                    else:
                        pending_labels[lstamp] = image_to_numpy(m.msg)
                        if len(pending_labels) > 64:
                            pending_labels.pop(next(iter(pending_labels)))
                    continue
                if kind == "image":  # label folder frame i = the bag's i-th camera message, dropped or not
                    image_index[_stamp_ns(m.msg.header)] = images_seen
                    images_seen += 1
                    while len(image_index) > 256:
                        image_index.pop(next(iter(image_index)))
                # what the fusion node's callbacks and worker do (ros/fusion_node.py), with the same objects
                t0 = time.perf_counter()
                try:
                    if kind == "image":
                        notes = proc.add_camera(inputs.decode_camera(m.msg, source=m.msg))
                    else:
                        lidar_frame[0] = lidar_frame[0] or str(m.msg.header.frame_id)
                        lid_in, notes = inputs.decode_lidar(m.msg, fs, source=m.msg)
                        notes += proc.add_lidar(lid_in)
                except ConversionError:
                    bad["bad_image" if kind == "image" else "bad_cloud"] += 1
                    continue
                bad.update(n.reason for n in notes if n.bad)
                synced = proc.take()
                if synced is None:
                    continue
                started = proc.start(synced)
                future = None
                if executor is not None:  # the model of this frame runs while earlier ones are finished
                    future = executor.submit(proc.pipeline.infer, started.pending)
                else:
                    proc.pipeline.infer(started.pending)
                inflight.append((started, future, m.timestamp_ns, t0))
                while len(inflight) > depth:
                    emit(*inflight.popleft())
                n_started += 1
                if settings.max_frames is not None and n_started >= settings.max_frames:
                    break
        except BagReadError as exc:
            error = str(exc)
        finally:
            try:
                while inflight:  # the frames whose model was queued or running when the bag ended (or broke)
                    emit(*inflight.popleft())
            finally:
                if executor is not None:
                    executor.shutdown(wait=True)
                stops.close()  # the caller's signal handlers back, also when finishing a frame failed
            for item in awaiting.values():
                finish(item)
            awaiting.clear()
            if bar is not None:
                bar.close()
        error = "; then ".join(t for t in (src.damage_report(), error) if t) or None
        skipped = [sk.to_dict() for sk in src.skipped]  # before the /tf_static check reads the bag again
        extrinsics = check_tf_static(src, proc.camera_frame, lidar_frame[0], settings.T_cam_lidar)
        sync_counters = {k: getattr(sync.counters, k) for k in sync.counters.__dataclass_fields__}
        duration = ((last_ns - first_ns) * 1e-9) if first_ns is not None and last_ns is not None else 0.0
        return BagReplay(
            bag=str(bag_path), frames=frames, metrics=metrics, duration_s=duration,
            wall_s=time.perf_counter() - t_wall, topics={k: v for k, v in topics.items() if v},
            sync_counters=sync_counters, error=error, salvaged=src.salvaged, thumbnails=thumbs.result(),
            skipped=skipped, interrupted=stop.signal,
            bad_inputs=dict(sorted(bad.items())), extrinsics=extrinsics,
        )
    finally:
        src.close()
