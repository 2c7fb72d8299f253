"""``ood-perception evaluate CHECKPOINT --data DIR``: closed-set and OOD metrics of a segmentation model.

Writes ``metrics.json`` and ``report.md`` with: mIoU over the ID classes (pixel level where the
data has dense pixel labels, point level where it has point labels; fused and unimodal heads),
and for each scorer (maxlogit default, energy, msp, entropy, gen, himplos) AUROC / FPR95 / AUPR
at pixel and point level (OOD = positive; ID = labelled in-distribution pixels/points;
unlabelled ones are left out). Figures (matplotlib PNGs): ROC curves, ID-vs-OOD score histograms,
overlays (image | prediction | score | ground-truth anomaly).

HIMPLoS is fitted on the training split's features (pixels subsampled, labels at the feature
resolution); its per-pixel score at stride 4 is upsampled bilinearly to the input size.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: Scorers evaluated by default (the first is the headline one).
DEFAULT_SCORERS: tuple[str, ...] = ("maxlogit", "energy", "msp", "entropy", "gen", "himplos")


def _pick_split(root: Path, wanted: str | None, schema: Any) -> str | None:
    from ood_perception.trainer.seg_data import open_reader

    if wanted:
        return wanted
    splits = open_reader(root, None, schema).config.splits
    for name in ("test", "val"):
        if splits.get(name):
            return name
    return None


def _fit_himplos(model: Any, data: Any, mean: Any, std: Any, device: Any, max_frames: int = 32,
                 max_pixels: int = 50000, seed: int = 0) -> Any:
    import torch
    import torch.nn.functional as F

    from ood_perception.scoring import get_scorer
    from ood_perception.trainer.seg_data import collate

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


def evaluate_model(model: Any, ckpt: dict[str, Any], data: Any, scorers: tuple[str, ...] = DEFAULT_SCORERS,
                   train_data: Any = None, batch_size: int = 4, device: Any = "cpu",
                   overlay_count: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of ``model`` on ``data`` (:class:`SegmentationData`).

    Returns:
        ``(metrics, raw)`` where raw holds per-scorer ID/OOD score arrays (for plots) and overlays.
    """
    import torch

    with torch.no_grad():
        return _evaluate_model(model, ckpt, data, scorers, train_data, batch_size, torch.device(device), overlay_count)


def _evaluate_model(model: Any, ckpt: dict[str, Any], data: Any, scorers: tuple[str, ...], train_data: Any,
                    batch_size: int, device: Any, overlay_count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch.nn.functional as F

    from ood_perception.metrics import ood_metrics, segmentation_metrics
    from ood_perception.scoring import get_scorer
    from ood_perception.trainer.seg_data import collate

    model = model.to(device).eval()
    k = model.num_classes
    mean, std = ckpt.get("mean", [0.485, 0.456, 0.406]), ckpt.get("std", [0.229, 0.224, 0.225])
    built = {}
    for name in scorers:
        if name == "himplos":
            if train_data is None:
                continue
            built[name] = _fit_himplos(model, train_data, mean, std, device).to(device)
        else:
            built[name] = get_scorer(name).to(device)
    heads = ("logits", "camera_logits", "lidar_logits")
    pix_gt: list[np.ndarray] = []
    pix_pred: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    pt_gt: list[np.ndarray] = []
    pt_pred: dict[str, list[np.ndarray]] = {h: [] for h in heads}
    scores: dict[str, dict[str, list[np.ndarray]]] = {lvl: {s: [] for s in built} for lvl in ("pixel", "point")}
    is_ood: dict[str, list[np.ndarray]] = {"pixel": [], "point": []}
    overlays = []
    for start in range(0, len(data), batch_size):
        samples = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        batch = collate(samples, mean, std)
        out = model(batch["image"].to(device), batch["lidar"].to(device))
        size = out["logits"].shape[-2:]
        maps = {}
        for name, sc in built.items():
            if sc.needs_features:
                m = sc(out["logits"], out["features"])
                m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            else:
                m = sc(out["logits"])
            maps[name] = m.float().cpu().numpy()
        preds = {h: out[h].argmax(1).cpu().numpy() for h in heads}
        for b, s in enumerate(samples):
            if s.has_pixel_labels:
                pix_gt.append(s.target.ravel())
                for h in heads:
                    pix_pred[h].append(preds[h][b].ravel())
                sel = (s.target.ravel() != 255) | s.pixel_ood.ravel()
                is_ood["pixel"].append(s.pixel_ood.ravel()[sel])
                for name in built:
                    scores["pixel"][name].append(maps[name][b].ravel()[sel])
            inview = s.flat_index >= 0
            lab = inview & ((s.point_target != 255) | s.point_ood)
            if lab.any():
                fi = s.flat_index[lab]
                pt_gt.append(s.point_target[lab])
                for h in heads:
                    pt_pred[h].append(preds[h][b].ravel()[fi])
                is_ood["point"].append(s.point_ood[lab])
                for name in built:
                    scores["point"][name].append(maps[name][b].ravel()[fi])
            if len(overlays) < overlay_count and s.pixel_ood.any():
                first = scorers[0] if scorers[0] in maps else next(iter(maps))
                overlays.append({"name": s.name, "image": s.image, "pred": preds["logits"][b],
                                 "score": maps[first][b], "ood": s.pixel_ood, "scorer": first})
    names = ckpt.get("class_names")
    metrics: dict[str, Any] = {"num_frames": len(data), "classes": names, "segmentation": {}, "ood": {}}
    for level, gt, pred in (("pixel", pix_gt, pix_pred), ("point", pt_gt, pt_pred)):
        if not gt:
            continue
        g = np.concatenate(gt).astype(np.int64)
        metrics["segmentation"][level] = {}
        for h in heads:
            sm = segmentation_metrics(g, np.concatenate(pred[h]).astype(np.int64), k, 255, names)
            sm.pop("confusion_matrix")
            metrics["segmentation"][level][h.replace("_logits", "") if h != "logits" else "fused"] = sm
    raw: dict[str, Any] = {"scores": {}, "overlays": overlays}
    for level in ("pixel", "point"):
        if not is_ood[level]:
            continue
        y = np.concatenate(is_ood[level])
        if y.all() or not y.any():
            metrics["ood"][level] = {"skipped": "needs both ID and OOD samples", "n_ood": int(y.sum()), "n": int(y.size)}
            continue
        metrics["ood"][level] = {}
        raw["scores"][level] = {}
        for name in built:
            s = np.concatenate(scores[level][name]).astype(np.float64)
            metrics["ood"][level][name] = ood_metrics(s, y)
            raw["scores"][level][name] = (s, y)
    return metrics, raw


def _plots(raw: dict[str, Any], out: Path, colors: np.ndarray) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    written = []

    def save(fig: Any, name: str) -> None:
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, out / name)
        written.append(name)

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
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def evaluate(checkpoint: str | os.PathLike[str], data_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
             split: str | None = None, scorers: tuple[str, ...] = DEFAULT_SCORERS, schema: Any = None,
             cache_dir: str | None = None, device: str = "cpu", overlays: int = 6, plots: bool = True,
             fit_split: str | None = "train", show_progress: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint; writes metrics.json, report.md and figures to ``out_dir``."""
    from ood_perception.data.config import atomic_write_bytes
    from ood_perception.models import load_checkpoint
    from ood_perception.trainer.seg_data import SegmentationData

    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    root = Path(data_root)
    split = _pick_split(root, split, schema)
    size = ckpt.get("input_size") or [128, 256]
    data = SegmentationData(root, split, size, cache_dir, schema, show_progress=show_progress)
    if data.config.class_names != list(ckpt["class_names"]):
        raise ValueError(f"{root}: classes {data.config.class_names} differ from the checkpoint's {list(ckpt['class_names'])}")
    train_data = None
    if "himplos" in scorers and fit_split:
        train_data = SegmentationData(root, fit_split, size, cache_dir, schema, show_progress=show_progress)
    metrics, raw = evaluate_model(model, ckpt, data, tuple(scorers), train_data, device=device,
                                  overlay_count=overlays if plots else 0)
    metrics["checkpoint"] = str(Path(checkpoint).resolve())
    metrics["data"] = str(root.resolve())
    metrics["split"] = split
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _plots(raw, out, np.asarray(ckpt.get("colors") or data.config.colors, dtype=np.uint8)) if plots else []
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    header = {"checkpoint": metrics["checkpoint"], "data": metrics["data"], "split": split,
              "frames": len(data), "input size": size}
    atomic_write_bytes(out / "report.md", _report(metrics, figures, header).encode())
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ood-perception evaluate``."""
    parser.add_argument("checkpoint", help="model.pt / last.pt written by `train segmentation`")
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--out", help="output dir (default: next to the checkpoint, eval/)")
    parser.add_argument("--split", help="split to evaluate (default: test, else val, else all)")
    parser.add_argument("--scorers", default=",".join(DEFAULT_SCORERS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--schema", help="CARLA-OOD schema YAML")
    parser.add_argument("--cache-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overlays", type=int, default=6, help="overlay images to draw")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Entry of ``ood-perception evaluate``."""
    import torch

    torch.set_num_threads(1)
    out = args.out or str(Path(args.checkpoint).resolve().parent / "eval")
    scorers = tuple(s.strip() for s in args.scorers.split(",") if s.strip())
    m = evaluate(args.checkpoint, args.data, out, args.split, scorers, args.schema, args.cache_dir, args.device,
                 args.overlays, not args.no_plots, show_progress=not args.quiet)
    seg = m["segmentation"].get("pixel") or m["segmentation"].get("point")
    ood = m["ood"].get("pixel") or m["ood"].get("point") or {}
    head = scorers[0]
    line = f"mIoU {100 * seg['fused']['miou']:.1f}%" if seg else "no labels"
    if head in ood:
        line += f", {head}: AUROC {100 * ood[head]['auroc']:.1f}%, FPR95 {100 * ood[head]['fpr95']:.1f}%"
    print(f"{line} -> {out}/report.md")
    return 0
