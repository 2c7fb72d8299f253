"""The ``synth`` arguments as one definition: the ``ood-perception synth`` command adds them to its
parser, and the table generators (``experiments``) render their worlds from the same argument lists
in-process with :func:`synth_from_args` (a subprocess per world cost a Python start-up and imports
per world, and its spawned workers each as many again).

Only argparse at import time: ``ood-perception --help`` registers these without loading the renderer.
"""

from __future__ import annotations

import argparse
from typing import Any


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x256, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``synth`` options to ``p``."""
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
    p.add_argument("--workers", type=int, default=1,
                   help="parallel processes, one sequence each (default 1; fewer when the dataset is too small "
                        "to pay their start-up: at most one per 20 frames)")
    p.add_argument("--overwrite", action="store_true", help="write into OUT even if it already holds a dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_synth(args: argparse.Namespace) -> dict[str, Any]:
    """Render the dataset ``args`` describe (parsed by :func:`add_synth_arguments`); returns
    :func:`~ood_perception.world.synth.generate_dataset`'s summary. A folder that already holds a
    dataset without ``--overwrite`` is a ValueError naming the flag."""
    # lazy: the renderer (Open3D) loads only when a world is rendered, not when a parser is built
    from ood_perception.world.config import WorldConfig
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
        return generate_dataset(args.out, args.sequences, args.frames, args.seed, cfg, args.split, weathers,
                                args.bag, args.workers, args.overwrite, progress=not args.quiet)
    except FileExistsError:
        raise ValueError(f"{args.out} already holds a dataset (dataset.yaml); add --overwrite to write into it") from None


def synth_from_args(argv: list[str]) -> dict[str, Any]:
    """``ood-perception synth ARGV`` as a function call (same arguments, same bytes), in this process."""
    p = argparse.ArgumentParser(prog="ood-perception synth")
    add_synth_arguments(p)
    return run_synth(p.parse_args(argv))
