"""Alert-level evaluation: frame scores, per-object alerts, false alerts and object-score separation.

Feed :class:`AlertEvaluator` one judged frame at a time (``add``: sequence, stamp, alert level,
frame score, and the frame's labels); pool evaluators of several bags with ``merge``; store and
reload the state as JSON (``state`` / ``from_state``); ``result()`` returns a JSON-serialisable dict
whose content depends only on the set of frames added (frames are sorted by (sequence, stamp)
before anything is computed; sums use ``math.fsum``), and ``timeline()`` the per-frame
:class:`~ood_perception.evaluation.timeline.TimelineEntry` list a report plots.

Definitions (all parameters live in :class:`AlertEvalConfig`; the pixel defaults are our engineering
choice for the 512x256 synthetic camera, not from a paper):

Objects
    An *object* is a raw label key ``semantic | instance << 16`` (the LiDAR label encoding of
    SemanticKITTI and of the synthetic world, whose ``pixel_instances`` carry the same instance ids)
    within one sequence: identity is ``(sequence, key)``, so use a distinct sequence name per bag.
    *Anomaly objects* have a semantic id in ``ood_ids``; *known-class objects* one in ``known_ids``
    (the in-distribution *thing* classes: cars, trucks, people, cyclists ...;
    :data:`SEMANTIC_KITTI_THING_IDS`). Without an instance map (``pixel_instances=None``) every
    anomaly pixel of one semantic id is one object (instance 0). On rendered synthetic frames every
    anomaly object covering >= 200 px has in-view LiDAR points with the same key (tested).

Frame level (``result()["frame"]``)
    Positives: frames with >= ``frame_min_pixels`` labelled anomaly pixels; negatives: frames with
    none; frames with 1 .. ``frame_min_pixels`` - 1 anomaly pixels are excluded, and so are frames
    without a finite score (DEGRADED frames that could not be scored). The frame score (higher =
    more anomalous, ``OodAlert.score``) is judged with :func:`ood_perception.metrics.ood_metrics`
    (AUROC, AUPR, ``fpr95`` = FPR at 95% TPR with anomalous frames positive, ...).
    ``alert_rate_positive`` / ``alert_rate_negative``: share of positive / negative frames in ALERT.

Objects and time to alert (``result()["objects"]``)
    An anomaly object is *in view* in a frame when it covers >= ``object_min_pixels`` camera
    pixels there. It is *alerted* when some frame where it is in view has level ALERT. Time to
    alert: from its first in-view frame to its first in-view ALERT frame, in frames (positions in
    the sequence's stamp-sorted frames) and seconds (stamp difference); 0 when an ALERT is already
    standing when it comes into view. Reported for all objects ever in view (``in_view``) and for
    the *acceptance* subset, the objects covering >= ``acceptance_pixels`` (200) pixels in some
    frame: the acceptance criterion of issue 17 is ``acceptance.recall >= acceptance_recall``
    (90%), given as ``acceptance.met``.

False alerts (``result()["false_alerts"]``)
    An *anomaly-free* frame has no labelled anomaly pixel (the frame-level negatives).
    ``frame_share``: share of anomaly-free frames in ALERT (this includes an alert held on after an
    object left the view). An *alert episode* is a maximal run of consecutive ALERT frames of one
    sequence (in stamp order; a stamp gap > ``max_gap_s`` ends a run); it is a *false alert
    episode* when **every** frame of the run is anomaly-free, i.e. the alert never overlapped a
    labelled anomaly. ``episodes_per_minute`` = false episodes / minutes of anomaly-free driving,
    ``episodes_per_minute_total`` = false episodes / minutes of all judged frames. Duration of a
    frame: the time to the next frame of its sequence, capped at ``max_gap_s``; the last frame of a
    sequence gets the median of the others (0 for a one-frame sequence).

Object score separation (``result()["object_scores"]``)
    An *observation* is an object in one frame with >= ``min_points`` scored LiDAR points (points
    with a finite score; pass the labels and scores of the points the pipeline scored, NaN for the
    rest). Its score is the mean point score, or the caller's ``object_scores[key]`` (with object
    decisions :func:`candidate_object_scores`: the score the node uses for objects). Anomaly vs
    known-class observations are judged with ``ood_metrics`` (the "object AUROC"); ``tracks`` does
    the same per object (mean of its observation scores).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ood_perception.evaluation.timeline import ALERT, LEVEL_NAMES, TimelineEntry
from ood_perception.metrics import ood_metrics

__all__ = [
    "SEMANTIC_KITTI_THING_IDS",
    "AlertEvalConfig",
    "AlertEvaluator",
    "FrameRecord",
    "candidate_object_scores",
    "known_thing_ids",
    "object_key",
    "pixel_objects",
    "point_objects",
    "split_key",
]

#: Raw ids of SemanticKITTI's in-distribution *thing* classes (semantic-kitti.yaml): car, bicycle,
#: bus, motorcycle, on-rails, truck, other-vehicle, person, bicyclist, motorcyclist and their
#: moving-* ids. The synthetic world uses the subset 10, 11, 18, 30, 31, 252, 253, 254.
SEMANTIC_KITTI_THING_IDS: tuple[int, ...] = (10, 11, 13, 15, 16, 18, 20, 30, 31, 32,
                                             252, 253, 254, 255, 256, 257, 258, 259)


def known_thing_ids(dataset_config: Any) -> list[int]:
    """The :data:`SEMANTIC_KITTI_THING_IDS` a dataset's label map names and does not list as
    anomalies: the known-class objects of the object-score separation. The synthetic world and
    SemanticKITTI share these raw ids; a dataset with another id scheme gets none (and
    ``object_scores`` then says there are no negatives)."""
    ood = {int(i) for i in dataset_config.ood_ids}
    names = {int(k) for k in dataset_config.labels}
    return [i for i in SEMANTIC_KITTI_THING_IDS if i in names and i not in ood]


#: A candidate must hold at least this many of a labelled object's points to score it
#: (:func:`candidate_object_scores`).
CANDIDATE_MIN_SHARED_POINTS = 5


def candidate_object_scores(candidates: Iterable[Any], point_labels: ArrayLike,
                            min_shared: int = CANDIDATE_MIN_SHARED_POINTS) -> dict[int, float]:
    """The score the object decisions give each labelled object of a frame: the track score of the
    candidate holding most of its points (at least ``min_shared`` of them), 0.0 when no candidate
    does (the decisions never judged it as an object).

    Args:
        candidates: the frame's object candidates (``FusionResult.objects``: each with ``index``, its
            points as indices into ``point_labels``, and ``track_score``).
        point_labels: ``[M]`` raw labels (``semantic | instance << 16``) of the points the pipeline scored.
        min_shared: fewest of an object's points a candidate must hold to score it.

    Returns:
        ``{key: score}`` for every label key among ``point_labels`` (key = the raw label's low 32 bits,
        as :func:`point_objects`); pass it as :meth:`AlertEvaluator.add`'s ``object_scores``.
    """
    lab = np.asarray(point_labels).astype(np.int64, copy=False).ravel() & 0xFFFFFFFF
    best: dict[int, tuple[int, float]] = {}
    for ob in candidates:
        keys, counts = np.unique(lab[np.asarray(ob.index, np.int64)], return_counts=True)
        for k, n in zip(keys.tolist(), counts.tolist(), strict=True):
            if n >= min_shared and n > best.get(k, (0, 0.0))[0]:
                best[k] = (n, float(ob.track_score))
    return {int(k): best.get(int(k), (0, 0.0))[1] for k in np.unique(lab).tolist()}


def object_key(semantic: int, instance: int) -> int:
    """The object key ``semantic | instance << 16`` (the raw LiDAR label of its points)."""
    return int(semantic) & 0xFFFF | (int(instance) & 0xFFFF) << 16


def split_key(key: int) -> tuple[int, int]:
    """(semantic, instance) of an object key."""
    return int(key) & 0xFFFF, (int(key) >> 16) & 0xFFFF


def _lut(ids: Iterable[int], name: str) -> np.ndarray:
    ids = sorted({int(i) for i in ids})
    bad = [i for i in ids if not 0 <= i <= 0xFFFF]
    if bad:
        raise ValueError(f"{name} must be raw semantic ids in 0..65535, got {bad[:5]}")
    lut = np.zeros(0x10000, bool)
    lut[ids] = True
    return lut


def pixel_objects(pixel_labels: ArrayLike, pixel_instances: ArrayLike | None,
                  ood_ids: Iterable[int] | np.ndarray) -> dict[int, int]:
    """Anomaly objects of one frame: ``{key: pixel count}`` (keys increasing).

    Args:
        pixel_labels: ``[H, W]`` raw semantic ids (bits above 16 ignored).
        pixel_instances: ``[H, W]`` instance ids, or None (each semantic id is one object).
        ood_ids: raw ids of anomalies, or a 65536-entry bool lookup table.
    """
    lut = ood_ids if isinstance(ood_ids, np.ndarray) and ood_ids.dtype == bool else _lut(ood_ids, "ood_ids")
    sem = np.asarray(pixel_labels).astype(np.int64, copy=False) & 0xFFFF
    anomalous = lut[sem]
    keys = sem[anomalous]
    if pixel_instances is not None:
        inst = np.asarray(pixel_instances)
        if inst.shape != sem.shape:
            raise ValueError(f"pixel_instances has shape {inst.shape}, pixel_labels {sem.shape}")
        keys = keys | (inst[anomalous].astype(np.int64) & 0xFFFF) << 16
    uniq, counts = np.unique(keys, return_counts=True)
    return {int(k): int(c) for k, c in zip(uniq, counts, strict=True)}


def point_objects(point_labels: ArrayLike, point_scores: ArrayLike, object_ids: Iterable[int] | np.ndarray,
                  min_points: int = 1) -> dict[int, tuple[int, float]]:
    """Objects among scored points: ``{key: (number of scored points, mean point score)}``.

    Args:
        point_labels: ``[N]`` raw labels ``semantic | instance << 16``.
        point_scores: ``[N]`` scores; points with a non-finite score (not scored) are left out.
        object_ids: semantic ids whose instances count as objects (or a 65536-entry bool table).
        min_points: objects with fewer scored points are left out.
    """
    lut = object_ids if isinstance(object_ids, np.ndarray) and object_ids.dtype == bool else _lut(object_ids, "ids")
    lab = np.asarray(point_labels).astype(np.int64, copy=False).ravel()
    s = np.asarray(point_scores, dtype=np.float64).ravel()
    if lab.shape != s.shape:
        raise ValueError(f"point_labels ({lab.size}) and point_scores ({s.size}) differ in length")
    keep = np.isfinite(s) & lut[lab & 0xFFFF]
    keys, inv, counts = np.unique(lab[keep] & 0xFFFFFFFF, return_inverse=True, return_counts=True)
    sums = np.bincount(inv.ravel(), weights=s[keep], minlength=keys.size)
    return {int(k): (int(n), float(t / n)) for k, n, t in zip(keys, counts, sums, strict=True) if n >= min_points}


@dataclass(frozen=True)
class AlertEvalConfig:
    """Parameters of :class:`AlertEvaluator` (definitions in the module docstring).

    ``frame_min_pixels`` / ``object_min_pixels``: 50 px (0.04% of a 512x256 image) is our choice:
    about a 7x7 px blob, the smallest region a person could confirm. ``acceptance_pixels`` = 200
    and ``acceptance_recall`` = 0.9 are issue 17's acceptance criterion; ``min_points`` = 10 its
    object rule. ``max_gap_s`` = 1 s: a longer stamp gap is a recording gap (10 frames at 10 Hz).
    """

    frame_min_pixels: int = 50
    object_min_pixels: int = 50
    acceptance_pixels: int = 200
    acceptance_recall: float = 0.9
    min_points: int = 10
    max_gap_s: float = 1.0
    tpr: float = 0.95

    def __post_init__(self) -> None:
        for name in ("frame_min_pixels", "object_min_pixels", "acceptance_pixels", "min_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.acceptance_recall <= 1.0 or not 0.0 < self.tpr <= 1.0:
            raise ValueError(f"acceptance_recall and tpr must be in (0, 1], got {self.acceptance_recall}, {self.tpr}")
        if not self.max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0, got {self.max_gap_s}")


@dataclass
class FrameRecord:
    """What the evaluator keeps of one judged frame.

    Attributes:
        sequence, stamp, level, score: as given to :meth:`AlertEvaluator.add` (score None = not scored).
        anomaly_pixels: labelled anomaly pixels.
        excluded_pixels: pixels of excluded anomaly types (types the model saw in training): such a
            frame is neither anomaly-free nor, below ``frame_min_pixels`` of the other types, positive.
        objects: ``{key: pixels}`` of the anomaly objects with >= 1 pixel.
        observations: ``{key: (scored points, object score)}`` of the objects with >= ``min_points``
            scored points (anomaly and known-class).
    """

    sequence: str
    stamp: float
    level: int
    score: float | None
    anomaly_pixels: int
    objects: dict[int, int] = field(default_factory=dict)
    observations: dict[int, tuple[int, float]] = field(default_factory=dict)
    excluded_pixels: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "stamp": self.stamp, "level": self.level, "score": self.score,
                "anomaly_pixels": self.anomaly_pixels,
                "objects": [[k, v] for k, v in sorted(self.objects.items())],
                "observations": [[k, n, s] for k, (n, s) in sorted(self.observations.items())],
                "excluded_pixels": self.excluded_pixels}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FrameRecord:
        return cls(sequence=str(d["sequence"]), stamp=float(d["stamp"]), level=int(d["level"]),
                   score=None if d["score"] is None else float(d["score"]), anomaly_pixels=int(d["anomaly_pixels"]),
                   objects={int(k): int(v) for k, v in d["objects"]},
                   observations={int(k): (int(n), float(s)) for k, n, s in d["observations"]},
                   excluded_pixels=int(d.get("excluded_pixels", 0)))


def _fmean(values: Iterable[float]) -> float | None:
    v = list(values)
    return math.fsum(v) / len(v) if v else None


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "max": None}
    return {"mean": math.fsum(values) / len(values), "median": float(np.median(values)), "max": float(max(values))}


def _separation(scores: list[float], positive: list[bool], tpr: float, what: str) -> dict[str, Any]:
    n_pos = sum(positive)
    n = len(scores)
    if n_pos == 0 or n_pos == n:
        return {"available": False, "n": n, "n_positive": n_pos,
                "reason": f"no {'negative' if n_pos else 'positive'} {what}"}
    return {"available": True, **ood_metrics(np.asarray(scores, np.float64), np.asarray(positive, bool), tpr=tpr)}


class AlertEvaluator:
    """Accumulates judged frames and computes frame, object, false-alert and object-score metrics.

    Args:
        ood_ids: raw semantic ids of anomalies (``DatasetConfig.ood_ids``).
        known_ids: raw semantic ids of in-distribution thing classes (for the object-score
            separation), e.g. :data:`SEMANTIC_KITTI_THING_IDS`; must not overlap ``ood_ids``.
        config: :class:`AlertEvalConfig`.
        excluded_ids: raw ids of anomaly types left out of the evaluation (``model.json``
            ``outlier_types``: the model saw them in training): not anomalies, not known objects,
            and a frame showing them is not anomaly-free (``DatasetConfig.excluded_ids``).
    """

    def __init__(self, ood_ids: Iterable[int], known_ids: Iterable[int] = SEMANTIC_KITTI_THING_IDS,
                 config: AlertEvalConfig | None = None, excluded_ids: Iterable[int] = ()) -> None:
        self.ood_ids = tuple(sorted({int(i) for i in ood_ids}))
        self.known_ids = tuple(sorted({int(i) for i in known_ids}))
        if not self.ood_ids:
            raise ValueError("ood_ids is empty: the dataset names no anomaly classes")
        both = sorted(set(self.ood_ids) & set(self.known_ids))
        if both:
            raise ValueError(f"ids {both} are both anomalies (ood_ids) and known classes (known_ids)")
        self.excluded_ids = tuple(sorted({int(i) for i in excluded_ids}))
        clash = sorted(set(self.excluded_ids) & (set(self.ood_ids) | set(self.known_ids)))
        if clash:
            raise ValueError(f"ids {clash} are excluded and also anomalies or known classes")
        self.config = config or AlertEvalConfig()
        self._excluded_lut = _lut(self.excluded_ids, "excluded_ids")
        self._ood_lut = _lut(self.ood_ids, "ood_ids")
        self._object_lut = self._ood_lut | _lut(self.known_ids, "known_ids")
        self.records: list[FrameRecord] = []
        self._seen: set[tuple[str, float]] = set()

    # ------------------------------------------------------------------ collecting
    def add(
        self,
        sequence: str,
        stamp: float,
        level: int,
        score: float | None,
        *,
        pixel_labels: ArrayLike | None = None,
        pixel_instances: ArrayLike | None = None,
        anomaly_objects: Mapping[int, int] | None = None,
        point_labels: ArrayLike | None = None,
        point_scores: ArrayLike | None = None,
        object_scores: Mapping[int, float] | None = None,
    ) -> FrameRecord:
        """Add one judged frame.

        Args:
            sequence: sequence / bag name (object identity is per sequence).
            stamp: the frame's stamp in seconds.
            level: its alert level (``OodAlert.level``: 0 CLEAR, 1 WARNING, 2 ALERT, 3 DEGRADED).
            score: its frame score (``OodAlert.score``); None or NaN = not scored.
            pixel_labels: ``[H, W]`` raw semantic ids at camera resolution (``Frame.pixel_labels``).
            pixel_instances: ``[H, W]`` instance ids (``Frame.pixel_instances``) or None.
            anomaly_objects: instead of the pixel arrays, ``{key: pixels}`` of the anomaly objects.
            point_labels: raw labels ``semantic | instance << 16`` of the points the pipeline scored.
            point_scores: their scores (same length; NaN = not scored, e.g. occluded).
            object_scores: ``{key: score}`` overriding the mean point score of those objects (only
                objects with >= ``min_points`` scored points are observed; other keys are ignored).

        Returns:
            The :class:`FrameRecord` kept.

        Raises:
            ValueError: neither ``pixel_labels`` nor ``anomaly_objects``, both, a level outside
                0..3, point arrays without each other, or a (sequence, stamp) already added.
        """
        if (pixel_labels is None) == (anomaly_objects is None):
            raise ValueError("give exactly one of pixel_labels (with pixel_instances) or anomaly_objects")
        if int(level) not in LEVEL_NAMES:
            raise ValueError(f"alert level must be one of {sorted(LEVEL_NAMES)}, got {level}")
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f"stamp must be finite, got {stamp}")
        ident = (str(sequence), stamp)
        if ident in self._seen:
            raise ValueError(f"frame {sequence!r} at stamp {stamp} was already added")
        excluded = 0
        if pixel_labels is not None:
            objects = pixel_objects(pixel_labels, pixel_instances, self._ood_lut)
            if self.excluded_ids:
                excluded = int(self._excluded_lut[np.asarray(pixel_labels).astype(np.int64, copy=False) & 0xFFFF].sum())
        else:
            objects = {int(k): int(v) for k, v in anomaly_objects.items() if int(v) > 0}  # type: ignore[union-attr]
            bad = [k for k in objects if not self._ood_lut[k & 0xFFFF]]
            if bad:
                raise ValueError(f"anomaly_objects has keys whose semantic id is not in ood_ids: {bad[:5]}")
        observations: dict[int, tuple[int, float]] = {}
        if (point_labels is None) != (point_scores is None):
            raise ValueError("point_labels and point_scores go together")
        if point_labels is not None:
            observations = point_objects(point_labels, point_scores, self._object_lut, self.config.min_points)  # type: ignore[arg-type]
            for k, s in (object_scores or {}).items():
                if int(k) in observations and math.isfinite(float(s)):
                    observations[int(k)] = (observations[int(k)][0], float(s))
        sc = None if score is None or not math.isfinite(float(score)) else float(score)
        rec = FrameRecord(ident[0], stamp, int(level), sc, int(sum(objects.values())), objects, observations, excluded)
        self.records.append(rec)
        self._seen.add(ident)
        return rec

    def merge(self, other: AlertEvaluator) -> None:
        """Pool ``other`` (same ids and config; e.g. another bag) into this evaluator."""
        if (other.ood_ids, other.known_ids, other.config, other.excluded_ids) != (
                self.ood_ids, self.known_ids, self.config, self.excluded_ids):
            raise ValueError("cannot merge alert evaluators with different ood_ids, known_ids, excluded_ids or config")
        dup = self._seen & other._seen
        if dup:
            raise ValueError(f"{len(dup)} frames are in both evaluators, e.g. {sorted(dup)[0]}; "
                             "use a distinct sequence name per bag")
        self.records.extend(other.records)
        self._seen |= other._seen

    def select(self, sequences: str | Iterable[str]) -> AlertEvaluator:
        """A new evaluator holding only the frames of ``sequences`` (e.g. one bag's share of a pooled
        evaluator, for a per-bag table); this one is left unchanged."""
        names = {sequences} if isinstance(sequences, str) else set(sequences)
        out = AlertEvaluator(self.ood_ids, self.known_ids, self.config, self.excluded_ids)
        out.records = [r for r in self.records if r.sequence in names]
        out._seen = {(r.sequence, r.stamp) for r in out.records}
        return out

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (frames in (sequence, stamp) order); :meth:`from_state` rebuilds it."""
        return {"ood_ids": list(self.ood_ids), "known_ids": list(self.known_ids), "config": asdict(self.config),
                "excluded_ids": list(self.excluded_ids), "frames": [r.to_json() for r in self._sorted()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AlertEvaluator:
        """Inverse of :meth:`state`."""
        ev = cls(state["ood_ids"], state["known_ids"], AlertEvalConfig(**state["config"]), state.get("excluded_ids", ()))
        for d in state["frames"]:
            rec = FrameRecord.from_json(d)
            ev.records.append(rec)
            ev._seen.add((rec.sequence, rec.stamp))
        return ev

    # ------------------------------------------------------------------ results
    def _sorted(self) -> list[FrameRecord]:
        return sorted(self.records, key=lambda r: (r.sequence, r.stamp))

    def _frame_label(self, anomaly_pixels: int, excluded_pixels: int = 0) -> str:
        if anomaly_pixels == 0:
            return "negative" if excluded_pixels == 0 else "excluded"
        return "positive" if anomaly_pixels >= self.config.frame_min_pixels else "excluded"

    def timeline(self, sequence: str | None = None) -> list[TimelineEntry]:
        """One :class:`TimelineEntry` per frame in (sequence, stamp) order (one sequence if given)."""
        mp = self.config.object_min_pixels
        return [TimelineEntry(r.sequence, r.stamp, r.level, r.score, r.anomaly_pixels, self._frame_label(r.anomaly_pixels, r.excluded_pixels),
                              tuple(k for k, v in sorted(r.objects.items()) if v >= mp))
                for r in self._sorted() if sequence is None or r.sequence == sequence]

    def sequences(self) -> list[str]:
        """The sequence names added, sorted."""
        return sorted({r.sequence for r in self.records})

    def result(self) -> dict[str, Any]:
        """All metrics (JSON-serialisable, undefined values None): ``frames``, ``frame``,
        ``false_alerts``, ``objects``, ``object_scores`` and ``config``; see the module docstring."""
        recs = self._sorted()
        cfg = self.config
        n = len(recs)
        seq = np.array([r.sequence for r in recs], dtype=object)
        stamp = np.array([r.stamp for r in recs], np.float64)
        alert = np.array([r.level == ALERT for r in recs], bool)
        apx = np.array([r.anomaly_pixels for r in recs], np.int64)
        xpx = np.array([r.excluded_pixels for r in recs], np.int64)
        score = np.array([np.nan if r.score is None else r.score for r in recs], np.float64)
        new_seq = np.r_[True, seq[1:] != seq[:-1]] if n else np.zeros(0, bool)
        seq_start = np.maximum.accumulate(np.where(new_seq, np.arange(n), 0)) if n else np.zeros(0, np.int64)
        index_in_seq = np.arange(n) - seq_start

        # frame durations: time to the next frame of the sequence, capped; last frame: median of the others
        nxt = np.r_[stamp[1:] - stamp[:-1], np.nan] if n else np.zeros(0)
        last = np.r_[new_seq[1:], True] if n else np.zeros(0, bool)
        dt = np.minimum(np.where(last, np.nan, nxt), cfg.max_gap_s)
        seq_id = np.cumsum(new_seq) - 1
        for s in np.unique(seq_id):
            sel = seq_id == s
            inner = dt[sel & ~last]
            dt[sel & last] = float(np.median(inner)) if inner.size else 0.0
        gap_before = np.r_[False, (stamp[1:] - stamp[:-1]) > cfg.max_gap_s] if n else np.zeros(0, bool)

        return {
            "frames": n,
            "sequences": len(set(seq.tolist())),
            "frame": self._frame_metrics(score, apx, alert, xpx),
            "false_alerts": self._false_alerts(recs, alert, apx, dt, new_seq | gap_before, xpx),
            "objects": self._object_metrics(recs, alert, index_in_seq),
            "object_scores": self._object_score_metrics(recs),
            "config": {**asdict(cfg), "ood_ids": list(self.ood_ids), "known_ids": list(self.known_ids),
                       "excluded_ids": list(self.excluded_ids)},
        }

    def _frame_metrics(self, score: np.ndarray, apx: np.ndarray, alert: np.ndarray, xpx: np.ndarray) -> dict[str, Any]:
        pos = apx >= self.config.frame_min_pixels
        neg = (apx == 0) & (xpx == 0)
        scored = np.isfinite(score)
        use = (pos | neg) & scored
        out: dict[str, Any] = {
            "n_positive": int((pos & scored).sum()), "n_negative": int((neg & scored).sum()),
            "n_excluded_small": int((~pos & ~neg & (xpx == 0)).sum()),
            "n_excluded_type": int((~pos & ~neg & (xpx > 0)).sum()), "n_unscored": int(((pos | neg) & ~scored).sum()),
            "alert_rate_positive": float(alert[pos].mean()) if pos.any() else None,
            "alert_rate_negative": float(alert[neg].mean()) if neg.any() else None,
        }
        out["scores"] = _separation(score[use].tolist(), pos[use].tolist(), self.config.tpr, "frames")
        return out

    def _false_alerts(self, recs: list[FrameRecord], alert: np.ndarray, apx: np.ndarray, dt: np.ndarray,
                      breaks: np.ndarray, xpx: np.ndarray) -> dict[str, Any]:
        free = (apx == 0) & (xpx == 0)
        n = alert.size
        start = alert & (np.r_[True, ~alert[:-1]] | breaks) if n else np.zeros(0, bool)
        run = np.where(alert, np.cumsum(start), 0)  # 1..n_runs on ALERT frames, 0 elsewhere
        n_runs = int(start.sum())
        anomalous_frames = np.bincount(run, weights=(~free).astype(np.float64), minlength=n_runs + 1)[1:]
        false_runs = np.flatnonzero(anomalous_frames == 0) + 1
        episodes = []
        for r in false_runs:
            idx = np.flatnonzero(run == r)
            episodes.append({"sequence": recs[idx[0]].sequence, "start": recs[idx[0]].stamp,
                             "stop": recs[idx[-1]].stamp, "frames": int(idx.size)})
        free_min = math.fsum(dt[free].tolist()) / 60.0
        total_min = math.fsum(dt.tolist()) / 60.0
        return {
            "anomaly_free_frames": int(free.sum()),
            "alert_frames_anomaly_free": int((alert & free).sum()),
            "frame_share": float(alert[free].mean()) if free.any() else None,
            "alert_episodes": n_runs,
            "false_episodes": len(episodes),
            "anomaly_free_minutes": free_min,
            "total_minutes": total_min,
            "episodes_per_minute": len(episodes) / free_min if free_min > 0 else None,
            "episodes_per_minute_total": len(episodes) / total_min if total_min > 0 else None,
            "episodes": episodes,
        }

    def _object_metrics(self, recs: list[FrameRecord], alert: np.ndarray, index_in_seq: np.ndarray) -> dict[str, Any]:
        cfg = self.config
        objs: dict[tuple[str, int], dict[str, Any]] = {}
        for k, r in enumerate(recs):  # per frame and object (a handful per frame), never per pixel
            for key, px in r.objects.items():
                o = objs.setdefault((r.sequence, key), {"max_pixels": 0, "first": None, "alert": None})
                o["max_pixels"] = max(o["max_pixels"], px)
                if px >= cfg.object_min_pixels:
                    if o["first"] is None:
                        o["first"] = k
                    if alert[k] and o["alert"] is None:
                        o["alert"] = k
        listed = []
        for (sq, key), o in sorted(objs.items()):
            sem, inst = split_key(key)
            f, a = o["first"], o["alert"]
            listed.append({
                "sequence": sq, "key": key, "semantic": sem, "instance": inst, "max_pixels": o["max_pixels"],
                "in_view": f is not None, "first_in_view": None if f is None else recs[f].stamp,
                "alerted": a is not None,
                "frames_to_alert": None if a is None else int(index_in_seq[a] - index_in_seq[f]),
                "seconds_to_alert": None if a is None else recs[a].stamp - recs[f].stamp,
            })

        def summary(sel: list[dict[str, Any]]) -> dict[str, Any]:
            hit = [o for o in sel if o["alerted"]]
            return {"n": len(sel), "alerted": len(hit), "recall": len(hit) / len(sel) if sel else None,
                    "frames_to_alert": _stats([float(o["frames_to_alert"]) for o in hit]),
                    "seconds_to_alert": _stats([o["seconds_to_alert"] for o in hit])}

        in_view = [o for o in listed if o["in_view"]]
        acc = summary([o for o in in_view if o["max_pixels"] >= cfg.acceptance_pixels])
        acc["met"] = None if acc["recall"] is None else acc["recall"] >= cfg.acceptance_recall
        return {"n_labelled": len(listed), "in_view": summary(in_view), "acceptance": acc, "list": listed}

    def _object_score_metrics(self, recs: list[FrameRecord]) -> dict[str, Any]:
        scores: list[float] = []
        positive: list[bool] = []
        tracks: dict[tuple[str, int], list[float]] = {}
        for r in recs:
            for key, (_, s) in sorted(r.observations.items()):
                scores.append(s)
                positive.append(bool(self._ood_lut[key & 0xFFFF]))
                tracks.setdefault((r.sequence, key), []).append(s)
        t_keys = sorted(tracks)
        t_scores = [_fmean(tracks[k]) for k in t_keys]
        t_pos = [bool(self._ood_lut[k & 0xFFFF]) for _, k in t_keys]
        return {
            "min_points": self.config.min_points,
            "observations": _separation(scores, positive, self.config.tpr, "object observations"),
            "tracks": _separation(t_scores, t_pos, self.config.tpr, "object tracks"),  # type: ignore[arg-type]
        }
