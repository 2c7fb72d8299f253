"""Alert-level and component metrics of a replay: what the driver sees, judged against the labels.

:class:`AlertMetrics` is fed once per processed frame with pixel labels (by
:func:`ood_perception.replay.engine.replay_bag`) and pooled over bags with :meth:`AlertMetrics.merge`,
like :class:`~ood_perception.evaluation.segmentation.MetricsAccumulator`. It holds

* an :class:`~ood_perception.evaluation.AlertEvaluator` (one sequence per bag): the frame score
  (``FusionResult.frame_score``, the published ``OodAlert.score``), the alert level and the stamp of
  every frame, the raw pixel labels at camera resolution, the pixel instance ids when the label
  source has them, and the raw labels and scores of the points the pipeline scored
  (``FusionResult.in_view``, ``point_scores``; NaN = occluded);
* a SegmentMeIfYouCan :class:`~ood_perception.evaluation.ComponentAccumulator` on the **published**
  ``ood/mask`` (the pipeline's calibrated threshold, not the benchmark's oracle best-F1
  threshold), with the anomaly track's size filters scaled to the camera resolution; void pixels
  (neither an in-distribution class nor an anomaly: the rule of
  :func:`~ood_perception.evaluation.segmentation.labelled`) are ignored. Frames the pipeline could
  not score (no mask) are left out of the component metrics (counted in ``skipped``); they stay in
  the alert evaluation as unscored frames.

Objects: with pixel instance ids (a SemanticKITTI-layout label folder written by
``ood-perception synth``, ``image_2_instance``) each anomaly instance is an object; the bag's
``camera/labels`` topic carries semantic ids only, so without them every anomaly class of a frame
is one object (instance 0). ``result()["alerts"]["objects_from"]`` says which was used.

Known-class objects (for the object-score separation) are the SemanticKITTI *thing* ids
the dataset's label map names and does not list as anomalies
(:func:`~ood_perception.evaluation.known_thing_ids`). Each is scored by the score the node uses for
objects on frames decided on objects (``FusionResult.by_objects``: the track score of the candidate
holding most of its points, 0 when none holds >= 5,
:func:`~ood_perception.evaluation.candidate_object_scores`), else by its mean point score
(``result()["alerts"]["object_scores_from"]`` says which).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ood_perception.evaluation import (
    AlertEvaluator,
    ComponentAccumulator,
    ComponentConfig,
    candidate_object_scores,
    known_thing_ids,
)
from ood_perception.evaluation.alerts import CANDIDATE_MIN_SHARED_POINTS
from ood_perception.evaluation.segmentation import labelled, pixel_truth
from ood_perception.geometry.inputs import resize_labels

#: ``objects_from`` values of :meth:`AlertMetrics.result`.
OBJECTS_FROM_INSTANCES = "pixel instance ids (label folder image_2_instance)"
OBJECTS_FROM_CLASSES = ("semantic class (no pixel instance ids: the bag's camera/labels topic carries semantic ids "
                        "only; pass --labels DATASET for instances): every anomaly class of a frame is one object")
OBJECTS_FROM_MIXED = "mixed: pixel instance ids where the label source had them, else one object per anomaly class"
#: ``object_scores_from`` values of :meth:`AlertMetrics.result`.
OBJECT_SCORES_FROM_CANDIDATES = ("the object decisions' score (track score of the candidate holding most of the "
                                 f"object's points; 0 when none holds >= {CANDIDATE_MIN_SHARED_POINTS})")
OBJECT_SCORES_FROM_POINTS = "mean point score (frames decided on pixels)"


class AlertMetrics:
    """Alert evaluator + component accumulator of one bag (or, merged, of several).

    Args:
        dataset_config: :class:`~ood_perception.data.DatasetConfig` of the raw label ids.
        sequence: the bag's name in the alert evaluation (object identity is per sequence).
        threshold: the pipeline's frame-score threshold (drawn on the timeline).
    """

    def __init__(self, dataset_config: Any, sequence: str, threshold: float | None = None) -> None:
        self.config = dataset_config
        self.sequence = str(sequence)
        self.threshold = None if threshold is None else float(threshold)
        self.alerts: AlertEvaluator | None = (
            AlertEvaluator(dataset_config.ood_ids, known_thing_ids(dataset_config),
                           excluded_ids=dataset_config.excluded_ids) if dataset_config.ood_ids else None)
        self.components: ComponentAccumulator | None = None
        self.frames_with_instances = 0
        self.frames_without_instances = 0
        #: frames whose objects were scored by the object decisions / by their mean point score
        self.object_scores_by = {"candidates": 0, "points": 0}
        self.skipped: dict[str, int] = {}

    # ------------------------------------------------------------------ collecting
    def add(self, result: Any, stamp_ns: int, camera_hw: tuple[int, int], pixel_raw: np.ndarray,
            pixel_instances: np.ndarray | None = None, point_labels: np.ndarray | None = None) -> None:
        """Add one frame.

        Args:
            result: the pipeline's ``FusionResult`` (``frame_score``, ``level``, ``mask``, ``point_scores``).
            stamp_ns: the frame's stamp (the published header's).
            camera_hw: camera resolution (H, W); labels of another size are resized (nearest).
            pixel_raw: raw semantic ids ``[h, w]``.
            pixel_instances: instance ids ``[h, w]`` (same size as ``pixel_raw``) or None.
            point_labels: raw labels of the points the pipeline scored (aligned with
                ``result.point_scores``) or None.
        """
        hw = (int(camera_hw[0]), int(camera_hw[1]))
        raw = np.asarray(pixel_raw)
        if raw.shape != hw:
            raw = resize_labels(raw, hw)
        inst = None
        if pixel_instances is not None:
            inst = np.asarray(pixel_instances)
            if inst.shape != hw:
                inst = resize_labels(inst, hw)
        if self.alerts is not None:
            scores = np.asarray(result.point_scores)
            labels = None if point_labels is None else np.asarray(point_labels)
            if labels is not None and labels.shape[0] != scores.shape[0]:
                labels = None
                self._skip("points_not_aligned")
            by_candidates = labels is not None and bool(getattr(result, "by_objects", False))
            self.alerts.add(self.sequence, stamp_ns * 1e-9, int(result.level), float(result.frame_score),
                            pixel_labels=raw, pixel_instances=inst,
                            point_labels=labels, point_scores=None if labels is None else scores,
                            object_scores=candidate_object_scores(result.objects, labels) if by_candidates else None)
            if labels is not None:
                self.object_scores_by["candidates" if by_candidates else "points"] += 1
            if inst is None:
                self.frames_without_instances += 1
            else:
                self.frames_with_instances += 1
        if result.mask is None:
            self._skip("components_unscored_frames")
            return
        if tuple(result.mask.shape) != hw:  # the mask is at camera resolution; never expected
            self._skip("components_mask_size")
            return
        train, ood = pixel_truth(raw, hw, self.config)
        cfg = ComponentConfig.scaled_to(hw)
        if self.components is None:
            self.components = ComponentAccumulator(cfg)
        elif self.components.config != cfg:  # the camera changed size within the bag
            self._skip("components_camera_size_changed")
            return
        self.components.add(result.mask > 0, ood, ignore=~labelled(train, ood))

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def merge(self, other: AlertMetrics) -> None:
        """Pool ``other`` (another bag, another sequence name) into this one.

        Raises:
            ValueError: the two saw the same frames (same sequence name) or different camera sizes.
        """
        if other.alerts is not None:
            if self.alerts is None:
                self.alerts = AlertEvaluator(other.alerts.ood_ids, other.alerts.known_ids, other.alerts.config,
                                             other.alerts.excluded_ids)
            self.alerts.merge(other.alerts)
        if other.components is not None:
            if self.components is None:
                self.components = ComponentAccumulator(other.components.config)
            self.components.merge(other.components)
        self.frames_with_instances += other.frames_with_instances
        self.frames_without_instances += other.frames_without_instances
        for k, v in other.object_scores_by.items():
            self.object_scores_by[k] = self.object_scores_by.get(k, 0) + v
        for k, v in other.skipped.items():
            self.skipped[k] = self.skipped.get(k, 0) + v

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (shard pooling, :mod:`ood_perception.replay.state`); the dataset
        config is saved beside it by the caller and given back to :meth:`from_state`."""
        return {"sequence": self.sequence, "threshold": self.threshold,
                "alerts": None if self.alerts is None else self.alerts.state(),
                "components": None if self.components is None else self.components.state(),
                "frames_with_instances": self.frames_with_instances,
                "frames_without_instances": self.frames_without_instances,
                "object_scores_by": dict(self.object_scores_by), "skipped": dict(self.skipped)}

    @classmethod
    def from_state(cls, state: dict[str, Any], dataset_config: Any) -> AlertMetrics:
        """Inverse of :meth:`state`."""
        out = cls(dataset_config, state["sequence"], state["threshold"])
        out.alerts = None if state["alerts"] is None else AlertEvaluator.from_state(state["alerts"])
        out.components = None if state["components"] is None else ComponentAccumulator.from_state(state["components"])
        out.frames_with_instances = int(state["frames_with_instances"])
        out.frames_without_instances = int(state["frames_without_instances"])
        # states written before the object decisions' scores were used: every frame by mean point score
        out.object_scores_by = {str(k): int(v) for k, v in state.get("object_scores_by", {"candidates": 0, "points": 0}).items()}
        out.skipped = {str(k): int(v) for k, v in state["skipped"].items()}
        return out

    def renamed(self, sequence: str) -> AlertMetrics:
        """A copy whose frames belong to sequence ``sequence`` (two bags with the same file name)."""
        out = AlertMetrics(self.config, sequence, self.threshold)
        if self.alerts is not None:
            state = self.alerts.state()
            for f in state["frames"]:
                f["sequence"] = out.sequence
            out.alerts = AlertEvaluator.from_state(state)
        if self.components is not None:
            out.components = ComponentAccumulator.from_state(self.components.state())
        out.frames_with_instances, out.frames_without_instances = self.frames_with_instances, self.frames_without_instances
        out.object_scores_by = dict(self.object_scores_by)
        out.skipped = dict(self.skipped)
        return out

    # ------------------------------------------------------------------ results
    def object_scores_from(self) -> str | None:
        """What scored the objects of the object-score separation (None before a frame with point labels)."""
        by = self.object_scores_by
        if by.get("candidates") and by.get("points"):
            return (f"mixed: {OBJECT_SCORES_FROM_CANDIDATES} on {by['candidates']} frames, "
                    f"{OBJECT_SCORES_FROM_POINTS} on {by['points']}")
        if by.get("candidates"):
            return OBJECT_SCORES_FROM_CANDIDATES
        return OBJECT_SCORES_FROM_POINTS if by.get("points") else None

    def objects_from(self) -> str | None:
        """How anomaly objects were told apart (None before any frame)."""
        if self.frames_with_instances and self.frames_without_instances:
            return OBJECTS_FROM_MIXED
        if self.frames_with_instances:
            return OBJECTS_FROM_INSTANCES
        return OBJECTS_FROM_CLASSES if self.frames_without_instances else None

    def result(self) -> dict[str, Any]:
        """``{"alerts": {frames, frame, false_alerts, objects, object_scores, config, objects_from, ...},
        "components": {...}}``; each ``{"available": False, "reason": ...}`` when it cannot be computed.
        Deterministic: depends only on the frames added."""
        if self.alerts is None:
            alerts: dict[str, Any] = {"available": False, "reason": "the dataset config lists no anomaly ids (ood_ids)"}
        elif not self.alerts.records:
            alerts = {"available": False, "reason": "no frame with pixel labels"}
        else:
            alerts = {"available": True, **self.alerts.result(), "objects_from": self.objects_from(),
                      "object_scores_from": self.object_scores_from(),
                      "frames_with_pixel_instances": self.frames_with_instances,
                      "frames_points_not_aligned": self.skipped.get("points_not_aligned", 0)}
        if self.components is None or not self.components.frames:
            comps: dict[str, Any] = {"available": False, "reason": "no scored frame with pixel labels"}
        else:
            comps = {"available": True, **self.components.result(),
                     "mask": "published ood/mask (the pipeline's threshold; the benchmark uses the oracle best-F1 one)"}
        comps["skipped"] = {k: v for k, v in sorted(self.skipped.items()) if k.startswith("components_")}
        return {"alerts": alerts, "components": comps}

    def summary_rows(self) -> list[tuple[str, Any]]:
        """The report's summary table rows (label, value)."""
        res = self.result()
        a, c = res["alerts"], res["components"]
        rows: list[tuple[str, Any]] = []
        if not a.get("available"):
            rows.append(("alert metrics", a.get("reason")))
        else:
            fr, fa, ob = a["frame"], a["false_alerts"], a["objects"]
            sc = fr["scores"]
            rows.append(("frames judged (with / without anomaly)", f"{fr['n_positive']} / {fr['n_negative']}"))
            if sc.get("available"):
                rows += [("frame AUROC", sc["auroc"]), ("frame AUPR (anomalous frames positive)", sc["aupr_out"]),
                         ("frame FPR95", sc["fpr95"])]
            else:
                rows.append(("frame score metrics", sc.get("reason")))
            rows += [("anomaly-free frames in ALERT", _pct(fa["frame_share"])),
                     ("false alert episodes / min of anomaly-free driving", _num(fa["episodes_per_minute"])),
                     ("false alert episodes", fa["false_episodes"])]
            for name, key in (("in view", "in_view"), (">= 200 px (acceptance)", "acceptance")):
                o = ob[key]
                t = o["seconds_to_alert"]
                rows += [(f"anomaly objects {name}: alerted / n", f"{o['alerted']} / {o['n']} ({_pct(o['recall'])})"),
                         (f"time to alert {name}: mean / max [s]", f"{_num(t['mean'])} / {_num(t['max'])}")]
            rows.append(("objects told apart by", a["objects_from"]))
            obs = a["object_scores"]["observations"]
            rows.append(("object-score AUROC (anomaly vs known, >= 10 points)",
                         obs["auroc"] if obs.get("available") else obs.get("reason")))
            rows.append(("objects scored by", a["object_scores_from"]))
        if c.get("available"):
            rows += [("component mean F1 (SMIYC)", c["f1_mean"]),
                     ("components GT / predicted", f"{c['n_gt_components']} / {c['n_pred_components']}"),
                     ("component size filters", c["provenance"])]
        else:
            rows.append(("component metrics", c.get("reason")))
        return rows


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3g}"


def pool(parts: list[AlertMetrics | None]) -> AlertMetrics | None:
    """A new :class:`AlertMetrics` pooling ``parts`` (the inputs are left unchanged); bags with the
    same sequence name are renamed ``NNN_name`` (their position), as replay names their folders."""
    have = [p for p in parts if p is not None]
    if not have:
        return None
    names = [p.sequence for p in have]
    dup = len(set(names)) != len(names)
    out = AlertMetrics(have[0].config, "pooled", have[0].threshold)
    out.alerts = None
    for i, p in enumerate(have):
        out.merge(p.renamed(f"{i:03d}_{p.sequence}" if dup else p.sequence))
    return out
