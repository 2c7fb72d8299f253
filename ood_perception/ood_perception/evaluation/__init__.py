"""Accumulating pixel, point, frame, object, component and alert metrics over frames; used by trainer, replay and evaluate alike.

Floor 3 of the house: imports :mod:`ood_perception.metrics`, :mod:`ood_perception.geometry`,
numpy, scipy, scikit-learn and OpenCV only (matplotlib lazily, for :func:`render_timeline_png`).

* :mod:`.components`: SegmentMeIfYouCan component metrics (sIoU, PPV, F1 over tau) —
  :class:`ComponentAccumulator`, :func:`frame_components`, :class:`ComponentConfig`.
* :mod:`.alerts`: frame-score metrics, per-object alerts and time to alert, false alerts and
  episodes per minute, anomaly-vs-known object-score separation — :class:`AlertEvaluator`.
* :mod:`.timeline`: the per-frame alert timeline (:class:`TimelineEntry`) and its PNG plot.

Every accumulator has ``add`` (one frame), ``merge`` (pool another, e.g. another bag), ``state`` /
``from_state`` (JSON round trip) and ``result`` (a JSON-serialisable dict whose content does not
depend on the order frames were added in). See docs/architecture.md, "Alert-level evaluation".
"""

from ood_perception.evaluation.alerts import (
    SEMANTIC_KITTI_THING_IDS,
    AlertEvalConfig,
    AlertEvaluator,
    FrameRecord,
    candidate_object_scores,
    known_thing_ids,
    object_key,
    pixel_objects,
    point_objects,
    split_key,
)
from ood_perception.evaluation.components import (
    SMIYC_ANOMALY_TRACK,
    SMIYC_OBSTACLE_TRACK,
    SMIYC_TAUS,
    ComponentAccumulator,
    ComponentConfig,
    FrameComponents,
    frame_components,
    scaled_pixel_count,
)
from ood_perception.evaluation.timeline import (
    ALERT,
    CLEAR,
    DEGRADED,
    LEVEL_NAMES,
    WARNING,
    TimelineEntry,
    render_timeline_png,
)

__all__ = [
    "ALERT",
    "CLEAR",
    "DEGRADED",
    "LEVEL_NAMES",
    "SEMANTIC_KITTI_THING_IDS",
    "SMIYC_ANOMALY_TRACK",
    "SMIYC_OBSTACLE_TRACK",
    "SMIYC_TAUS",
    "WARNING",
    "AlertEvalConfig",
    "AlertEvaluator",
    "ComponentAccumulator",
    "ComponentConfig",
    "FrameComponents",
    "FrameRecord",
    "candidate_object_scores",
    "TimelineEntry",
    "frame_components",
    "known_thing_ids",
    "object_key",
    "pixel_objects",
    "point_objects",
    "render_timeline_png",
    "scaled_pixel_count",
    "split_key",
]
