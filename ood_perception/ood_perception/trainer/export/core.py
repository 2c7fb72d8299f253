"""Export core: any model kind traced with its scorer to one ONNX graph, checked, hashed, with ``model.json``.

:func:`export_model` traces a wrapper module (model + scorer) to ONNX with a dynamic batch axis,
checks it with ``onnx.checker`` and against the torch outputs through ONNX Runtime, writes the
torch weights beside it, hashes both and writes ``model.json``; everything lands in a temporary
directory renamed onto ``out_dir`` at the end, so a reader never sees a half-written model.
The task layers (:mod:`.segmentation`, :mod:`.recognition`) build the wrappers and the metadata.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_perception.atomic import atomic_dir
from ood_perception.models.spec import (
    FORMAT_VERSION,
    SPEC_NAME,
    FileRef,
    ModelSpec,
    TensorSpec,
    sha256_bytes,
    write_spec,
)

ONNX_NAME = "model.onnx"
TORCH_NAME = "model.pt"
#: Default ONNX opset (ONNX Runtime >= 1.14 and TensorRT >= 8.6 read it).
DEFAULT_OPSET = 18
_NP_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64", torch.int32: "int32"}


def export_model(
    module: nn.Module,
    example_inputs: dict[str, torch.Tensor],
    output_names: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    kind: str,
    meta: dict[str, Any],
    torch_payload: dict[str, Any] | None = None,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    parity_atol: float = 1e-4,
    overwrite: bool = True,
    extra_files: dict[str, tuple[str, bytes]] | None = None,
) -> ModelSpec:
    """Export ``module`` to ``out_dir/model.onnx`` and write ``out_dir/model.json``.

    Args:
        module: the wrapper (model + scorer) whose ``forward(*example_inputs.values())`` returns a
            tuple of tensors in ``output_names`` order. Put in eval mode here.
        example_inputs: input name -> example tensor (batch axis first), in forward-argument order.
        output_names: names of the forward outputs.
        out_dir: model directory to create (replaced atomically when it exists and ``overwrite``).
        kind: ``segmentation`` or ``recognition`` (recorded in ``model.json``).
        meta: the other ``model.json`` fields (class_names, colors, input_size, mean, std, score,
            threshold, calibration, provenance; unknown keys are kept).
        torch_payload: weights for the torch backend, saved as ``model.pt`` (tensors, numbers,
            strings, lists and dicts only, so it loads with ``weights_only=True``). None: no torch file.
        dynamic_batch: make axis 0 of every input and output symbolic (``batch``).
        opset: ONNX opset version.
        exporter: ``torchscript`` (``torch.onnx.export(dynamo=False)``, fast, the default) or
            ``dynamo`` (the torch.export based exporter; needs onnxscript).
        parity_atol: max |torch - ONNX Runtime| allowed on float outputs for the example inputs;
            integer outputs (class maps) may differ on at most 0.1% of elements (argmax ties).
        overwrite: replace an existing ``out_dir``; otherwise refuse with FileExistsError.
        extra_files: role -> (file name, bytes) of more files to store and hash (e.g.
            ``calib_inputs``: ID frames for TensorRT calibration).

    Returns:
        The written :class:`ModelSpec`.
    """
    import onnx  # lazy: onnx is heavy to import and only this path needs it

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    input_names = list(example_inputs)
    args = tuple(example_inputs[n] for n in input_names)
    with torch.no_grad():
        reference = module(*args)
    if isinstance(reference, torch.Tensor):
        reference = (reference,)
    if len(reference) != len(output_names):
        raise ValueError(f"module returns {len(reference)} outputs but {len(output_names)} output names were given")

    with atomic_dir(out_dir) as tmp:
        onnx_path = tmp / ONNX_NAME
        _torch_to_onnx(module, args, input_names, list(output_names), onnx_path, dynamic_batch, opset, exporter)
        model_proto = onnx.load(str(onnx_path))
        onnx.checker.check_model(model_proto, full_check=True)
        onnx_bytes = onnx_path.read_bytes()
        _check_onnx_parity(onnx_bytes, example_inputs, list(output_names), reference, parity_atol)

        files = {"onnx": FileRef(ONNX_NAME, sha256_bytes(onnx_bytes))}
        if torch_payload is not None:
            buf = io.BytesIO()
            torch.save(torch_payload, buf)
            (tmp / TORCH_NAME).write_bytes(buf.getvalue())
            files["torch"] = FileRef(TORCH_NAME, sha256_bytes(buf.getvalue()))
        for role, (name, blob) in (extra_files or {}).items():
            if role in files or Path(name).name != name or name in (SPEC_NAME, ONNX_NAME, TORCH_NAME):
                raise ValueError(f"extra file {role!r} -> {name!r} clashes with the model files or is not a plain name")
            (tmp / name).write_bytes(blob)
            files[role] = FileRef(name, sha256_bytes(blob))

        batch_dim: int | str = "batch" if dynamic_batch else int(args[0].shape[0])
        inputs = [
            TensorSpec(n, _NP_DTYPES.get(t.dtype, str(t.dtype).replace("torch.", "")), (batch_dim, *t.shape[1:]))
            for n, t in example_inputs.items()
        ]
        outputs = [
            TensorSpec(n, _NP_DTYPES.get(t.dtype, str(t.dtype).replace("torch.", "")), (batch_dim, *t.shape[1:]))
            for n, t in zip(output_names, reference, strict=True)
        ]
        meta = dict(meta)
        provenance = dict(meta.pop("provenance", {}) or {})
        provenance.setdefault("exported_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        provenance.setdefault("export_command", " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
        provenance.setdefault(
            "versions",
            {
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "python": platform.python_version(),
                "opset": opset,
                "exporter": exporter,
            },
        )
        known = set(ModelSpec.__dataclass_fields__) - {"extra", "kind", "files", "inputs", "outputs", "format_version"}
        spec = ModelSpec(
            kind=kind,
            files=files,
            inputs=inputs,
            outputs=outputs,
            class_names=list(meta.pop("class_names")),
            colors=[list(map(int, c)) for c in meta.pop("colors", [])],
            input_size=list(map(int, meta.pop("input_size", []))),
            mean=list(map(float, meta.pop("mean", []))),
            std=list(map(float, meta.pop("std", []))),
            score=dict(meta.pop("score")),
            threshold=meta.pop("threshold", None),
            calibration=dict(meta.pop("calibration", {}) or {}),
            provenance=provenance,
            outlier_types=meta.pop("outlier_types", None),
            format_version=FORMAT_VERSION,
            extra={k: v for k, v in meta.items() if k not in known},
        )
        ModelSpec.from_dict(spec.to_dict(), source=tmp / SPEC_NAME)  # validate before writing
        write_spec(tmp / SPEC_NAME, spec)
    return spec


def _torch_to_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    dynamic_batch: bool,
    opset: int,
    exporter: str,
) -> None:
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if exporter == "torchscript":
            dyn = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
            torch.onnx.export(
                module, args, str(path), input_names=input_names, output_names=output_names,
                dynamic_axes=dyn, opset_version=opset, dynamo=False, do_constant_folding=True,
            )
        else:
            shapes = None
            if dynamic_batch:
                batch = torch.export.Dim("batch", min=1, max=1024)
                shapes = {n: {0: batch} for n in input_names}
            program = torch.onnx.export(
                module, args, None, input_names=input_names, output_names=output_names,
                dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False,
            )
            program.save(str(path))


def _check_onnx_parity(
    onnx_bytes: bytes,
    example_inputs: dict[str, torch.Tensor],
    output_names: list[str],
    reference: Sequence[torch.Tensor],
    atol: float,
) -> None:
    import onnxruntime as ort  # lazy: onnxruntime is heavy to import and only this path needs it

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    graph_inputs = sorted(i.name for i in sess.get_inputs())
    if graph_inputs != sorted(example_inputs):
        raise ValueError(
            f"the exported graph has inputs {graph_inputs}, expected {sorted(example_inputs)} "
            "(an input the module does not use is dropped by the exporter)"
        )
    feeds = {n: t.detach().cpu().numpy() for n, t in example_inputs.items()}
    got = dict(zip(output_names, sess.run(output_names, feeds), strict=True))
    for name, ref in zip(output_names, reference, strict=True):
        ref_np = ref.detach().cpu().numpy()
        out = got[name]
        if out.shape != ref_np.shape:
            raise RuntimeError(f"ONNX output {name!r} has shape {out.shape}, torch gives {ref_np.shape}")
        if np.issubdtype(ref_np.dtype, np.integer):
            frac = float(np.mean(out != ref_np))
            if frac > 1e-3:
                raise RuntimeError(f"ONNX output {name!r} differs from torch on {frac:.2%} of elements")
        else:
            diff = float(np.max(np.abs(out.astype(np.float64) - ref_np))) if out.size else 0.0
            if not diff <= atol * (1.0 + float(np.max(np.abs(ref_np))) if ref_np.size else 1.0):
                raise RuntimeError(f"ONNX output {name!r} differs from torch by {diff:.3g} (> {atol})")
