"""Decisions on objects, not pixels: LiDAR object candidates, their evidence, tracking and one region score.

The per-pixel OOD score of a segmentation model separates *things* from *ground* far better than
*unknown* things from *known* ones (issue 17: the first default model ranked anomaly objects below
cars, object AUROC 0.37; the current one ranks them above, 0.75, but far from perfectly), and
thresholding it per pixel flags texture and lighting all over the road. The
fusion pipeline therefore decides on objects (``docs/architecture.md``, "Object decisions"):

1. **Ground** (:func:`ood_perception.geometry.ground.fit_ground_plane`): a RANSAC plane through
   the frame's cloud; every scored in-view point gets its height above it.
2. **Candidates**: the points ``min_height``..``max_height`` above the ground, and with
   ``low_height`` > 0 those from ``low_height`` up to ``min_height`` that the model does not label
   a ground class off the drivable area (sidewalk, verge: a raised kerb is no object, a tyre lying
   flat on the road is), clustered in
   bird's-eye view (:func:`grid_clusters`: 8-connected ``cluster_eps / 2`` cells); clusters with at least
   ``min_points`` points and a horizontal extent up to ``max_extent`` (a facade is not an object)
   are object candidates. The anomaly score map plays no part in *finding* objects: an object the
   score misses is still judged. With ``min_visible`` > 0 the clusters are formed with the points
   the model did *not* see too (outside the camera's view, or hidden behind a nearer surface), so a
   candidate is a whole object, and one of which the camera saw less than ``min_visible`` of its
   points (a car cut by the image border, a truck seen through a gap) is not judged: its sliver
   looks and measures like no object. Off by default (0): on validation drives it removed about a
   third of the single-frame high-scoring false candidates, but the ALERT persistence already
   ignored most of them, and the anomaly-free frames in ALERT did not fall (docs/model.md, "Seen
   objects only").
3. **Evidence** per candidate (:class:`ObjectEvidence`), all shares in [0, 1]:

   * ``unknown``: share of its points the model labels as none of the known object classes
     (``known_classes``: car, person, ...) - the model looks at something that stands on the
     ground and does not recognise it as an object it knows;
   * ``conflict``: share of its points labelled as a ground class (road, sidewalk, terrain) though
     they stand above the fitted ground (semantics that contradict geometry);
   * ``ood``: share of its points with an anomaly score >= the pixel threshold;
   * ``drivable``: *where* it is: share of the ground points within ``context_radius`` of its
     footprint that the model labels drivable (``drivable_classes``) - on or right beside the
     road scores high, a tree behind the kerb low; ``location_unknown`` when fewer than
     ``min_context_points`` ground points are near (nothing to judge by);
   * ``extra``: how unlike every object of the training drives it is, by appearance and size
     (``pipeline.object_bank``: the k-th-neighbour distance to the model directory's object bank,
     as a share of ordinary validation objects nearer; 0 for a model without a bank), or a plug-in
     term (:data:`RegionTerm`).

4. **Region score** (:func:`region_score`): ``drivable * (w_unknown * unknown + w_conflict *
   conflict + w_ood * ood + w_extra * extra) / (w_unknown + w_conflict + w_ood + w_extra)``, in
   [0, 1]: an object on the drivable area that the model does not recognise. Defaults (1, 0, 1, 1):
   the equal-weight mean of the three terms that separate anomaly objects from known ones
   (``conflict`` is off: it did not help on validation drives); chosen on validation drives
   (docs/model.md, "Decisions and alerts" and "Object bank"). ``w_extra`` has no effect for a
   model without an object bank. ``drivable_gate`` > 0 turns the location from a factor into a gate
   (the evidence itself where ``drivable >= drivable_gate``, else 0); off by default: calibrated to
   the same budget it alerted fewer objects on validation drives (docs/model.md, "Location as a gate").
   ``location_floor`` f > 0 weighs the evidence by ``f + (1 - f) * drivable`` instead: an unknown object
   away from the drivable area (an animal on the verge) keeps part of its score (docs/model.md,
   "Location floor"). ``extra_alone_points`` a > 0 lets the bank's term decide alone for a well-seen
   object: the evidence is ``max(mean, ramp(extra) * n / (n + a))`` with ``n`` its points and
   ``ramp(extra) = clip((extra - extra_alone_from) / (1 - extra_alone_from), 0, 1)``: an object with
   many points that is unlike every training object (a trailer the model calls truck) no longer
   needs the model's labels and pixel scores to agree, while a sliver of 20-50 points, whose terms
   are noisy, still does (docs/model.md, "The bank alone"). ``support_points`` s > 0 weighs the
   score by ``n / (n + s)``: a candidate of a few points (a distant animal, a sliver of a car seen
   through a gap) is judged, so it ranks above the objects never judged, but its noisy evidence
   alone rarely reaches the region threshold (docs/model.md, "Small and low objects").
5. **Tracking** (:class:`ObjectTracker`): candidates are associated with tracks across frames by
   nearest predicted centroid (constant velocity in the LiDAR frame, which also absorbs the ego
   motion) within ``track_gate`` metres; a track's score is the mean region score over its last
   ``track_window`` frames, counting frames it was not seen as 0, so one object must persist to
   score high and a one-frame blip is diluted.
6. The frame's evidence for the alert state machine (``pipeline/alerts.py``: k-of-n, hysteresis,
   cooldown) is "some tracked object scores >= ``region_threshold``"; the frame score
   (``OodAlert.score``) is the highest track score of the frame (0 with no candidate).

The thresholds and persistence come from the model's calibration (``model.json`` ``decision``,
written by ``ood-perception calibrate``) unless parameters override them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ood_perception.geometry.ground import GroundPlane, fit_ground_plane
from ood_perception.pipeline.regions import Region

#: Class names (as in ``model.json`` ``class_names``) of the known object classes, the ground
#: classes and the drivable classes, in the SemanticKITTI naming the default model uses.
KNOWN_CLASSES = ("car", "bicycle", "truck", "person", "bicyclist", "motorcycle", "motorcyclist", "bus",
                 "other-vehicle", "on-rails")
GROUND_CLASSES = ("road", "sidewalk", "terrain", "parking", "lane-marking", "other-ground")
DRIVABLE_CLASSES = ("road", "parking", "lane-marking")

#: The plug-in region term: ``(image crop [h, w, 3] uint8 or None, region, points [K, 3] in the
#: LiDAR frame) -> score in [0, 1]`` (1 = unlike every known object). Called once per candidate.
RegionTerm = Callable[[np.ndarray | None, Region, np.ndarray], float]


def parse_names(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"car, truck"`` or ``["car", "truck"]`` -> ``("car", "truck")`` (blank entries dropped)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(s.strip() for s in items if s.strip())


@dataclass(frozen=True)
class ObjectConfig:
    """Parameters of the object decisions (each a fusion node parameter, see the module docstring).

    Attributes:
        min_height, max_height: a point this far [m] above the fitted ground belongs to a candidate.
        low_height: 0: off; else points from this height [m] up to ``min_height`` join the candidates too,
            unless the model labels them a ground class that is not drivable (a sidewalk, the verge): an
            object lower than ``min_height`` on the road (a tyre lying flat) still stands out of it.
        min_points: smallest candidate [points].
        max_extent: a cluster wider than this [m] (x or y) is a structure, not an object.
        min_visible: smallest share of a candidate's points the model saw (in the camera's view and
            not hidden); 0 judges every sliver.
        cluster_eps: the candidates' bird's-eye-view cell is ``cluster_eps / 2`` [m] (8-connected cells join).
        context_radius: ground points this far [m] beyond the footprint judge the location.
        min_context_points: fewer ground points near -> ``drivable = location_unknown``.
        location_unknown: the ``drivable`` value when the location cannot be judged.
        drivable_gate: 0: the region score is ``drivable`` x the evidence (the location weighs it);
            > 0: the location is a gate: the evidence where ``drivable >= drivable_gate``, else 0.
        location_floor: the location weight of an object off the drivable area: the evidence is
            weighed by ``location_floor + (1 - location_floor) * drivable`` (0: by ``drivable``); not
            used when ``drivable_gate`` > 0 (the gate decides).
        w_unknown, w_conflict, w_ood, w_extra: weights of the evidence terms; ``w_extra`` weighs the
            object bank's term (``pipeline.object_bank``; off for a model without a bank) or a
            plug-in region term.
        extra_alone_points: 0: off; > 0: the points at which the bank's term alone carries half its
            weight (step 4: ``ramp(extra) * n / (n + extra_alone_points)``).
        extra_alone_from: the bank's term from which it counts alone (the ramp's start, in [0, 1)).
        support_points: 0: off; > 0: the region score of a candidate of ``n`` points is weighed by
            ``n / (n + support_points)``: the evidence of a few points is weak evidence.
        track_gate: largest distance [m] between a track's predicted centroid and a candidate.
        track_window: frames a track's score averages over (unseen frames count 0); 0 (the fusion
            pipeline's default) = the model's calibrated window.
        track_max_missed: a track unseen this many frames in a row is dropped.
        known_classes, ground_classes, drivable_classes: class names of the model.
        ground_inlier: RANSAC inlier distance [m] of the ground plane.
        ground_max_tilt_deg: largest ground tilt accepted.
        ground_fallback_z: ground height [m] in the LiDAR frame when no plane can be fitted.
    """

    min_height: float = 0.25
    max_height: float = 4.0
    low_height: float = 0.06
    min_points: int = 10
    max_extent: float = 8.0
    min_visible: float = 0.0
    cluster_eps: float = 0.6
    context_radius: float = 1.0
    min_context_points: int = 5
    location_unknown: float = 0.0
    drivable_gate: float = 0.0
    location_floor: float = 0.5
    w_unknown: float = 1.0
    w_conflict: float = 0.0
    w_ood: float = 1.0
    w_extra: float = 1.0
    extra_alone_points: float = 50.0
    extra_alone_from: float = 0.98
    support_points: float = 10.0
    track_gate: float = 2.0
    track_window: int = 3
    track_max_missed: int = 2
    known_classes: tuple[str, ...] = KNOWN_CLASSES
    ground_classes: tuple[str, ...] = GROUND_CLASSES
    drivable_classes: tuple[str, ...] = DRIVABLE_CLASSES
    ground_inlier: float = 0.15
    ground_max_tilt_deg: float = 15.0
    ground_fallback_z: float = -1.73

    def __post_init__(self) -> None:
        if not 0 <= self.min_height < self.max_height:
            raise ValueError(f"need 0 <= min_height < max_height, got {self.min_height}, {self.max_height}")
        if not (self.low_height == 0 or 0 < self.low_height < self.min_height):
            raise ValueError(f"low_height must be 0 (off) or in (0, min_height), got {self.low_height}")
        if self.min_points < 1 or self.min_context_points < 1 or self.track_window < 0 or self.track_max_missed < 0:
            raise ValueError("min_points and min_context_points must be >= 1, track_window and track_max_missed >= 0")
        for name in ("max_extent", "cluster_eps", "context_radius", "track_gate", "ground_inlier"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_visible <= 1:
            raise ValueError(f"min_visible must be in [0, 1], got {self.min_visible}")
        if not 0 <= self.location_unknown <= 1:
            raise ValueError(f"location_unknown must be in [0, 1], got {self.location_unknown}")
        if not 0 <= self.drivable_gate <= 1:
            raise ValueError(f"drivable_gate must be in [0, 1], got {self.drivable_gate}")
        if not 0 <= self.location_floor <= 1:
            raise ValueError(f"location_floor must be in [0, 1], got {self.location_floor}")
        if not self.extra_alone_points >= 0:
            raise ValueError(f"extra_alone_points must be >= 0 (0 = off), got {self.extra_alone_points}")
        if not 0 <= self.extra_alone_from < 1:
            raise ValueError(f"extra_alone_from must be in [0, 1), got {self.extra_alone_from}")
        if not self.support_points >= 0:
            raise ValueError(f"support_points must be >= 0 (0 = off), got {self.support_points}")
        weights = (self.w_unknown, self.w_conflict, self.w_ood, self.w_extra)
        if any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"the evidence weights must be >= 0 and not all 0, got {weights}")


@dataclass
class ObjectEvidence:
    """One object candidate of a frame and its evidence (see the module docstring).

    ``index``: its points, as indices into the frame's scored in-view points.
    """

    index: np.ndarray
    centroid: tuple[float, float, float]
    size: tuple[float, float, float]
    top: float
    unknown: float
    conflict: float
    ood: float
    drivable: float
    context_points: int
    mean_score: float
    max_score: float
    visible: float = 1.0
    extra: float = 0.0
    score: float = 0.0
    track_id: int = -1
    track_score: float = 0.0
    track_hits: int = 0
    #: pooled embedding ``[C]`` (``pipeline.object_bank``), kept only when the pipeline is asked to
    #: (``FusionPipeline(object_embeddings=True)``: building a bank)
    appearance: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        return int(self.index.size)

    def as_dict(self) -> dict[str, float]:
        """The evidence as plain numbers (``Region.extra``, reports)."""
        return {"unknown": self.unknown, "conflict": self.conflict, "ood": self.ood, "drivable": self.drivable,
                "extra": self.extra, "region_score": self.score, "track_id": self.track_id,
                "track_score": self.track_score, "track_hits": self.track_hits, "top": self.top}


@dataclass(frozen=True)
class ClassSets:
    """The model's class indices of each class group (from ``class_names``)."""

    known: np.ndarray
    ground: np.ndarray
    drivable: np.ndarray

    @classmethod
    def from_names(cls, class_names: Sequence[str], config: ObjectConfig) -> ClassSets:
        names = [str(n).strip().lower() for n in class_names]

        def idx(group: Sequence[str]) -> np.ndarray:
            want = {g.lower() for g in group}
            return np.array([i for i, n in enumerate(names) if n in want], np.int64)

        return cls(idx(config.known_classes), idx(config.ground_classes), idx(config.drivable_classes))

    @property
    def usable(self) -> bool:
        """Objects can be judged: the model names a drivable class (else there is no location)."""
        return self.drivable.size > 0


def _member(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return np.isin(labels, ids) if ids.size else np.zeros(labels.shape, bool)


def object_candidates(
    xyz: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    ground: GroundPlane,
    classes: ClassSets,
    config: ObjectConfig,
    threshold: float,
    unseen_xyz: np.ndarray | None = None,
) -> list[ObjectEvidence]:
    """Object candidates of one frame with their evidence (score and tracking not yet set).

    Args:
        xyz: ``[M, 3]`` in-view points (LiDAR frame).
        scores: ``[M]`` their anomaly scores (NaN = not scored, e.g. occluded: no evidence, but
            counted as unseen points of their object).
        labels: ``[M]`` the model's class index per point (-1 = none).
        ground: the frame's ground plane.
        classes: class index groups of the model.
        config: the object parameters.
        threshold: the pixel threshold (for the ``ood`` share).
        unseen_xyz: ``[U, 3]`` the cloud's points outside the camera's view (LiDAR frame); they
            join the clusters so that ``visible`` is the share of the whole object the model saw.
            None: only the hidden in-view points count as unseen.
    """
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).astype(np.int64, copy=False).ravel()
    if not len(xyz) == len(scores) == len(labels):
        raise ValueError(f"xyz ({len(xyz)}), scores ({len(scores)}) and labels ({len(labels)}) differ in length")
    scored = np.isfinite(scores)
    h = ground.height(xyz)
    band = (h >= config.min_height) & (h <= config.max_height)
    if config.low_height > 0:  # the low band: what the model does not call sidewalk or verge
        off_road = np.setdiff1d(classes.ground, classes.drivable)
        band |= (h >= config.low_height) & (h < config.min_height) & ~_member(labels, off_road)
    above = np.flatnonzero(scored & band)
    if above.size < config.min_points:
        return []
    pts_a = xyz[above]
    hidden = _unseen_near(xyz[~scored & band], unseen_xyz, ground, config, pts_a)
    # clusters of seen and unseen points together: the seen points come first
    lab = grid_clusters(np.concatenate([pts_a, hidden]) if len(hidden) else pts_a, config.cluster_eps / 2.0)
    k = int(lab.max()) + 1
    total = np.bincount(lab, minlength=k)
    lab = lab[:len(above)]
    cnt = np.bincount(lab, minlength=k)
    visible = cnt / np.maximum(total, 1)
    centroid = np.stack([np.bincount(lab, weights=pts_a[:, j], minlength=k) for j in range(3)], axis=1) / np.maximum(cnt, 1)[:, None]
    lo_all = np.full((k, 3), np.inf)
    hi_all = np.full((k, 3), -np.inf)
    np.minimum.at(lo_all, lab, pts_a)
    np.maximum.at(hi_all, lab, pts_a)
    on_ground = scored & (np.abs(h) < config.min_height) & (labels >= 0)
    g_xy = xyz[on_ground, :2]
    g_drivable = _member(labels[on_ground], classes.drivable).astype(np.float64)
    la = labels[above]
    size = hi_all - lo_all
    keep = np.flatnonzero((cnt >= config.min_points) & (np.maximum(size[:, 0], size[:, 1]) <= config.max_extent)
                          & (visible >= config.min_visible))
    keep = keep[np.argsort(-cnt[keep], kind="stable")]
    if keep.size == 0:
        return []
    n = np.maximum(cnt, 1).astype(np.float64)
    known = np.bincount(lab, weights=_member(la, classes.known).astype(np.float64), minlength=k) / n
    conflict = np.bincount(lab, weights=_member(la, classes.ground).astype(np.float64), minlength=k) / n
    s_a = scores[above]
    ood = np.bincount(lab, weights=(s_a >= threshold).astype(np.float64), minlength=k) / n
    mean_s = np.bincount(lab, weights=s_a, minlength=k) / n
    max_s = np.full(k, -np.inf)
    np.maximum.at(max_s, lab, s_a)
    top = np.full(k, -np.inf)
    np.maximum.at(top, lab, h[above])
    # ground points in each kept cluster's footprint box widened by context_radius: [K, G] tests
    n_near, drv_sum = _ground_in_boxes(g_xy, g_drivable, lo_all[keep, :2] - config.context_radius,
                                       hi_all[keep, :2] + config.context_radius)
    drv = drv_sum / np.maximum(n_near, 1)
    drv = np.where(n_near >= config.min_context_points, drv, config.location_unknown)
    order = np.argsort(lab, kind="stable")
    starts = np.r_[0, np.cumsum(cnt)]
    out: list[ObjectEvidence] = []
    for j, c in enumerate(keep.tolist()):
        out.append(ObjectEvidence(
            index=above[order[starts[c]:starts[c + 1]]], centroid=tuple(float(v) for v in centroid[c]),
            size=tuple(float(v) for v in size[c]), top=float(top[c]), unknown=float(1.0 - known[c]),
            conflict=float(conflict[c]), ood=float(ood[c]), drivable=float(drv[j]), context_points=int(n_near[j]),
            mean_score=float(mean_s[c]), max_score=float(max_s[c]), visible=float(visible[c]),
        ))
    return out


def _unseen_near(hidden_in_view: np.ndarray, unseen_xyz: np.ndarray | None, ground: GroundPlane, config: ObjectConfig,
                 seen: np.ndarray) -> np.ndarray:
    """The above-ground points the model did not see that may belong to a seen candidate: the hidden
    in-view points and those of ``unseen_xyz`` in the ground band, within ``max_extent`` of the seen
    points' bird's-eye-view box (an object wider than that is no candidate; the rest of a 360 degree
    scan is not clustered). Empty when ``min_visible`` is 0 (every sliver is judged: no need)."""
    if config.min_visible <= 0:
        return np.zeros((0, 3))
    parts = [hidden_in_view]
    if unseen_xyz is not None and len(unseen_xyz):
        u = np.asarray(unseen_xyz, np.float64).reshape(-1, 3)
        lo = seen[:, :2].min(axis=0) - config.max_extent
        hi = seen[:, :2].max(axis=0) + config.max_extent
        u = u[np.all((u[:, :2] >= lo) & (u[:, :2] <= hi), axis=1)]
        hu = ground.height(u)
        parts.append(u[(hu >= config.min_height) & (hu <= config.max_height)])
    return np.concatenate(parts)


def _ground_in_boxes(g_xy: np.ndarray, weight: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per box ``[lo, hi]`` (inclusive, ``[K, 2]``): how many ground points lie in it and the sum of their
    ``weight``. Points sorted by x once; each box tests only its x slab (found by binary search) instead
    of all G points: the same sets as the dense ``[K, G]`` test, ~10x less work on a 64-beam frame."""
    order = np.argsort(g_xy[:, 0], kind="stable")
    xs, ys, w = g_xy[order, 0], g_xy[order, 1], weight[order]
    a = np.searchsorted(xs, lo[:, 0], side="left")
    b = np.searchsorted(xs, hi[:, 0], side="right")
    count = np.zeros(len(lo), np.int64)
    total = np.zeros(len(lo), np.float64)
    for j in range(len(lo)):
        if b[j] > a[j]:
            y = ys[a[j]:b[j]]
            inside = (y >= lo[j, 1]) & (y <= hi[j, 1])
            count[j] = int(inside.sum())
            total[j] = float(w[a[j]:b[j]][inside].sum())
    return count, total


def grid_clusters(xyz: np.ndarray, cell: float) -> np.ndarray:
    """Single-linkage clusters of points ``[M, 3]`` in bird's-eye view: points fall into ``cell``-sized
    x-y cells, 8-connected occupied cells form a cluster (``cv2.connectedComponents``), so points up
    to ~2 cells apart join. Returns the cluster index per point (0..K-1).

    Used instead of DBSCAN for the object candidates: objects stand on the ground, so their
    footprints separate them, and Open3D's DBSCAN on the few thousand above-ground points of a
    frame took 82 ms per frame on the shared 2-core box (profile of test drive 8211), most of the
    object step; with the grid the whole object step (candidates + ground fit) takes ~55 ms there."""
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        return np.zeros(0, np.int64)
    ij = np.floor(xyz[:, :2] / cell).astype(np.int64)
    ij -= ij.min(axis=0)
    h, w = (ij.max(axis=0) + 1).tolist()
    grid = np.zeros((h, w), np.uint8)
    grid[ij[:, 0], ij[:, 1]] = 1
    _, labels = cv2.connectedComponents(grid, connectivity=8)
    lab = labels[ij[:, 0], ij[:, 1]].astype(np.int64)
    _, dense = np.unique(lab, return_inverse=True)
    return dense.reshape(-1).astype(np.int64)


def region_score(ev: ObjectEvidence, config: ObjectConfig) -> float:
    """The region score in [0, 1] (module docstring, step 4)."""
    w = (config.w_unknown, config.w_conflict, config.w_ood, config.w_extra)
    terms = (ev.unknown, ev.conflict, ev.ood, min(max(ev.extra, 0.0), 1.0))
    what = sum(wi * ti for wi, ti in zip(w, terms, strict=True)) / sum(w)
    if config.extra_alone_points > 0 and config.w_extra > 0:
        ramp = min(max((terms[3] - config.extra_alone_from) / (1.0 - config.extra_alone_from), 0.0), 1.0)
        n = float(len(ev.index))
        what = max(what, ramp * n / (n + config.extra_alone_points))
    if config.drivable_gate > 0:
        where = float(ev.drivable >= config.drivable_gate)
    else:
        where = config.location_floor + (1.0 - config.location_floor) * ev.drivable
    if config.support_points > 0:
        n = float(len(ev.index))
        what *= n / (n + config.support_points)
    return float(where * what)


def fit_frame_ground(points: np.ndarray, config: ObjectConfig) -> GroundPlane:
    """The ground plane of a frame's whole cloud ``[N, >=3]`` with the configured RANSAC parameters."""
    return fit_ground_plane(np.asarray(points)[:, :3], inlier_dist=config.ground_inlier,
                            max_tilt_deg=config.ground_max_tilt_deg, fallback_z=config.ground_fallback_z)


@dataclass
class _Track:
    ident: int
    centroid: np.ndarray
    velocity: np.ndarray
    stamp: float
    history: list[float] = field(default_factory=list)  # region score per frame since birth (0 = unseen)
    missed: int = 0
    hits: int = 0


class ObjectTracker:
    """Greedy nearest-neighbour tracker of object candidates (module docstring, step 5).

    Tracks live in the LiDAR frame; a track predicts its centroid with the velocity of its last
    two observations (which is minus the ego velocity for a static object), so objects passing a
    driving vehicle stay associated at 10 m/s and 10 Hz (1 m per frame) within the 2 m gate.
    """

    def __init__(self, config: ObjectConfig | None = None) -> None:
        self.config = config or ObjectConfig()
        if self.config.track_window < 1:
            raise ValueError(f"the tracker needs track_window >= 1, got {self.config.track_window}")
        self._tracks: list[_Track] = []
        self._next = 1

    def reset(self) -> None:
        """Forget every track (clock jump, restart)."""
        self._tracks.clear()

    def __len__(self) -> int:
        return len(self._tracks)

    def update(self, stamp: float, objects: list[ObjectEvidence]) -> None:
        """Associate this frame's scored candidates with tracks; sets each candidate's ``track_id``,
        ``track_score`` and ``track_hits``."""
        cfg = self.config
        pairs: list[tuple[float, int, int]] = []
        if self._tracks and objects:
            pred = np.array([t.centroid + t.velocity * max(stamp - t.stamp, 0.0) for t in self._tracks])
            cen = np.array([ob.centroid for ob in objects], np.float64)
            dist = np.linalg.norm(pred[:, None, :] - cen[None, :, :], axis=2)
            ti, oj = np.nonzero(dist <= cfg.track_gate)
            pairs = sorted(zip(dist[ti, oj].tolist(), ti.tolist(), oj.tolist(), strict=True))
        used_t: set[int] = set()
        used_o: set[int] = set()
        for _, i, j in pairs:
            if i in used_t or j in used_o:
                continue
            used_t.add(i)
            used_o.add(j)
            t, ob = self._tracks[i], objects[j]
            c = np.asarray(ob.centroid, np.float64)
            dt = stamp - t.stamp
            t.velocity = (c - t.centroid) / dt if dt > 1e-6 else t.velocity
            t.centroid, t.stamp = c, stamp
            t.history.append(ob.score)
            t.missed, t.hits = 0, t.hits + 1
            self._score(t, ob)
        for i, t in enumerate(self._tracks):
            if i not in used_t:
                t.history.append(0.0)
                t.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= cfg.track_max_missed]
        for j, ob in enumerate(objects):
            if j in used_o:
                continue
            t = _Track(self._next, np.asarray(ob.centroid, np.float64), np.zeros(3), stamp, [ob.score], 0, 1)
            self._next += 1
            self._tracks.append(t)
            self._score(t, ob)

    def _score(self, t: _Track, ob: ObjectEvidence) -> None:
        w = self.config.track_window
        recent = t.history[-w:]
        ob.track_id, ob.track_hits = t.ident, t.hits
        ob.track_score = float(sum(recent) / w)


def object_region(ev: ObjectEvidence, xyz: np.ndarray, u: np.ndarray | None, v: np.ndarray | None,
                  mask: np.ndarray | None) -> Region:
    """The published :class:`Region` of a candidate: 3D from its points, 2D as the bounding box of
    its points' pixels (``num_pixels`` = anomalous mask pixels inside it), scores = track score
    (``score``) and this frame's region score (``max_score``), evidence in ``extra``."""
    r = Region(has_3d=True, centroid=ev.centroid, size=ev.size, num_points=ev.num_points,
               score=ev.track_score, max_score=ev.score, extra=ev.as_dict())
    if u is not None and v is not None and len(ev.index):
        uu, vv = u[ev.index], v[ev.index]
        r.has_2d = True
        r.x_min, r.y_min = int(uu.min()), int(vv.min())
        r.width, r.height = int(uu.max() - uu.min() + 1), int(vv.max() - vv.min() + 1)
        if mask is not None:
            r.num_pixels = int(np.count_nonzero(mask[r.y_min:r.y_min + r.height, r.x_min:r.x_min + r.width]))
    return r
