"""Calibration of the decisions to a false-alert budget (``ood-perception calibrate``), without ROS or data I/O.

The caller runs the fusion pipeline once over validation drives (``commands/calibrate.py``) and
hands over, per frame, a :class:`CalibrationFrame`: its drive, stamp, the object candidates
(centroid and region score, which do not depend on any threshold), a sample of its pixel scores
and how many labelled anomaly pixels it has. :func:`calibrate_decisions` then picks, in order:

1. **pixel threshold**: the ``1 - pixel_fpr`` quantile of the scores of the anomaly-free pixels
   (``pixel_fpr`` = 5% by default, the rule ``export`` applies at 95% TPR, on the calibration data);
2. **scene-shift fraction**: ``shift_margin`` (1.5) times the largest share of anomalous pixels
   of any validation frame at that threshold, clipped to ``shift_bounds`` ([0.25, 0.95]): no
   validation frame (all in the model's domain) is a scene shift, with room to spare;
3. **region threshold, track window and persistence**: for each window in ``windows`` and each
   k-of-n in ``persistence`` (ALERT when k of the last n frames hold evidence; the given alert
   settings' k-of-n when they set one) the tracker
   (:class:`~ood_perception.pipeline.objects.ObjectTracker`) and the alert state machine
   (:class:`~ood_perception.pipeline.alerts.AlertStateMachine`, with the given hysteresis and
   cooldown) are replayed over the drives for every candidate threshold (the frames' evidence
   scores), and the smallest threshold whose share of anomaly-free frames in ALERT is <= ``budget``
   (default 1%) is kept, never below ``min_region_threshold``. When the data holds frames with at
   least ``positive_pixels`` labelled anomaly pixels, the combination whose threshold puts most of
   them in ALERT wins (ties: the larger k, then the window closest to ``default_window``); without
   them ``default_window`` and the default 3 of 5. By default the only option is 3 of 5: choosing
   among 2 of 3 and 3 of 5 picked 2 of 3 on the validation drives of the default model and lowered
   the recall on held-out drives (docs/model.md, "Persistence"); 1 of 1 (a one-frame blip raises an
   ALERT) wins on exposure-type validation drives, whose anomalies score high on every frame, and
   does not transfer to types the model never saw.

The budget is met on the frames of the **anomaly-free drives** (drives without any labelled
anomaly pixel), as the budget is stated ("<= 1% of the frames of anomaly-free driving in ALERT").
Frames of drives with anomalies are used to choose the window only: there, an ALERT correctly
raised on an object is held on by the hysteresis (``clear_frames``) after the object left the view,
which :class:`ood_perception.evaluation.AlertEvaluator` counts as anomaly-free frames in ALERT;
that share is reported beside (``anomaly_free_frames_all_drives_alert_share``). Without any
anomaly-free drive, all anomaly-free frames make the budget set. The result records the values
and their validation figures (``validation``), for ``model.json`` ``decision``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ood_perception.pipeline.alerts import DEFAULT_PERSISTENCE, AlertConfig, AlertStateMachine
from ood_perception.pipeline.objects import ObjectConfig, ObjectTracker


@dataclass
class CalibrationFrame:
    """What calibration keeps of one validation frame.

    Attributes:
        sequence: drive name (tracks and alert history restart per drive).
        stamp: [s].
        centroids: ``[K, 3]`` object candidate centroids (LiDAR frame).
        scores: ``[K]`` their region scores.
        pixel_scores: a sample of the frame's scored pixel scores (anomaly pixels excluded).
        anomaly_pixels: labelled anomaly pixels of the frame (0 = anomaly-free).
        all_pixel_scores: optional sample of all scored pixel scores (for the scene-shift fraction;
            default: ``pixel_scores``).
    """

    sequence: str
    stamp: float
    centroids: np.ndarray
    scores: np.ndarray
    pixel_scores: np.ndarray
    anomaly_pixels: int = 0
    all_pixel_scores: np.ndarray | None = None


@dataclass
class _Cand:
    centroid: tuple[float, float, float]
    score: float
    track_id: int = -1
    track_score: float = 0.0
    track_hits: int = 0


@dataclass(frozen=True)
class CalibrationSettings:
    """Knobs of :func:`calibrate_decisions` (module docstring)."""

    budget: float = 0.01
    pixel_fpr: float = 0.05
    windows: tuple[int, ...] = (1, 2, 3, 4, 5)
    persistence: tuple[tuple[int, int], ...] = ((3, 5),)
    default_window: int = 3
    min_region_threshold: float = 0.05
    shift_margin: float = 1.5
    shift_bounds: tuple[float, float] = (0.25, 0.95)
    positive_pixels: int = 200
    alert: AlertConfig = field(default_factory=lambda: AlertConfig(raise_k=0, raise_n=0))  # k-of-n: chosen
    objects: ObjectConfig = field(default_factory=ObjectConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.budget < 1:
            raise ValueError(f"budget must be in [0, 1), got {self.budget}")
        if not 0 < self.pixel_fpr < 1:
            raise ValueError(f"pixel_fpr must be in (0, 1), got {self.pixel_fpr}")
        if not self.windows or any(w < 1 for w in self.windows):
            raise ValueError(f"windows must be a non-empty list of integers >= 1, got {self.windows}")
        if not self.persistence or any(not 1 <= k <= n for k, n in self.persistence):
            raise ValueError(f"persistence must be a non-empty list of (k, n) with 1 <= k <= n, got {self.persistence}")
        lo, hi = self.shift_bounds
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"shift_bounds must satisfy 0 < lo <= hi <= 1, got {self.shift_bounds}")


def _sequences(frames: Sequence[CalibrationFrame]) -> list[list[CalibrationFrame]]:
    by: dict[str, list[CalibrationFrame]] = {}
    for f in frames:
        by.setdefault(f.sequence, []).append(f)
    return [sorted(v, key=lambda f: f.stamp) for _, v in sorted(by.items())]


def evidence_scores(drives: list[list[CalibrationFrame]], objects: ObjectConfig) -> list[np.ndarray]:
    """Per drive, each frame's evidence score (the highest track score; 0 without candidates)
    under the tracker of ``objects`` (its ``track_window``)."""
    out = []
    for frames in drives:
        tracker = ObjectTracker(objects)
        e = np.zeros(len(frames))
        for i, f in enumerate(frames):
            cands = [_Cand(tuple(float(x) for x in c), float(s)) for c, s in zip(f.centroids, f.scores, strict=True)]
            tracker.update(f.stamp, cands)  # type: ignore[arg-type]  # duck-typed: centroid, score, track_*
            e[i] = max((c.track_score for c in cands), default=0.0)
        out.append(e)
    return out


def alert_frames(drives: list[list[CalibrationFrame]], evidence: list[np.ndarray], threshold: float,
                 alert: AlertConfig) -> list[np.ndarray]:
    """Per drive, whether each frame is in ALERT when frames with evidence >= ``threshold`` are
    anomalous (the fusion pipeline's state machine)."""
    out = []
    for frames, e in zip(drives, evidence, strict=True):
        sm = AlertStateMachine(alert)
        out.append(np.array([sm.step(f.stamp, bool(x >= threshold)) for f, x in zip(frames, e, strict=True)], bool))
    return out


def budget_alert_counts(drives: list[list[CalibrationFrame]], evidence: list[np.ndarray], selected: np.ndarray,
                        thresholds: np.ndarray, alert: AlertConfig) -> np.ndarray:
    """For each threshold, how many ``selected`` frames (a mask over the drives' frames in order)
    are in ALERT: ``alert_frames(...)[selected].sum()`` for every threshold at once.

    A drive's anomalous frames (``evidence >= threshold``) change only where the threshold passes
    one of its own evidence values, so each drive's state machine is run once per distinct value
    (<= its frame count) instead of once per threshold (thousands: every evidence value of every
    drive); same counts."""
    totals = np.zeros(len(thresholds), np.int64)
    start = 0
    for frames, e in zip(drives, evidence, strict=True):
        sel = selected[start:start + len(frames)]
        start += len(frames)
        if not sel.any():
            continue
        levels = np.unique(e)  # a threshold t in (levels[r-1], levels[r]] flags e >= levels[r]
        counts = np.zeros(len(levels) + 1, np.int64)  # the last regime: above every value, no frame flagged
        for r, level in enumerate(levels):
            (on,) = alert_frames([frames], [e], float(level), alert)
            counts[r] = int(on[sel].sum())
        totals += counts[np.searchsorted(levels, thresholds, side="left")]
    return totals


def _share(mask: np.ndarray, sel: np.ndarray) -> float | None:
    return float(mask[sel].mean()) if sel.any() else None


def calibrate_decisions(frames: Sequence[CalibrationFrame], settings: CalibrationSettings | None = None) -> dict[str, Any]:
    """Pick the pixel threshold, scene-shift fraction, region threshold and track window (module
    docstring). Returns the ``model.json`` ``decision`` block: the values plus ``budget``,
    ``alert`` (the k-of-n chosen, with the hysteresis used) and ``validation`` figures.

    Raises:
        ValueError: no frames, no anomaly-free frame, or no scored pixel.
    """
    cfg = settings or CalibrationSettings()
    if not frames:
        raise ValueError("no calibration frames")
    drives = _sequences(frames)
    flat = [f for d in drives for f in d]
    apx = np.array([f.anomaly_pixels for f in flat])
    free = apx == 0
    if not free.any():
        raise ValueError("no anomaly-free frame in the calibration data: the false-alert budget cannot be met on it")
    clean_drive = np.concatenate([np.full(len(d), all(f.anomaly_pixels == 0 for f in d)) for d in drives])
    budget_set = clean_drive if clean_drive.any() else free
    positive = apx >= cfg.positive_pixels

    pix = np.concatenate([np.asarray(f.pixel_scores, np.float64).ravel() for f in flat])
    pix = pix[np.isfinite(pix)]
    if pix.size == 0:
        raise ValueError("no scored pixel in the calibration data")
    pixel_threshold = float(np.quantile(pix, 1.0 - cfg.pixel_fpr))

    fractions = []
    for f in flat:
        s = np.asarray(f.all_pixel_scores if f.all_pixel_scores is not None else f.pixel_scores, np.float64).ravel()
        s = s[np.isfinite(s)]
        fractions.append(float((s >= pixel_threshold).mean()) if s.size else 0.0)
    lo, hi = cfg.shift_bounds
    shift = float(min(max(max(fractions) * cfg.shift_margin, lo), hi))

    options = ([(cfg.alert.raise_k, cfg.alert.raise_n)] if cfg.alert.persistence_set
               else [tuple(map(int, kn)) for kn in cfg.persistence])
    table = []
    for w in cfg.windows:
        objects = replace(cfg.objects, track_window=int(w))
        evidence = evidence_scores(drives, objects)
        e_all = np.concatenate(evidence)
        candidates = np.unique(np.r_[e_all[e_all >= cfg.min_region_threshold], cfg.min_region_threshold])
        candidates = np.r_[candidates, math.nextafter(float(e_all.max(initial=0.0)), math.inf)]
        for k, n in options:
            alert_cfg = replace(cfg.alert, raise_k=k, raise_n=n)
            # the smallest candidate whose share of budget frames in ALERT is within the budget; the
            # last candidate is above every evidence score (no ALERT at all), so one always is
            shares = budget_alert_counts(drives, evidence, budget_set, candidates, alert_cfg) / budget_set.sum()
            tau = float(candidates[int(np.flatnonzero(shares <= cfg.budget)[0])])
            alert = np.concatenate(alert_frames(drives, evidence, tau, alert_cfg))
            chosen = (tau, float(alert[budget_set].mean()), _share(alert, positive), float(alert[free].mean()))
            table.append({"track_window": int(w), "raise_k": k, "raise_n": n, "region_threshold": chosen[0],
                          "anomaly_free_alert_share": chosen[1], "positive_alert_share": chosen[2],
                          "anomaly_free_frames_all_drives_alert_share": chosen[3]})
    if positive.any():
        best = max(table, key=lambda r: (r["positive_alert_share"], r["raise_k"], -abs(r["track_window"] - cfg.default_window)))
        why = f"most frames with >= {cfg.positive_pixels} anomaly pixels in ALERT within the budget"
    else:
        default_kn = (cfg.alert.raise_k, cfg.alert.raise_n) if cfg.alert.persistence_set else DEFAULT_PERSISTENCE
        best = min(table, key=lambda r: (abs(r["track_window"] - cfg.default_window), (r["raise_k"], r["raise_n"]) != default_kn))
        why = "default window and persistence (no frame with anomalies to choose by)"
    return {
        "pixel_threshold": pixel_threshold,
        "region_threshold": best["region_threshold"],
        "track_window": best["track_window"],
        "scene_shift_fraction": shift,
        "budget": cfg.budget,
        "pixel_fpr": cfg.pixel_fpr,
        "alert": {"raise_k": best["raise_k"], "raise_n": best["raise_n"], "clear_frames": cfg.alert.clear_frames,
                  "cooldown_s": cfg.alert.cooldown_s},
        "validation": {
            "drives": len(drives), "frames": len(flat), "anomaly_free_frames": int(free.sum()),
            "budget_frames": int(budget_set.sum()),
            "budget_set": "frames of anomaly-free drives" if clean_drive.any() else "anomaly-free frames",
            "anomaly_free_frames_all_drives_alert_share": best["anomaly_free_frames_all_drives_alert_share"],
            "positive_frames": int(positive.sum()), "anomaly_free_alert_share": best["anomaly_free_alert_share"],
            "positive_alert_share": best["positive_alert_share"], "window_choice": why, "windows": table,
            "max_anomalous_fraction": float(max(fractions)), "pixels": int(pix.size),
        },
    }
