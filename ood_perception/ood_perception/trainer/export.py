"""ONNX export: a trained model and its OOD scorer as one graph, plus ``model.json``.

Two layers:

* :func:`export_model` — the generic core for any model kind: traces a wrapper module (model +
  scorer) to ONNX with a dynamic batch axis, checks it with ``onnx.checker`` and against the torch
  outputs through ONNX Runtime, writes the torch weights beside it, hashes both and writes
  ``model.json``; everything lands in a temporary directory renamed onto ``out_dir`` at the end,
  so a reader never sees a half-written model.
* task wrappers: :func:`export_segmentation` (``FusionSegNet`` checkpoint -> ``image``/``lidar``
  inputs, six map outputs, threshold calibrated at 95% TPR on ID validation pixels) and
  :func:`export_recognition` (``RecognitionNet`` checkpoint -> ``video``/``flow`` clip inputs,
  ``class``/``confidence``/``score`` and the video-only / flow-only expert outputs, threshold at
  95% TPR on ID validation clips, optional held-out evaluation recorded in ``model.json``). Both
  have a torch builder in :mod:`ood_perception.runtime.torch_backend`.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_perception.atomic import atomic_dir
from ood_perception.data import DatasetConfig, SemanticKittiReader, prepare_inputs, resize_labels
from ood_perception.data.config import IGNORE_ID
from ood_perception.metrics import calibrate_threshold, ood_metrics
from ood_perception.models import load_checkpoint
from ood_perception.models.recognition import load_recognition_checkpoint
from ood_perception.models.spec import (
    FORMAT_VERSION,
    SPEC_NAME,
    FileRef,
    ModelSpec,
    TensorSpec,
    sha256_bytes,
    sha256_file,
    write_spec,
)
from ood_perception.models.wrappers import ScoredRecognition, ScoredSegmentation, scorer_needs_features
from ood_perception.scoring import get_scorer
from ood_perception.trainer.recognition import load_splits

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


# ---------------------------------------------------------------------------------------------
# segmentation


def build_scored_segmentation(
    model: nn.Module,
    score: str = "maxlogit",
    score_params: dict[str, Any] | None = None,
    unimodal_score: str | None = "maxlogit",
) -> nn.Module:
    """The :class:`~ood_perception.models.wrappers.ScoredSegmentation` for ``model`` and a scorer
    from the registry (``ood_perception.scoring.get_scorer``). ``unimodal_score`` scores the camera
    and LiDAR expert heads (None: the fused scorer, which must then be logit-only)."""

    scorer = get_scorer(score, **dict(score_params or {}))
    uni = get_scorer(unimodal_score) if unimodal_score else None
    return ScoredSegmentation(model, scorer, uni)


def _input_hw(ckpt: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of the network input from a checkpoint's ``input_size`` ([H, W])."""
    size = ckpt.get("input_size")
    if not size or len(size) != 2:
        raise ValueError(f"checkpoint has no usable input_size (got {size!r}); expected [height, width]")
    return int(size[0]), int(size[1])


def calibrate_on_batches(
    wrapper: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    tpr: float = 0.95,
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Threshold on the fused score map at ``tpr`` of ID pixels.

    Args:
        wrapper: a :class:`ScoredSegmentation` (eval mode).
        batches: ``(image [B,3,H,W], lidar [B,6,H,W], id_mask [B,H,W] bool)``; ``id_mask`` marks
            labelled, in-distribution pixels (not unlabelled, not anomalies).
        tpr: share of ID pixels at or below the threshold (0.95: 5% of ID pixels flagged).
        max_pixels: ID pixels kept (uniform random subsample beyond this; the quantile is stable).

    Returns:
        ``{"threshold", "tpr", "n_pixels", "n_frames"}`` (threshold from
        :func:`ood_perception.metrics.calibrate_threshold`).
    """

    scores: list[np.ndarray] = []
    n_frames = 0
    with torch.no_grad():
        for image, lidar, id_mask in batches:
            outs = wrapper(image, lidar)
            score_map = outs[1].cpu().numpy()
            mask = np.asarray(id_mask, dtype=bool)
            if mask.shape != score_map.shape:
                raise ValueError(f"id_mask shape {mask.shape} differs from score map {score_map.shape}")
            scores.append(score_map[mask].astype(np.float32))
            n_frames += score_map.shape[0]
    id_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    if id_scores.size == 0:
        raise ValueError("no ID pixels in the calibration data (every pixel unlabelled or OOD?)")
    if id_scores.size > max_pixels:
        id_scores = np.random.default_rng(seed).choice(id_scores, max_pixels, replace=False)
    return {
        "threshold": float(calibrate_threshold(id_scores, tpr=tpr)),
        "tpr": float(tpr),
        "n_pixels": int(id_scores.size),
        "n_frames": int(n_frames),
    }


def export_segmentation(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    score: str = "maxlogit",
    score_params: dict[str, Any] | None = None,
    unimodal_score: str | None = "maxlogit",
    calib_batches: Callable[[dict[str, Any]], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] | None = None,
    calib_info: dict[str, Any] | None = None,
    fit_batches: Callable[[dict[str, Any]], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] | None = None,
    tpr: float = 0.95,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    overwrite: bool = True,
    extra_files: Callable[[], dict[str, tuple[str, bytes]]] | None = None,
) -> ModelSpec:
    """Export a ``FusionSegNet`` checkpoint with its scorer (see :func:`export_model`).

    Args:
        checkpoint: training checkpoint (read with ``weights_only=True``).
        out_dir: model directory to write.
        score, score_params: fused-head scorer (registry name and parameters).
        unimodal_score: scorer of the camera/LiDAR expert heads (logit-only).
        calib_batches: ``f(checkpoint_dict) -> iterable of (image, lidar, id_mask)`` over ID
            validation frames; the threshold is calibrated at ``tpr`` on their ID pixels. None: no
            threshold (``model.json`` records ``null``; the pipeline then needs one from its config).
        calib_info: recorded under ``calibration`` (e.g. data directory and split).
        fit_batches: for scorers with statistics (``requires_fit``): ``f(checkpoint_dict) ->
            iterable of (image, lidar, train-id labels [B,H,W])`` over ID training frames.
        tpr, opset, exporter, overwrite: see :func:`calibrate_on_batches` / :func:`export_model`.
        extra_files: called after calibration; returns more files for :func:`export_model`.
    """

    checkpoint = Path(checkpoint)
    model, ckpt = load_checkpoint(checkpoint)
    wrapper = build_scored_segmentation(model, score, score_params, unimodal_score).eval()
    if getattr(wrapper.scorer, "requires_fit", False):
        if fit_batches is None:
            raise ValueError(f"scorer {score!r} needs fitting on ID training data: give --calib-data")
        fit_scorer(wrapper, fit_batches(ckpt))
    h, w = _input_hw(ckpt)
    gen = torch.Generator().manual_seed(0)
    example = {"image": torch.randn(1, 3, h, w, generator=gen), "lidar": _example_lidar(h, w, gen)}

    calibration: dict[str, Any] = dict(calib_info or {})
    threshold = None
    if calib_batches is not None:
        result = calibrate_on_batches(wrapper, calib_batches(ckpt), tpr=tpr)
        threshold = result.pop("threshold")
        calibration.update(result)
    train = ckpt.get("train") or {}
    provenance = {
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "train": train,
        "metrics": ckpt.get("metrics") or {},
    }
    scorer_cfg = wrapper.scorer.config() if hasattr(wrapper.scorer, "config") else {"name": score, "params": {}}
    uni_cfg = None
    if wrapper.unimodal_scorer is not None:
        uni_cfg = wrapper.unimodal_scorer.config() if hasattr(wrapper.unimodal_scorer, "config") else {
            "name": unimodal_score, "params": {}}
    meta = {
        "class_names": list(ckpt["class_names"]),
        "colors": list(ckpt.get("colors") or []),
        "input_size": [h, w],
        "mean": list(ckpt.get("mean") or []),
        "std": list(ckpt.get("std") or []),
        "score": {**scorer_cfg, "unimodal": uni_cfg["name"] if uni_cfg else scorer_cfg["name"]},
        "threshold": threshold,
        "calibration": calibration,
        "provenance": provenance,
    }
    payload = {
        "builder": "segmentation",
        "model_config": dict(ckpt["model_config"], pretrained=None),
        "score": scorer_cfg,
        "unimodal_score": uni_cfg,
        "state_dict": {k: v.detach().cpu().clone() for k, v in wrapper.state_dict().items()},
    }
    return export_model(
        wrapper, example, list(wrapper.output_names), out_dir, kind="segmentation", meta=meta,
        torch_payload=payload, opset=opset, exporter=exporter, overwrite=overwrite,
        extra_files=extra_files() if extra_files is not None else None,
    )


def _example_lidar(h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """A plausible raw LiDAR tensor (x, y, z, range, intensity, valid) for tracing and the parity check."""
    lidar = torch.zeros(1, 6, h, w)
    valid = (torch.rand(1, h, w, generator=gen) < 0.3).float()
    xyz = torch.randn(1, 3, h, w, generator=gen) * torch.tensor([10.0, 5.0, 1.0]).view(1, 3, 1, 1)
    lidar[:, :3] = xyz * valid
    lidar[:, 3] = xyz.norm(dim=1) * valid
    lidar[:, 4] = torch.rand(1, h, w, generator=gen) * valid
    lidar[:, 5] = valid
    return lidar


def fit_scorer(
    wrapper: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    max_pixels: int = 200_000,
    seed: int = 0,
) -> None:
    """Fit the wrapper's fused scorer on ID pixels of ``batches`` (image, lidar, train-id labels).

    Feature-based scorers are fitted on the stride-4 feature grid (labels subsampled with nearest
    neighbour), logit-only ones at input resolution, matching how :class:`ScoredSegmentation` scores.
    """


    scorer = wrapper.scorer
    model = wrapper.model
    on_grid = scorer_needs_features(scorer)
    feats, logits, labels = [], [], []
    with torch.no_grad():
        for image, lidar, lab in batches:
            out = model(image, lidar)
            lab = torch.as_tensor(lab).long()
            if on_grid:
                f = out["features"]
                lg = model.classifier(f)
                lab = F.interpolate(lab[:, None].float(), size=f.shape[-2:], mode="nearest")[:, 0].long()
            else:
                f, lg = None, out["logits"]
            keep = (lab >= 0) & (lab < lg.shape[1])
            lg_flat = lg.movedim(1, -1)[keep]
            logits.append(lg_flat)
            labels.append(lab[keep])
            if f is not None:
                feats.append(f.movedim(1, -1)[keep])
    if not labels or sum(x.numel() for x in labels) == 0:
        raise ValueError("no labelled ID pixels to fit the scorer on")
    y = torch.cat(labels)
    idx = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed))[:max_pixels]
    kwargs: dict[str, Any] = {}
    if getattr(scorer, "needs_logits", True):
        kwargs["logits"] = torch.cat(logits)[idx]
    if feats:
        kwargs["features"] = torch.cat(feats)[idx]
    if getattr(scorer, "needs_labels", False):
        kwargs["labels"] = y[idx]
    if getattr(scorer, "needs_classifier", False):
        kwargs["classifier_weight"] = model.classifier.weight
        kwargs["classifier_bias"] = model.classifier.bias
    scorer.fit(**kwargs)


def dataset_batches(
    root: str | os.PathLike[str],
    split: str | None,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    max_frames: int | None = None,
    labels: str = "id_mask",
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batch-1 network inputs of a SemanticKITTI-layout dataset (e.g. ``ood-perception synth`` output).

    Args:
        root: dataset root; labels come from its ``dataset.yaml``.
        split: a split of ``dataset.yaml`` (``val``, ``train``...) or None for every sequence.
        input_size: (H, W) of the network; mean/std the image normalisation.
        max_frames: stop after this many frames (evenly spaced over the split).
        labels: ``id_mask`` (bool, labelled non-OOD pixels) or ``train_ids`` (int64, 255 = ignore).

    Yields:
        ``(image [1,3,H,W], lidar [1,6,H,W], labels [1,H,W])``; frames without pixel labels are skipped.
    """

    reader = SemanticKittiReader(root, split)
    if len(reader) == 0:
        raise ValueError(f"{root}: no frames in split {split!r}")
    idx = np.arange(len(reader))
    if max_frames is not None and len(idx) > max_frames:
        idx = np.unique(np.linspace(0, len(reader) - 1, max_frames).round().astype(int))
    for i in idx:
        frame = reader[int(i)]
        if frame.pixel_labels is None or frame.image is None:
            continue
        image, lidar, _ = prepare_inputs(frame.image, frame.points, frame.calib, input_size, mean, std)
        raw = resize_labels(frame.pixel_labels, input_size)
        train_ids = reader.config.to_train_ids(raw)
        if labels == "id_mask":
            lab = torch.from_numpy(train_ids != IGNORE_ID)
        else:
            lab = torch.from_numpy(train_ids.astype(np.int64))
        yield torch.from_numpy(image)[None], torch.from_numpy(lidar)[None], lab[None]


def _data_split(root: Path, preferred: str) -> str | None:
    """``preferred`` when the dataset defines it, else None (all sequences)."""

    cfg_path = root / "dataset.yaml"
    if cfg_path.is_file() and preferred in DatasetConfig.from_yaml(cfg_path).splits:
        return preferred
    return None


def export_segmentation_from_data(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    calib_data: str | os.PathLike[str] | None = None,
    calib_split: str = "val",
    max_calib_frames: int = 64,
    n_stored_inputs: int = 4,
    **kwargs: Any,
) -> ModelSpec:
    """:func:`export_segmentation` with calibration (and scorer fitting) read from a dataset root.

    The threshold is calibrated on ID pixels of ``calib_split`` (falls back to every sequence when
    the dataset defines no such split); fitted scorers use the ``train`` split. The first
    ``n_stored_inputs`` calibration frames are stored in the model directory (``calib_inputs.npz``,
    float16) for TensorRT INT8 calibration and its FP16 parity check.
    """
    if calib_data is None:
        return export_segmentation(checkpoint, out_dir, **kwargs)
    root = Path(calib_data)
    if not root.exists():
        raise FileNotFoundError(f"calibration data not found: {root}")
    split = _data_split(root, calib_split)
    fit_split = _data_split(root, "train")
    stored: list[tuple[torch.Tensor, torch.Tensor]] = []

    def calib(ckpt: dict[str, Any]) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for image, lidar, mask in dataset_batches(root, split, _input_hw(ckpt), ckpt.get("mean") or [0, 0, 0],
                                                  ckpt.get("std") or [1, 1, 1], max_calib_frames):
            if len(stored) < n_stored_inputs:
                stored.append((image, lidar))
            yield image, lidar, mask

    def fit(ckpt: dict[str, Any]) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return dataset_batches(root, fit_split, _input_hw(ckpt), ckpt.get("mean") or [0, 0, 0],
                               ckpt.get("std") or [1, 1, 1], max_calib_frames, labels="train_ids")

    def extra() -> dict[str, tuple[str, bytes]]:
        if not stored:
            return {}
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            image=torch.cat([s[0] for s in stored]).numpy().astype(np.float16),
            lidar=torch.cat([s[1] for s in stored]).numpy().astype(np.float16),
        )
        return {"calib_inputs": ("calib_inputs.npz", buf.getvalue())}

    info = {"data": str(root), "split": split or "all", "max_frames": max_calib_frames,
            "id_pixels": "labelled, non-OOD (train id != 255)"}
    return export_segmentation(checkpoint, out_dir, calib_batches=calib, calib_info=info, fit_batches=fit,
                               extra_files=extra, **kwargs)


# ---------------------------------------------------------------------------------------------
# recognition


#: Farneback flow in pixels is divided by this before the flow encoder (``data.clips.normalise_flow``).
FLOW_SCALE = 4.0
#: ``model.json`` text of the recognition input normalisation (``data.clips.normalise_frames`` / ``normalise_flow``).
RECOGNITION_NORMALISATION = {
    "video": "uint8 RGB frames [T, H, W, 3] -> float32 [3, T, H, W] = frames / 127.5 - 1 (mean = std = 0.5)",
    "flow": "Farneback flow (flow_params) between consecutive frames, pixels -> float32 [2, T-1, H, W] = flow / flow_scale",
}
#: ID splits of a clip dataset (labels >= 0); every other split holds OOD clips (label -1).
_ID_SPLITS = ("train", "test", "val")


def _default_unimodal(score: str, score_params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The expert-head scorer when none is named: the joint scorer itself when it is logit-only and
    needs no fitting (so joint and expert scores are comparable), else ``maxlogit``."""

    sc = get_scorer(score, **dict(score_params or {}))
    if not getattr(sc, "needs_features", False) and not getattr(sc, "requires_fit", False):
        return score, dict(score_params or {})
    return "maxlogit", {}


def _scored_outputs(wrapper: nn.Module, video: np.ndarray, flow: np.ndarray) -> dict[str, np.ndarray]:
    """The wrapper's named outputs over whole arrays (chunks of 32 clips)."""
    outs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for v, f in _chunks(video, flow):
            for name, t in zip(wrapper.output_names, wrapper(torch.from_numpy(v), torch.from_numpy(f)), strict=True):
                outs.setdefault(name, []).append(t.numpy())
    return {k: np.concatenate(x) for k, x in outs.items()}


def evaluate_recognition_wrapper(
    wrapper: nn.Module,
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    threshold: float | None,
    id_split: str = "test",
) -> dict[str, Any]:
    """Held-out metrics of an exported recognition wrapper (:class:`ScoredRecognition`).

    Args:
        wrapper: the module that is exported (same outputs as the ONNX graph).
        splits: ``{split: (video, flow, labels)}``; ``id_split`` holds labelled ID clips, every split
            not in ``train``/``test``/``val`` is OOD (e.g. ``near_ood``, ``far_ood``).
        threshold: the deployment threshold (None: no flag rates).

    Returns:
        ``{"id_split", "n_clips", "accuracy": {joint, video, flow}, "ood": {split: {auroc, fpr95,
        aupr_out, flagged}}, "id_flagged"}``: accuracy of each head on ``id_split``; AUROC / FPR95
        (OOD positive, :func:`ood_perception.metrics.ood_metrics`) of the joint score for ID vs each
        OOD split; ``flagged`` / ``id_flagged`` = share of clips with ``score > threshold``.
    """

    if id_split not in splits:
        raise ValueError(f"evaluation data has no ID split {id_split!r} (has {sorted(splits)})")
    v, f, y = splits[id_split]
    ident = _scored_outputs(wrapper, v, f)
    y = np.asarray(y)
    res: dict[str, Any] = {
        "id_split": id_split,
        "n_clips": {id_split: int(len(y))},
        "accuracy": {m: float(np.mean(ident[f"{p}class"] == y)) for m, p in (("joint", ""), ("video", "video_"), ("flow", "flow_"))},
        "ood": {},
    }
    if threshold is not None:
        res["id_flagged"] = float(np.mean(ident["score"] > threshold))
    for split, (sv, sf, _) in splits.items():
        if split in _ID_SPLITS:
            continue
        s_ood = _scored_outputs(wrapper, sv, sf)["score"]
        m = ood_metrics(np.concatenate([ident["score"], s_ood]), np.r_[np.zeros(len(y)), np.ones(len(s_ood))])
        res["n_clips"][split] = int(len(s_ood))
        res["ood"][split] = {k: float(m[k]) for k in ("auroc", "fpr95", "aupr_out")}
        if threshold is not None:
            res["ood"][split]["flagged"] = float(np.mean(s_ood > threshold))
    return res


def export_recognition(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    score: str = "msp",
    score_params: dict[str, Any] | None = None,
    unimodal_score: str | None = None,
    calib_clips: tuple[np.ndarray, np.ndarray] | None = None,
    fit_clips: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    calib_info: dict[str, Any] | None = None,
    eval_splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    eval_info: dict[str, Any] | None = None,
    tpr: float = 0.95,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    overwrite: bool = True,
) -> ModelSpec:
    """Export a recognition (video + flow) checkpoint with its OOD scorer as one graph.

    Inputs ``video`` ``[B, 3, T, H, W]`` and ``flow`` ``[B, 2, T-1, H, W]`` (the network inputs of
    ``ood_perception.data.clips``); outputs ``class``, ``confidence``, ``score`` ``[B]`` of the
    joint head and ``video_class``/``video_score``/``flow_class``/``flow_score`` of the experts
    (:class:`~ood_perception.models.wrappers.ScoredRecognition`). ``model.json`` (kind
    ``recognition``) also records ``clip_len``, ``input_size`` ``[H, W]``, ``flow_params``,
    ``flow_scale``, ``normalisation``, ``mean``/``std`` (0.5: ``frames / 127.5 - 1``).

    Args:
        checkpoint: a ``task: recognition`` checkpoint (``ood-perception train recognition``).
        out_dir: model directory to write (atomically).
        score, score_params: joint-head scorer (``ood_perception.scoring``; default MSP).
        unimodal_score: logit-only scorer of the expert heads (None: ``score`` when it is
            logit-only and unfitted, else ``maxlogit``).
        calib_clips: (video, flow) of ID validation clips; the threshold keeps ``tpr`` of them
            (:func:`ood_perception.metrics.calibrate_threshold`). None: no threshold.
        fit_clips: (video, flow, labels) of ID training clips for fitted scorers.
        calib_info: description of the calibration data recorded under ``calibration``.
        eval_splits: held-out ``{split: (video, flow, labels)}`` (ID ``test`` + OOD splits);
            :func:`evaluate_recognition_wrapper`'s metrics go to ``provenance.evaluation``.
        eval_info: description of the evaluation data (recorded beside the metrics).
    """

    checkpoint = Path(checkpoint)
    model, ckpt = load_recognition_checkpoint(checkpoint)
    scorer = get_scorer(score, **dict(score_params or {}))
    if unimodal_score is None:
        uni_name, uni_params = _default_unimodal(score, score_params)
    else:
        uni_name, uni_params = unimodal_score, {}
    uni = get_scorer(uni_name, **uni_params)
    if getattr(uni, "needs_features", False) or getattr(uni, "requires_fit", False):
        raise ValueError(f"unimodal scorer {uni_name!r} must be logit-only and need no fitting (e.g. msp, maxlogit, energy)")
    wrapper = ScoredRecognition(model, scorer, uni).eval()
    if getattr(scorer, "requires_fit", False):
        if fit_clips is None:
            raise ValueError(f"scorer {score!r} needs fitting on ID training clips: give --calib-data")
        with torch.no_grad():
            out = _batched(model, fit_clips[0], fit_clips[1])
        kwargs: dict[str, Any] = {}
        if getattr(scorer, "needs_logits", True):
            kwargs["logits"] = out["logits"]
        if getattr(scorer, "needs_features", False):
            kwargs["features"] = out["features"]
        if getattr(scorer, "needs_labels", False):
            kwargs["labels"] = torch.as_tensor(fit_clips[2]).long()
        if getattr(scorer, "needs_classifier", False):
            kwargs["classifier_weight"] = model.joint_head.weight
            kwargs["classifier_bias"] = model.joint_head.bias
        scorer.fit(**kwargs)
    t, s = int(ckpt.get("clip_len", 16)), int(ckpt.get("size", 64))
    gen = torch.Generator().manual_seed(0)
    example = {"video": torch.randn(1, 3, t, s, s, generator=gen),
               "flow": torch.randn(1, 2, t - 1, s, s, generator=gen)}
    threshold, calibration = None, dict(calib_info or {})
    if calib_clips is not None:
        _check_clip_arrays(calib_clips[0], calib_clips[1], t, s, "calibration clips")
        scores = _scored_outputs(wrapper, calib_clips[0], calib_clips[1])["score"]
        threshold = float(calibrate_threshold(scores, tpr=tpr))
        calibration.update(tpr=float(tpr), n_clips=int(scores.size))
    provenance: dict[str, Any] = {
        "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        "train": ckpt.get("train") or {k: ckpt[k] for k in ("config", "command", "seed") if k in ckpt},
        "metrics": ckpt.get("metrics") or {},
    }
    if eval_splits is not None:
        for name, (v, f, _) in eval_splits.items():
            _check_clip_arrays(v, f, t, s, f"evaluation split {name!r}")
        provenance["evaluation"] = {**dict(eval_info or {}), "score": scorer.name,
                                    **evaluate_recognition_wrapper(wrapper, eval_splits, threshold)}
    meta = {
        "class_names": list(ckpt["class_names"]),
        "input_size": [s, s],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "score": {**scorer.config(), "unimodal": uni.name, "unimodal_params": uni.config()["params"]},
        "threshold": threshold,
        "calibration": calibration,
        "provenance": provenance,
        "clip_len": t,
        "flow_params": dict(ckpt.get("flow_params") or {}),
        "flow_scale": FLOW_SCALE,
        "normalisation": dict(RECOGNITION_NORMALISATION),
    }
    payload = {
        "builder": "recognition",
        "model_config": dict(ckpt["model_config"]),
        "score": scorer.config(),
        "unimodal_score": uni.config(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in wrapper.state_dict().items()},
    }
    return export_model(
        wrapper, example, list(wrapper.output_names), out_dir, kind="recognition", meta=meta,
        torch_payload=payload, opset=opset, exporter=exporter, overwrite=overwrite,
    )


def _check_clip_arrays(video: np.ndarray, flow: np.ndarray, t: int, s: int, what: str) -> None:
    """Refuse clip arrays that do not match the checkpoint's clip geometry, naming the mismatch."""
    want_v, want_f = (3, t, s, s), (2, t - 1, s, s)
    if tuple(np.shape(video)[1:]) != want_v or tuple(np.shape(flow)[1:]) != want_f or len(video) != len(flow):
        raise ValueError(f"{what}: video {np.shape(video)} / flow {np.shape(flow)} do not match the checkpoint "
                         f"(expected [N, {', '.join(map(str, want_v))}] and [N, {', '.join(map(str, want_f))}])")
    if len(video) == 0:
        raise ValueError(f"{what}: no clips")


def _chunks(video: np.ndarray, flow: np.ndarray, size: int = 32) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for i in range(0, len(video), size):
        yield np.ascontiguousarray(video[i:i + size], np.float32), np.ascontiguousarray(flow[i:i + size], np.float32)


def _batched(model: nn.Module, video: np.ndarray, flow: np.ndarray) -> dict[str, torch.Tensor]:
    outs: dict[str, list[torch.Tensor]] = {}
    for v, f in _chunks(video, flow):
        o = model(torch.from_numpy(v), torch.from_numpy(f))
        for k in ("logits", "features"):
            outs.setdefault(k, []).append(o[k])
    return {k: torch.cat(x) for k, x in outs.items()}


def export_recognition_from_data(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    calib_data: str | os.PathLike[str] | None = None,
    calib_split: str = "test",
    eval_data: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> ModelSpec:
    """:func:`export_recognition` with clips read from clip datasets (``ood_perception.world.clips``
    layout, or a class-per-folder video dataset).

    The threshold keeps ``tpr`` of the ID clips of ``calib_data``'s ``calib_split`` (use a dataset
    other than the evaluation one, e.g. another data seed, so the flag rates measured on
    ``eval_data`` are honest); fitted scorers use ``calib_data``'s ``train`` split. ``eval_data``:
    held-out clips (``test`` ID + OOD splits) evaluated into ``provenance.evaluation``.
    """
    kwargs.pop("max_calib_frames", None)

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    t, s = int(ckpt.get("clip_len", 16)), int(ckpt.get("size", 64))

    def read(path: str | os.PathLike[str], what: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"{what} not found: {root}")
        return load_splits(root, t, s, progress=False)[0]

    def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
        """Path plus, for a synthetic clip dataset, its data seed and generator."""
        info: dict[str, Any] = {"data": str(path)}
        meta_path = Path(path) / "dataset.yaml"
        if meta_path.is_file():
            import yaml

            meta = yaml.safe_load(meta_path.read_text()) or {}
            info.update({k: meta[k] for k in ("generator", "seed") if k in meta})
        return info

    if eval_data is not None:
        kwargs["eval_splits"] = read(eval_data, "evaluation data")
        kwargs["eval_info"] = describe(eval_data)
    if calib_data is None:
        return export_recognition(checkpoint, out_dir, **kwargs)
    splits = read(calib_data, "calibration data")
    if calib_split not in splits:
        raise ValueError(f"{calib_data} has no split {calib_split!r} (has {sorted(splits)})")
    v, f, y = splits[calib_split]
    if np.any(np.asarray(y) < 0):
        raise ValueError(f"{calib_data} split {calib_split!r} holds OOD clips (label -1); calibrate on ID clips")
    info = {**describe(calib_data), "split": calib_split, "id": "ID clips of the split"}
    return export_recognition(checkpoint, out_dir, calib_clips=(v, f), fit_clips=splits.get("train"),
                              calib_info=info, **kwargs)
