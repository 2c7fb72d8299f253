"""Inference runtime: one interface over ONNX Runtime, torch and TensorRT.

``load(model_dir, backend="onnxruntime", device="cpu", **opts)`` reads and validates
``model.json``, checks the model files' sha256, and returns a :class:`Backend` whose
``infer({"image": ..., "lidar": ...})`` gives ``class_map``, ``score_map`` and the unimodal
``camera_*`` / ``lidar_*`` maps (see docs/architecture.md, "Runtime"); a ``recognition`` model
directory takes ``{"video": ..., "flow": ...}`` and gives ``class``, ``confidence``, ``score`` and the
``video_*`` / ``flow_*`` expert outputs. ``default_model_dir()`` is the small segmentation model
committed with the package (docs/model.md), ``default_recognition_model_dir()`` the small video +
optical-flow recognition model (docs/recognition_model.md).

Importing this package imports neither torch nor onnxruntime; backends import them when created.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ood_perception.models.errors import (
    BackendUnavailableError,
    InferenceInputError,
    ModelCorruptError,
    ModelError,
    ModelMismatchError,
    ModelNotFoundError,
    ParityError,
)
from ood_perception.models.spec import EMBEDDING_OUTPUT, ModelSpec, load_spec
from ood_perception.runtime.base import Backend
from ood_perception.runtime.tensorrt_backend import TensorRTBackend

#: Backend names accepted by :func:`load`.
BACKENDS = ("onnxruntime", "torch", "tensorrt")
#: Environment variable overriding :func:`default_model_dir`.
MODEL_ENV = "OOD_PERCEPTION_MODEL"
#: Environment variable overriding :func:`default_recognition_model_dir`.
RECOGNITION_MODEL_ENV = "OOD_PERCEPTION_RECOGNITION_MODEL"


def default_model_dir() -> Path:
    """Directory of the default model: ``$OOD_PERCEPTION_MODEL`` when set, else the one shipped in
    ``ood_perception/assets/default_model`` (trained on the synthetic world; see docs/model.md)."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "assets" / "default_model"


def default_recognition_model_dir() -> Path:
    """Directory of the default recognition (video + optical flow) model:
    ``$OOD_PERCEPTION_RECOGNITION_MODEL`` when set, else the one shipped in
    ``ood_perception/assets/default_recognition_model`` (trained on the synthetic action clips by
    ``ood-perception train recognition``; see docs/recognition_model.md)."""
    env = os.environ.get(RECOGNITION_MODEL_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "assets" / "default_recognition_model"


def load(
    model_dir: str | os.PathLike[str] | None = None,
    backend: str = "onnxruntime",
    device: str = "cpu",
    **opts: Any,
) -> Backend:
    """Load an exported model directory with the chosen backend.

    Args:
        model_dir: directory with ``model.json`` (None: :func:`default_model_dir`).
        backend: ``onnxruntime`` (default; CPU, CUDA provider when installed), ``torch`` or
            ``tensorrt`` (NVIDIA GPUs with the TensorRT Python package).
        device: ``cpu`` or ``cuda`` / ``cuda:N``.
        **opts: backend options: onnxruntime ``intra_op_threads``, ``inter_op_threads``,
            ``optimization``; torch ``precision`` (fp32|fp16), ``compile``, ``threads``;
            tensorrt ``precision`` (fp32|fp16|int8), ``workspace_mb``, ``cache_dir``,
            ``calibration_inputs``, ``parity_atol``, ``parity_class_agreement``.

    Raises:
        ModelNotFoundError, ModelCorruptError, ModelMismatchError: the model directory is unusable
            (each names the file and what is wrong).
        BackendUnavailableError: the backend/device cannot run here.
        ValueError: unknown backend or option value.
    """
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    spec = load_spec(model_dir)
    if backend == "onnxruntime":
        from ood_perception.runtime.onnx_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_dir, spec, device=device, **opts)
    if backend == "torch":
        from ood_perception.runtime.torch_backend import TorchBackend

        return TorchBackend(model_dir, spec, device=device, **opts)

    return TensorRTBackend(model_dir, spec, device=device, **opts)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "EMBEDDING_OUTPUT",
    "InferenceInputError",
    "MODEL_ENV",
    "ModelCorruptError",
    "ModelError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "ModelSpec",
    "ParityError",
    "RECOGNITION_MODEL_ENV",
    "default_model_dir",
    "default_recognition_model_dir",
    "load",
    "load_spec",
]
