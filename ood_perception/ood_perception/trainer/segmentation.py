"""``ood-perception train segmentation``: the camera + LiDAR fusion network with outlier synthesis.

Loss per step (Feature Mixing paper, arXiv 2505.16985, for the fused head; unimodal heads trained
jointly for the distillation room)::

    L = focal(fused) + lovasz_w * lovasz(fused) + uni_w * (focal(camera) + focal(lidar))
        + gamma1 * L_ent(outliers)            # synthesis: fm | npmix (none: no term)
        + gamma2 * A2D(camera, lidar)         # --a2d
        + oe_w * L_ent(real anomaly pixels)   # outlier_exposure.enabled (off by default)

Outlier exposure (Hendrycks et al., "Deep Anomaly Detection with Outlier Exposure", ICLR 2019):
the labelled anomaly pixels of the training split (render it with ``synth --train-anomaly-rate``
and a world config whose ``anomalies.types`` lists the exposure types) are pushed to uniform
predictions of the fused head with the same normalised-entropy term as the synthesised outliers;
weight 0.5 is the paper's lambda for image classifiers (not verified against its code). The types
the model saw end up in ``model.json`` ``outlier_types`` and evaluations leave them out.

Outliers go through the *same* fused head; batch-norm running statistics are not updated by
outlier batches (momentum set to 0 for that pass, our choice: ID statistics stay clean for test).

Reproducibility: seeds fixed; data order per epoch from ``DistributedSampler(seed, epoch)``;
flips, channel draws and NP-Mix draws from explicit generators whose states are checkpointed
with model, optimizer, scheduler, AMP scaler, step and position in the epoch. ``last.pt`` is
written atomically every ``checkpoint_every`` steps and at each epoch end, so a killed run resumes
(automatically, from ``--out``) and reproduces the uninterrupted run's next steps exactly.
DDP: started with ``torchrun --nproc_per_node N``, each rank gets its shard; rank 0 writes.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

#: Synthesis methods (same as ood_perception.synthesis.SYNTHESIS_METHODS; kept here so the CLI
#: does not import torch).
SYNTHESIS_METHODS: tuple[str, ...] = ("none", "fm", "npmix")

#: Default config path (inside the ROS package's config/ directory).
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "train_segmentation.yaml"

#: Every training setting with its default; the YAML and ``--set`` override these.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "input_size": [128, 256],  # (H, W)
    "epochs": 10,
    "batch_size": 4,
    "max_steps": None,  # stop (and checkpoint) after this many optimiser steps
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "poly_power": 0.9,  # lr = lr0 * (1 - step/total)^power
    "hflip": True,
    "amp": True,  # CUDA only
    "num_threads": 1,  # CPU threads: 1 is fastest on a shared, busy machine (measured 10-50x)
    "checkpoint_every": 50,
    "log_every": 10,
    "device": "auto",
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "lidar_norm": "data",  # "data": mean/std of the training LiDAR; "default": the model's constants
    "model": {"camera_backbone": "resnet34", "pretrained": None, "camera_channels": 64, "lidar_channels": 64,
              "lidar_width": 32, "head_channels": 64, "head_kernel": 3, "tiny_width": 16},
    "loss": {"focal_gamma": 2.0, "lovasz_weight": 1.0, "unimodal_weight": 1.0},
    "synthesis": {"method": "fm", "n": 10, "gamma1": 3.0, "per_sample": True,
                  "npmix": {"queue_size": 256, "k": 3, "alpha": 10.0, "anchors": 256}},
    "a2d": {"enabled": False, "gamma2": 1.0, "max_pixels": 8192},
    "outlier_exposure": {"enabled": False, "weight": 0.5},
    "data": {"train_split": "train", "schema": None, "cache_dir": None},
}


# ------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Recursive dict merge; unknown keys are an error naming the key."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if k not in base:
            raise ValueError(f"unknown training setting '{path}{k}' (known: {sorted(base)})")
        if isinstance(base[k], dict) and isinstance(v, dict):
            out[k] = deep_merge(base[k], v, f"{path}{k}.")
        else:
            out[k] = v
    return out


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DEFAULTS <- YAML file <- overrides, validated."""

    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"training config not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: must be a mapping of settings")
        cfg = deep_merge(cfg, data)
    if overrides:
        cfg = deep_merge(cfg, overrides)
    validate_config(cfg)
    return cfg


def validate_config(cfg: dict[str, Any]) -> None:
    """Raise ValueError naming the first bad setting."""
    if len(cfg["input_size"]) != 2 or any(int(v) < 16 for v in cfg["input_size"]):
        raise ValueError(f"input_size must be [H, W] with H, W >= 16, got {cfg['input_size']}")
    if any(int(v) % 4 for v in cfg["input_size"]):
        raise ValueError(f"input_size must be divisible by 4 (feature stride), got {cfg['input_size']}")
    for key in ("epochs", "batch_size", "checkpoint_every", "log_every"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg["synthesis"]["method"] not in SYNTHESIS_METHODS:
        raise ValueError(f"synthesis.method must be one of {SYNTHESIS_METHODS}, got {cfg['synthesis']['method']!r}")
    oe = cfg["outlier_exposure"]
    if not isinstance(oe.get("enabled"), bool) or not float(oe.get("weight", 0)) > 0:
        raise ValueError(f"outlier_exposure needs enabled: true|false and weight > 0, got {oe}")
    if cfg["lidar_norm"] not in ("data", "default"):
        raise ValueError(f"lidar_norm must be 'data' or 'default', got {cfg['lidar_norm']!r}")
    if float(cfg["lr"]) <= 0:
        raise ValueError(f"lr must be > 0, got {cfg['lr']}")


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=3", "c=[1, 2]"]`` -> nested dict (values parsed as YAML)."""

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out



def dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (0, 1, 0 otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def train(cfg: dict[str, Any], data_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
          resume: bool = True, show_progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train (see the module docstring); implemented in :mod:`ood_perception.trainer.seg_train`."""
    from ood_perception.trainer.seg_train import (  # lazy: torch is heavy to import and only this path needs it
        train as _train,
    )

    return _train(cfg, data_root, out_dir, resume=resume, show_progress=show_progress, command=command)


# ------------------------------------------------------------------------------------------
# CLI (train task protocol: add_arguments(parser), run(args) -> int)
# ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ood-perception train segmentation``."""
    parser.add_argument("--data", required=True, help="dataset root (SemanticKITTI layout, or any layout with --schema)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="training YAML (default: %(default)s)")
    parser.add_argument("--out", default="runs/segmentation", help="output dir: last.pt, model.pt, tensorboard/")
    parser.add_argument("--schema", help="CARLA-OOD schema YAML (paths, label map, OOD ids)")
    parser.add_argument("--synthesis", choices=SYNTHESIS_METHODS, help="outlier synthesis (default from config: fm)")
    parser.add_argument("--a2d", action=argparse.BooleanOptionalAction, default=None, help="add the A2D loss")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (checkpointed; resumable)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--backbone", choices=("resnet34", "mobilenet_v2", "tiny"), help="camera encoder")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    parser.add_argument("--cache-dir", help="npz cache of preprocessed frames")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any setting, e.g. synthesis.n=16")
    parser.add_argument("--no-resume", action="store_true", help="ignore OUT/last.pt and start over")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Merge config file, ``--set`` and the named flags (flags win)."""
    over = parse_set(args.set)
    named = {"seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "max_steps": args.max_steps, "device": args.device,
             "input_size": list(args.input_size) if args.input_size else None}
    over.update({k: v for k, v in named.items() if v is not None})
    if args.synthesis:
        over.setdefault("synthesis", {})["method"] = args.synthesis
    if args.a2d is not None:
        over.setdefault("a2d", {})["enabled"] = bool(args.a2d)
    if args.backbone:
        over.setdefault("model", {})["camera_backbone"] = args.backbone
    if args.schema:
        over.setdefault("data", {})["schema"] = args.schema
    if args.cache_dir:
        over.setdefault("data", {})["cache_dir"] = args.cache_dir
    return load_config(args.config, over)


def run(args: argparse.Namespace) -> int:
    """Entry of ``ood-perception train segmentation``."""
    cfg = config_from_args(args)
    summary = train(cfg, args.data, args.out, resume=not args.no_resume, show_progress=not args.quiet,
                    command=" ".join(sys.argv))
    if dist_info()[0] == 0:
        last = summary["history"][-1]["total"] if summary["history"] else float("nan")
        where = summary.get("model", summary["last"])
        print(f"trained {summary['steps']} steps ({summary['epochs_done']} epochs), last loss {last:.4f}: {where}")
    return 0
