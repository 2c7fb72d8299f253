"""The one interface every inference backend implements (:class:`Backend`)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.models.errors import InferenceInputError
from ood_perception.models.spec import ModelSpec, read_verified


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

    def infer(self, inputs: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` (the spec's input names -> float arrays with a batch axis).

        Args:
            outputs: the output names wanted (default: all). Backends that can run part of the graph
                compute only what these need (ONNX Runtime: a pruned copy of the graph, built once per
                subset; the fused maps alone skip both unimodal heads); the others compute every
                output and return the subset. Values are the same either way (tested).

        Returns a dict with the requested outputs, by default every output declared in
        ``model.json`` (for segmentation: ``class_map`` int64 ``[B, H, W]``, ``score_map`` float32
        ``[B, H, W]`` and the unimodal ``camera_*`` / ``lidar_*`` maps).

        Raises:
            InferenceInputError: an input is missing, unexpected, or of the wrong rank/shape, or an
                output name is not one of the model's.
        """
        arrays = self.check_inputs(inputs)
        if outputs is None:
            names = list(self.spec.output_names)
            got = self._run(arrays)
        else:
            names = list(dict.fromkeys(outputs))
            unknown = [n for n in names if n not in self.spec.output_names]
            if unknown or not names:
                raise InferenceInputError(f"model has no output(s) {unknown or names}; its outputs: {self.spec.output_names}")
            got = self._run_subset(arrays, names) if len(names) < len(self.spec.output_names) else self._run(arrays)
        return {name: got[name] for name in names}

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run validated, contiguous float32 inputs; return all outputs by name."""

    def _run_subset(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Outputs ``names`` only (a strict subset); by default all are computed (override to prune)."""
        return self._run(inputs)

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

    def has_file(self, role: str) -> bool:
        """Whether ``model.json`` lists a file for ``role`` (e.g. ``object_bank``)."""
        return role in self.spec.files

    def file_bytes(self, role: str) -> bytes:
        """The bytes of the model directory's file ``role``, checked against its sha256 in
        ``model.json`` (ModelNotFoundError / ModelCorruptError / ModelMismatchError otherwise)."""
        return read_verified(self.model_dir, self.spec, role)

    def close(self) -> None:
        """Release resources (sessions, engines, GPU memory). Safe to call twice."""
        self.closed = True

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_dir={str(self.model_dir)!r}, device={self.device!r})"
