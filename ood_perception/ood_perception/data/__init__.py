"""Dataset readers and writers: SemanticKITTI layout, CARLA-OOD (configurable schema), rosbag2.

Contracts (docs/architecture.md): :class:`DatasetConfig` (label space), :class:`Frame`,
:class:`SemanticKittiReader`, :class:`CarlaOodReader`, :func:`transforms.prepare_inputs`.
"""

from ood_perception.data.config import IGNORE_ID, SEMANTIC_KITTI, DatasetConfig
from ood_perception.data.frame import Frame
from ood_perception.data.semantickitti import SemanticKittiReader, SemanticKittiWriter
from ood_perception.geometry.inputs import prepare_inputs, resize_labels

__all__ = [
    "IGNORE_ID",
    "SEMANTIC_KITTI",
    "CarlaOodReader",
    "DatasetConfig",
    "Frame",
    "SemanticKittiReader",
    "SemanticKittiWriter",
    "prepare_inputs",
    "resize_labels",
]


def __getattr__(name: str):  # CarlaOodReader is imported lazily (it pulls in yaml parsing only on use)
    if name == "CarlaOodReader":
        from ood_perception.data.carla_ood import CarlaOodReader

        return CarlaOodReader
    raise AttributeError(name)
