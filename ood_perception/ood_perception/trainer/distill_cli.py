"""``ood-perception train distill``: dark-knowledge distillation of a trained checkpoint's joint head.

    ood-perception train distill --task recognition CHECKPOINT [--data DIR] [--out OUT.pt]
    ood-perception train distill --task segmentation CHECKPOINT [--data DIR] [--out OUT.pt]

Both freeze the experts and retrain only the joint (fused) head (:mod:`ood_perception.trainer.distill`),
then write a new checkpoint (atomically) with the distillation settings and before/after metrics.
The ablation table (docs/results/distillation.md) has its own command:
``python -m ood_perception.experiments.distill_table --data DIR`` (``--task segmentation CHECKPOINT``
for the segmentation section).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ood_perception.data.config import require_classes
from ood_perception.distill.teacher import TEACHER_MODES
from ood_perception.models import load_checkpoint
from ood_perception.models.recognition import load_recognition_checkpoint
from ood_perception.trainer.checkpoint import atomic_torch_save
from ood_perception.trainer.distill import DistillConfig, distill_recognition_head, distill_segmentation
from ood_perception.trainer.recognition import (
    embed_arrays,
    evaluate_recognition,
    load_splits,
    save_recognition_checkpoint,
)
from ood_perception.trainer.seg_data import SegmentationData, collate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ood-perception train distill``."""
    parser.add_argument("checkpoint", nargs="?", help="trained checkpoint (recognition or segmentation)")
    parser.add_argument("--task", choices=("recognition", "segmentation"), default="recognition")
    parser.add_argument("--data", help="dataset (default: the one recorded in the checkpoint)")
    parser.add_argument("--out", help="output checkpoint (default: CHECKPOINT with suffix .distilled.pt)")
    parser.add_argument("--alpha", type=float, default=0.5, help="TCKD weight (paper advice 0.5; its code 0.2)")
    parser.add_argument("--beta", type=float, default=0.5, help="NCKD weight (paper advice 0.5; its code 0.8)")
    parser.add_argument("--teacher", choices=TEACHER_MODES, default="weighted",
                        help="weighted = softmax(-CE) per batch (paper); uniform / best: ablations")
    parser.add_argument("--epochs", type=int, default=10, help="head retraining epochs (paper: 10)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reinit", action="store_true", help="re-initialise the joint head first")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--feature-mixing", action="store_true", help="add FM outlier entropy (recognition)")
    parser.add_argument("--fm-channels", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")


def _config(args):

    return DistillConfig(alpha=args.alpha, beta=args.beta, teacher=args.teacher, epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, reinit=args.reinit, temperature=args.temperature,
                         feature_mixing=args.feature_mixing, fm_channels=args.fm_channels, seed=args.seed)


def _recognition(args, cfg) -> int:


    model, ckpt = load_recognition_checkpoint(args.checkpoint)
    data = args.data or ckpt.get("train", {}).get("data")
    if not data:
        raise ValueError("no --data given and the checkpoint records no dataset")
    splits, class_names = load_splits(data, int(ckpt.get("clip_len", 16)), int(ckpt.get("size", 64)))
    require_classes(data, class_names, ckpt["class_names"])
    before = evaluate_recognition(model, splits, device=args.device)
    expert_state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("joint_head.")}
    zv, zf = embed_arrays(model, splits["train"][0], splits["train"][1], device=args.device)
    history = distill_recognition_head(model.cpu(), zv, zf, splits["train"][2], cfg)
    for k, v in model.state_dict().items():  # the experts must not have moved
        if k in expert_state and not torch.equal(v, expert_state[k]):
            raise RuntimeError(f"distillation changed expert parameter {k}")
    after = evaluate_recognition(model, splits, device=args.device)
    print(f"before: {before}\nafter:  {after}", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".distilled.pt")
    extra = {k: v for k, v in ckpt.items() if k not in ("task", "model_config", "state_dict", "class_names")}
    extra.update(metrics=after, distill={"config": asdict(cfg), "history": history, "metrics_before": before,
                                         "command": " ".join(sys.argv), "source": str(args.checkpoint)})
    save_recognition_checkpoint(out, model, class_names, extra)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _segmentation(args, cfg) -> int:


    model, ckpt = load_checkpoint(args.checkpoint, args.device)
    train = ckpt.get("train", {}) or {}
    data = args.data or train.get("data")
    if not data:
        raise ValueError("no --data given and the checkpoint records no dataset")
    ds = SegmentationData(data, "train", ckpt["input_size"])
    mean, std = ckpt["mean"], ckpt["std"]

    class Batches:  # re-iterable, shuffled per pass
        def __init__(self) -> None:
            self.gen = torch.Generator().manual_seed(cfg.seed)

        def __iter__(self):
            order = torch.randperm(len(ds), generator=self.gen).tolist()
            for s in range(0, len(order), cfg.batch_size):
                b = collate([ds[i] for i in order[s:s + cfg.batch_size]], mean, std)
                yield b["image"], b["lidar"], b["target"]

    history = distill_segmentation(model, Batches(), cfg, device=args.device)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".distilled.pt")
    new = dict(ckpt)
    new["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    new["distill"] = {"config": asdict(cfg), "history": history, "command": " ".join(sys.argv),
                      "source": str(args.checkpoint)}
    atomic_torch_save(new, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Distil CHECKPOINT's joint head for ``--task``; returns the exit code."""

    torch.set_num_threads(max(1, args.threads))
    if not args.checkpoint:
        raise ValueError("CHECKPOINT is required")
    cfg = _config(args)
    return _recognition(args, cfg) if args.task == "recognition" else _segmentation(args, cfg)
