"""ONNX Runtime backend: the CPU default (CUDA execution provider when installed)."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ood_perception.models.errors import BackendUnavailableError, ModelCorruptError, ModelMismatchError
from ood_perception.models.spec import ModelSpec, read_verified
from ood_perception.runtime.base import Backend


class OnnxRuntimeBackend(Backend):
    """Runs ``model.onnx`` (model + scorer in one graph) with ONNX Runtime.

    Args:
        model_dir, spec: the model directory and its parsed ``model.json``.
        device: ``cpu`` or ``cuda`` / ``cuda:N`` (needs ``CUDAExecutionProvider``, i.e. the
            ``onnxruntime-gpu`` wheel).
        intra_op_threads: threads used inside one operator (None: ONNX Runtime's default, one per
            physical core). Set 1-2 on shared machines and in ROS nodes next to other work.
        inter_op_threads: threads across independent operators (default 1: sequential execution,
            the fastest for a single chain-like conv net).
        optimization: graph optimisation level ``disable|basic|extended|all`` (default ``all``).
        providers: explicit provider list overriding ``device`` (advanced).
        allow_spinning: let idle intra-op threads busy-wait for the next operator (ONNX Runtime's
            default: True). Off here: a spinning pool takes CPU from the callbacks, the DDS threads
            and the drivers next to the node. Measured with bench/node_world.py in two consecutive 60 s runs (fusion
            node over DDS, world frames at 10 Hz, sensors in another process, 2 cores, default 2
            intra-op threads): spinning on 94.0% of frames published, e2e p50/p95 47/103 ms; off
            96.8%, 37/50 ms, model 22 -> 18 ms. Turn it on for a core reserved for inference.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        spec: ModelSpec,
        device: str = "cpu",
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        optimization: str = "all",
        providers: list[Any] | None = None,
        allow_spinning: bool = False,
    ) -> None:
        super().__init__(model_dir, spec, device)
        import onnxruntime as ort  # lazy: onnxruntime is heavy to import and only this path needs it

        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
        if providers is None:
            providers = _providers_for(device, ort.get_available_providers())
        opts = ort.SessionOptions()
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
            opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = int(inter_op_threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = levels[optimization]
        opts.log_severity_level = 3
        self.intra_op_threads = intra_op_threads
        onnx_path = self.model_dir / spec.files["onnx"].path
        data = read_verified(self.model_dir, spec, "onnx")
        self._onnx_bytes, self._sess_options, self._providers = data, opts, providers  # for pruned subsets
        self._subsets: dict[tuple[str, ...], Any] = {}
        self._subset_lock = threading.Lock()
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own InvalidProtobuf/Fail types
            raise ModelCorruptError(onnx_path, f"ONNX Runtime cannot load the graph: {exc}") from exc
        self.providers = self.session.get_providers()
        _check_graph_io(
            onnx_path,
            spec,
            [(i.name, i.shape) for i in self.session.get_inputs()],
            [o.name for o in self.session.get_outputs()],
        )

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, inputs)
        return dict(zip(names, values, strict=True))

    def _run_subset(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Run a copy of the graph pruned to ``names`` (ONNX Runtime runs every node of a session
        whatever outputs are asked for; the pruned fused-only graph of the default model has 254 of
        348 nodes and runs ~25% faster). Built on first use per subset with the same options."""
        key = tuple(sorted(names))
        with self._subset_lock:
            session = self._subsets.get(key)
            if session is None:
                session = self._subsets[key] = self._pruned_session(list(key))
        values = session.run(list(key), inputs)
        return dict(zip(key, values, strict=True))

    def _pruned_session(self, names: list[str]) -> Any:
        import onnx  # lazy: onnx is heavy to import and only this path needs it
        import onnxruntime as ort  # lazy: onnxruntime is heavy to import and only this path needs it
        from onnx.utils import Extractor  # lazy: onnx is heavy to import and only this path needs it

        model = onnx.load_model_from_string(self._onnx_bytes)
        sub = Extractor(model).extract_model([i.name for i in self.session.get_inputs()], names)
        return ort.InferenceSession(sub.SerializeToString(), sess_options=self._sess_options, providers=self._providers)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        import onnxruntime as ort  # lazy: onnxruntime is heavy to import and only this path needs it

        d.update(
            providers=self.providers,
            onnxruntime_version=ort.__version__,
            intra_op_threads=self.intra_op_threads,
        )
        return d

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
        self._subsets = {}


def _providers_for(device: str, available: list[str]) -> list[Any]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                f"device {device!r} needs ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu); "
                f"available providers: {available}"
            )
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")


def _check_graph_io(
    path: os.PathLike[str], spec: ModelSpec, graph_inputs: list[tuple[str, list[Any]]], graph_outputs: list[str]
) -> None:
    """Raise ModelMismatchError if the graph's inputs/outputs differ from ``model.json``."""
    names = [n for n, _ in graph_inputs]
    if sorted(names) != sorted(spec.input_names):
        raise ModelMismatchError(path, f"graph inputs {names} differ from model.json inputs {spec.input_names}")
    missing = [n for n in spec.output_names if n not in graph_outputs]
    if missing:
        raise ModelMismatchError(path, f"graph lacks outputs {missing} declared in model.json (has {graph_outputs})")
    for name, shape in graph_inputs:
        want = spec.input(name).shape
        if len(shape) != len(want):
            raise ModelMismatchError(path, f"graph input {name!r} has shape {list(shape)}, model.json declares {list(want)}")
        fixed_graph = [d if isinstance(d, int) else None for d in shape]
        for axis, (w, g) in enumerate(zip(want, fixed_graph, strict=True)):
            if isinstance(w, int) and g is not None and w != g:
                raise ModelMismatchError(
                    path, f"graph input {name!r} has shape {list(shape)}, model.json declares {list(want)} (axis {axis})"
                )
