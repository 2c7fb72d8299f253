"""Replay throughput in "x real time" for a 10 Hz camera + LiDAR bag at the default sizes.

Replays a synthetic drive (``ood-perception synth --bag mcap``: the world's default camera and
64-beam LiDAR at 10 Hz, with the drive's ``calib.txt`` extrinsics as the demo uses them; cached in
``bench/.cache``) or ``--bag`` through the same path as ``ood-perception replay`` (bag decode,
synchroniser, fusion pipeline, output bag written) with the default model (or ``--model``), ONNX
Runtime, and writes ``bench/results/replay.json`` / ``.md``.

Three modes, each at ``--threads`` ONNX Runtime intra-op threads (default 1; ``--threads 1 2``
adds 2: slower than 1 with the previous, smaller default model, faster with the current one,
1.76x vs 1.43x on an idle 2-core box, 2026-12-04, which is why ``replay --threads`` defaults to the
usable cores), interleaved ``--repeats`` times (default 3; median wall time taken). It times the
frame loop (decode, pipeline, output bag) after a warm-up; the ``replay`` command also pays the
model's first frames, the label map's alert and component scoring and the final pixel metrics and
report (on a labelled 50-frame drive: 0.86x / 1.0x real time at 1 / 2 threads, 2026-12-04):

* ``camera+lidar``: the bag's camera, CameraInfo and LiDAR only (a recorded drive without labels),
  as replay runs by default: the model of frame *k* on a second thread while frame *k-1* is
  post-processed and written and the next messages are decoded (``ReplaySettings.overlap``);
* ``camera+lidar serial``: the same with ``overlap=False`` (one frame after the other, as before),
  side by side, so the overlap's gain is measured in the same run;
* ``+labels``: also the bag's label image topic and per-point labels scored into metrics (what
  replay of a labelled synthetic drive does), overlapped.

x real time = frames x sensor period / wall time (target >= 3x on 2 cores). Per frame: latency
p50/p95, the pipeline's prepare / model / post-processing medians, and the rest of the wall time
per frame (decode, synchroniser, label scoring, output bag). ``model ceiling`` = sensor period /
model time: the x real time replay could reach if everything but the model were free. The machine
and its 1-minute load average before and after are recorded (the box is shared).

usage: python bench/replay.py [--model DIR] [--bag BAG] [--frames N] [--threads 1 [2]] [--repeats R] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, machine_line, markdown_table, write_results

HERE = Path(__file__).resolve().parent
TARGET = 3.0


def _one_pass(bag: Path, pipeline: Any, settings: Any) -> dict[str, Any]:
    """Replay ``bag`` once (output bag to a temporary folder); wall time, frames and per-frame timings."""
    from ood_perception.data.bag_output import OutputBag
    from ood_perception.replay.engine import replay_bag

    timings: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with OutputBag(Path(tmp) / "output") as out:
            res = replay_bag(bag, pipeline, settings, out, on_frame=lambda rec, r: timings.append(dict(r.timings)))
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "frames": res.frames, "timings": timings, "labelled": res.metrics.summary().get("frames_with_labels", 0)}


def _summarise(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repeats of wall time; per-frame statistics pooled over the repeats."""
    frames = passes[0]["frames"]
    stamps = np.array([f.stamp_ns for f in frames], float) * 1e-9
    period = float(np.median(np.diff(stamps))) if len(stamps) > 1 else 0.1
    n = len(frames)
    wall = statistics.median(p["wall_s"] for p in passes)
    lat = np.array([f.latency_s for p in passes for f in p["frames"]]) * 1e3
    stage = {k: float(np.median([t[k] for p in passes for t in p["timings"]])) * 1e3 for k in ("prepare", "infer", "post", "total")}
    per_frame = wall / n * 1e3
    return {
        "frames": n, "labelled_frames": passes[0]["labelled"], "sensor_period_s": period, "bag_time_s": n * period,
        "wall_s": wall, "wall_s_all": [p["wall_s"] for p in passes], "x_real_time": n * period / wall,
        "wall_per_frame_ms": per_frame,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
        "pipeline_ms": stage, "other_per_frame_ms": per_frame - stage["total"],
        "model_share_of_wall": stage["infer"] / per_frame, "model_ceiling_x_real_time": period * 1e3 / stage["infer"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 with one line when the model or the world is missing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--bag", default=None, help="bag to replay (default: a cached synthetic 10 Hz drive)")
    p.add_argument("--frames", type=int, default=50, help="frames of the synthetic drive (default 50 = 5 s)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="ONNX Runtime intra-op threads to compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20 frames, 1 repeat, 1 thread")
    args = p.parse_args(argv)
    frames = 20 if args.quick else args.frames
    repeats = 1 if args.quick else max(1, args.repeats)
    threads = [1] if args.quick else args.threads

    import torch

    torch.set_num_threads(1)
    from ood_perception.app.demo import DemoError, check_model, drive_params, synthesize_drive
    from ood_perception.replay.engine import ReplaySettings, replay_bag
    from ood_perception.replay.params import settings_from_params
    from ood_perception.replay.run import build_pipeline

    try:
        model = check_model(args.model)
        if args.bag:
            bag, params = Path(args.bag), {}
        else:
            bag = synthesize_drive(HERE / ".cache", frames, seed=1)
            params = drive_params(next(q for q in bag.parents if (q / "sequences").is_dir()))
    except DemoError as exc:
        print(f"bench/replay.py: {exc}", file=sys.stderr)
        return 1
    base = settings_from_params(params, ReplaySettings())
    modes = {"camera+lidar": settings_from_params(params, ReplaySettings()),
             "camera+lidar serial": settings_from_params(params, ReplaySettings(overlap=False)), "+labels": base}
    for mode in ("camera+lidar", "camera+lidar serial"):
        modes[mode].topics["labels"] = ""  # no label topic, no per-point label field: nothing scored
        modes[mode].label_field = ""

    load_before = os.getloadavg()[0]
    pipelines = {th: build_pipeline(model, "onnxruntime", base, threads=th) for th in threads}
    for pipe in pipelines.values():  # warm-up (ONNX Runtime initialisation is not replay throughput)
        replay_bag(bag, pipe, settings_from_params(params, ReplaySettings(max_frames=2)), None)
    passes: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(repeats):  # interleaved, so load changes hit every configuration alike
        for mode, settings in modes.items():
            for th, pipe in pipelines.items():
                passes.setdefault((mode, th), []).append(_one_pass(bag, pipe, settings))
    load_after = os.getloadavg()[0]
    runs = [{"mode": mode, "threads": th, **_summarise(ps)} for (mode, th), ps in passes.items()]
    image_hw = None
    from ood_perception.data.bag_reader import BagSource

    with BagSource(bag) as src:
        for m in src.messages([src.resolve(base.topics["image"])]):
            image_hw = [int(m.msg.height), int(m.msg.width)]
            break
        lidar = next(iter(src.messages([src.resolve(base.topics["points"])])))
        lidar_points = int(lidar.msg.height) * int(lidar.msg.width)
    best = max((r for r in runs if r["mode"] == "camera+lidar"), key=lambda r: r["x_real_time"])
    serial = {r["threads"]: r["x_real_time"] for r in runs if r["mode"] == "camera+lidar serial"}
    info = machine_info()
    data = {
        "bag": str(bag), "model": str(model), "backend": "onnxruntime", "repeats": repeats,
        "camera_hw": image_hw, "lidar_points_per_scan": lidar_points,
        "target_x_real_time": TARGET, "best_camera_lidar": {"threads": best["threads"], "x_real_time": best["x_real_time"]},
        "overlap_gain": {str(r["threads"]): r["x_real_time"] / serial[r["threads"]] for r in runs
                         if r["mode"] == "camera+lidar" and serial.get(r["threads"])},
        "target_met": best["x_real_time"] >= TARGET,
        "load_avg_1m": {"before": load_before, "after": load_after}, "cpu_count": os.cpu_count(),
        "runs": runs, "machine": info,
    }
    rows = [[r["mode"], r["threads"], r["frames"], f"{r['x_real_time']:.2f}", f"{r['wall_per_frame_ms']:.0f}",
             f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f}",
             f"{r['pipeline_ms']['prepare']:.0f} / {r['pipeline_ms']['infer']:.0f} / {r['pipeline_ms']['post']:.0f}",
             f"{r['other_per_frame_ms']:.0f}", f"{r['model_ceiling_x_real_time']:.1f}"] for r in runs]
    verdict = "met" if data["target_met"] else "NOT met"
    md = "\n".join([
        "# Replay throughput", "", machine_line(info), "",
        f"Bag: {runs[0]['frames']} frames of a 10 Hz synthetic drive "
        f"(camera {image_hw[1]}x{image_hw[0]}, LiDAR {lidar_points} points per scan), default model, ONNX Runtime; "
        f"median of {repeats} interleaved pass(es); 1-minute load average {load_before:.1f} before, {load_after:.1f} after "
        f"on {os.cpu_count()} CPUs.", "",
        markdown_table(["mode", "ORT threads", "frames", "x real time", "wall/frame [ms]", "latency p50 / p95 [ms]",
                        "prepare / model / post [ms]", "other/frame [ms]", "model ceiling [x]"], rows),
        f"Target >= {TARGET:.0f}x real time (camera+lidar): **{verdict}** (best {best['x_real_time']:.2f}x at "
        f"{best['threads']} thread(s)); overlap vs serial in this run: "
        + ", ".join(f"{v:.2f}x at {k} thread(s)" for k, v in data["overlap_gain"].items())
        + ". With overlap the stages run concurrently, so wall/frame is less than their sum. "
        "'other' = wall/frame minus prepare + model + post (decode, synchroniser, label scoring, output bag; "
        "negative when overlapped); "
        "'model ceiling' = sensor period / model time, the most replay could reach if nothing but the model cost time.",
    ])
    j, _ = write_results("replay", data, md)
    print(f"{best['x_real_time']:.2f}x real time (camera+lidar, {best['threads']} thread(s)); target {verdict} -> {j}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
