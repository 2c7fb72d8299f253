"""``ood-perception synth``: render a synthetic camera + LiDAR dataset (SemanticKITTI layout, optional rosbag2)."""

from __future__ import annotations

import argparse
import json
import sys

from ood_perception.commands._help import PlainHelpFormatter
from ood_perception.world.synth_args import add_synth_arguments, run_synth


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
    add_synth_arguments(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``synth``."""
    summary = run_synth(args)
    if summary["workers"] < summary["workers_asked"]:  # said, not silently changed (--help says why)
        # here, not at the top: world.synth loads the renderer (Open3D), which --help must not; run_synth loaded it
        from ood_perception.world.synth import MIN_FRAMES_PER_WORKER

        print(f"synth: rendered with {summary['workers']} worker(s) instead of {summary['workers_asked']}: one per "
              f"sequence and per {MIN_FRAMES_PER_WORKER} frames at most (a worker's start-up costs about that much "
              "rendering)", file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("out", "frames", "frames_per_s", "splits", "workers")}))
    return 0
