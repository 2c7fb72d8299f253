"""``ood-perception run``: start the ROS 2 nodes from ROS params files in one process.

The same params files the launch files use (``config/vehicle.yaml``, ``carla.yaml``,
``recognition.yaml``); a node starts when its name has a section in one of them.
"""

from __future__ import annotations

import argparse

from ood_perception.commands._help import PlainHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser(
        "run",
        formatter_class=PlainHelpFormatter,
        help="run the ROS 2 nodes (fusion segmentation, action recognition) from params files",
        description="Start fusion_segmentation and/or action_recognition in one process with ROS params "
        "files (rclpy --ros-args --params-file), straight to active, on a MultiThreadedExecutor. "
        "Stops on Ctrl-C / SIGTERM.",
    )
    p.add_argument("--params", action="append", required=True, metavar="YAML",
                   help="ROS params file (repeatable), e.g. ood_perception/config/vehicle.yaml")
    p.add_argument("--model", default=None, metavar="DIR", help="model directory (overrides model_dir)")
    p.add_argument("--backend", default=None, choices=["onnxruntime", "torch", "tensorrt"],
                   help="inference backend (overrides the params file)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (overrides the params file)")
    p.add_argument("--nodes", default=None,
                   help="comma-separated nodes to start (default: every node with a section in the params files)")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                   help="topic remapping, e.g. camera/image:=/carla/ego_vehicle/rgb_front/image (repeatable)")
    p.add_argument("--use-sim-time", action="store_true", help="use /clock (simulators, bag playback)")
    p.add_argument("--no-transport-profile", action="store_true",
                   help="do not apply the shipped DDS transport profile (config/fastdds_large_data.xml or "
                   "cyclonedds.xml, chosen by RMW_IMPLEMENTATION); FASTDDS_DEFAULT_PROFILES_FILE / CYCLONEDDS_URI "
                   "you set yourself always win")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the nodes; 0 on a clean stop, 1 when a node cannot start."""
    from ood_perception.ros.runner import (
        run_nodes,  # lazy: the command's implementation loads only when it runs (--help stays fast)
    )

    overrides: dict[str, object] = {}
    if args.model is not None:
        overrides["model_dir"] = str(args.model)
    if args.backend is not None:
        overrides["backend"] = args.backend
    if args.device is not None:
        overrides["device"] = args.device
    elif args.backend == "tensorrt":  # TensorRT runs on CUDA only; replay picks cuda the same way
        overrides["device"] = "cuda"
    if args.use_sim_time:
        overrides["use_sim_time"] = True
    if args.duration is not None and not args.duration > 0:
        raise ValueError(f"--duration must be > 0, got {args.duration}")
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()] if args.nodes else None
    return run_nodes(args.params, nodes=nodes, overrides=overrides, remaps=args.remap, duration=args.duration,
                     transport=not args.no_transport_profile)
