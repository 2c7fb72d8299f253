"""The camera + LiDAR fusion frame pipeline, without ROS: preprocess, infer, mask, cluster, alert.

The fusion node and rosbag replay both call :meth:`FusionPipeline.process` with numpy inputs, so
replay equals live. Steps per frame:

1. preprocess: image resized to the model input size and normalised ``(x/255 - mean)/std``;
   LiDAR rasterised into the camera plane at that size (:func:`geometry.inputs.prepare_inputs`);
   a missing modality is fed as zeros (valid channel 0);
2. infer through any :class:`Backend` (``ood_perception.runtime``) and pick the score map that the
   available modalities support: fused ``score_map`` with both, the unimodal
   ``camera_score_map`` / ``lidar_score_map`` with one (when the model has those heads);
3. score and class maps resized to camera resolution (bilinear / nearest); mask = score >= threshold;
   each LiDAR point takes the score and class of its model-resolution pixel;
4. scene shift: when at least ``scene_shift_fraction`` of the scored pixels are anomalous the
   whole view is outside the model's domain (unseen weather, a sensor fault, real images for a
   model trained on the synthetic world): the frame is DEGRADED with that reason, no region is
   reported and the alert history is not fed (an ALERT already standing stays standing);
5. decisions (``decision``): on **objects** (``pipeline/objects.py``: above-ground LiDAR clusters,
   their evidence, location on the drivable area and tracking, one region score each; the frame
   has evidence when a tracked object scores >= ``region_threshold``; frame score = the highest
   track score), or on **pixels** (connected components of the mask and DBSCAN clusters of
   anomalous points, merged; any component is evidence; frame score = a percentile of the score
   map). ``auto`` (default) decides on objects when the frame has usable LiDAR and the model names
   a drivable class, else on pixels (camera-only frames, which are DEGRADED anyway);
6. the alert state machine gives the frame's level (DEGRADED when a modality is missing or the
   model failed; a frame that cannot be scored is never CLEAR).

Thresholds not given (None) come from the model's calibration (``model.json`` ``decision``, see
``ood-perception calibrate``), else from the built-in defaults (:data:`DEFAULT_DECISION`).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ood_perception.geometry import Calibration, apply_affine, intrinsics_from_fov, project_points
from ood_perception.geometry.inputs import prepare_inputs
from ood_perception.geometry.maps import (
    OCCLUSION_REL,
    OCCLUSION_TOL,
    occluded_points,
    upsample_class_map,
    upsample_score_map,
)
from ood_perception.pipeline.alerts import DEGRADED, AlertConfig, AlertDecision, AlertStateMachine
from ood_perception.pipeline.object_bank import BANK_FILE, BANK_ROLE, ObjectBank, pool_embedding
from ood_perception.pipeline.objects import (
    ClassSets,
    ObjectConfig,
    ObjectEvidence,
    ObjectTracker,
    RegionTerm,
    fit_frame_ground,
    object_candidates,
    object_region,
    region_score,
)
from ood_perception.pipeline.regions import Region, cluster_points, mask_regions, merge_regions
from ood_perception.runtime import EMBEDDING_OUTPUT

#: ImageNet normalisation, used when the model spec carries none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Decision values used when neither parameters nor the model's calibration give them: region
#: score threshold (an object on the drivable area of which at least half the points are not
#: labelled as a known class), track window [frames], and the scene-shift fraction (half of the
#: scored pixels anomalous: the model's own calibration flags 5% of in-distribution pixels).
DEFAULT_DECISION = {"region_threshold": 0.5, "track_window": 3, "scene_shift_fraction": 0.5}
DECISION_MODES = ("auto", "objects", "pixels")


class Backend(Protocol):
    """What the pipeline needs from ``ood_perception.runtime.Backend``."""

    spec: Any

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named float inputs with a batch axis -> named outputs (``class_map``, ``score_map``, ...).

        A backend whose ``infer`` also takes ``outputs=[names]`` (``runtime.Backend``) is asked
        for the two maps the frame uses only."""
        ...


def spec_input_hw(spec: Any) -> tuple[int, int]:
    """(height, width) of the model's image input from a model spec."""
    hw = getattr(spec, "image_hw", None)
    if hw:
        return int(hw[0]), int(hw[1])
    size = list(getattr(spec, "input_size", []) or [])
    if len(size) >= 2:
        return int(size[-2]), int(size[-1])
    raise ValueError("model spec has neither a fixed image input shape nor input_size")


def spec_sha256(spec: Any) -> str:
    """The sha256 of the model's main file as recorded in its spec ('' when unknown)."""
    files = getattr(spec, "files", {}) or {}
    for role in ("onnx", "torch"):
        ref = files.get(role) if isinstance(files, dict) else None
        if ref is not None:
            return str(getattr(ref, "sha256", "") or (ref.get("sha256", "") if isinstance(ref, dict) else ""))
    return str(getattr(spec, "sha256", "") or "")


#: What the published mask holds (``FusionConfig.mask_source``).
MASK_SOURCES: tuple[str, ...] = ("pixels", "regions")


def regions_mask(mask: np.ndarray, regions: list[Region]) -> np.ndarray:
    """``mask`` (uint8 ``[H, W]``, 255 = anomalous) kept only inside the 2D boxes of ``regions``."""
    keep = np.zeros(mask.shape, bool)
    for r in regions:
        if r.has_2d and r.width > 0 and r.height > 0:
            keep[r.y_min:r.y_min + r.height, r.x_min:r.x_min + r.width] = True
    return np.where(keep, mask, 0).astype(np.uint8)


@dataclass
class FusionConfig:
    """Parameters of :class:`FusionPipeline` (the node exposes each as a ROS parameter).

    Attributes:
        threshold: score above which a pixel/point is anomalous; None = the model's calibrated one.
        frame_score_percentile: percentile of the score map reported as the frame score.
        min_region_pixels: smallest 2D component (camera-resolution pixels) counted as evidence.
        min_region_points: smallest 3D cluster counted as evidence.
        cluster_eps, cluster_min_points: Open3D DBSCAN parameters [m, points].
        max_cluster_points: more anomalous points are voxel-downsampled before DBSCAN (see cluster_points).
        alert: the alert state machine's parameters.
        clock_jump: a stamp this far [s] behind the previous frame resets the alert history.
        occlusion_tol, occlusion_rel: a point farther than ``tol + rel * r`` behind the nearest
            point at its model pixel (range ``r``) is occluded: score NaN, label -1, not clustered.
        min_lidar_points_in_view: a cloud with fewer points in the camera's view is unusable (empty,
            all NaN, behind the camera, or a CameraInfo/extrinsics that put it out of view): the frame
            is scored without it (the camera-only head) and DEGRADED, as for a stale LiDAR.
        decision: ``auto``, ``objects`` or ``pixels`` (module docstring, step 5).
        objects: the object decisions' parameters (``track_window`` 0 = the model's calibrated one).
        region_threshold: a tracked object with a score at or above is anomalous; None = the model's.
        scene_shift_fraction: share of anomalous scored pixels from which the frame is a scene
            shift (DEGRADED, no regions); None = the model's calibrated one; 1.0 never fires below all.
        crop_model: a crop checkpoint (``ood-perception train crops --out``) classifying the image
            crop of each reported region (:class:`~ood_perception.pipeline.crops.CropClassifier`);
            its result goes into ``Region.extra["crop"]`` and the alert's description; "" = off.
        crop_context, crop_min_side: the crop's margin around the region's box and the smallest
            box side [px] classified.
        mask_source: what the published mask (``FusionResult.mask``, ``ood/mask``) holds: ``pixels``,
            every pixel at or above the pixel threshold; ``regions``, only those inside the 2D boxes
            of the frame's reported regions (with object decisions: the alerted objects), so the
            mask shows what the decision reports and not the scatter of a 5%-false-positive threshold.
    """

    threshold: float | None = None
    frame_score_percentile: float = 99.0
    min_region_pixels: int = 50
    min_region_points: int = 5
    cluster_eps: float = 0.6
    cluster_min_points: int = 5
    max_cluster_points: int = 5000
    alert: AlertConfig = field(default_factory=lambda: AlertConfig(raise_k=0, raise_n=0))  # k-of-n: the calibration's
    clock_jump: float = 1.0
    occlusion_tol: float = OCCLUSION_TOL
    occlusion_rel: float = OCCLUSION_REL
    min_lidar_points_in_view: int = 1
    decision: str = "auto"
    objects: ObjectConfig = field(default_factory=lambda: ObjectConfig(track_window=0))
    region_threshold: float | None = None
    scene_shift_fraction: float | None = None
    crop_model: str = ""
    crop_context: float = 0.15
    crop_min_side: int = 8
    mask_source: str = "pixels"

    def __post_init__(self) -> None:
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        if self.decision not in DECISION_MODES:
            raise ValueError(f"decision must be one of {DECISION_MODES}, got {self.decision!r}")
        if self.region_threshold is not None and not np.isfinite(self.region_threshold):
            raise ValueError(f"region_threshold must be finite, got {self.region_threshold}")
        if self.scene_shift_fraction is not None and not 0 < self.scene_shift_fraction <= 1:
            raise ValueError(f"scene_shift_fraction must be in (0, 1], got {self.scene_shift_fraction}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        if not 0 <= self.frame_score_percentile <= 100:
            raise ValueError(f"frame_score_percentile must be in [0, 100], got {self.frame_score_percentile}")
        if self.min_region_pixels < 1 or self.min_region_points < 1:
            raise ValueError("min_region_pixels and min_region_points must be >= 1")
        if not self.cluster_eps > 0 or self.cluster_min_points < 1 or self.max_cluster_points < 1:
            raise ValueError("cluster_eps must be > 0, cluster_min_points and max_cluster_points >= 1")
        if self.min_lidar_points_in_view < 1:
            raise ValueError(f"min_lidar_points_in_view must be >= 1, got {self.min_lidar_points_in_view}")


@dataclass
class FusionFrame:
    """One frame of input. ``image`` RGB uint8 ``[H, W, 3]`` and/or ``points`` float32 ``[N, 4]``
    (x, y, z, intensity, LiDAR frame); ``calib`` at camera resolution with ``T_cam_lidar`` (None:
    no CameraInfo yet, LiDAR cannot be projected); ``degraded``: the caller's reason a modality is
    missing (e.g. ``"lidar stale for 0.8 s"``)."""

    stamp: float
    image: np.ndarray | None = None
    points: np.ndarray | None = None
    calib: Calibration | None = None
    degraded: str | None = None


@dataclass
class FusionResult:
    """Everything the node publishes for a frame.

    ``score`` float32 / ``classes`` int32 / ``mask`` uint8 (255 anomalous) are ``[H, W]`` at camera
    resolution, None when the frame could not be scored; pixels without evidence (LiDAR-only
    frames off the scan) have score NaN and mask 0. ``points`` ``[M, 4]`` are the in-view points
    with ``point_labels`` and ``point_scores`` (NaN / -1 for points occluded at their pixel);
    ``in_view`` bool ``[N]`` says which of the frame's input points they are (None without points).
    ``frame_score`` is ``OodAlert.score``: on objects the highest track score (0 without a
    candidate), on pixels the ``frame_score_percentile`` of the score map, NaN on a scene shift.
    ``objects``: every object candidate with its evidence (object decisions only);
    ``scene_shift``: the frame was judged outside the model's domain; ``by_objects``: the frame was
    to be decided on objects (LiDAR in view and a model with a drivable class), so an object no candidate
    holds was not judged as one (evaluations score it 0).
    """

    stamp: float
    decision: AlertDecision
    modalities: list[str]
    threshold: float
    score: np.ndarray | None = None
    classes: np.ndarray | None = None
    mask: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    point_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    in_view: np.ndarray | None = None
    regions: list[Region] = field(default_factory=list)
    frame_score: float = float("nan")
    anomalous_fraction: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    objects: list[ObjectEvidence] = field(default_factory=list)
    scene_shift: bool = False
    by_objects: bool = False

    @property
    def level(self) -> int:
        """The alert level (``ood_perception_msgs/OodAlert`` constants)."""
        return self.decision.level


@dataclass
class PendingFrame:
    """A frame between :meth:`FusionPipeline.begin` and :meth:`FusionPipeline.finish`: the model
    inputs, then the model-resolution maps, or why the frame is not scored."""

    frame: FusionFrame
    degraded: str | None
    modalities: list[str]
    key: str  # output name prefix: "" fused, "camera_" / "lidar_" unimodal
    inputs: dict[str, np.ndarray] | None = None
    flat: np.ndarray | None = None
    score_m: np.ndarray | None = None
    class_m: np.ndarray | None = None
    embedding_m: np.ndarray | None = None  # [C, H/8, W/8] when the object bank is in use
    skip: str | None = None  # not scored, and why (no model failure)
    lidar_unusable: str | None = None  # the frame had a cloud that put too few points in view: why
    error: BaseException | None = None  # preparing or running the model failed
    t_begin: float = 0.0
    t_prepared: float = 0.0
    t_infer: float = 0.0


class FusionPipeline:
    """Camera + LiDAR frame pipeline around one backend (see the module docstring)."""

    def __init__(self, backend: Backend, config: FusionConfig | None = None,
                 region_term: RegionTerm | None = None, object_embeddings: bool = False) -> None:
        """``region_term``: the optional extra per-region term of the object decisions
        (:data:`~ood_perception.pipeline.objects.RegionTerm`), weighted by ``objects.w_extra``;
        without one, ``object.w_extra`` > 0 uses the model directory's object bank
        (``pipeline.object_bank``). ``object_embeddings``: keep every candidate's pooled embedding
        in ``ObjectEvidence.appearance`` (to build a bank; needs the model's ``embedding`` output)."""
        self.backend = backend
        self.config = config or FusionConfig()
        spec = backend.spec
        self.input_hw = spec_input_hw(spec)
        self.mean = np.asarray(getattr(spec, "mean", None) or IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(getattr(spec, "std", None) or IMAGENET_STD, np.float32).reshape(3, 1, 1)
        calibrated = dict(getattr(spec, "decision", None) or {})
        self.decision_source: dict[str, str] = {}
        thr = self._pick("threshold", self.config.threshold, calibrated.get("pixel_threshold"),
                         getattr(spec, "threshold", None))
        if thr is None or not np.isfinite(thr):
            raise ValueError("no OOD threshold: the model.json has none and the 'threshold' parameter is unset")
        self.threshold = float(thr)
        self.region_threshold = float(self._pick("region_threshold", self.config.region_threshold,
                                                 calibrated.get("region_threshold"), DEFAULT_DECISION["region_threshold"]))
        self.scene_shift_fraction = float(self._pick("scene_shift_fraction", self.config.scene_shift_fraction,
                                                     calibrated.get("scene_shift_fraction"),
                                                     DEFAULT_DECISION["scene_shift_fraction"]))
        window = self._pick("track_window", self.config.objects.track_window or None, calibrated.get("track_window"),
                            DEFAULT_DECISION["track_window"])
        self.objects = replace(self.config.objects, track_window=int(window))
        self.region_term = region_term
        #: The object-level kNN term (``pipeline.object_bank``): used when ``object.w_extra`` > 0,
        #: no plug-in ``region_term`` is given and the model directory has a bank; a model without
        #: one runs with ``w_extra`` 0 (said in :attr:`decision_warnings`).
        self.object_bank: ObjectBank | None = None
        bank_note = None
        if self.objects.w_extra > 0 and region_term is None and self.config.decision != "pixels":
            self.object_bank, bank_note = self._load_object_bank(backend)
            if self.object_bank is None:
                self.objects = replace(self.objects, w_extra=0.0)
        #: The alert settings in use: k-of-n from the parameters, else the model's calibration, else 3 of 5.
        self.alert_config, self.decision_source["persistence"] = self.config.alert.resolved(calibrated.get("alert"))
        #: Notes for the caller to log: settings that break the calibration's assumptions.
        self.decision_warnings: list[str] = self._calibration_mismatch(calibrated) + ([bank_note] if bank_note else [])
        self.classes = ClassSets.from_names(list(getattr(spec, "class_names", None) or []), self.objects)
        if self.config.decision == "objects" and not self.classes.usable:
            raise ValueError(f"decision=objects needs a model that names a drivable class "
                             f"({', '.join(self.objects.drivable_classes)}); this one has none: use decision=pixels")
        self.object_embeddings = bool(object_embeddings)
        if self.object_embeddings and EMBEDDING_OUTPUT not in (getattr(spec, "output_names", None) or []):
            raise ValueError(f"object_embeddings needs a model with an '{EMBEDDING_OUTPUT}' output; this one has none")
        self.crop_classifier: Any = None
        if self.config.crop_model:
            # lazy: the crop classifier runs torch; a pipeline without one never imports it
            from ood_perception.pipeline.crops import CropClassifier

            self.crop_classifier = CropClassifier(self.config.crop_model, context=self.config.crop_context,
                                                  min_side=self.config.crop_min_side)
        self.tracker = ObjectTracker(self.objects)
        outputs = set(getattr(spec, "output_names", None) or [])
        self.unimodal = {"camera": "camera_score_map" in outputs, "lidar": "lidar_score_map" in outputs}
        self.alerts = AlertStateMachine(self.alert_config)
        self._last_stamp: float | None = None
        # ask only for the maps a frame uses when the backend can prune its graph (runtime.Backend.infer)
        try:
            self._pick_outputs = "outputs" in inspect.signature(backend.infer).parameters
        except (TypeError, ValueError):
            self._pick_outputs = False

    def reset(self) -> None:
        """Forget the alert history and the object tracks (a new drive)."""
        self.alerts.reset()
        self.tracker.reset()
        self._last_stamp = None

    def _calibration_mismatch(self, calibrated: dict[str, Any]) -> list[str]:
        """Warnings when the region threshold comes from ``model.json`` but the evidence weights (or,
        with ``w_ood`` > 0, the pixel threshold) differ from those it was calibrated with: its
        false-alert budget no longer holds."""
        if (self.config.decision == "pixels" or self.decision_source.get("region_threshold") != "model.json"
                or not calibrated.get("objects")):
            return []
        names = ("w_unknown", "w_conflict", "w_ood", "w_extra")
        # weights read before the key existed default to ObjectConfig's defaults of that time (w_ood and
        # w_extra 0)
        cal = tuple(float(calibrated["objects"].get(n, 0.0 if n in ("w_ood", "w_extra") else getattr(ObjectConfig(), n)))
                    for n in names)
        run = tuple(float(getattr(self.objects, n)) for n in names)
        out = []
        if not np.allclose(np.divide(cal, sum(cal)), np.divide(run, sum(run))):  # the score divides by the sum
            out.append("the region threshold in model.json was calibrated with object weights "
                       f"{dict(zip(names, cal, strict=True))}, these settings use {dict(zip(names, run, strict=True))} "
                       "(object.w_ood and object.w_extra default to 1 since 2026-12-04; w_extra counts as 0 for a model "
                       "without an object bank): its false-alert budget does not hold; set the calibration's weights "
                       "(object.* parameters) or re-run ood-perception calibrate")
        # the other object settings shape the candidates and their scores: the threshold is theirs too
        # (settings added after a calibration was made count at the value that reproduces the earlier rule)
        recorded = with_settings_before(calibrated["objects"])
        changed = []
        for n, was in sorted(recorded.items()):
            # ground_fallback_z is the sensor's mounting height (only used when no plane fits), not a choice
            if n in names or n in ("track_window", "ground_fallback_z") or not hasattr(self.objects, n):
                continue
            now = getattr(self.objects, n)
            if isinstance(now, tuple):  # class lists: the same classes in any order
                same = isinstance(was, (list, tuple)) and sorted(map(str, was)) == sorted(now)
            else:
                same = isinstance(was, (int, float)) and np.isclose(float(was), float(now))
            if not same:
                changed.append(f"object.{n} {was if not isinstance(was, list) else ','.join(map(str, was))} -> "
                               f"{now if not isinstance(now, tuple) else ','.join(now)}")
        if changed:
            out.append(f"the region threshold in model.json was calibrated with other object settings ({'; '.join(changed)}): "
                       "its false-alert budget does not hold; set them back or re-run ood-perception calibrate")
        cal_alert = calibrated.get("alert") or {}
        run_kn = (self.alert_config.raise_k, self.alert_config.raise_n)
        if cal_alert.get("raise_k") and (cal_alert["raise_k"], cal_alert.get("raise_n")) != run_kn:
            out.append(f"the region threshold in model.json was calibrated for ALERT on {cal_alert['raise_k']} of "
                       f"{cal_alert.get('raise_n')} frames, these settings use {run_kn[0]} of {run_kn[1]} (raise_k, "
                       "raise_n): its false-alert budget does not hold; set both to 0 (the calibration's) or re-run "
                       "ood-perception calibrate")
        bank_sha = getattr(getattr(self.backend.spec, "files", {}).get(BANK_ROLE), "sha256", None)
        cal_bank = calibrated.get("object_bank_sha256")
        if self.object_bank is not None and cal_bank is not None and cal_bank != bank_sha:
            out.append("the region threshold in model.json was calibrated with another object bank (sha256 "
                       f"{str(cal_bank)[:12]}..., this one {str(bank_sha)[:12]}...): re-run ood-perception calibrate")
        ood_thr = calibrated.get("ood_share_threshold")
        if self.objects.w_ood > 0 and cal[2] > 0 and ood_thr is None:
            out.append("the region threshold was calibrated with object.w_ood > 0 before calibrate recorded the pixel "
                       "threshold of the OOD share (ood_share_threshold): re-run ood-perception calibrate")
        elif self.objects.w_ood > 0 and ood_thr is not None and abs(float(ood_thr) - self.threshold) > 1e-9:
            out.append(f"the region threshold was calibrated with the OOD share at pixel threshold {float(ood_thr):.4f}, "
                       f"this pipeline uses {self.threshold:.4f}: its false-alert budget does not hold")
        return out

    def _pick(self, name: str, given: Any, calibrated: Any, default: Any) -> Any:
        """The first of: the parameter, the model's calibration, the default (source recorded)."""
        for source, value in (("parameter", given), ("model.json", calibrated), ("default", default)):
            if value is not None:
                self.decision_source[name] = source
                return value
        return None

    @property
    def uses_embedding(self) -> bool:
        """Whether frames with a camera image ask the model for its ``embedding`` output (the
        object bank's term, or ``object_embeddings``)."""
        return self.object_bank is not None or self.object_embeddings

    def uses_objects(self, has_lidar: bool) -> bool:
        """Whether a frame (with or without usable LiDAR) is decided on objects."""
        if self.config.decision == "pixels":
            return False
        return has_lidar and self.classes.usable

    def heads(self) -> list[str]:
        """Output-name prefixes of the heads this pipeline may run: ``""`` (fused) and
        ``"camera_"`` / ``"lidar_"`` where the model has them."""
        return [""] + [f"{m}_" for m in ("camera", "lidar") if self.unimodal[m]]

    def warm_up(self) -> list[str]:
        """Run each head once on a blank frame, so that what a backend builds on first use (ONNX
        Runtime's pruned per-head sessions, memory arenas, CUDA kernels) is built now (the node
        calls this on activate) instead of on the first real frame (~1.5 s for the default model
        on CPU). Returns the heads run; raises what the backend raises (a model that cannot run)."""
        h, w = self.input_hw
        inputs, _ = self.prepare(FusionFrame(stamp=0.0, image=np.zeros((h, w, 3), np.uint8)))
        for key in self.heads():
            names = [key + "score_map", key + "class_map"]
            if self.uses_embedding and key != "lidar_":
                names.append(EMBEDDING_OUTPUT)  # as infer() asks for frames with a camera image
            if self._pick_outputs:
                self.backend.infer(inputs, outputs=names)
            else:
                self.backend.infer(inputs)
        return self.heads()

    # ------------------------------------------------------------------ preprocessing

    def prepare(self, frame: FusionFrame) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Model inputs ``{"image": [1,3,h,w], "lidar": [1,6,h,w]}`` and each point's flat pixel
        index at model resolution (``-1`` out of view; None without points).

        Uses :func:`ood_perception.geometry.inputs.prepare_inputs`, the preprocessing training
        and evaluation use; a missing modality is fed as zeros.
        """

        h, w = self.input_hw
        image = frame.image
        if image is not None and (image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8):
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        calib = frame.calib
        if calib is None or (image is not None and image.shape[:2] != (calib.height, calib.width)):
            if image is None:
                raise ValueError("a LiDAR-only frame needs the camera calibration")
            calib = _image_calib(image.shape[1], image.shape[0], calib)
        points = frame.points if (frame.points is not None and frame.calib is not None) else None
        img = image if image is not None else np.zeros((calib.height, calib.width, 3), np.uint8)
        pts = points if points is not None else np.zeros((0, 4), np.float32)
        keep = frustum_candidates(pts, calib) if len(pts) else None
        chw, lidar, flat = prepare_inputs(img, pts if keep is None else pts[keep], calib, (h, w),
                                          self.mean.ravel(), self.std.ravel())
        if keep is not None:  # scatter back: culled points are out of view
            full = np.full(len(pts), -1, flat.dtype)
            full[keep] = flat
            flat = full
        if image is None:
            chw = np.zeros_like(chw)
        return {"image": chw[None], "lidar": lidar[None]}, (flat if points is not None else None)

    # ------------------------------------------------------------------ the frame

    def process(self, frame: FusionFrame) -> FusionResult:
        """Run one frame. Model failures give a DEGRADED result (with ``error``), never an exception.

        The same as ``finish(infer(begin(frame)))``: callers that overlap frames (replay runs the
        model of frame *k* while it post-processes frame *k-1*) call the three steps themselves.
        """
        return self.finish(self.infer(self.begin(frame)))

    def begin(self, frame: FusionFrame) -> PendingFrame:
        """Step 1 of :meth:`process`: pick the head for the available modalities and prepare the
        model inputs. Touches no state: frames may be begun ahead of earlier frames' :meth:`finish`."""
        t0 = time.perf_counter()
        has_cam = frame.image is not None
        has_lidar = frame.points is not None and frame.calib is not None
        degraded = frame.degraded
        if frame.points is not None and frame.calib is None:
            degraded = _join(degraded, "no CameraInfo: LiDAR cannot be projected")
        pending = PendingFrame(frame, degraded, [], "", t_begin=t0)
        if not has_cam and not has_lidar:
            pending.skip = "no usable modality"
            return pending
        if has_cam and has_lidar:
            pending.key, pending.modalities = "", ["camera", "lidar"]
        elif has_cam:
            pending.key, pending.modalities = "camera_", ["camera"]
        else:
            pending.key, pending.modalities = "lidar_", ["lidar"]
        if pending.key and not self.unimodal[pending.modalities[0]]:
            pending.skip = f"model has no {pending.modalities[0]}-only head"
            return pending
        try:
            pending.inputs, pending.flat = self.prepare(frame)
        except Exception as exc:  # noqa: BLE001 - any model failure must become DEGRADED, not a crash
            pending.error = exc
        if has_lidar and pending.error is None:
            self._drop_unusable_lidar(pending)
        pending.t_prepared = time.perf_counter()
        return pending

    def _drop_unusable_lidar(self, pending: PendingFrame) -> None:
        """A cloud that puts fewer than ``min_lidar_points_in_view`` points in the camera's view
        contributes nothing: score the frame without it (the camera-only head; unscored without a
        camera or a camera-only head) and say why, instead of feeding the fused head an empty LiDAR
        tensor and reporting camera+lidar."""
        points = pending.frame.points
        assert points is not None
        in_view = int(np.count_nonzero(pending.flat >= 0)) if pending.flat is not None else 0
        if in_view >= self.config.min_lidar_points_in_view:
            return
        if len(points) == 0:
            why = "lidar unusable: no finite point in the cloud"
        else:
            why = (f"lidar unusable: {in_view} of {len(points)} points in the camera's view "
                   f"(need {self.config.min_lidar_points_in_view}; check CameraInfo and lidar_to_camera)")
        pending.lidar_unusable = why
        pending.degraded = _join(pending.degraded, why)
        if pending.frame.image is None:
            pending.skip, pending.modalities = "no usable modality", []
        elif not self.unimodal["camera"]:
            pending.skip, pending.modalities = "model has no camera-only head", []
        else:
            pending.key, pending.modalities = "camera_", ["camera"]

    def infer(self, pending: PendingFrame) -> PendingFrame:
        """Step 2 of :meth:`process`: run the backend on the prepared inputs (nothing when the
        frame is not scored). Touches no pipeline state; safe to run in another thread."""
        if pending.inputs is None or pending.error is not None:
            return pending
        t1 = time.perf_counter()
        try:
            key = pending.key
            names = [key + "score_map", key + "class_map"]
            want_embedding = self.uses_embedding and pending.frame.image is not None
            if want_embedding:
                names.append(EMBEDDING_OUTPUT)
            out = self.backend.infer(pending.inputs, outputs=names) if self._pick_outputs else self.backend.infer(pending.inputs)
            pending.score_m = np.asarray(out[key + "score_map"], np.float32)[0]
            pending.class_m = np.asarray(out[key + "class_map"])[0].astype(np.int32)
            if want_embedding:
                pending.embedding_m = np.asarray(out[EMBEDDING_OUTPUT], np.float32)[0]
        except Exception as exc:  # noqa: BLE001 - any model failure must become DEGRADED, not a crash
            pending.error = exc
        pending.t_infer = time.perf_counter() - t1
        return pending

    def finish(self, pending: PendingFrame) -> FusionResult:
        """Step 3 of :meth:`process`: upsample, mask, regions, and the alert state machine.
        Frames must be finished in stamp order (the alert history is sequential)."""
        cfg, frame = self.config, pending.frame
        if self._last_stamp is not None and frame.stamp < self._last_stamp - cfg.clock_jump:
            self.alerts.reset()
            self.tracker.reset()
        self._last_stamp = frame.stamp
        degraded, modalities = pending.degraded, pending.modalities
        if pending.skip is not None:  # nothing was scored: no modality is reported
            return self._unscored(frame, _join(degraded, pending.skip), [])
        if pending.error is not None or pending.score_m is None or pending.class_m is None:
            exc = pending.error or RuntimeError("infer() was not run")
            return self._unscored(frame, _join(degraded, f"model failure: {type(exc).__name__}: {exc}"), modalities, str(exc))
        t2 = time.perf_counter()
        score_m, inputs = pending.score_m, pending.inputs
        assert inputs is not None
        if frame.image is None:  # LiDAR-only: only pixels the scan covers carry evidence
            score_m = np.where(inputs["lidar"][0, 5] > 0, score_m, np.nan).astype(np.float32)
        result = self._postprocess(frame, score_m, pending.class_m, pending.flat, inputs["lidar"][0, 3], modalities, degraded,
                                   pending.embedding_m)
        post = time.perf_counter() - t2
        prep = pending.t_prepared - pending.t_begin
        result.timings = {"prepare": prep, "infer": pending.t_infer, "post": post, "total": prep + pending.t_infer + post}
        return result

    def _postprocess(
        self,
        frame: FusionFrame,
        score_m: np.ndarray,
        class_m: np.ndarray,
        flat: np.ndarray | None,
        range_m: np.ndarray,
        modalities: list[str],
        degraded: str | None,
        embedding: np.ndarray | None = None,
    ) -> FusionResult:
        cfg, thr = self.config, self.threshold
        if frame.image is not None:
            H, W = frame.image.shape[:2]
        else:
            H, W = frame.calib.height, frame.calib.width  # type: ignore[union-attr]
        score = upsample_score_map(score_m, (H, W))
        classes = upsample_class_map(class_m, (H, W))
        valid = np.isfinite(score)
        anomalous = valid & (score >= thr)
        mask = anomalous.astype(np.uint8) * 255
        n_valid = int(valid.sum())
        fraction = float(anomalous.sum()) / n_valid if n_valid else 0.0
        finite_m = score_m[np.isfinite(score_m)]
        frame_score = float(np.percentile(finite_m, cfg.frame_score_percentile)) if finite_m.size else float("nan")
        pts = np.zeros((0, 4), np.float32)
        labels = np.zeros(0, np.int32)
        pscores = np.zeros(0, np.float32)
        inview = None
        if flat is not None and frame.points is not None:
            inview = flat >= 0
            pts = np.asarray(frame.points, np.float32)[inview]
            pix = flat[inview]
            labels = class_m.reshape(-1)[pix]
            pscores = score_m.reshape(-1)[pix]
            # A point hidden behind a nearer one at its pixel was not seen by the model: no score.
            occluded = occluded_points(pts, pix, range_m, cfg.occlusion_tol, cfg.occlusion_rel)
            pscores = np.where(occluded, np.nan, pscores).astype(np.float32)
            labels = np.where(occluded, -1, labels)

        objects: list[ObjectEvidence] = []
        by_objects = self.uses_objects("lidar" in modalities and len(pts) > 0)
        # OodAlert.threshold is what OodAlert.score is compared against: the region threshold for a
        # track score (object decisions), the pixel threshold for a score-map percentile (pixels)
        frame_thr = self.region_threshold if by_objects else thr
        scene_shift = bool(n_valid) and fraction >= self.scene_shift_fraction
        if scene_shift:
            # the whole view is out of distribution: one DEGRADED reason, not a storm of regions
            why = (f"scene outside the model's domain: {fraction:.0%} of the scored pixels are out of distribution "
                   f"(scene_shift_fraction {self.scene_shift_fraction:.0%}); no regions judged")
            degraded = _join(degraded, why)
            regions: list[Region] = []
            frame_score = float("nan")
            decision = self.alerts.update(frame.stamp, None, degraded)
        elif by_objects:
            regions, objects = self._object_decisions(frame, pts, labels, pscores, mask, embedding, inview)
            frame_score = max((ob.track_score for ob in objects), default=0.0)
            decision = self.alerts.update(frame.stamp, bool(regions), degraded)
        else:
            regions, evidence = self._pixel_decisions(frame, anomalous, score, valid, pts, pscores)
            decision = self.alerts.update(frame.stamp, evidence, degraded)
        if cfg.mask_source == "regions":
            mask = regions_mask(mask, regions)
        if self.crop_classifier is not None and regions and frame.image is not None:
            phrases = self.crop_classifier.annotate(frame.image, regions)  # also fills Region.extra["crop"]
            if phrases:
                decision = replace(decision, description=f"{decision.description}; crops: {'; '.join(phrases)}")
        return FusionResult(
            stamp=frame.stamp,
            decision=decision,
            modalities=modalities,
            threshold=frame_thr,
            score=score.astype(np.float32, copy=False),
            classes=classes.astype(np.int32, copy=False),
            mask=mask,
            points=pts,
            point_labels=labels.astype(np.int32, copy=False),
            point_scores=pscores.astype(np.float32, copy=False),
            in_view=inview,
            regions=regions,
            frame_score=frame_score,
            anomalous_fraction=fraction,
            objects=objects,
            scene_shift=scene_shift,
            by_objects=by_objects,
        )

    def _pixel_decisions(self, frame: FusionFrame, anomalous: np.ndarray, score: np.ndarray, valid: np.ndarray,
                         pts: np.ndarray, pscores: np.ndarray) -> tuple[list[Region], bool]:
        """Decisions on pixels: mask components and clusters of anomalous points, merged; any is evidence."""
        cfg, thr = self.config, self.threshold
        all_valid = bool(valid.all())
        regions_2d, comp = mask_regions(anomalous, score if all_valid else np.where(valid, score, 0.0),
                                        cfg.min_region_pixels)
        regions_3d: list[Region] = []
        regions = regions_2d
        hot = np.flatnonzero(pscores >= thr)
        if hot.size:
            regions_3d, cluster = cluster_points(
                pts[hot, :3], pscores[hot], cfg.cluster_eps, cfg.cluster_min_points, cfg.max_cluster_points
            )
            regions_3d = [r for r in regions_3d if r.num_points >= cfg.min_region_points]
            cluster = np.where(cluster < len(regions_3d), cluster, -1)
            proj = project_points(pts[hot], frame.calib)  # type: ignore[arg-type]
            point_comp = np.zeros(hot.size, np.int32)
            point_comp[proj.in_view] = comp[proj.v[proj.in_view], proj.u[proj.in_view]]
            regions = merge_regions(regions_2d, regions_3d, point_comp, cluster)
        return regions, bool(regions_2d) or bool(regions_3d)

    def _object_decisions(self, frame: FusionFrame, pts: np.ndarray, labels: np.ndarray, pscores: np.ndarray,
                          mask: np.ndarray, embedding: np.ndarray | None = None,
                          inview: np.ndarray | None = None) -> tuple[list[Region], list[ObjectEvidence]]:
        """Decisions on objects (``pipeline/objects.py``): the regions of the tracked objects scoring
        >= ``region_threshold`` (highest first) and every candidate with its evidence. ``embedding``:
        the model's embedding map, for the object bank's term (``extra``); ``inview``: which of the
        frame's points ``pts`` are (the others tell how much of each candidate the camera saw)."""
        oc = self.objects
        assert frame.points is not None and frame.calib is not None
        ground = fit_frame_ground(frame.points, oc)
        # the cloud's points outside the view only matter when slivers are left unjudged
        unseen = np.asarray(frame.points)[~inview, :3] if inview is not None and oc.min_visible > 0 else None
        cands = object_candidates(pts[:, :3], pscores, labels, ground, self.classes, oc, self.threshold, unseen)
        proj = project_points(pts, frame.calib)
        u = np.clip(proj.u, 0, mask.shape[1] - 1)
        v = np.clip(proj.v, 0, mask.shape[0] - 1)
        for ob in cands:
            if self.region_term is not None:
                region = object_region(ob, pts, u, v, mask)
                crop = None
                if frame.image is not None:
                    crop = frame.image[region.y_min:region.y_min + region.height, region.x_min:region.x_min + region.width]
                ob.extra = float(self.region_term(crop, region, pts[ob.index, :3]))
        if self.object_embeddings and embedding is not None:
            for ob in cands:
                ob.appearance = pool_embedding(embedding, u[ob.index], v[ob.index], mask.shape[1], mask.shape[0])
        if self.object_bank is not None and self.region_term is None:
            if embedding is not None:
                self._bank_terms(cands, embedding, u, v, mask.shape[1], mask.shape[0])
            else:  # no camera image, no appearance: the term is left out, not counted as 0
                oc = replace(oc, w_extra=0.0)
        for ob in cands:
            ob.score = region_score(ob, oc)
        self.tracker.update(frame.stamp, cands)
        hits = sorted((ob for ob in cands if ob.track_score >= self.region_threshold), key=lambda ob: -ob.track_score)
        return [object_region(ob, pts, u, v, mask) for ob in hits], cands

    def _load_object_bank(self, backend: Any) -> tuple[ObjectBank | None, str | None]:
        """The model directory's object bank (checked against its sha256: a corrupt or replaced
        file raises), or None and why not when the model has none (the term is then off)."""
        why = object_bank_unavailable(backend)
        if why is None:
            source = f"{getattr(backend, 'model_dir', '')}/{BANK_FILE}"
            bank = ObjectBank.from_bytes(backend.file_bytes(BANK_ROLE), source)
            shape = next((t.shape for t in backend.spec.outputs if t.name == EMBEDDING_OUTPUT), None)
            width = shape[1] if shape is not None and len(shape) > 1 else None
            if isinstance(width, int) and width != bank.appearance.shape[1]:
                raise ValueError(f"{source}: the bank holds {bank.appearance.shape[1]}-d embeddings, the model's "
                                 f"'{EMBEDDING_OUTPUT}' output has {width} channels (a bank of another model?): "
                                 "rebuild it with ood-perception object-bank")
            return bank, None
        others = (self.objects.w_unknown, self.objects.w_conflict, self.objects.w_ood)
        if not sum(others) > 0:
            raise ValueError(f"object.w_extra is the only evidence weight > 0 but {why}; pass a region term or "
                             "set another object.w_* weight")
        return None, f"object.w_extra {self.objects.w_extra:g} has no effect: {why}"

    def _bank_terms(self, cands: list[ObjectEvidence], embedding: np.ndarray, u: np.ndarray, v: np.ndarray,
                    width: int, height: int) -> None:
        """``extra`` of every candidate on the drivable area (``drivable`` > 0) from the object bank;
        0 for the others: the bank's [0, 1] scale is set by candidates on the drivable area (its
        reference), so off it the term is undefined, and with ``object.location_floor`` > 0 such a
        candidate is judged on its unknown and OOD shares alone (the rule the shipped calibration and
        its validation were run with, docs/model.md "Location floor")."""
        assert self.object_bank is not None
        todo = [ob for ob in cands if ob.drivable > 0]
        for ob in cands:
            ob.extra = 0.0
        if not todo:
            return
        app = np.stack([ob.appearance if ob.appearance is not None else pool_embedding(embedding, u[ob.index], v[ob.index], width, height)
                        for ob in todo])
        geo = np.array([[*ob.size, ob.top] for ob in todo], np.float32)
        for ob, term in zip(todo, self.object_bank.score(app, geo), strict=True):
            ob.extra = float(term)

    def _unscored(self, frame: FusionFrame, reason: str, modalities: list[str], error: str | None = None) -> FusionResult:
        decision = self.alerts.update(frame.stamp, None, reason)
        assert decision.level == DEGRADED
        return FusionResult(stamp=frame.stamp, decision=decision, modalities=modalities, threshold=self.threshold, error=error)


#: Object settings added after calibrations were recorded, at the value that reproduces the rule
#: those calibrations were made with.
OBJECT_SETTINGS_BEFORE: dict[str, Any] = {"min_visible": 0.0, "drivable_gate": 0.0, "location_floor": 0.0,
                                          "extra_alone_points": 0.0, "extra_alone_from": 0.98, "low_height": 0.0,
                                          "support_points": 0.0}


def with_settings_before(recorded: dict[str, Any]) -> dict[str, Any]:
    """Object settings recorded by a calibration (or its frames cache), with the settings added since
    at the value that reproduces the rule it was made with (:data:`OBJECT_SETTINGS_BEFORE`)."""
    return {**OBJECT_SETTINGS_BEFORE, **recorded}


def object_bank_unavailable(backend: Any) -> str | None:
    """Why the object bank's term cannot run with ``backend`` (no ``object_bank.npz`` listed, or no
    ``embedding`` output), None when it can. ``calibrate`` asks the same question as the pipeline."""
    has = getattr(backend, "has_file", None)
    if has is None or not has(BANK_ROLE):
        return f"the model has no object bank ({BANK_FILE}; `ood-perception object-bank` makes one)"
    if EMBEDDING_OUTPUT not in (getattr(getattr(backend, "spec", None), "output_names", None) or []):
        return f"the model has an object bank but no '{EMBEDDING_OUTPUT}' output (re-export it)"
    return None


def frustum_candidates(points: np.ndarray, calib: Calibration, margin_px: float = 2.0) -> np.ndarray | None:
    """Indices of the points that may be in the camera's view: a cheap, conservative float32
    frustum test (depth > 0.05 m, inside the image bounds widened by ``margin_px``) run before the
    exact float64 projection, which then only sees these (a 360 degree scan has ~4x fewer points in
    a 90 degree camera). Points it drops are exactly those the projection would put out of view
    (its near plane is 0.1 m; the margin covers float32 rounding). None when ``K`` has skew or an
    unusual last row (no culling)."""
    K = calib.K
    if K[0, 1] != 0 or K[1, 0] != 0 or not np.array_equal(K[2], [0.0, 0.0, 1.0]):
        return None
    T = calib.T_cam_lidar.astype(np.float32)
    cam = apply_affine(np.asarray(points[:, :3], np.float32), T[:3, :3], T[:3, 3])  # float32, no BLAS
    z = cam[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    with np.errstate(invalid="ignore"):
        ok = z > 0.05
        ok &= cam[:, 0] * np.float32(fx) >= np.float32(-cx - margin_px) * z
        ok &= cam[:, 0] * np.float32(fx) <= np.float32(calib.width - cx + margin_px) * z
        ok &= cam[:, 1] * np.float32(fy) >= np.float32(-cy - margin_px) * z
        ok &= cam[:, 1] * np.float32(fy) <= np.float32(calib.height - cy + margin_px) * z
    return np.flatnonzero(ok)


def _image_calib(width: int, height: int, calib: Calibration | None) -> Calibration:
    """The calibration for an image of ``width x height``: ``calib`` rescaled, or (no CameraInfo)
    a nominal 90 degree camera, used only to size the inputs (no LiDAR is projected with it)."""
    if calib is not None:
        return calib.scaled(width, height)

    return Calibration(intrinsics_from_fov(width, height, 90.0), width, height)


def _join(a: str | None, b: str) -> str:
    return b if not a else f"{a}; {b}"
