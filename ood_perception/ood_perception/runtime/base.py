"""The one interface every inference backend implements (:class:`Backend`)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.runtime.errors import InferenceInputError
from ood_perception.runtime.spec import ModelSpec


class Backend(ABC):
    """A loaded model that maps named numpy inputs to named numpy outputs.

    Attributes:
        name: backend name (``onnxruntime``, ``torch``, ``tensorrt``).
        model_dir: directory the model was loaded from.
        spec: the parsed ``model.json``.
        device: ``cpu`` or ``cuda`` (``cuda:N`` accepted where the backend supports it).
    """

    name: str = "base"

    def __init__(self, model_dir: str | os.PathLike[str], spec: ModelSpec, device: str = "cpu") -> None:
        self.model_dir = Path(model_dir)
        self.spec = spec
        self.device = device

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` (the spec's input names -> float arrays with a batch axis).

        Returns a dict with every output declared in ``model.json`` (for segmentation:
        ``class_map`` int64 ``[B, H, W]``, ``score_map`` float32 ``[B, H, W]`` and the unimodal
        ``camera_*`` / ``lidar_*`` maps).

        Raises:
            InferenceInputError: an input is missing, unexpected, or of the wrong rank/shape.
        """
        arrays = self.check_inputs(inputs)
        outputs = self._run(arrays)
        return {name: outputs[name] for name in self.spec.output_names}

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated, contiguous float32 inputs; return all outputs by name."""

    def describe(self) -> dict[str, Any]:
        """Human/JSON-friendly description: backend, device, model and its provenance summary."""
        return {
            "backend": self.name,
            "device": self.device,
            "model_dir": str(self.model_dir),
            "kind": self.spec.kind,
            "inputs": [t.to_dict() for t in self.spec.inputs],
            "outputs": [t.name for t in self.spec.outputs],
            "classes": len(self.spec.class_names),
            "score": self.spec.score_name,
            "threshold": self.spec.threshold,
            "onnx_sha256": self.spec.files["onnx"].sha256,
        }

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate ``inputs`` against the spec and return contiguous float32 arrays.

        Every declared input must be present with the declared rank, the same batch size across
        inputs, and every fixed dimension equal to the declared one.
        """
        if not isinstance(inputs, dict):
            raise InferenceInputError(f"inputs must be a dict of name -> array, got {type(inputs).__name__}")
        names = self.spec.input_names
        missing = [n for n in names if n not in inputs]
        unexpected = [n for n in inputs if n not in names]
        if missing or unexpected:
            raise InferenceInputError(
                f"model expects inputs {names}; missing {missing}, unexpected {unexpected}"
            )
        out: dict[str, np.ndarray] = {}
        batch: int | None = None
        for t in self.spec.inputs:
            arr = np.asarray(inputs[t.name])
            if not np.issubdtype(arr.dtype, np.floating):
                raise InferenceInputError(f"input {t.name!r} must be a float array, got dtype {arr.dtype}")
            if arr.ndim != len(t.shape):
                raise InferenceInputError(
                    f"input {t.name!r} must have {len(t.shape)} dims {list(t.shape)}, got shape {arr.shape}"
                )
            for axis, (want, got) in enumerate(zip(t.shape, arr.shape, strict=True)):
                if isinstance(want, int) and want != got:
                    raise InferenceInputError(
                        f"input {t.name!r} dim {axis} must be {want} (shape {list(t.shape)}), got shape {arr.shape}"
                    )
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise InferenceInputError(f"inputs have different batch sizes ({batch} vs {arr.shape[0]} for {t.name!r})")
            out[t.name] = np.ascontiguousarray(arr, dtype=np.float32)
        return out

    def close(self) -> None:
        """Release resources (sessions, engines, GPU memory). Safe to call twice."""
        self.closed = True

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_dir={str(self.model_dir)!r}, device={self.device!r})"
