"""Replay a SemanticKITTI-layout dataset (``ood-perception synth`` output) through the fusion pipeline.

The frames come from disk instead of a rosbag: each sequence is one drive, its frames in stamp
order, the camera intrinsics and LiDAR -> camera extrinsics from its ``calib.txt`` (the same values
a ``synth --bag`` recording carries). There is no synchroniser (the dataset's frames are already
paired), so this is :meth:`FusionPipeline.process` per frame, the node's decision path without the
transport; ``ood-perception calibrate``, ``ood-perception evaluate --decisions`` (:func:`decision_metrics`)
and ``bench/alert_eval.py`` use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ood_perception.data import DatasetConfig, Frame
from ood_perception.data.semantickitti import SemanticKittiReader
from ood_perception.evaluation.timeline import LEVEL_NAMES
from ood_perception.pipeline import FusionFrame, FusionPipeline, FusionResult
from ood_perception.replay.alert_metrics import AlertMetrics, pool


def replay_dataset(
    pipeline: FusionPipeline,
    root: str | os.PathLike[str],
    sequences: Iterable[str] | None = None,
    max_frames: int | None = None,
) -> Iterator[tuple[Frame, FusionResult]]:
    """Yield ``(frame, result)`` for every frame of the dataset's sequences (all, or ``sequences``),
    sequence by sequence; the pipeline is reset at the start of each sequence (a new drive).

    Args:
        pipeline: the pipeline (its configuration is the caller's).
        root: dataset root (``dataset.yaml`` + ``sequences/``).
        sequences: sequence names to replay (default: all).
        max_frames: at most this many frames per sequence.
    """
    reader = SemanticKittiReader(root, list(sequences) if sequences is not None else None)
    current, count = None, 0
    for i in range(len(reader)):
        frame = reader[i]
        if frame.sequence != current:
            pipeline.reset()
            current, count = frame.sequence, 0
        if max_frames is not None and count >= max_frames:
            continue
        count += 1
        stamp = float(frame.stamp) if frame.stamp is not None else 0.1 * count
        result = pipeline.process(FusionFrame(stamp=stamp, image=frame.image, points=frame.points, calib=frame.calib))
        yield frame, result


def decision_metrics(
    pipeline: FusionPipeline,
    root: str | os.PathLike[str],
    sequences: Iterable[str] | None = None,
    max_frames: int | None = None,
) -> dict[str, Any]:
    """The alert-level metrics of the pipeline's decisions on a labelled dataset, as replay computes them
    for a bag (:class:`~ood_perception.replay.alert_metrics.AlertMetrics`, one sequence per drive, pooled):
    frame AUROC of ``OodAlert.score``, anomaly objects alerted and time to alert, false alerts, the
    object-score separation by the score the node uses for objects, component F1 of the published mask.
    The anomaly types the model saw in training (``model.json`` ``outlier_types``) are left out.

    Returns:
        ``AlertMetrics.result()`` (``{"alerts": ..., "components": ...}``; ``alerts.levels``: frames
        per level, as replay's metrics.json) plus ``"summary"``: the report's rows as ``[label, value]`` pairs.
    """
    seen = getattr(getattr(pipeline.backend, "spec", None), "outlier_types", None)
    cfg = DatasetConfig.from_yaml(Path(root) / "dataset.yaml").excluding(seen)  # None / []: unchanged
    parts: dict[str, AlertMetrics] = {}
    levels = dict.fromkeys(LEVEL_NAMES.values(), 0)
    for frame, result in replay_dataset(pipeline, root, sequences, max_frames):
        levels[LEVEL_NAMES[int(result.level)]] += 1
        if frame.pixel_labels is None or frame.image is None:
            continue
        am = parts.setdefault(str(frame.sequence), AlertMetrics(cfg, str(frame.sequence), result.threshold))
        point_labels = (frame.point_labels[result.in_view]
                        if frame.point_labels is not None and result.in_view is not None else None)
        am.add(result, int(round(result.stamp * 1e9)), frame.image.shape[:2], frame.pixel_labels,
               frame.pixel_instances, point_labels)
    pooled = pool(list(parts.values()))
    if pooled is None:
        return {"alerts": {"available": False, "reason": "no frame with pixel labels and an image"},
                "components": {"available": False, "reason": "no frame with pixel labels and an image"}, "summary": []}
    out = pooled.result()
    out["alerts"] = {"levels": levels, **out["alerts"]}
    out["summary"] = [[label, value] for label, value in pooled.summary_rows()]
    return out
