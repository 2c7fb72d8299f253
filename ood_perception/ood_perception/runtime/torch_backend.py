"""torch backend (CPU/CUDA, FP16 on CUDA, optional ``torch.compile``).

It loads ``model.pt`` written by the exporter beside ``model.onnx`` (our choice over reloading the
training checkpoint: the directory stays self-contained and carries the fitted scorer state). The
file is a plain dict loaded with ``torch.load(..., weights_only=True)`` after its sha256 check::

    {"builder": "segmentation",          # key into the builder registry below
     "model_config": {...},              # passed to ood_perception.models.build_model
     "score": {"name": ..., "params": {...}}, "unimodal_score": {"name": ..., "params": {...}} | None,
     "state_dict": {...}}                # state of the whole wrapper (model + scorers)

A builder turns the payload into the same wrapper module that was exported to ONNX
(:mod:`ood_perception.models.wrappers`), so torch and ONNX Runtime run one definition. Other model
kinds (recognition) add theirs with :func:`register_builder`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ood_perception.models import build_model
from ood_perception.models.errors import BackendUnavailableError, ModelCorruptError, ModelMismatchError
from ood_perception.models.spec import ModelSpec, read_verified
from ood_perception.runtime.base import Backend

#: builder name -> function(payload) -> wrapper nn.Module (state not yet loaded).
_BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_builder(name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
    """Register ``fn(payload) -> nn.Module`` building the wrapper for ``payload["builder"] == name``."""
    _BUILDERS[name] = fn


def _build_segmentation(payload: dict[str, Any]) -> Any:
    from ood_perception.models.wrappers import (
        ScoredSegmentation,
    )
    from ood_perception.scoring import (
        get_scorer,
    )

    model = build_model(payload["model_config"])
    score = payload["score"]
    scorer = get_scorer(score["name"], **dict(score.get("params") or {}))
    uni = payload.get("unimodal_score")
    unimodal = get_scorer(uni["name"], **dict(uni.get("params") or {})) if uni else None
    return ScoredSegmentation(model, scorer, unimodal, embedding=bool(payload.get("embedding", False)))


def _build_recognition(payload: dict[str, Any]) -> Any:
    from ood_perception.models.recognition import (
        build_recognition_model,
    )
    from ood_perception.models.wrappers import (
        ScoredRecognition,
    )
    from ood_perception.scoring import (
        get_scorer,
    )

    model = build_recognition_model(dict(payload["model_config"]))
    score = payload["score"]
    scorer = get_scorer(score["name"], **dict(score.get("params") or {}))
    uni = payload.get("unimodal_score")
    unimodal = get_scorer(uni["name"], **dict(uni.get("params") or {})) if uni else None
    return ScoredRecognition(model, scorer, unimodal)


register_builder("segmentation", _build_segmentation)
register_builder("recognition", _build_recognition)


def load_state_tolerant(module: Any, state: dict[str, Any]) -> None:
    """``module.load_state_dict(state, strict=True)`` after adopting the shape of buffers the fresh
    module holds only as placeholders (empty tensors or None: statistics filled by a scorer's
    ``fit``). Parameters and non-empty buffers must match exactly (a mismatch raises)."""
    own = module.state_dict()
    for key, value in state.items():
        owner_name, _, attr = key.rpartition(".")
        try:
            owner = module.get_submodule(owner_name) if owner_name else module
        except AttributeError:
            continue  # unexpected key: reported by the strict load below
        placeholder = attr in owner._buffers and (owner._buffers[attr] is None or owner._buffers[attr].numel() == 0)
        if placeholder and (key not in own or own[key].shape != value.shape):
            owner._buffers[attr] = value.clone()
    module.load_state_dict(state, strict=True)


class TorchBackend(Backend):
    """Runs the exported wrapper in PyTorch.

    Args:
        model_dir, spec: the model directory and its parsed ``model.json`` (must list a ``torch`` file).
        device: ``cpu`` or ``cuda`` / ``cuda:N``.
        precision: ``fp32`` or ``fp16`` (CUDA only; outputs are returned as float32 / int64).
        compile: wrap the module in ``torch.compile`` (first call slow; later calls faster on GPU).
        threads: torch intra-op threads on CPU (None: leave torch's setting).
    """

    name = "torch"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        spec: ModelSpec,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        threads: int | None = None,
    ) -> None:
        super().__init__(model_dir, spec, device)
        import torch  # lazy: torch is heavy to import and only this path needs it

        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise BackendUnavailableError(f"device {device!r} requested but torch sees no CUDA device")
        elif device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if precision == "fp16" and device == "cpu":
            raise ValueError("precision 'fp16' needs a CUDA device (CPU half convolutions are slow and inexact)")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.precision = precision
        self.compiled = bool(compile)
        path = self.model_dir / spec.files.get("torch", spec.files["onnx"]).path
        data = read_verified(self.model_dir, spec, "torch")
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelCorruptError(path, f"cannot load torch weights (weights_only=True): {exc}") from exc
        if not isinstance(payload, dict) or "builder" not in payload or "state_dict" not in payload:
            raise ModelCorruptError(path, "not an exported torch model (needs 'builder' and 'state_dict')")
        builder = _BUILDERS.get(str(payload["builder"]))
        if builder is None:
            raise ModelMismatchError(path, f"no torch builder {payload['builder']!r} (known: {sorted(_BUILDERS)})")
        module = builder(payload)
        try:
            load_state_tolerant(module, payload["state_dict"])
        except (RuntimeError, KeyError, AttributeError) as exc:
            raise ModelMismatchError(path, f"weights do not fit the model built from its config: {exc}") from exc
        module.eval().to(torch.device(device))
        if precision == "fp16":
            module.half()
        self.module = torch.compile(module) if compile else module
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._torch_device = torch.device(device)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch  # lazy: torch is heavy to import and only this path needs it

        args = [torch.from_numpy(inputs[n]).to(self._torch_device, self._dtype) for n in self.spec.input_names]
        with torch.inference_mode():
            outs = self.module(*args)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        result: dict[str, np.ndarray] = {}
        for t, value in zip(self.spec.outputs, outs, strict=True):
            result[t.name] = value.detach().to("cpu").numpy().astype(t.dtype, copy=False)
        return result

    def describe(self) -> dict[str, Any]:
        import torch  # lazy: torch is heavy to import and only this path needs it

        d = super().describe()
        d.update(precision=self.precision, compiled=self.compiled, torch_version=torch.__version__)
        if self.device.startswith("cuda"):
            d["gpu"] = torch.cuda.get_device_name(self._torch_device)
        return d

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
