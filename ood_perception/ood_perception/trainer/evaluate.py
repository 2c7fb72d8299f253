"""``ood-perception evaluate CHECKPOINT --data DIR``: closed-set and OOD metrics of a segmentation model.

Writes ``metrics.json`` and ``report.md`` with: mIoU over the ID classes (pixel level where the
data has dense pixel labels, point level where it has point labels; fused and unimodal heads),
and for each scorer (maxlogit default, energy, msp, entropy, gen, himplos) AUROC / FPR95 / AUPR
at pixel and point level (OOD = positive; ID = labelled in-distribution pixels/points;
unlabelled ones are left out). Figures (matplotlib PNGs): ROC curves, ID-vs-OOD score histograms,
overlays (image | prediction | score | ground-truth anomaly).

Metrics convention (``--resolution camera``, the default; shared with ``ood-perception replay``,
see :mod:`ood_perception.evaluation.segmentation`, so both give the same numbers on the same frames):

* pixels: at the label (camera) resolution; score maps upsampled from the model's input size by
  :func:`ood_perception.geometry.maps.upsample_score_map` (OpenCV bilinear) and class maps by
  :func:`~ood_perception.geometry.maps.upsample_class_map` (nearest), exactly what the fusion
  node publishes; labels as stored (resized nearest only when their size differs from the image's);
* points: in view at the model's input size and not occluded at their model pixel
  (:func:`ood_perception.pipeline.fusion.occluded_points` with the pipeline's default
  ``occlusion_tol``/``occlusion_rel``: the points the pipeline scores), each taking the score and
  class of its model-resolution pixel.

``--resolution input`` is the cheaper training-time view: pixels at the input size with labels
downsampled (nearest), all in-view points; its numbers are not comparable with replay's.

With ``--resolution camera`` it also reports, for the headline scorer (the first of ``--scorers``),
SegmentMeIfYouCan component metrics of the mask binarised at the 95%-ID-pixel threshold and the
anomaly-vs-known object-score separation (metrics.json ``components`` / ``object_scores``; see
:mod:`ood_perception.trainer.eval_alerts` for the threshold's source).

Scorers with statistics (HIMPLoS, kNN, ``maxlogit_knn``...) are fitted on a train split: the evaluated
data's or that of ``--fit-data`` (e.g. the training world when the evaluated world has only a test split).
HIMPLoS is fitted on the training split's features (pixels subsampled, labels at the feature
resolution); its per-pixel score on the feature grid (stride 4 for ``fpn`` models, 8 for ``taps8``)
is upsampled bilinearly to the input size (as the
exported graph does).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.atomic import atomic_path
from ood_perception.data.config import atomic_write_bytes, require_classes
from ood_perception.evaluation.segmentation import labelled, pixel_truth
from ood_perception.geometry.maps import (
    OCCLUSION_REL,
    OCCLUSION_TOL,
    occluded_points,
    upsample_class_map,
    upsample_score_map,
)
from ood_perception.metrics import ood_metrics, segmentation_metrics
from ood_perception.trainer.eval_alerts import (
    MAX_THRESHOLD_FRAMES,
    EvalAlertExtras,
    IdPixelScores,
    report_lines,
)
from ood_perception.trainer.seg_data import SegmentationData, collate, open_reader

#: Scorers evaluated by default (the first is the headline one).
DEFAULT_SCORERS: tuple[str, ...] = ("maxlogit", "energy", "msp", "entropy", "gen", "himplos")

#: Where pixel metrics are computed (see the module docstring); the first is the default.
RESOLUTIONS: tuple[str, ...] = ("camera", "input")


def _pick_split(root: Path, wanted: str | None, schema: Any) -> str | None:

    if wanted:
        return wanted
    splits = open_reader(root, None, schema).config.splits
    for name in ("test", "val"):
        if splits.get(name):
            return name
    return None


def _fit_himplos(model: Any, data: Any, mean: Any, std: Any, device: Any, max_frames: int = 32,
                 max_pixels: int = 50000, seed: int = 0) -> Any:
    import torch  # lazy: torch is heavy to import and only this path needs it
    import torch.nn.functional as F  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.scoring import (
        get_scorer,
    )

    feats, labels = [], []
    idx = np.linspace(0, len(data) - 1, min(len(data), max_frames)).astype(int)
    for chunk in np.array_split(idx, max(1, len(idx) // 4)):
        batch = collate([data[int(i)] for i in chunk], mean, std)
        out = model(batch["image"].to(device), batch["lidar"].to(device))
        f = out["features"]
        y = F.interpolate(batch["target"][:, None].float(), size=f.shape[-2:], mode="nearest")[:, 0].long()
        f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu()
        y = y.reshape(-1)
        keep = y != 255
        feats.append(f[keep])
        labels.append(y[keep])
    f, y = torch.cat(feats), torch.cat(labels)
    if f.shape[0] > max_pixels:
        sel = torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(seed))[:max_pixels]
        f, y = f[sel], y[sel]
    w = model.classifier.weight.detach().cpu()[:, :, 0, 0]
    b = model.classifier.bias.detach().cpu()
    return get_scorer("himplos").fit(features=f, labels=y, classifier_weight=w, classifier_bias=b)


def needs_training_data(name: str) -> bool:
    """Whether scorer ``name`` is fitted on the training split before it can score (HIMPLoS,
    kNN, ``maxlogit_knn``...)."""
    # lazy: torch is heavy to import and only this path needs it
    from ood_perception.scoring import get_scorer

    return name == "himplos" or bool(get_scorer(name).requires_fit)


def _fit_registered(model: Any, name: str, data: Any, mean: Any, std: Any, device: Any,
                    max_frames: int = 64) -> Any:
    """Scorer ``name`` fitted as ``ood-perception export`` fits it (``trainer.export.fit_scorer``:
    the same 64 evenly spaced training frames, the same pixels and cells)."""
    from ood_perception.models.wrappers import ScoredSegmentation  # lazy: torch (see above)
    from ood_perception.scoring import get_scorer  # lazy: torch (see above)
    from ood_perception.trainer.export.segmentation import fit_scorer  # lazy: torch (see above)

    scorer = get_scorer(name)
    wrapper = ScoredSegmentation(model, scorer, None if getattr(scorer, "feature_source", "") == "embedding"
                                 else get_scorer("maxlogit"))
    idx = np.unique(np.linspace(0, len(data) - 1, min(len(data), max_frames)).round().astype(int))

    def batches() -> Any:
        for i in idx:
            b = collate([data[int(i)]], mean, std)
            yield b["image"].to(device), b["lidar"].to(device), b["target"].to(device)

    fit_scorer(wrapper, batches())
    return wrapper.scorer


def _fitted_scorer(model: Any, name: str, data: Any, mean: Any, std: Any, device: Any,
                   fitted: dict[str, Any] | None) -> Any:
    """Scorer ``name`` fitted on ``data``; reused from ``fitted`` (one :func:`evaluate` run's fits of
    one model, shared by its passes) when given, else fitted anew (a caller that changes the model
    between calls, e.g. the distillation table, gets a fit of the current weights)."""
    if fitted is not None and name in fitted:
        return fitted[name]
    sc = (_fit_himplos(model, data, mean, std, device) if name == "himplos"
          else _fit_registered(model, name, data, mean, std, device)).to(device)
    if fitted is not None:
        fitted[name] = sc
    return sc


def evaluate_model(model: Any, ckpt: dict[str, Any], data: Any, scorers: tuple[str, ...] = DEFAULT_SCORERS,
                   train_data: Any = None, batch_size: int = 4, device: Any = "cpu",
                   overlay_count: int = 0, resolution: str = "camera",
                   on_frame: Any = None, fitted: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of ``model`` on ``data`` (:class:`SegmentationData`).

    Args:
        resolution: ``camera`` (default: the convention replay shares, see the module docstring;
            reads each frame's labels and points again from ``data.reader``) or ``input``.
        on_frame: ``camera`` only: called per frame with ``(index, sample, frame, maps)`` (maps:
            scorer name -> model-resolution score map), e.g. the alert-level extras.
        fitted: scorers fitted on ``train_data`` for this same model, by name, reused and filled in
            (None: fit each one anew).

    Returns:
        ``(metrics, raw)`` where raw holds per-scorer ID/OOD score arrays (for plots) and overlays.

    Raises:
        ValueError: unknown ``resolution``.
    """
    import torch  # lazy: torch is heavy to import and only this path needs it

    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    with torch.no_grad():
        return _evaluate_model(model, ckpt, data, scorers, train_data, batch_size, torch.device(device), overlay_count,
                               resolution, on_frame, fitted)


class _Collector:
    """Per-level labels, predictions and scores of the evaluated frames."""

    def __init__(self, heads: tuple[str, ...], scorers: Any) -> None:
        self.heads = heads
        self.gt: dict[str, list[np.ndarray]] = {"pixel": [], "point": []}
        self.pred: dict[str, dict[str, list[np.ndarray]]] = {lvl: {h: [] for h in heads} for lvl in ("pixel", "point")}
        self.scores: dict[str, dict[str, list[np.ndarray]]] = {lvl: {s: [] for s in scorers} for lvl in ("pixel", "point")}
        self.is_ood: dict[str, list[np.ndarray]] = {"pixel": [], "point": []}

    def add(self, level: str, train: np.ndarray, ood: np.ndarray, preds: dict[str, np.ndarray],
            scores: dict[str, np.ndarray]) -> None:
        """One frame's labelled items: train ids (255 = ignore/OOD), OOD flags, per-head classes and
        per-scorer scores, all aligned; items with a non-finite score in any scorer are left out of
        the OOD metrics (as replay leaves out pixels without a finite score)."""
        self.gt[level].append(train.astype(np.uint8, copy=False))
        for h in self.heads:
            self.pred[level][h].append(preds[h].astype(np.int64, copy=False))
        finite = np.ones(train.shape, bool)
        for v in scores.values():
            finite &= np.isfinite(v)
        self.is_ood[level].append(ood[finite])
        for name, v in scores.items():
            self.scores[level][name].append(v[finite].astype(np.float32, copy=False))


def _add_input_resolution(col: _Collector, s: Any, maps: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> None:
    """``resolution=input``: pixels at the input size (labels downsampled), all in-view points."""
    if s.has_pixel_labels:
        tgt, ood = s.target.ravel(), s.pixel_ood.ravel()
        sel = (tgt != 255) | ood
        col.add("pixel", tgt[sel], ood[sel], {h: p.ravel()[sel] for h, p in preds.items()},
                {n: m.ravel()[sel] for n, m in maps.items()})
    lab = (s.flat_index >= 0) & ((s.point_target != 255) | s.point_ood)
    if lab.any():
        fi = s.flat_index[lab]
        col.add("point", s.point_target[lab], s.point_ood[lab], {h: p.ravel()[fi] for h, p in preds.items()},
                {n: m.ravel()[fi] for n, m in maps.items()})


def _add_camera_resolution(col: _Collector, s: Any, frame: Any, config: Any, maps: dict[str, np.ndarray],
                           preds: dict[str, np.ndarray]) -> None:
    """``resolution=camera``: the convention replay shares (module docstring)."""

    hw = frame.image.shape[:2]
    if frame.pixel_labels is not None:
        train, ood = pixel_truth(frame.pixel_labels, hw, config)
        sel = labelled(train, ood)
        col.add("pixel", train[sel], ood[sel], {h: upsample_class_map(p, hw)[sel] for h, p in preds.items()},
                {n: upsample_score_map(m, hw)[sel] for n, m in maps.items()})
    inview = np.flatnonzero(s.flat_index >= 0)
    if inview.size:
        pix = s.flat_index[inview]
        visible = ~occluded_points(frame.points[inview], pix, s.lidar[3], OCCLUSION_TOL, OCCLUSION_REL)
        sel = visible & labelled(s.point_target[inview], s.point_ood[inview])
        if sel.any():
            idx, fi = inview[sel], pix[sel]
            col.add("point", s.point_target[idx], s.point_ood[idx], {h: p.ravel()[fi] for h, p in preds.items()},
                    {n: m.ravel()[fi] for n, m in maps.items()})


def _evaluate_model(model: Any, ckpt: dict[str, Any], data: Any, scorers: tuple[str, ...], train_data: Any,
                    batch_size: int, device: Any, overlay_count: int,
                    resolution: str = "camera", on_frame: Any = None,
                    fitted: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch.nn.functional as F  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.scoring import (
        get_scorer,
    )

    model = model.to(device).eval()
    k = model.num_classes
    mean, std = ckpt.get("mean", [0.485, 0.456, 0.406]), ckpt.get("std", [0.229, 0.224, 0.225])
    built = {}
    for name in scorers:
        if needs_training_data(name):
            if train_data is None:
                continue
            built[name] = _fitted_scorer(model, name, train_data, mean, std, device, fitted)
        else:
            built[name] = get_scorer(name).to(device)
    heads = ("logits", "camera_logits", "lidar_logits")
    col = _Collector(heads, built)
    reader = getattr(data, "reader", None)
    if resolution == "camera" and reader is None:
        raise ValueError("resolution 'camera' needs the data's frame reader (SegmentationData.reader)")
    overlays = []
    for start in range(0, len(data), batch_size):
        samples = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        batch = collate(samples, mean, std)
        out = model(batch["image"].to(device), batch["lidar"].to(device))
        size = out["logits"].shape[-2:]
        maps = {}
        for name, sc in built.items():
            if getattr(sc, "feature_source", "features") == "embedding":  # full-resolution map already
                m = sc(out["logits"], out["embedding"])
            elif sc.needs_features:
                m = sc(out["logits"], out["features"])
                m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            else:
                m = sc(out["logits"])
            maps[name] = m.float().cpu().numpy()
        preds = {h: out[h].argmax(1).cpu().numpy() for h in heads}
        for b, s in enumerate(samples):
            fmaps = {name: m[b] for name, m in maps.items()}
            fpreds = {h: p[b] for h, p in preds.items()}
            if resolution == "camera":
                frame = reader[start + b]
                _add_camera_resolution(col, s, frame, data.config, fmaps, fpreds)
                if on_frame is not None:
                    on_frame(start + b, s, frame, fmaps)
            else:
                _add_input_resolution(col, s, fmaps, fpreds)
            if len(overlays) < overlay_count and s.pixel_ood.any():
                first = scorers[0] if scorers[0] in maps else next(iter(maps))
                overlays.append({"name": s.name, "image": s.image, "pred": preds["logits"][b],
                                 "score": maps[first][b], "ood": s.pixel_ood, "scorer": first})
    names = ckpt.get("class_names")
    metrics: dict[str, Any] = {"num_frames": len(data), "classes": names, "resolution": resolution,
                               "segmentation": {}, "ood": {}}
    for level in ("pixel", "point"):
        if not col.gt[level]:
            continue
        g = np.concatenate(col.gt[level]).astype(np.int64)
        metrics["segmentation"][level] = {}
        for h in heads:
            sm = segmentation_metrics(g, np.concatenate(col.pred[level][h]), k, 255, names)
            sm.pop("confusion_matrix")
            metrics["segmentation"][level][h.replace("_logits", "") if h != "logits" else "fused"] = sm
    raw: dict[str, Any] = {"scores": {}, "overlays": overlays}
    for level in ("pixel", "point"):
        if not col.is_ood[level]:
            continue
        y = np.concatenate(col.is_ood[level])
        if y.all() or not y.any():
            metrics["ood"][level] = {"skipped": "needs both ID and OOD samples", "n_ood": int(y.sum()), "n": int(y.size)}
            continue
        metrics["ood"][level] = {}
        raw["scores"][level] = {}
        for name in built:
            s = np.concatenate(col.scores[level][name])
            metrics["ood"][level][name] = ood_metrics(s, y)
            raw["scores"][level][name] = (s, y)
    return metrics, raw


def _plots(raw: dict[str, Any], out: Path, colors: np.ndarray) -> list[str]:
    import matplotlib  # lazy: matplotlib is heavy to import and only this path needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib is heavy to import and only this path needs it

    written = []

    def save(fig: Any, name: str) -> None:
        try:
            with atomic_path(out / name, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=90, bbox_inches="tight")
        finally:
            plt.close(fig)
        written.append(name)

    # lazy: scikit-learn loads SciPy's stats (~0.8 s); only these figures need it, not every
    # importer of the evaluator (the trainer, the table generators, their spawned workers)
    from sklearn.metrics import roc_curve

    for level, per in raw["scores"].items():
        fig, ax = plt.subplots(figsize=(5, 4.5))
        rng = np.random.default_rng(0)
        for name, (s, y) in per.items():
            if s.size > 400000:  # ROC on a fixed random subset keeps plotting fast
                sel = rng.choice(s.size, 400000, replace=False)
                s, y = s[sel], y[sel]
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, label=name)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.axhline(0.95, color="grey", lw=0.6, ls="--")
        ax.set(xlabel="FPR (ID flagged)", ylabel="TPR (OOD caught)", title=f"ROC, {level} level")
        ax.legend(fontsize=8)
        save(fig, f"roc_{level}.png")
        n = len(per)
        cols = min(3, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, (name, (s, y)) in zip(axes.ravel(), per.items(), strict=False):
            bins = np.linspace(np.percentile(s, 0.5), np.percentile(s, 99.5), 60)
            ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label="ID")
            ax.hist(s[y], bins=bins, alpha=0.6, density=True, label="OOD")
            ax.set_title(name, fontsize=9)
            ax.legend(fontsize=7)
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        fig.suptitle(f"scores, {level} level (higher = more anomalous)")
        save(fig, f"hist_{level}.png")
    for i, ov in enumerate(raw["overlays"]):
        fig, axes = plt.subplots(1, 4, figsize=(14, 2.6))
        pred_rgb = colors[np.clip(ov["pred"], 0, len(colors) - 1)]
        for ax, im, title in zip(axes, (ov["image"], pred_rgb, ov["score"], ov["ood"]),
                                 ("image", "prediction", f"score ({ov['scorer']})", "anomaly (GT)"), strict=True):
            ax.imshow(im, cmap="magma" if im.ndim == 2 else None)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(ov["name"], fontsize=9)
        save(fig, f"overlay_{i:02d}.png")
    return written


class _Spaced:
    """At most ``max_frames`` evenly spaced frames of a :class:`SegmentationData` (samples, reader
    and config alike), as export picks its calibration frames."""

    def __init__(self, data: Any, max_frames: int) -> None:
        n = len(data)
        idx = np.arange(n) if n <= max_frames else np.unique(np.linspace(0, n - 1, max_frames).round().astype(int))
        self.idx = [int(i) for i in idx]
        self.data, self.config = data, data.config
        self.reader = _Picked(data.reader, self.idx)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> Any:
        return self.data[self.idx[i]]


class _Picked:
    def __init__(self, reader: Any, idx: list[int]) -> None:
        self.reader, self.idx = reader, idx

    def __getitem__(self, i: int) -> Any:
        return self.reader[self.idx[i]]


def _alert_extras(model: Any, ckpt: dict[str, Any], root: Path, split: str | None, data: Any, head: str,
                  train_data: Any, size: Any, cache_dir: str | None, schema: Any, device: str,
                  show_progress: bool, fitted: dict[str, Any] | None = None) -> tuple[EvalAlertExtras, Any]:
    """The extras object and the main pass's ``on_frame`` hook; the threshold is calibrated on the
    val split first when there is one (see :mod:`ood_perception.trainer.eval_alerts`)."""
    extras = EvalAlertExtras(data.config, head)
    if "val" in data.config.splits and split != "val":
        val = _Spaced(SegmentationData(root, "val", size, cache_dir, schema, show_progress=show_progress,
                                       exclude_types=ckpt.get("outlier_types") or []),
                      MAX_THRESHOLD_FRAMES)
        ids = IdPixelScores(data.config, head)
        evaluate_model(model, ckpt, val, (head,), train_data, device=device, on_frame=ids, fitted=fitted)
        extras.set_threshold(ids.threshold(), f"the val split ({ids.frames} frames)")

        def hook(*a: Any) -> None:
            extras.add_objects(*a)
            extras.add_components(*a)

        return extras, hook
    return extras, extras.add_objects


def _report(metrics: dict[str, Any], figures: list[str], header: dict[str, Any]) -> str:
    lines = ["# Segmentation evaluation", ""]
    for k, v in header.items():
        lines.append(f"- {k}: `{v}`")
    lines += ["", "## Closed-set segmentation (mIoU over ID classes, %)", "", "| level | fused | camera | lidar |", "|---|---|---|---|"]
    for level, per in metrics["segmentation"].items():
        lines.append(f"| {level} | " + " | ".join(f"{100 * per[h]['miou']:.1f}" for h in ("fused", "camera", "lidar")) + " |")
    fused = next(iter(metrics["segmentation"].values()), {}).get("fused")
    if fused:
        lines += ["", "Per-class IoU (fused, %): " + ", ".join(
            f"{n} {100 * v:.1f}" if v is not None else f"{n} -" for n, v in fused["per_class_iou"].items())]
    lines += ["", "## OOD detection (OOD = positive; %)", "",
              "| level | scorer | AUROC | FPR95 | AUPR-out | AUPR-in | n ID | n OOD |", "|---|---|---|---|---|---|---|---|"]
    for level, per in metrics["ood"].items():
        if "skipped" in per:
            lines.append(f"| {level} | - | skipped: {per['skipped']} | | | | | |")
            continue
        for name, m in per.items():
            lines.append(f"| {level} | {name} | {100 * m['auroc']:.2f} | {100 * m['fpr95']:.2f} | {100 * m['aupr_out']:.2f} | "
                         f"{100 * m['aupr_in']:.2f} | {m['n_id']} | {m['n_ood']} |")
    lines += ["", "FPR95: share of ID flagged at the threshold catching 95% of OOD (`fpr95_id`, the other "
              "convention, is in metrics.json).", ""]
    if "components" in metrics:
        lines += report_lines(metrics)
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def evaluate(checkpoint: str | os.PathLike[str], data_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
             split: str | None = None, scorers: tuple[str, ...] = DEFAULT_SCORERS, schema: Any = None,
             cache_dir: str | None = None, device: str = "cpu", overlays: int = 6, plots: bool = True,
             fit_split: str | None = "train", show_progress: bool = True, resolution: str = "camera",
             fit_data: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint; writes metrics.json, report.md and figures to ``out_dir``
    (``resolution``: see :func:`evaluate_model` and the module docstring). Scorers with statistics
    (:func:`needs_training_data`) are fitted on the ``fit_split`` of ``fit_data`` (default: the
    evaluated data root)."""
    from ood_perception.models import (
        load_checkpoint,
    )

    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    root = Path(data_root)
    split = _pick_split(root, split, schema)
    size = ckpt.get("input_size") or [128, 256]
    # anomaly types the model saw in training are left out (their pixels and points ignored, frames
    # showing them neither anomaly-free nor positive): only unseen types are evaluated
    excluded = ckpt.get("outlier_types") or []
    data = SegmentationData(root, split, size, cache_dir, schema, show_progress=show_progress, exclude_types=excluded)
    require_classes(root, data.config.class_names, ckpt["class_names"])
    train_data = None
    fitted_names = [n for n in scorers if needs_training_data(n)]
    fit_root = Path(fit_data) if fit_data is not None else root
    if fit_data is not None and not fit_root.is_dir():
        raise FileNotFoundError(f"fit data not found: {fit_root}")
    fit_config = open_reader(fit_root, None, schema).config if fitted_names and fit_split else None
    if fit_config is not None and not fit_config.splits.get(fit_split):
        # e.g. a test-only world without --fit-data: these scorers are fitted on a train split, which it lacks
        print(f"evaluate: {', '.join(fitted_names)} skipped: {fit_root} has no '{fit_split}' split to fit "
              f"{'it' if len(fitted_names) == 1 else 'them'} on ("
              f"{'give a --fit-data with one' if fit_data is not None else 'give --fit-data'}; "
              "the other scorers are evaluated)",
              file=sys.stderr)
        scorers = tuple(n for n in scorers if n not in fitted_names)
    elif fit_config is not None:
        require_classes(fit_root, fit_config.class_names, ckpt["class_names"])  # said before the frames are read
        train_data = SegmentationData(fit_root, fit_split, size, cache_dir, schema, show_progress=show_progress)
    fitted: dict[str, Any] = {}  # this run's fits (one model), shared by its passes
    # the alert-level extras (camera resolution): the headline scorer, the first one evaluate can build
    head = next((n for n in scorers if not needs_training_data(n) or train_data is not None), None)
    extras, hook = (None, None)
    if resolution == "camera" and head is not None:
        extras, hook = _alert_extras(model, ckpt, root, split, data, head, train_data, size, cache_dir, schema,
                                     device, show_progress, fitted)
    metrics, raw = evaluate_model(model, ckpt, data, tuple(scorers), train_data, device=device,
                                  overlay_count=overlays if plots else 0, resolution=resolution, on_frame=hook,
                                  fitted=fitted)
    if extras is not None:
        pix = metrics["ood"].get("pixel", {}).get(head, {})
        if extras.threshold is None and "threshold_id" in pix:  # no val split: the evaluated split's ID pixels
            extras.set_threshold(pix["threshold_id"], f"the evaluated split's ID pixels (split {split!r} has no "
                                 "separate val split to calibrate on)")
            evaluate_model(model, ckpt, data, (head,), train_data, device=device, on_frame=extras.add_components,
                           fitted=fitted)
        metrics.update(extras.result())
    metrics["checkpoint"] = str(Path(checkpoint).resolve())
    metrics["data"] = str(root.resolve())
    metrics["split"] = split
    if train_data is not None:
        metrics["fit"] = {"data": str(fit_root.resolve()), "split": fit_split,
                          "scorers": [n for n in scorers if needs_training_data(n)]}
    # the types the model saw in training, left out here (None: the checkpoint predates the record)
    metrics["outlier_types_excluded"] = ckpt.get("outlier_types")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _plots(raw, out, np.asarray(ckpt.get("colors") or data.config.colors, dtype=np.uint8)) if plots else []
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    header = {"checkpoint": metrics["checkpoint"], "data": metrics["data"], "split": split,
              "frames": len(data), "input size": size, "metrics at": f"{resolution} resolution"}
    atomic_write_bytes(out / "report.md", _report(metrics, figures, header).encode())
    return metrics
