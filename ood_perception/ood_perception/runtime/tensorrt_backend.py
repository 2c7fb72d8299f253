"""TensorRT backend: engine built from ``model.onnx`` on the target GPU, cached, parity-checked.

TensorRT engines are not portable across GPU models or TensorRT versions, so the engine is built on
the machine that runs it (first load: tens of seconds to minutes) and cached under
``cache_dir`` keyed by (ONNX sha256, TensorRT version, GPU name, precision, batch profile, and the
calibration data for INT8). A cached engine that fails to deserialise (driver/TensorRT upgrade,
truncated file) is deleted and rebuilt. FP16/INT8 can silently wreck accuracy, so a reduced-precision
engine is compared with the FP32 ONNX Runtime reference on calibration inputs and refused
(:class:`~ood_perception.models.errors.ParityError`) when scores or classes differ beyond the
tolerance; the check result is stored beside the cached engine.

Options (``runtime.load(dir, backend="tensorrt", device="cuda", ...)``):

* ``precision``: ``fp32`` | ``fp16`` | ``int8`` (INT8 uses an entropy calibrator, TensorRT's
  ``IInt8EntropyCalibrator2``, on ``calibration_inputs``; FP16 kernels are allowed too);
* ``workspace_mb``: builder workspace (default 2048; too little makes TensorRT skip tactics);
* ``max_batch`` / ``opt_batch``: dynamic batch profile (default 4 / 1);
* ``cache_dir``: engine cache (default ``$OOD_PERCEPTION_CACHE/tensorrt`` or
  ``~/.cache/ood_perception/tensorrt``); the timing cache lives there too and speeds up rebuilds;
* ``calibration_inputs``: list of input dicts (ID frames) for INT8 calibration and the parity check
  (default: the ``calib_inputs`` file of the model directory when the exporter wrote one);
* ``parity_atol`` / ``parity_rtol`` / ``parity_class_agreement`` / ``parity_mask_agreement``:
  tolerances of the check (defaults 0.05 / 0.01 / 0.99 / 0.99);
* ``check_parity``: set False only to inspect a refused engine.

Buffers live in torch CUDA tensors (no pycuda). Written for the TensorRT 10 Python API (8.6 works
for the parts that exist there). TensorRT is not installable on the development/CI machines; the
pure parts (cache key and paths, parity comparison) are tested with numpy everywhere, the engine
path where ``import tensorrt`` works.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.atomic import atomic_write_bytes
from ood_perception.models.errors import BackendUnavailableError, ModelCorruptError, ParityError
from ood_perception.models.spec import EMBEDDING_OUTPUT, ModelSpec, read_verified
from ood_perception.runtime.base import Backend
from ood_perception.runtime.onnx_backend import OnnxRuntimeBackend

PRECISIONS = ("fp32", "fp16", "int8")
CACHE_ENV = "OOD_PERCEPTION_CACHE"


# ------------------------------------------------------------------------------------ pure parts
def default_cache_dir() -> Path:
    """``$OOD_PERCEPTION_CACHE/tensorrt`` when set, else ``~/.cache/ood_perception/tensorrt``."""
    base = os.environ.get(CACHE_ENV)
    root = Path(base) if base else Path.home() / ".cache" / "ood_perception"
    return root / "tensorrt"


def engine_cache_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    precision: str,
    profile: tuple[int, int, int] = (1, 1, 4),
    calibration_sha256: str = "",
) -> str:
    """Stable key of an engine: a hex digest over everything that makes an engine (in)valid.

    Args:
        onnx_sha256: sha256 of the ONNX file (from ``model.json``).
        trt_version: ``tensorrt.__version__``.
        gpu_name: CUDA device name (engines are specific to the GPU model).
        precision: ``fp32`` | ``fp16`` | ``int8``.
        profile: (min, opt, max) batch of the optimisation profile.
        calibration_sha256: digest of the INT8 calibration data ('' otherwise).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not onnx_sha256 or not trt_version or not gpu_name:
        raise ValueError("onnx_sha256, trt_version and gpu_name must be non-empty")
    fields_ = [onnx_sha256.lower(), trt_version, gpu_name.strip(), precision, "x".join(map(str, profile))]
    if precision == "int8":
        fields_.append(calibration_sha256)
    return hashlib.sha256("\n".join(fields_).encode()).hexdigest()


def engine_cache_path(cache_dir: str | os.PathLike[str], key: str, onnx_sha256: str, precision: str) -> Path:
    """Path of the engine file for ``key``: ``<cache_dir>/<onnx sha[:12]>-<precision>-<key[:16]>.engine``
    (readable prefix, so stale engines of a model are easy to find and delete)."""
    return Path(cache_dir) / f"{onnx_sha256[:12]}-{precision}-{key[:16]}.engine"


def inputs_digest(batches: list[dict[str, np.ndarray]]) -> str:
    """sha256 over the names, shapes and bytes of a list of input dicts (INT8 cache key part)."""
    h = hashlib.sha256()
    for b in batches:
        for name in sorted(b):
            arr = np.ascontiguousarray(b[name], dtype=np.float32)
            h.update(name.encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
    return h.hexdigest()


@dataclass
class ParityReport:
    """Result of comparing a candidate engine's outputs with the FP32 reference.

    ``outputs`` maps each output name to its statistics: float outputs ``max_abs_diff`` /
    ``mean_abs_diff`` / ``violations`` (share of elements beyond ``atol + rtol * |ref|``), integer
    outputs ``agreement`` (share of equal elements); ``mask_agreement`` (share of pixels on the
    same side of the threshold) for ``score_map`` when a threshold is known.
    """

    ok: bool
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "outputs": self.outputs, "failures": self.failures}


def compare_outputs(
    reference: list[dict[str, np.ndarray]],
    candidate: list[dict[str, np.ndarray]],
    atol: float = 0.05,
    rtol: float = 0.01,
    class_agreement: float = 0.99,
    mask_agreement: float = 0.99,
    threshold: float | None = None,
    embedding_cosine: float = 0.99,
) -> ParityReport:
    """Compare per-batch output dicts of a candidate engine with the FP32 reference.

    Float outputs pass when every element satisfies ``|c - r| <= atol + rtol * |r|``; integer
    outputs (class maps) when at least ``class_agreement`` of elements are equal (FP16 may flip
    near-ties); with ``threshold``, ``score_map`` also needs ``mask_agreement`` of pixels on the
    same side of it (the deployed anomaly mask). The ``embedding`` map (encoder features the object
    bank compares by direction) passes when its per-cell cosine similarity to the reference is at
    least ``embedding_cosine`` everywhere (an elementwise tolerance would refuse FP16 engines for
    differences that do not move a kNN distance).
    """
    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"need the same non-zero number of batches, got {len(reference)} and {len(candidate)}")
    report = ParityReport(ok=True)
    for name in reference[0]:
        ref = [np.asarray(r[name]) for r in reference]
        try:
            cand = [np.asarray(c[name]) for c in candidate]
        except KeyError:
            report.failures.append(f"{name}: missing from candidate outputs")
            continue
        if any(a.shape != b.shape for a, b in zip(ref, cand, strict=True)):
            report.failures.append(f"{name}: shapes differ {[a.shape for a in ref]} vs {[b.shape for b in cand]}")
            continue
        if name == EMBEDDING_OUTPUT:  # [B, C, h, w]: cosine per cell over C
            r3 = np.concatenate([np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]) for a in ref]).astype(np.float64)
            c3 = np.concatenate([np.moveaxis(b, 1, -1).reshape(-1, b.shape[1]) for b in cand]).astype(np.float64)
            den = np.linalg.norm(r3, axis=1) * np.linalg.norm(c3, axis=1)
            cos = np.where(den > 0, (r3 * c3).sum(axis=1) / np.maximum(den, 1e-12), 1.0)
            cos = np.where(np.isfinite(cos), cos, -1.0)
            worst = float(cos.min()) if cos.size else 1.0
            report.outputs[name] = {"min_cosine": worst, "mean_cosine": float(cos.mean()) if cos.size else 1.0}
            if worst < embedding_cosine:
                report.failures.append(f"{name}: per-cell cosine similarity down to {worst:.4f} (< {embedding_cosine})")
            continue
        r = np.concatenate([a.reshape(-1) for a in ref])
        c = np.concatenate([b.reshape(-1) for b in cand])
        if np.issubdtype(r.dtype, np.integer):
            agree = float(np.mean(r == c)) if r.size else 1.0
            report.outputs[name] = {"agreement": agree}
            if agree < class_agreement:
                report.failures.append(f"{name}: {agree:.4f} of elements agree (< {class_agreement})")
        else:
            r64, c64 = r.astype(np.float64), c.astype(np.float64)
            finite = np.isfinite(c64)
            diff = np.where(finite, np.abs(c64 - r64), np.inf)
            bad = diff > atol + rtol * np.abs(r64)
            stats = {
                "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                "mean_abs_diff": float(diff[finite].mean()) if finite.any() else float("inf"),
                "violations": float(bad.mean()) if bad.size else 0.0,
            }
            if bad.any():
                report.failures.append(
                    f"{name}: {int(bad.sum())} elements beyond atol={atol}, rtol={rtol} "
                    f"(max |diff| {stats['max_abs_diff']:.4g})"
                )
            if threshold is not None and name == "score_map":
                agree = float(np.mean((r64 > threshold) == (c64 > threshold)))
                stats["mask_agreement"] = agree
                if agree < mask_agreement:
                    report.failures.append(f"{name}: anomaly mask agrees on {agree:.4f} of pixels (< {mask_agreement})")
            report.outputs[name] = stats
    report.ok = not report.failures
    return report


# ---------------------------------------------------------------------------------- TensorRT parts
def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'tensorrt' needs the TensorRT Python package (NVIDIA GPU machines; pip install tensorrt)"
        ) from exc
    if not hasattr(trt, "Builder"):  # the PyPI placeholder/stub without the real bindings
        raise BackendUnavailableError("the installed 'tensorrt' package has no bindings (a stub?)")
    return trt


_TORCH_DTYPES: dict[str, str] = {
    "FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64", "INT8": "int8", "BOOL": "bool",
}


def _make_calibrator(trt: Any, batches: list[dict[str, np.ndarray]], cache_path: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (ID frames) from torch CUDA tensors."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.live: list[Any] = []

        def get_batch_size(self) -> int:
            return int(next(iter(batches[0].values())).shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(batches):
                return None
            b = batches[self.index]
            self.index += 1
            self.live = [torch.from_numpy(np.ascontiguousarray(b[n], np.float32)).cuda() for n in names]
            return [int(t.data_ptr()) for t in self.live]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return EntropyCalibrator()


def build_engine(
    onnx_bytes: bytes,
    precision: str = "fp32",
    workspace_mb: int = 2048,
    profile: tuple[int, int, int] = (1, 1, 4),
    timing_cache: Path | None = None,
    calibration_inputs: list[dict[str, np.ndarray]] | None = None,
    calibration_cache: Path | None = None,
    source: str | os.PathLike[str] = "model.onnx",
) -> bytes:
    """Build a serialised TensorRT engine from ONNX bytes.

    Dynamic batch axis 0 gets the (min, opt, max) ``profile``; other dims are taken from the graph.
    The timing cache file is read if present and rewritten after the build.
    """
    trt = _import_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)  # TensorRT 8.x; default in 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelCorruptError(source, f"TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    opt_profile = builder.create_optimization_profile()
    lo, opt, hi = profile
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)[1:]
        opt_profile.set_shape(tensor.name, (lo, *dims), (opt, *dims), (hi, *dims))
    config.add_optimization_profile(opt_profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not calibration_inputs:
            raise ValueError("INT8 needs calibration_inputs (ID frames)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, calibration_inputs, calibration_cache or Path(os.devnull))
        config.set_calibration_profile(opt_profile)
    cache_blob = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {source} (see the TensorRT log)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class TensorRTBackend(Backend):
    """Runs a cached (or freshly built) TensorRT engine of ``model.onnx``. See the module docstring."""

    name = "tensorrt"

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        spec: ModelSpec,
        device: str = "cuda",
        precision: str = "fp16",
        workspace_mb: int = 2048,
        max_batch: int = 4,
        opt_batch: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        calibration_inputs: list[dict[str, np.ndarray]] | None = None,
        parity_atol: float = 0.05,
        parity_rtol: float = 0.01,
        parity_class_agreement: float = 0.99,
        parity_mask_agreement: float = 0.99,
        check_parity: bool = True,
    ) -> None:
        trt = _import_tensorrt()  # first: without TensorRT, no device setting helps
        if device == "cpu":
            raise BackendUnavailableError("backend 'tensorrt' runs on CUDA devices only: set the device to cuda "
                                          "(node parameter device, or --device cuda)")
        super().__init__(model_dir, spec, device)
        import torch  # lazy: torch is heavy to import and only this path needs it

        if not torch.cuda.is_available():
            raise BackendUnavailableError("backend 'tensorrt' needs a CUDA device; torch sees none")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not 1 <= opt_batch <= max_batch:
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got {opt_batch}, {max_batch}")
        self.trt = trt
        self.precision = precision
        self._torch_device = torch.device(device)
        torch.cuda.set_device(self._torch_device)
        self.gpu_name = torch.cuda.get_device_name(self._torch_device)
        onnx_bytes = read_verified(self.model_dir, spec, "onnx")
        onnx_sha = spec.files["onnx"].sha256
        if calibration_inputs is None and "calib_inputs" in spec.files:
            calibration_inputs = load_calibration_inputs(self.model_dir, spec)
        if precision != "fp32" and check_parity and not calibration_inputs:
            raise ValueError(
                f"{precision} engines are parity-checked against FP32 on calibration inputs: pass "
                "calibration_inputs (ID frames) or export the model with --calib-data"
            )
        profile = (1, int(opt_batch), int(max_batch))
        calib_sha = inputs_digest(calibration_inputs) if precision == "int8" and calibration_inputs else ""
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.key = engine_cache_key(onnx_sha, trt.__version__, self.gpu_name, precision, profile, calib_sha)
        self.engine_path = engine_cache_path(self.cache_dir, self.key, onnx_sha, precision)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self._load_cached() if self.engine_path.is_file() else None
        self.rebuilt = self.engine is None
        if self.engine is None:
            blob = build_engine(
                onnx_bytes, precision, workspace_mb, profile,
                timing_cache=self.cache_dir / "timing.cache",
                calibration_inputs=calibration_inputs,
                calibration_cache=self.engine_path.with_suffix(".calib"),
                source=self.model_dir / spec.files["onnx"].path,
            )
            self.engine = self.runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialise the engine it just built for {self.model_dir}")
            atomic_write_bytes(self.engine_path, blob)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self._torch_device)
        self.parity: ParityReport | None = None
        if precision != "fp32" and check_parity:
            self.parity = self._check_parity(calibration_inputs or [], parity_atol, parity_rtol,
                                             parity_class_agreement, parity_mask_agreement)

    def _load_cached(self) -> Any:
        """Deserialise the cached engine; on failure delete it so the caller rebuilds."""
        try:
            engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        except Exception:  # TensorRT raises RuntimeError/TypeError variants across versions
            engine = None
        if engine is None:
            self.engine_path.unlink(missing_ok=True)
        return engine

    def _check_parity(self, batches: list[dict[str, np.ndarray]], atol: float, rtol: float,
                      class_agreement: float, mask_agreement: float) -> ParityReport:

        reference_backend = OnnxRuntimeBackend(self.model_dir, self.spec, device="cpu")
        reference = [reference_backend.infer(b) for b in batches]
        candidate = [self.infer(b) for b in batches]
        report = compare_outputs(reference, candidate, atol, rtol, class_agreement, mask_agreement,
                                 threshold=self.spec.threshold)
        meta = {"key": self.key, "gpu": self.gpu_name, "tensorrt": self.trt.__version__,
                "precision": self.precision, "parity": report.to_dict()}
        atomic_write_bytes(self.engine_path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        if not report.ok:
            self.engine_path.unlink(missing_ok=True)  # never reuse a refused engine
            raise ParityError(
                f"{self.precision} TensorRT engine for {self.model_dir} refused: differs from FP32 on "
                f"calibration inputs: {'; '.join(report.failures)}"
            )
        return report

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch  # lazy: torch is heavy to import and only this path needs it

        trt = self.trt
        ctx = self.context
        keep: list[Any] = []
        with torch.cuda.stream(self.stream):
            for name in self.spec.input_names:
                t = torch.from_numpy(inputs[name]).to(self._torch_device, non_blocking=True)
                keep.append(t)
                ctx.set_input_shape(name, tuple(t.shape))
                ctx.set_tensor_address(name, int(t.data_ptr()))
            outs: dict[str, Any] = {}
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                if self.engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                    continue
                shape = tuple(ctx.get_tensor_shape(name))
                dtype = getattr(torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name])
                outs[name] = torch.empty(shape, dtype=dtype, device=self._torch_device)
                ctx.set_tensor_address(name, int(outs[name].data_ptr()))
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        self.stream.synchronize()
        result = {}
        for t in self.spec.outputs:
            result[t.name] = outs[t.name].cpu().numpy().astype(t.dtype, copy=False)
        return result

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(precision=self.precision, tensorrt_version=self.trt.__version__, gpu=self.gpu_name,
                 engine=str(self.engine_path), rebuilt=self.rebuilt,
                 parity=self.parity.to_dict() if self.parity else None)
        return d

    def close(self) -> None:
        self.context = None
        self.engine = None


def load_calibration_inputs(model_dir: str | os.PathLike[str], spec: ModelSpec) -> list[dict[str, np.ndarray]]:
    """The ID calibration frames an export stored (``files.calib_inputs``, an ``.npz`` with one
    array per input, frames on axis 0), sha256-checked, as a list of batch-1 input dicts."""

    data = read_verified(model_dir, spec, "calib_inputs")
    path = Path(model_dir) / spec.files["calib_inputs"].path
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {n: z[n].astype(np.float32) for n in spec.input_names}
    except (KeyError, ValueError, OSError) as exc:
        raise ModelCorruptError(path, f"not a calibration .npz with inputs {spec.input_names}: {exc}") from exc
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)]
