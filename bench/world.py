"""Benchmark of the synthetic world: frames/s for the default camera + LiDAR frame written to disk.

Renders and writes ``--sequences x --frames`` (default 2 x 50) default frames (512x256 camera, 64x1024 LiDAR, test
split so anomalies are present) with ``--workers`` processes and writes ``bench/results/world.json``:
frames/s, per-stage seconds per frame, the share of anomaly frames whose anomaly point share lies in
0.5-10%, and the machine's CPU count/load. Run: ``.venv/bin/python bench/world.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=2)
    p.add_argument("--frames", type=int, default=50, help="frames per sequence (50: the generator's default)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "world.json"))
    args = p.parse_args(argv)

    import numpy as np

    from ood_perception.data import SemanticKittiReader
    from ood_perception.data.config import atomic_write_bytes
    from ood_perception.world.config import WorldConfig
    from ood_perception.world.synth import generate_dataset

    tmp = Path(tempfile.mkdtemp(prefix="world-bench-"))
    try:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        summary = generate_dataset(tmp / "ds", args.sequences, args.frames, args.seed, WorldConfig(), split="test",
                                   workers=args.workers, progress=True)
        wall = time.perf_counter() - t0
        load1 = os.getloadavg()[0]
        shares = []
        reader = SemanticKittiReader(tmp / "ds")
        ood = np.array(reader.config.ood_ids)
        for f in reader:
            s = np.isin(f.point_labels & 0xFFFF, ood).mean()
            if s > 0:
                shares.append(float(s))
        size = sum(q.stat().st_size for q in (tmp / "ds").rglob("*") if q.is_file())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = summary["frames"]
    result = {
        "benchmark": "world: default camera 512x256 + LiDAR 64x1024 frame rendered and written (SemanticKITTI layout)",
        "frames": n,
        "workers": args.workers,
        "frames_per_s": round(n / wall, 3),
        "seconds_per_frame_per_stage": {k: round(v / n, 4) for k, v in summary["stages_s"].items()},
        # process start-up, Open3D import and planning: wall time not inside any stage of any worker
        "overhead_s": round(wall - sum(summary["stages_s"].values()) / min(args.workers, args.sequences), 2),
        "minutes_for_2000_frames": round(2000 / (n / wall) / 60, 2),
        "bytes_per_frame": int(size / n),
        "anomaly_frames": len(shares),
        "anomaly_point_share": {"min": round(min(shares), 4), "median": round(float(np.median(shares)), 4),
                                "max": round(max(shares), 4),
                                "within_0.5_10_percent": round(float(np.mean([(0.005 <= s <= 0.10) for s in shares])), 3)}
        if shares else None,
        "machine": {"cpus": os.cpu_count(), "load_avg_1min_at_start": round(load0, 2),
                    "load_avg_1min_at_end": round(load1, 2), "python": sys.version.split()[0],
                    "platform": platform.platform()},
    }
    atomic_write_bytes(Path(args.out), (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
