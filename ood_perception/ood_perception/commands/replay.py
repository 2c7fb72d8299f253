"""``ood-perception replay``: rosbag2 replay evaluation through the nodes' pipeline (see replay/)."""

from __future__ import annotations

import argparse
import sys

from ood_perception.commands._help import PlainHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``replay`` subcommand."""
    p = subparsers.add_parser(
        "replay",
        formatter_class=PlainHelpFormatter,
        help="replay rosbag2 drives through the fusion pipeline: output bag, metrics, HTML report",
        description="Replay rosbag2 recordings (sqlite3 or mcap) in bag-time order through the same pipeline "
        "objects as the fusion node; writes DIR/output/ (a rosbag2 directory: ros2 bag info/play and rosbags open it), "
        "DIR/metrics.json, DIR/timing.json, DIR/report.html and DIR/state.npz (per bag under DIR/<bag>/ when several "
        "bags or --shard are given, plus pooled metrics and report in DIR). The extrinsics come from the bag's "
        "/tf_static and the label map from the bag (or a dataset.yaml next to it), so a `synth --bag` drive needs no "
        "other flag. Shards replayed apart (--shard i/n, e.g. one per array job task) pool with "
        "`replay --merge DIR_0 ... DIR_n-1 --out DIR`. "
        "Exit code 1 when a bag is damaged (damaged parts are skipped and reported; the rest is replayed). "
        "Ctrl-C or SIGTERM stops between messages and writes the results up to the stop (exit code 130 / 143; "
        "a second signal stops at once without results).",
    )
    p.add_argument("bags", nargs="*", metavar="BAG", help="bag directories or single .mcap/.db3 files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier replay in --out (refused otherwise)")
    p.add_argument("--merge", nargs="+", metavar="SHARD_DIR",
                   help="instead of replaying: pool the outputs of `replay --shard i/n` runs (all n of them) into "
                   "--out: metrics.json and report.html equal to one run over all the bags")
    p.add_argument("--params", help="ROS params file of the nodes (e.g. ood_perception/config/vehicle.yaml)")
    p.add_argument("--model", help="exported model directory (default: the shipped default model)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--workers", type=int, default=1, help="bags replayed in parallel processes (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="model threads per worker (ONNX Runtime / torch intra-op); 0 (default) = the usable cores "
                   "shared by the workers")
    p.add_argument("--shard", help="i/n: replay only every n-th bag from i (bags sorted by path)")
    p.add_argument("--calib", metavar="CALIB_TXT",
                   help="KITTI calib.txt whose Tr (P2 offset folded in) gives the LiDAR->camera extrinsics, "
                   "overriding the bag's /tf_static and the params file's")
    p.add_argument("--extrinsics", choices=["auto", "params"], default="auto",
                   help="auto (default): the LiDAR->camera transform of the bag's /tf_static, else the params file's "
                   "lidar_to_camera.* (else the node's default); params: always the params file's, as the node does "
                   "live (still checked against /tf_static). The choice is in metrics.json bags[].extrinsics")
    p.add_argument("--labels", help="SemanticKITTI-layout folder with labels (else the bag's camera/labels topic)")
    p.add_argument("--sequence", help="sequence of --labels to use (default: all, in order)")
    p.add_argument("--dataset-config",
                   help="dataset.yaml of the label ids (default: the --labels folder's, else the map in the bag's "
                   "metadata, else a dataset.yaml next to the bag, else SemanticKITTI's when it is the model's); "
                   "a map whose classes are not the model's is refused")
    p.add_argument("--topic", action="append", metavar="NAME=TOPIC",
                   help="map an input (image, camera_info, points, labels) to a bag topic; repeatable")
    p.add_argument("--distro", default="kilted", choices=["humble", "jazzy", "kilted"],
                   help="message types for bags without embedded definitions (default kilted)")
    p.add_argument("--max-frames", type=int, help="stop each bag after this many frames")
    p.add_argument("--serial", action="store_true",
                   help="one frame after the other: do not run the model of the next frame on a second thread while "
                   "the previous one is finished (same outputs; for single-core machines or with --workers >= cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the replay (or the merge of shards); returns 130/143 when stopped by SIGINT/SIGTERM, 1 when a bag
    was damaged, else 0."""
    from ood_perception.replay.engine import (
        ReplaySettings,  # lazy: the command's implementation loads only when it runs (--help stays fast)
    )
    from ood_perception.replay.params import (
        extrinsics_from_kitti_calib,
        node_parameters,
        parse_topic_overrides,
        settings_from_params,
    )
    from ood_perception.replay.run import earlier_results, merge_replays, run_replay

    found = earlier_results(args.out)
    if found and not args.overwrite:
        raise ValueError(f"--out {args.out} already holds an earlier replay's results ({', '.join(found)}); "
                         "pass --overwrite to replace them, or choose another --out")
    if args.merge:
        if args.bags:
            raise ValueError("give either bags to replay or --merge SHARD_DIR..., not both")
        data = merge_replays(args.merge, args.out)
        damaged = [b for b in data["bags"] if b["error"]]
        print(f"merged {len(args.merge)} shard outputs: {len(data['bags'])} bags; report: {args.out}/report.html")
        return 1 if damaged else 0
    if not args.bags:
        raise ValueError("no bag given (or --merge SHARD_DIR... to pool shards)")

    settings = ReplaySettings(distro=args.distro, max_frames=args.max_frames, overlap=not args.serial)
    if args.params:
        settings = settings_from_params(node_parameters(args.params), settings)
    if args.extrinsics == "params":
        settings.extrinsics = "fixed"
    if args.calib:
        settings.T_cam_lidar = extrinsics_from_kitti_calib(args.calib)
        settings.extrinsics, settings.extrinsics_source = "fixed", f"--calib {args.calib}"
    settings.topics.update(parse_topic_overrides(args.topic))
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    results = run_replay(
        args.bags, args.out, settings, model_dir=args.model, backend=args.backend, workers=args.workers,
        shard=args.shard, labels=args.labels, label_sequence=args.sequence, dataset_config=args.dataset_config,
        progress=not args.no_progress, threads=args.threads,
    )
    damaged = [r for r in results if r.error]
    for r in results:
        print(f"{r.bag}: {len(r.frames)} frames, {r.duration_s:.1f} s of bag time at {r.x_real_time:.2f}x real time")
    for r in results:
        if r.extrinsics.get("status") == "differs":
            e = r.extrinsics
            print(f"ood-perception replay: warning: {r.bag}: the extrinsics used ({e['source']}) differ from the bag's "
                  f"/tf_static ({e['frames']}) by {e['translation_m']:.3f} m, {e['rotation_deg']:.2f} deg", file=sys.stderr)
        if r.label_map.startswith("none"):
            print(f"ood-perception replay: warning: {r.bag}: labels not scored: {r.label_map}", file=sys.stderr)
    for r in damaged:
        print(f"ood-perception replay: error: {r.error} (results up to there were written)", file=sys.stderr)
    print(f"report: {args.out}/report.html")
    stopped = next((r for r in results if r.interrupted), None)
    if stopped is not None:
        print(f"ood-perception replay: interrupted ({stopped.interrupted}) in {stopped.bag} after {len(stopped.frames)} "
              f"frames; results up to the stop were written (metrics.json: \"interrupted\": true)", file=sys.stderr)
        return 130 if stopped.interrupted == "SIGINT" else 143
    return 1 if damaged else 0
