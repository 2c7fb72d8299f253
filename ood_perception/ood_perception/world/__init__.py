"""The synthetic driving world: procedural streets ray-cast with Open3D into camera + LiDAR frames.

* :mod:`~ood_perception.world.labels`: label space (SemanticKITTI ids + anomaly ids 200..209).
* :mod:`~ood_perception.world.config`: the knobs (:class:`WorldConfig`), incl. difficulty.
* :mod:`~ood_perception.world.scenario`: dataset/sequence planning (:func:`plan_dataset`).
* :mod:`~ood_perception.world.meshes`: object meshes with per-triangle materials.
* :mod:`~ood_perception.world.render`: :class:`SequenceRenderer` (camera, LiDAR, weather).
* :mod:`~ood_perception.world.synth`: :func:`generate_dataset` (files, optional rosbag2).
* ``clips``: short video clips for recognition (separate room).

Names are imported lazily so that ``import ood_perception.world.clips`` does not load Open3D.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WorldConfig": "config", "CameraConfig": "config", "LidarConfig": "config", "AnomalyConfig": "config",
    "WEATHERS": "config", "ANOMALY_TYPES": "labels", "world_dataset_config": "labels",
    "plan_dataset": "scenario", "DatasetPlan": "scenario", "SequencePlan": "scenario",
    "SequenceRenderer": "render", "camera_calibration": "render", "generate_dataset": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
