"""Export of a ``RecognitionNet`` checkpoint: ``video``/``flow`` clip inputs, class/confidence/score
and the video-only / flow-only expert outputs, threshold at 95% TPR of ID validation clips, optional
held-out evaluation recorded in ``model.json``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ood_perception.metrics import calibrate_threshold, ood_metrics
from ood_perception.models.recognition import load_recognition_checkpoint
from ood_perception.models.spec import (
    ModelSpec,
    sha256_file,
)
from ood_perception.models.wrappers import ScoredRecognition
from ood_perception.scoring import get_scorer
from ood_perception.trainer.export.core import DEFAULT_OPSET, export_model
from ood_perception.trainer.recognition import load_splits

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
