"""Frame pipelines without ROS: synchronisation, preprocessing, inference, masks, regions, alerts.

The ROS nodes (:mod:`ood_perception.ros`) and rosbag replay call these same objects, so replay
equals live. Nothing here imports rclpy. Heavy modules (open3d, cv2) are imported where used.
"""

from ood_perception.pipeline.alerts import (
    ALERT,
    CLEAR,
    DEGRADED,
    LEVEL_NAMES,
    WARNING,
    AlertConfig,
    AlertDecision,
    AlertStateMachine,
)
from ood_perception.pipeline.frame_handler import (
    FrameHeader,
    FrameOutputs,
    FrameSettings,
    FusionFrameProcessor,
    StartedFrame,
)
from ood_perception.pipeline.fusion import (
    Backend,
    FusionConfig,
    FusionFrame,
    FusionPipeline,
    FusionResult,
    PendingFrame,
)
from ood_perception.pipeline.regions import Region, cluster_points, mask_regions, merge_regions
from ood_perception.pipeline.stats import LatencyStats, RateMeter
from ood_perception.pipeline.sync import ApproximateSync, SyncedFrame

__all__ = [
    "ALERT",
    "CLEAR",
    "DEGRADED",
    "LEVEL_NAMES",
    "WARNING",
    "AlertConfig",
    "AlertDecision",
    "AlertStateMachine",
    "ApproximateSync",
    "Backend",
    "FrameHeader",
    "FrameOutputs",
    "FrameSettings",
    "FusionConfig",
    "FusionFrame",
    "FusionFrameProcessor",
    "FusionPipeline",
    "FusionResult",
    "LatencyStats",
    "PendingFrame",
    "RateMeter",
    "Region",
    "StartedFrame",
    "SyncedFrame",
    "cluster_points",
    "mask_regions",
    "merge_regions",
]
