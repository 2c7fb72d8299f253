"""Replay throughput in "x real time" for a 10 Hz camera + LiDAR bag at the default sizes.

Replays a synthetic drive (``ood-perception synth --bag mcap``: the world's default 512x256
camera and 64x1024 LiDAR at 10 Hz, cached in ``bench/.cache``) or ``--bag`` through the same path
as ``ood-perception replay`` (decode, fusion pipeline, output bag written) with the default model
(or ``--model``) and writes ``bench/results/replay.json`` / ``.md``: x real time (frames x sensor
period / wall time; target >= 3x on 2 cores), per-frame latency p50/p95 and the share of it spent
in the model (so a slow result says whether the model or replay is the bottleneck).

usage: python bench/replay.py [--model DIR] [--bag BAG] [--frames N] [--threads T] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_line, markdown_table, write_results

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 with one line when the model or the world is missing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--bag", default=None, help="bag to replay (default: a cached synthetic 10 Hz drive)")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="20 frames")
    args = p.parse_args(argv)
    frames = 20 if args.quick else args.frames

    import torch

    torch.set_num_threads(args.threads)
    from ood_perception.replay.demo import DemoError, check_model, synthesize_drive
    from ood_perception.replay.engine import ReplaySettings, replay_bag
    from ood_perception.replay.outbag import OutputBag
    from ood_perception.replay.run import build_pipeline

    try:
        model = check_model(args.model)
        bag = Path(args.bag) if args.bag else synthesize_drive(HERE / ".cache", frames, seed=1)
    except DemoError as exc:
        print(f"bench/replay.py: {exc}", file=sys.stderr)
        return 1
    settings = ReplaySettings()
    pipeline = build_pipeline(model, "onnxruntime", settings, threads=args.threads)
    infer: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        # one warm-up pass of 2 frames (ONNX Runtime initialisation is not replay throughput)
        replay_bag(bag, build_pipeline(model, "onnxruntime", settings, threads=args.threads),
                   ReplaySettings(max_frames=2), None)
        t0 = time.perf_counter()
        with OutputBag(Path(tmp) / "output.mcap") as out:
            res = replay_bag(bag, pipeline, settings, out,
                             on_frame=lambda rec, r: infer.append(r.timings.get("infer", float("nan"))))
        wall = time.perf_counter() - t0
    stamps = np.array([f.stamp_ns for f in res.frames], float) * 1e-9
    period = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.1
    real = len(res.frames) * period
    lat = np.array([f.latency_s for f in res.frames]) * 1e3
    data = {
        "bag": str(bag), "model": str(model), "backend": "onnxruntime", "threads": args.threads,
        "frames": len(res.frames), "sensor_period_s": period, "bag_time_s": real, "wall_s": wall,
        "x_real_time": real / wall, "target_x_real_time": 3.0,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
        "model_share_of_latency": float(np.nansum(infer) / np.sum(lat / 1e3)),
    }
    md = "\n".join([
        "# Replay throughput", "", machine_line(), "",
        markdown_table(["frames", "bag time [s]", "wall [s]", "x real time", "p50 [ms]", "p95 [ms]", "model share"],
                       [[data["frames"], f"{real:.1f}", f"{wall:.1f}", f"{data['x_real_time']:.2f}",
                         f"{data['latency_ms']['p50']:.0f}", f"{data['latency_ms']['p95']:.0f}",
                         f"{data['model_share_of_latency']:.0%}"]]),
    ])
    j, _ = write_results("replay", data, md)
    print(f"{data['x_real_time']:.2f}x real time ({len(res.frames)} frames, {wall:.1f} s) -> {j}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
