"""Export of a ``FusionSegNet`` checkpoint: ``image``/``lidar`` inputs, the six maps, a calibrated threshold.

The threshold is calibrated at 95% TPR of ID validation pixels (:func:`calibrate_on_batches`);
scorers that need fitting are fitted on training frames (:func:`fit_scorer`). The torch builder of
the same wrapper lives in :mod:`ood_perception.runtime.torch_backend`.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_perception.data import DatasetConfig, SemanticKittiReader, prepare_inputs, resize_labels
from ood_perception.data.config import IGNORE_ID, require_classes
from ood_perception.metrics import calibrate_threshold
from ood_perception.models import load_checkpoint
from ood_perception.models.spec import (
    ModelSpec,
    sha256_file,
)
from ood_perception.models.wrappers import ScoredSegmentation, scorer_feature_source, scorer_needs_features
from ood_perception.scoring import get_scorer
from ood_perception.trainer.export.core import DEFAULT_OPSET, export_model

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
    and LiDAR expert heads (None: the fused scorer, which must then be logit-only). Models with an
    appearance embedding (``embedding_channels`` > 0: ``TapFusionNet``) export it as a seventh output."""

    scorer = get_scorer(score, **dict(score_params or {}))
    # a scorer reading the embedding scores the expert heads itself (ScoredSegmentation)
    uni = get_scorer(unimodal_score) if unimodal_score and scorer_feature_source(scorer) != "embedding" else None
    return ScoredSegmentation(model, scorer, uni, embedding=bool(getattr(model, "embedding_channels", 0)))


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
        # every anomaly type labelled in the training split (checkpoints before the key: unknown)
        "outlier_types": ckpt.get("outlier_types"),
    }
    payload = {
        "builder": "segmentation",
        "model_config": dict(ckpt["model_config"], pretrained=None),
        "score": scorer_cfg,
        "unimodal_score": uni_cfg,
        "embedding": wrapper.embedding,
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

    Feature-based scorers are fitted on the feature grid (stride 4 or 8 by the design) (labels subsampled with nearest
    neighbour), logit-only ones at input resolution, matching how :class:`ScoredSegmentation` scores.
    """


    scorer = wrapper.scorer
    model = wrapper.model
    if scorer_feature_source(scorer) == "embedding":
        _fit_embedding_scorer(model, scorer, batches, max_pixels, seed)
        return
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


def _fit_embedding_scorer(model: nn.Module, scorer: nn.Module,
                          batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                          max_pixels: int, seed: int, per_batch: int = 20000) -> None:
    """Fit a scorer that reads logits and the model's ``embedding`` (``maxlogit_knn``): logits of
    in-distribution pixels at input resolution (fused, camera and LiDAR heads; at most
    ``per_batch`` random pixels of each batch), embedding cells whose label (nearest neighbour on
    the embedding's grid) is an in-distribution class; up to ``max_pixels`` of each in all."""
    g = torch.Generator().manual_seed(seed)
    logits: dict[str, list[torch.Tensor]] = {"logits": [], "camera_logits": [], "lidar_logits": []}
    cells = []
    with torch.no_grad():
        for image, lidar, lab in batches:
            out = model(image, lidar)
            lab = torch.as_tensor(lab).long().to(out["logits"].device)
            k, emb = out["logits"].shape[1], out["embedding"]
            keep = (lab >= 0) & (lab < k)
            pick = None
            for name in logits:
                flat = out[name].movedim(1, -1)[keep]
                if pick is None:
                    pick = torch.randperm(flat.shape[0], generator=g)[:per_batch]
                logits[name].append(flat[pick.to(flat.device)].cpu())
            grid = F.interpolate(lab[:, None].float(), size=emb.shape[-2:], mode="nearest")[:, 0].long()
            cells.append(emb.movedim(1, -1)[(grid >= 0) & (grid < k)].cpu())
    if not cells or sum(c.shape[0] for c in cells) == 0 or sum(x.shape[0] for x in logits["logits"]) == 0:
        raise ValueError("no labelled ID pixels to fit the scorer on")
    n_pix = sum(x.shape[0] for x in logits["logits"])
    pix = torch.randperm(n_pix, generator=g)[:max_pixels]
    cell_all = torch.cat(cells)
    scorer.fit(features=cell_all[torch.randperm(cell_all.shape[0], generator=g)[:max_pixels]],
               **{name: torch.cat(parts)[pix] for name, parts in logits.items()})


def dataset_batches(
    root: str | os.PathLike[str],
    split: str | None,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    max_frames: int | None = None,
    labels: str = "id_mask",
    class_names: Sequence[str] | None = None,
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batch-1 network inputs of a SemanticKITTI-layout dataset (e.g. ``ood-perception synth`` output).

    Args:
        root: dataset root; labels come from its ``dataset.yaml``.
        split: a split of ``dataset.yaml`` (``val``, ``train``...) or None for every sequence.
        input_size: (H, W) of the network; mean/std the image normalisation.
        max_frames: stop after this many frames (evenly spaced over the split).
        labels: ``id_mask`` (bool, labelled non-OOD pixels) or ``train_ids`` (int64, 255 = ignore).
        class_names: the model's classes; when given, a dataset whose label space differs is refused
            (ValueError, one line): its train ids would mean other classes.

    Yields:
        ``(image [1,3,H,W], lidar [1,6,H,W], labels [1,H,W])``; frames without pixel labels are skipped.
    """

    reader = SemanticKittiReader(root, split)
    if class_names is not None:
        require_classes(root, reader.config.class_names, class_names)
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
    fit_data: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> ModelSpec:
    """:func:`export_segmentation` with calibration (and scorer fitting) read from a dataset root.

    The threshold is calibrated on ID pixels of ``calib_split`` (falls back to every sequence when
    the dataset defines no such split); fitted scorers use the ``train`` split of ``fit_data``
    (default ``calib_data``; every sequence when it has no train split). The first
    ``n_stored_inputs`` calibration frames are stored in the model directory (``calib_inputs.npz``,
    float16) for TensorRT INT8 calibration and its FP16 parity check.
    """
    if calib_data is None:
        return export_segmentation(checkpoint, out_dir, **kwargs)
    root = Path(calib_data)
    if not root.exists():
        raise FileNotFoundError(f"calibration data not found: {root}")
    split = _data_split(root, calib_split)
    fit_root = Path(fit_data) if fit_data is not None else root
    if not fit_root.exists():
        raise FileNotFoundError(f"fit data not found: {fit_root}")
    fit_split = _data_split(fit_root, "train")
    stored: list[tuple[torch.Tensor, torch.Tensor]] = []

    def calib(ckpt: dict[str, Any]) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for image, lidar, mask in dataset_batches(root, split, _input_hw(ckpt), ckpt.get("mean") or [0, 0, 0],
                                                  ckpt.get("std") or [1, 1, 1], max_calib_frames,
                                                  class_names=ckpt["class_names"]):
            if len(stored) < n_stored_inputs:
                stored.append((image, lidar))
            yield image, lidar, mask

    def fit(ckpt: dict[str, Any]) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return dataset_batches(fit_root, fit_split, _input_hw(ckpt), ckpt.get("mean") or [0, 0, 0],
                               ckpt.get("std") or [1, 1, 1], max_calib_frames, labels="train_ids",
                               class_names=ckpt["class_names"])

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
    if getattr(get_scorer(kwargs.get("score", "maxlogit"), **dict(kwargs.get("score_params") or {})), "requires_fit", False):
        info.update(fit_data=str(fit_root), fit_split=fit_split or "all")
        if fit_split is None:  # said, as evaluate says it: fitting on a test split's frames leaks them
            print(f"export: warning: {fit_root} has no 'train' split: the scorer is fitted on all its sequences "
                  "(do not report figures on them; --fit-data takes a dataset with a train split)", file=sys.stderr)
    return export_segmentation(checkpoint, out_dir, calib_batches=calib, calib_info=info, fit_batches=fit,
                               extra_files=extra, **kwargs)
