"""Alert-level extras of ``ood-perception evaluate``: component F1 and object-score separation.

Both use the **headline scorer** (the first of ``--scorers``) at camera resolution, with the
convention replay shares (:mod:`ood_perception.evaluation.segmentation`):

* ``components``: SegmentMeIfYouCan component metrics
  (:class:`~ood_perception.evaluation.ComponentAccumulator`, anomaly-track size filters scaled to
  the camera resolution) of the score map upsampled to camera resolution and binarised as the
  pipeline does (``score >= threshold``); void pixels (neither an in-distribution class nor an
  anomaly) are ignored. The threshold is a deployment threshold, not the benchmark's oracle
  best-F1 one: 95% of in-distribution pixels at or below it
  (:func:`ood_perception.metrics.calibrate_threshold`), as ``ood-perception export`` calibrates
  it, computed on the ID pixels (camera resolution) of

  1. the dataset's ``val`` split when it has one and it is not the evaluated split, at most
     :data:`MAX_THRESHOLD_FRAMES` evenly spaced frames (export's default ``max_calib_frames``);
  2. else the evaluated split itself (uses its ID labels, never its anomaly labels; the
     threshold is then the ``threshold_id`` of the pixel metrics, and the split is run through
     the model a second time for the components).

  ``components.threshold_source`` says which. (Export calibrates at the model's input resolution;
  the two thresholds differ slightly.)
* ``object_scores``: anomaly vs known-class objects (:func:`~ood_perception.evaluation.known_thing_ids`)
  with >= 10 scored LiDAR points in a frame (the points the pipeline scores: in view, not occluded),
  each scored by the mean score of its points; :class:`~ood_perception.evaluation.AlertEvaluator`'s
  ``object_scores`` (AUROC etc. per observation and per track), the same definition replay uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_perception.evaluation import AlertEvaluator, ComponentAccumulator, ComponentConfig, known_thing_ids
from ood_perception.evaluation.segmentation import labelled, pixel_truth
from ood_perception.geometry.maps import OCCLUSION_REL, OCCLUSION_TOL, occluded_points, upsample_score_map
from ood_perception.metrics import calibrate_threshold

#: Share of ID pixels at or below the component threshold (export's calibration TPR).
COMPONENT_TPR = 0.95
#: Val frames the threshold is calibrated on (evenly spaced; export's ``max_calib_frames``).
MAX_THRESHOLD_FRAMES = 64


class IdPixelScores:
    """Collects the headline scorer's scores of labelled in-distribution pixels at camera resolution
    (an ``on_frame`` hook of the evaluation loop) and calibrates the threshold."""

    def __init__(self, config: Any, scorer: str) -> None:
        self.config = config
        self.scorer = scorer
        self.scores: list[np.ndarray] = []
        self.frames = 0

    def __call__(self, index: int, sample: Any, frame: Any, maps: dict[str, np.ndarray]) -> None:
        if frame.pixel_labels is None or frame.image is None:
            return
        hw = frame.image.shape[:2]
        train, ood = pixel_truth(frame.pixel_labels, hw, self.config)
        score = upsample_score_map(maps[self.scorer], hw)
        sel = (train != 255) & ~ood & np.isfinite(score)
        self.scores.append(score[sel].astype(np.float32))
        self.frames += 1

    def threshold(self, tpr: float = COMPONENT_TPR) -> float:
        """``calibrate_threshold`` of the collected ID scores.

        Raises:
            ValueError: no ID pixel was collected.
        """
        s = np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)
        if s.size == 0:
            raise ValueError("no in-distribution pixels to calibrate the component threshold on")
        return calibrate_threshold(s, tpr=tpr)


class EvalAlertExtras:
    """Component metrics and object-score separation of one evaluation (see the module docstring).

    Args:
        config: the dataset's :class:`~ood_perception.data.DatasetConfig`.
        scorer: the headline scorer's name (key of the per-frame score maps).
    """

    def __init__(self, config: Any, scorer: str) -> None:
        self.config = config
        self.scorer = scorer
        self.threshold: float | None = None
        self.threshold_source = ""
        self.components: ComponentAccumulator | None = None
        self.skipped_components = 0
        self.objects = (AlertEvaluator(config.ood_ids, known_thing_ids(config), excluded_ids=config.excluded_ids)
                        if config.ood_ids else None)

    def set_threshold(self, threshold: float, source: str) -> None:
        """The threshold the components binarise at, and where it came from."""
        self.threshold, self.threshold_source = float(threshold), source

    def add_objects(self, index: int, sample: Any, frame: Any, maps: dict[str, np.ndarray]) -> None:
        """Hook: object observations of one frame (its scored points' raw labels and scores)."""
        if self.objects is None or frame.point_labels is None or frame.points is None:
            return
        inview = np.flatnonzero(sample.flat_index >= 0)
        if inview.size == 0 or len(frame.point_labels) != len(sample.flat_index):
            return
        pix = sample.flat_index[inview]
        visible = ~occluded_points(frame.points[inview], pix, sample.lidar[3], OCCLUSION_TOL, OCCLUSION_REL)
        labels = np.asarray(frame.point_labels)[inview[visible]]
        scores = maps[self.scorer].ravel()[pix[visible]]
        seq = str(getattr(frame, "sequence", "") or "")
        self.objects.add(seq, float(index), 0, None, anomaly_objects={}, point_labels=labels, point_scores=scores)

    def add_components(self, index: int, sample: Any, frame: Any, maps: dict[str, np.ndarray]) -> None:
        """Hook: component metrics of one frame (needs the threshold)."""
        if self.threshold is None:
            raise RuntimeError("set_threshold before adding component frames")
        if frame.pixel_labels is None or frame.image is None:
            return
        hw = frame.image.shape[:2]
        cfg = ComponentConfig.scaled_to(hw)
        if self.components is None:
            self.components = ComponentAccumulator(cfg)
        elif self.components.config != cfg:  # frames of another camera size: left out, counted
            self.skipped_components += 1
            return
        train, ood = pixel_truth(frame.pixel_labels, hw, self.config)
        score = upsample_score_map(maps[self.scorer], hw)
        pred = np.isfinite(score) & (score >= self.threshold)
        self.components.add(pred, ood, ignore=~labelled(train, ood))

    def result(self) -> dict[str, Any]:
        """``{"components": {...}, "object_scores": {...}}`` (each with ``available``)."""
        if self.components is None or not self.components.frames:
            comps: dict[str, Any] = {"available": False, "reason": "no frame with pixel labels and a threshold"}
        else:
            comps = {"available": True, **self.components.result(), "scorer": self.scorer,
                     "threshold": self.threshold, "threshold_source": self.threshold_source,
                     "mask": "score >= threshold (as the pipeline publishes ood/mask)",
                     "skipped_other_camera_size": self.skipped_components}
        if self.objects is None:
            objs: dict[str, Any] = {"available": False, "reason": "the dataset lists no anomaly ids (ood_ids)"}
        else:
            res = self.objects.result()["object_scores"]
            objs = {"available": True, "scorer": self.scorer, "known_ids": list(self.objects.known_ids), **res}
        return {"components": comps, "object_scores": objs}


def report_lines(extras: dict[str, Any]) -> list[str]:
    """The report.md section of :meth:`EvalAlertExtras.result`."""
    lines = ["## Alert-level extras (headline scorer)", ""]
    c = extras["components"]
    if c.get("available"):
        lines += [f"Component metrics (SegmentMeIfYouCan sIoU/PPV F1; mask = `{c['scorer']}` >= {c['threshold']:.4g}, "
                  f"the 95%-ID-pixel threshold of {c['threshold_source']}; size filters {c['provenance']}):", "",
                  "| mean F1 | F1@0.25 | F1@0.5 | F1@0.75 | GT components | predicted components | sIoU mean | PPV mean |",
                  "|---|---|---|---|---|---|---|---|",
                  "| " + " | ".join(_pct(c.get(k)) for k in ("f1_mean", "f1_25", "f1_50", "f1_75"))
                  + f" | {c['n_gt_components']} | {c['n_pred_components']} | {_pct(c['siou_gt_mean'])} | "
                  f"{_pct(c['ppv_mean'])} |", ""]
    else:
        lines += [f"Component metrics: {c.get('reason')}", ""]
    o = extras["object_scores"]
    if o.get("available"):
        lines += [f"Object-score separation (anomaly vs known-class objects with >= {o['min_points']} scored LiDAR "
                  "points, mean point score; %):", "", "| unit | AUROC | FPR95 | AUPR-out | n known | n anomaly |",
                  "|---|---|---|---|---|---|"]
        for unit in ("observations", "tracks"):
            m = o[unit]
            if m.get("available"):
                lines.append(f"| {unit} | {_pct(m['auroc'])} | {_pct(m['fpr95'])} | {_pct(m['aupr_out'])} | "
                             f"{m['n_id']} | {m['n_ood']} |")
            else:
                lines.append(f"| {unit} | n/a: {m.get('reason')} (n = {m.get('n')}) | | | | |")
        lines.append("")
    else:
        lines += [f"Object-score separation: {o.get('reason')}", ""]
    return lines


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"
