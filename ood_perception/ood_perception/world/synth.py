"""Generate a synthetic dataset on disk: SemanticKITTI layout (+ dataset.yaml), optional rosbag2 per sequence
(stamps = ``times.txt`` + :data:`BAG_START_NS`).

The same arguments give byte-identical files: planning and rendering are seeded per sequence and
frame, PNGs are encoded with fixed parameters, and no file records wall-clock time. Sequences are
independent, so ``workers > 1`` renders them in parallel processes with the same bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ood_perception.data.semantickitti import SemanticKittiWriter
from ood_perception.world.config import WorldConfig
from ood_perception.world.labels import world_dataset_config
from ood_perception.world.labels import world_dataset_config as _cfg
from ood_perception.world.render import SequenceRenderer
from ood_perception.world.scenario import DatasetPlan, SequencePlan, plan_dataset

#: ROS time of a bag's first frame (``times.txt`` starts at 0, which ROS reads as an unset stamp
#: and the fusion node drops): bag stamps are ``times.txt`` + 1 s.
BAG_START_NS = 1_000_000_000

#: Fewest frames a spawned worker process is given: its start-up (a Python interpreter importing
#: Open3D, NumPy and the world) costs about as much as rendering ~20 frames on this 2-core box
#: (~2 s; rendering ~0.1 s per 512x256 frame). Smaller datasets render in fewer processes.
MIN_FRAMES_PER_WORKER = 20


def dataset_config_for(plan: DatasetPlan, extra: dict[str, Any] | None = None):
    """The ``dataset.yaml`` content of a planned dataset (label space, splits, generator record)."""
    info = {
        p.name: {
            "split": p.split,
            "weather": p.weather,
            "frames": p.frames,
            "anomaly_frames": sum(e.stop - e.start for e in p.episodes),
            "anomalies": sorted({a.name for e in p.episodes for a in e.anomalies}),
        }
        for p in plan.sequences
    }
    record = {
        "generator": {"name": "ood_perception.world", "seed": plan.seed, "sequences": len(plan.sequences),
                      "frames": plan.sequences[0].frames if plan.sequences else 0, "config": plan.config.to_dict()},
        "protocol": "train sequences have no anomalies unless anomalies.train_rate > 0; val/test sequences show "
                    "anomalies in about anomalies.rate of their frames; anomaly raw ids are ood_ids (learning id 0).",
        "sequence_info": info,
    }
    record.update(extra or {})
    return world_dataset_config(splits=plan.splits, extra=record)


def render_sequence(plan: SequencePlan, config: WorldConfig, out: str | os.PathLike[str], bag: str | None = None,
                    on_frame: Callable[[int], None] | None = None, overwrite: bool = False) -> dict[str, float]:
    """Render and write one planned sequence; returns stage timings in seconds."""


    t0 = time.perf_counter()
    renderer = SequenceRenderer(plan, config)
    writer = SemanticKittiWriter(out, _cfg(), png_compression=config.png_compression)
    poses = [renderer._t0_inv @ renderer.lidar_pose_world(i) for i in range(plan.frames)]
    writer.write_sequence_meta(plan.name, renderer.calib, poses, [round(plan.time(i), 9) for i in range(plan.frames)])
    bag_writer = None
    if bag:
        from ood_perception.data.bag import BagWriter

        bag_writer = BagWriter(Path(out) / "bags" / plan.name, storage=bag, camera_rate=config.frame_rate,
                               lidar_rate=config.frame_rate, overwrite=overwrite, start_ns=BAG_START_NS,
                               label_map=_cfg())
    t_build = time.perf_counter() - t0
    t_write = 0.0
    try:
        for i in range(plan.frames):
            frame = renderer.render(i)
            tw = time.perf_counter()
            writer.write_frame(frame)
            if bag_writer is not None:
                bag_writer.write_frame(frame)
            t_write += time.perf_counter() - tw
            if on_frame is not None:
                on_frame(1)
        if bag_writer is not None:
            bag_writer.close()
    except BaseException:
        if bag_writer is not None:
            bag_writer.abort()
        raise
    return {"build": t_build, "write": t_write, **renderer.timings}


def _worker(args: tuple) -> dict[str, float]:
    plan, config, out, bag, overwrite = args
    return render_sequence(plan, config, out, bag, None, overwrite)


def generate_dataset(out: str | os.PathLike[str], sequences: int = 1, frames: int = 50, seed: int = 0,
                     config: WorldConfig | None = None, split: str = "auto", weathers: list[str] | None = None,
                     bag: str | None = None, workers: int = 1, overwrite: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Plan, render and write a dataset under ``out``.

    Args:
        out: dataset root (``dataset.yaml``, ``sequences/XX/...``, ``bags/XX`` when ``bag``).
        sequences, frames: how many sequences of how many frames.
        seed: the seed; equal arguments give byte-identical files.
        config: world knobs (default :class:`WorldConfig`).
        split: ``auto`` or one split name for every sequence (see ``scenario.split_names``).
        weathers: restrict the weather mix.
        bag: also write a rosbag2 per sequence with this storage (``sqlite3`` or ``mcap``).
        workers: parallel processes (one sequence each; at most one per :data:`MIN_FRAMES_PER_WORKER`
            frames, at most one per sequence: the same bytes either way).
        overwrite: allow writing into a directory that already holds a dataset.
        progress: show a tqdm bar.

    Returns:
        A summary: frames, seconds, frames per second, stage timings, splits, the workers used and
        asked for.
    """


    cfg = config or WorldConfig()
    out = Path(out)
    if (out / "dataset.yaml").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a dataset (dataset.yaml); pass overwrite=True to write into it")
    if bag not in (None, "sqlite3", "mcap"):
        raise ValueError(f"bag storage must be sqlite3 or mcap, got {bag!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    plan = plan_dataset(cfg, sequences, frames, seed, split, weathers)
    asked = workers
    workers = max(1, min(workers, len(plan.sequences), plan.num_frames // MIN_FRAMES_PER_WORKER))
    out.mkdir(parents=True, exist_ok=True)
    dataset_config_for(plan).write_yaml(out / "dataset.yaml")
    totals: dict[str, float] = {}
    bar = tqdm(total=plan.num_frames, desc="synth", unit="frame", disable=not progress)
    try:
        if workers == 1:
            for seq in plan.sequences:
                t = render_sequence(seq, cfg, out, bag, bar.update, overwrite)
                for k, v in t.items():
                    totals[k] = totals.get(k, 0.0) + v
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                jobs = [(seq, cfg, str(out), bag, overwrite) for seq in plan.sequences]
                for seq, t in zip(plan.sequences, pool.map(_worker, jobs), strict=True):
                    bar.update(seq.frames)
                    for k, v in t.items():
                        totals[k] = totals.get(k, 0.0) + v
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {"frames": plan.num_frames, "seconds": seconds, "frames_per_s": plan.num_frames / seconds if seconds else 0.0,
            "stages_s": totals, "splits": plan.splits, "out": str(out), "workers": workers,
            "workers_asked": asked}
