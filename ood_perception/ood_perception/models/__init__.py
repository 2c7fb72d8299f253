"""Models room: the camera + LiDAR late-fusion segmentation network and its checkpoints.

* :class:`FusionSegNet` (``build_model(config)``): camera encoder-decoder (ResNet-34 default,
  MobileNetV2 for CPU, tiny for tests), SalsaNext-style LiDAR branch on the LiDAR projected into
  the camera plane, late fusion by concatenation, a fused head ending in a 1x1 ``classifier``,
  and camera-only / LiDAR-only heads.
* :func:`gather_point_logits`: per-point logits sampled at the projected points.
* :func:`load_checkpoint`: rebuild a model from a checkpoint (``weights_only=True``).

Recognition models live beside these (``models/recognition.py``, another room).
"""

from __future__ import annotations

from ood_perception.models.camera import (
    CAMERA_BACKBONES,
    deep_sort_mobilenet_weights,
    load_mobilenet_v2_features,
)
from ood_perception.models.checkpoint import load_checkpoint, read_checkpoint
from ood_perception.models.recognition import (  # noqa: F401
    RecognitionConfig,
    RecognitionNet,
    build_recognition_model,
    load_recognition_checkpoint,
)
from ood_perception.models.segmentation import FusionSegNet, ModelConfig, build_model, gather_point_logits

__all__ = [
    "CAMERA_BACKBONES",
    "FusionSegNet",
    "ModelConfig",
    "build_model",
    "deep_sort_mobilenet_weights",
    "gather_point_logits",
    "load_checkpoint",
    "load_mobilenet_v2_features",
    "read_checkpoint",
]
