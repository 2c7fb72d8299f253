"""Segmentation distillation ablation on a trained FusionSegNet checkpoint (issue 8, "segmentation benchmark").

The camera-only and LiDAR-only heads of the checkpoint are the frozen teachers (per pixel, ignore
index 255); the student is the fused head's final 1x1 conv (``model.classifier``), re-initialised
and retrained on the frozen penultimate features, which are computed once per training frame and
cached (:func:`~ood_perception.trainer.distill.cache_segmentation_features`). Every row gets the
same schedule, so only the loss differs:

* ``Vanilla``: CE only; ``Ensemble``: mean of the Vanilla fused logits and both experts' logits;
* ``Uniform KD`` (w = 1/2), ``Best KD`` (lowest-CE expert per batch), ``Ours`` (w = softmax(-CE)),
  alpha = beta = 0.5; optionally ``TCKD only`` / ``NCKD only``.

Each row is evaluated on the test split by :func:`ood_perception.trainer.evaluate.evaluate_model`
(the camera-resolution convention of ``ood-perception evaluate``); the expert parameters are
asserted unchanged after every row. Results go into the ``segmentation`` entry of
``docs/results/distillation.json`` and the report is re-rendered
(:func:`ood_perception.experiments.distill_table.write_report`).

    python -m ood_perception.experiments.distill_seg_table build/default_model/run/model.pt \
        --data build/default_model/world --cache-dir build/default_model/cache
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.data.config import require_classes
from ood_perception.experiments.distill_table import rewrite_report
from ood_perception.models import load_checkpoint
from ood_perception.trainer.evaluate import evaluate_model
from ood_perception.trainer.seg_data import SegmentationData, collate

#: Scorers of the segmentation table (logit scorers; HIMPLoS uses the retrained classifier).
SEG_SCORERS: tuple[str, ...] = ("maxlogit", "energy", "msp", "himplos")
#: Rows run by default (``TCKD only`` / ``NCKD only`` with ``--all-rows``).
SEG_ROWS: tuple[str, ...] = ("Vanilla", "Ensemble", "Uniform KD", "Best KD", "Ours")


def seg_row_configs(base, all_rows: bool = False) -> dict[str, Any]:
    """Row name -> DistillConfig (None for Ensemble)."""
    rows = {"Vanilla": replace(base, alpha=0.0, beta=0.0), "Ensemble": None,
            "Uniform KD": replace(base, teacher="uniform"), "Best KD": replace(base, teacher="best"),
            "Ours": replace(base, teacher="weighted")}
    if all_rows:
        rows["TCKD only"] = replace(base, beta=0.0)
        rows["NCKD only"] = replace(base, alpha=0.0)
    return rows


class EnsembleSegNet:
    """Callable with FusionSegNet's interface whose ``logits`` are the mean of the fused, camera and
    LiDAR logits (the paper's Ensemble averages probabilities; averaging logits keeps every logit
    scorer defined). ``features``/``classifier`` stay the fused head's, so feature scorers are not
    meaningful for it and are not run."""

    def __init__(self, model) -> None:
        self.model = model
        self.classifier = model.classifier
        self.num_classes = model.num_classes

    def to(self, device):
        self.model.to(device)
        return self

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, image, lidar):
        out = dict(self.model(image, lidar))
        out["logits"] = (out["logits"] + out["camera_logits"] + out["lidar_logits"]) / 3
        return out


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    seg = metrics["segmentation"]["pixel"]
    res: dict[str, Any] = {"miou": seg["fused"]["miou"], "miou_camera": seg["camera"]["miou"],
                           "miou_lidar": seg["lidar"]["miou"]}
    for name, m in metrics["ood"]["pixel"].items():
        res[name] = {"fpr95": m["fpr95"], "auroc": m["auroc"]}
    return res


def _expert_state(model) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fusion.classifier.")}


def _assert_experts_unchanged(model, ref: dict[str, Any]) -> None:
    import torch  # lazy: torch is heavy to import and only this path needs it

    for k, v in model.state_dict().items():
        if k in ref and not torch.equal(v, ref[k]):
            raise RuntimeError(f"distillation changed frozen parameter {k}")


def run_seg_ablation(checkpoint: str, data: str, cache_dir: str | None, seeds=(0, 1, 2), epochs: int = 8,
                     lr: float = 1e-2, batch_size: int = 8, alpha: float = 0.5, beta: float = 0.5,
                     all_rows: bool = False, log=None) -> dict[str, Any]:
    """Run every row and seed; returns ``{"meta": ..., "results": [per seed], "checkpoint_row": ...}``."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.trainer.distill import (  # lazy: torch is heavy to import and only this path needs it
        DistillConfig,
        cache_segmentation_features,
        distill_segmentation_cached,
    )

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.time()
    model, ckpt = load_checkpoint(checkpoint)
    size = ckpt["input_size"]
    mean, std = ckpt["mean"], ckpt["std"]
    train = SegmentationData(data, "train", size, cache_dir, show_progress=False)
    test = SegmentationData(data, "test", size, cache_dir, show_progress=False)
    require_classes(data, train.config.class_names, ckpt["class_names"])
    ref = _expert_state(model)
    orig = {k: v.clone() for k, v in model.classifier.state_dict().items()}

    def batches(ds):
        for s in range(0, len(ds), 8):
            b = collate([ds[i] for i in range(s, min(s + 8, len(ds)))], mean, std)
            yield b["image"], b["lidar"], b["target"]

    cache = cache_segmentation_features(model, batches(train))
    # loss on the feature grid (labels nearest-downsampled, as the HIMPLoS fit of evaluate does): 16x
    # cheaper than at the input size; the student's and experts' logits are native there, no upsampling
    h, w = cache["features"].shape[-2:]
    cache["target"] = torch.nn.functional.interpolate(cache["target"][:, None].float(), size=(h, w),
                                                      mode="nearest")[:, 0].to(torch.uint8)
    t_cache = time.time() - t0
    log(f"cached {len(cache['target'])} train frames in {t_cache:.0f}s")

    def evaluate(m, scorers=SEG_SCORERS):
        metrics, _ = evaluate_model(m, ckpt, test, scorers, train_data=train if "himplos" in scorers else None)
        return _summary(metrics)

    t1 = time.time()
    checkpoint_row = evaluate(model)
    log(f"checkpoint head: {json.dumps(checkpoint_row)} ({time.time() - t1:.0f}s)")
    base = DistillConfig(alpha=alpha, beta=beta, epochs=epochs, lr=lr, batch_size=batch_size, reinit=True)
    results = []
    for seed in seeds:
        rows: dict[str, Any] = {}
        vanilla_state = None
        for row, cfg in seg_row_configs(base, all_rows).items():
            ts = time.time()
            if cfg is None:
                model.classifier.load_state_dict(vanilla_state)
                rows[row] = evaluate(EnsembleSegNet(model), tuple(s for s in SEG_SCORERS if s != "himplos"))
            else:
                torch.manual_seed(seed)
                hist = distill_segmentation_cached(model.classifier, cache, replace(cfg, seed=seed))
                model.classifier.requires_grad_(False)
                _assert_experts_unchanged(model, ref)
                if row == "Vanilla":
                    vanilla_state = {k: v.clone() for k, v in model.classifier.state_dict().items()}
                rows[row] = evaluate(model)
                rows[row]["final_loss"] = hist[-1]
            log(f"seed {seed} {row}: mIoU {rows[row]['miou'] * 100:.1f} "
                + " ".join(f"{s} {rows[row][s]['fpr95'] * 100:.1f}/{rows[row][s]['auroc'] * 100:.1f}"
                           for s in SEG_SCORERS if s in rows[row]) + f" ({time.time() - ts:.0f}s)")
        results.append({"seed": seed, "rows": rows})
    model.classifier.load_state_dict(orig)
    _assert_experts_unchanged(model, ref)
    meta = {"checkpoint": str(checkpoint), "data": str(data), "input_size": list(size),
            "train_frames": len(train), "test_frames": len(test), "seeds": list(seeds),
            "distill": asdict(base), "scorers": list(SEG_SCORERS), "cache_seconds": t_cache,
            "seconds": time.time() - t0,
            "machine": f"{platform.machine()} CPU, torch threads {torch.get_num_threads()}"}
    return {"meta": meta, "results": results, "checkpoint_row": checkpoint_row}


def _fmt(vals: list[float]) -> str:
    a = np.asarray(vals, float) * 100
    return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"


def seg_findings(seg: dict[str, Any]) -> list[str]:
    """Plain statements comparing the rows, computed from the numbers."""
    res = seg["results"]
    rows = list(res[0]["rows"])

    def vals(row, key, metric=None):
        return np.array([r["rows"][row][key] if metric is None else r["rows"][row][key][metric] for r in res])

    out = []
    for other in [r for r in ("Vanilla", "Uniform KD", "Best KD", "Ensemble") if r in rows]:
        parts = []
        for s in SEG_SCORERS:
            if s not in res[0]["rows"][other]:
                continue
            a, b = vals("Ours", s, "fpr95"), vals(other, s, "fpr95")
            d = (a - b).mean() * 100
            sd = np.sqrt((a.std(ddof=1) ** 2 + b.std(ddof=1) ** 2) / 2) * 100 if len(a) > 1 else 0.0
            parts.append(f"{s} {d:+.1f} pts{' (beyond 1 std)' if abs(d) > sd else ''}")
        dm = (vals("Ours", "miou") - vals(other, "miou")).mean() * 100
        out.append(f"- Ours vs {other}: pixel FPR95 change {', '.join(parts)}; mIoU {dm:+.1f} pts.")
    ck = seg["checkpoint_row"]
    van = vals("Vanilla", "miou").mean()
    out.append(f"- Retraining the 1x1 classifier from scratch with CE (Vanilla) gives mIoU {van * 100:.1f}% vs "
               f"{ck['miou'] * 100:.1f}% for the checkpoint's own head (trained end to end with focal + Lovasz + FM); "
               f"HIMPLoS FPR95 {vals('Vanilla', 'himplos', 'fpr95').mean() * 100:.1f}% vs {ck['himplos']['fpr95'] * 100:.1f}%.")
    wc = [r["rows"]["Ours"].get("final_loss", {}).get("w_camera") for r in res]
    if all(w is not None for w in wc):
        out.append(f"- Teacher weights (Ours, last epoch, mean over batches): camera {np.mean(wc):.3f}, LiDAR "
                   f"{1 - np.mean(wc):.3f}: the two experts have near-equal train CE (test mIoU "
                   f"{ck['miou_camera'] * 100:.1f}% vs {ck['miou_lidar'] * 100:.1f}%), so softmax(-CE) is close to "
                   "uniform and Ours can differ little from Uniform KD.")
    if "TCKD only" in rows and "NCKD only" in rows:
        t = np.mean([vals("TCKD only", s, "fpr95").mean() for s in SEG_SCORERS])
        n = np.mean([vals("NCKD only", s, "fpr95").mean() for s in SEG_SCORERS])
        out.append(f"- TCKD only vs NCKD only: mean pixel FPR95 over scorers {t * 100:.1f}% vs {n * 100:.1f}%.")
    out.append("- Differences within the std over seeds are not evidence either way; the std covers only the "
               "head's retraining (one checkpoint, one test world of 48 frames, 3 sequences).")
    return out


def render_section(seg: dict[str, Any]) -> list[str]:
    """Markdown lines of the segmentation section (mean ± sample std over seeds, %)."""
    meta, res, ck = seg["meta"], seg["results"], seg["checkpoint_row"]
    d = meta["distill"]
    rows = list(res[0]["rows"])
    lines = [
        "## Segmentation benchmark (default model's FusionSegNet)", "",
        f"Made by: `{meta['command']}`", "",
        f"Checkpoint `{meta['checkpoint']}` (camera + LiDAR FusionSegNet trained with Feature Mixing on the "
        f"synthetic world `{meta['data']}`, input {meta['input_size'][0]}x{meta['input_size'][1]}, docs/model.md). "
        "Teachers: its camera-only and LiDAR-only heads, per pixel (ignore 255). Student: only the fused head's "
        "final 1x1 conv (`model.classifier`, 48 -> 14), **re-initialised** and retrained on the frozen penultimate "
        f"features of the {meta['train_frames']} train frames, computed once and cached (expert and fused-body "
        "parameters asserted unchanged after every row). "
        f"Schedule for every row: {d['epochs']} epochs, Adam lr {d['lr']}, {d['batch_size']} frames per batch, "
        f"alpha = beta = {d['alpha']} for the KD rows, temperature 1; the loss is computed on the feature grid "
        "(stride 4, labels nearest-downsampled, as evaluate's HIMPLoS fit does) rather than at the input size: "
        "16x cheaper on the shared 2-core CPU (our choice). Ensemble = mean of the Vanilla fused logits "
        "and both experts' logits (HIMPLoS not run for it: it scores the fused classifier's features). "
        f"Seeds {meta['seeds']} vary only the head's initialisation and the frame order (one checkpoint: the "
        "experts are the same for every seed, so the std is the retraining noise only).", "",
        f"Evaluation: `ood_perception.trainer.evaluate.evaluate_model` on the test split ({meta['test_frames']} frames, "
        "sequences 13-15), camera resolution (the convention of `ood-perception evaluate`), pixel level; OOD = "
        "positive; HIMPLoS fitted on the train split's features with the row's classifier. Cells: mean ± std over "
        "seeds, %.", "",
        "| row | mIoU ↑ | " + " | ".join(f"{s} FPR95 ↓ | {s} AUROC ↑" for s in SEG_SCORERS) + " |",
        "|---|---|" + "---|---|" * len(SEG_SCORERS),
    ]
    cells = [f"{ck['miou'] * 100:.1f}"] + [f"{ck[s]['fpr95'] * 100:.1f} | {ck[s]['auroc'] * 100:.1f}" for s in SEG_SCORERS]
    lines.append("| checkpoint head (not retrained, 1 run) | " + " | ".join(cells) + " |")
    for row in rows:
        cells = [_fmt([r["rows"][row]["miou"] for r in res])]
        for s in SEG_SCORERS:
            if s in res[0]["rows"][row]:
                cells.append(_fmt([r["rows"][row][s]["fpr95"] for r in res]) + " | "
                             + _fmt([r["rows"][row][s]["auroc"] for r in res]))
            else:
                cells.append("n/a | n/a")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"Expert heads (test, pixels): camera mIoU {ck['miou_camera'] * 100:.1f}%, "
              f"LiDAR mIoU {ck['miou_lidar'] * 100:.1f}%.", "", "### Segmentation: what held and what did not", ""]
    lines += seg_findings(seg) + meta.get("notes", []) + ["",
              f"Wall time: {meta['seconds']:.0f} s on {meta['machine']} (shared with other jobs).", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--cache-dir")
    p.add_argument("--report", default="docs/results/distillation.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--all-rows", action="store_true", help="also TCKD only / NCKD only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--raw-out", default="build/distill_seg/segmentation.json", help="raw results (kept if rendering fails)")
    a = p.parse_args(argv)
    import torch  # lazy: torch is heavy to import and only this path needs it

    torch.set_num_threads(a.threads)
    seg = run_seg_ablation(a.checkpoint, a.data, a.cache_dir, tuple(a.seeds), a.epochs, a.lr, a.batch_size,
                           all_rows=a.all_rows)
    seg["meta"]["command"] = "python -m ood_perception.experiments.distill_seg_table " + " ".join(argv or sys.argv[1:])

    raw_out = Path(a.raw_out)
    raw_out.parent.mkdir(parents=True, exist_ok=True)
    raw_out.write_text(json.dumps(seg, indent=1))

    path = Path(a.report)
    j = path.with_suffix(".json")
    raw = json.loads(j.read_text())
    raw["segmentation"] = seg
    j.write_text(json.dumps(raw, indent=1))  # re-written atomically with the report just below
    rewrite_report(j, path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
