"""Models room: the camera + LiDAR late-fusion segmentation network and its checkpoints.

* :class:`FusionSegNet` (``build_model(config)``): camera encoder-decoder (ResNet-34 default,
  MobileNetV2 for CPU, tiny for tests), SalsaNext-style LiDAR branch on the LiDAR projected into
  the camera plane, late fusion by concatenation, a fused head ending in a 1x1 ``classifier``,
  and camera-only / LiDAR-only heads.
* :func:`gather_point_logits`: per-point logits sampled at the projected points.
* :func:`load_checkpoint`: rebuild a model from a checkpoint (``weights_only=True``).

* the export contract shared by ``export`` and the runtime: :mod:`.spec` (``model.json``),
  :mod:`.wrappers` (model + scorer as one exportable module), :mod:`.errors` (model errors).

Recognition models live beside these (``models/recognition.py``), as do MoFE and the dual encoder.
The names below load their submodule on first use (PEP 562): the deployment path reads
:mod:`.spec` and :mod:`.errors` without importing torch, which takes ~2 s on the CPU machines.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it.
_EXPORTS = {
    "CAMERA_BACKBONES": "camera",
    "deep_sort_mobilenet_weights": "camera",
    "load_mobilenet_v2_features": "camera",
    "load_checkpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "RecognitionConfig": "recognition",
    "RecognitionNet": "recognition",
    "build_recognition_model": "recognition",
    "load_recognition_checkpoint": "recognition",
    "FusionSegNet": "segmentation",
    "ModelConfig": "segmentation",
    "build_model": "segmentation",
    "gather_point_logits": "segmentation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
