"""``ood-perception synth``: render a synthetic camera + LiDAR dataset (SemanticKITTI layout, optional rosbag2)."""

from __future__ import annotations

import argparse
import json

from ood_perception.commands._help import PlainHelpFormatter


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x256, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def register(subparsers) -> None:
    """Add the ``synth`` subcommand."""
    p = subparsers.add_parser(
        "synth",
        formatter_class=PlainHelpFormatter,
        help="render a synthetic driving dataset (camera + LiDAR + labels + anomalies)",
        description="Render procedural street sequences with Open3D ray casting into the SemanticKITTI layout "
        "(velodyne, labels, image_2, image_2_label, calib.txt, poses.txt) plus dataset.yaml; the same seed "
        "gives byte-identical files. Knobs that set difficulty live in a world config YAML (docs/world.md).",
    )
    p.add_argument("--out", required=True, help="output dataset root")
    p.add_argument("--sequences", type=int, default=10, help="number of sequences (default 10)")
    p.add_argument("--frames", type=int, default=20, help="frames per sequence (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--weather", default=None,
                   help="comma-separated weathers to use (day,dusk,night,fog,rain; default: the config's mix)")
    p.add_argument("--split", default="auto", choices=["auto", "train", "val", "test"],
                   help="auto: ~70/10/20%% train/val/test sequences; or one split for all (default auto)")
    p.add_argument("--anomaly-rate", type=float, default=None,
                   help="share of val/test frames with anomalies (default 0.5 from the config)")
    p.add_argument("--train-anomaly-rate", type=float, default=None,
                   help="share of train frames with anomalies (default 0: clean training data)")
    p.add_argument("--size", type=_size, default=None, help="camera resolution WxH (default 512x256)")
    p.add_argument("--bag", choices=["sqlite3", "mcap"], default=None, help="also write a rosbag2 per sequence under OUT/bags/")
    p.add_argument("--config", default=None, help="world config YAML (see ood_perception/config/world.yaml)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes, one sequence each (default 1)")
    p.add_argument("--overwrite", action="store_true", help="write into OUT even if it already holds a dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``synth``."""
    from ood_perception.world.config import (
        WorldConfig,  # lazy: the command's implementation loads only when it runs (--help stays fast)
    )
    from ood_perception.world.synth import generate_dataset

    cfg = WorldConfig.from_yaml(args.config) if args.config else WorldConfig()
    if args.anomaly_rate is not None:
        cfg.anomalies.rate = args.anomaly_rate
    if args.train_anomaly_rate is not None:
        cfg.anomalies.train_rate = args.train_anomaly_rate
    if args.size is not None:
        cfg.camera.width, cfg.camera.height = args.size
    cfg = WorldConfig.from_dict(cfg.to_dict())  # re-validate after the overrides
    weathers = [w.strip() for w in args.weather.split(",") if w.strip()] if args.weather else None
    try:
        summary = generate_dataset(args.out, args.sequences, args.frames, args.seed, cfg, args.split, weathers,
                                   args.bag, args.workers, args.overwrite, progress=not args.quiet)
    except FileExistsError:
        raise ValueError(f"{args.out} already holds a dataset (dataset.yaml); add --overwrite to write into it") from None
    print(json.dumps({k: summary[k] for k in ("out", "frames", "frames_per_s", "splits")}))
    return 0
