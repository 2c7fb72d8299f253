"""Post-processing cost of the object decisions: the shipped object settings against those before
2026-12-05 (``object.low_height`` 0, ``object.min_points`` 20, ``object.support_points`` 0), side by side.

    .venv/bin/python bench/object_step.py [--drives build/drives/val_8601 ...] [--out bench/results]

Two :class:`~ood_perception.pipeline.FusionPipeline` (vehicle.yaml, the default model and its object bank)
process the same rendered drives frame by frame, alternating, so machine load affects both alike; the
figure is ``FusionResult.timings["post"]`` (everything after the model: upsampling, point scoring, ground,
candidates, bank lookups, tracking, alerts), its median per frame, and the number of candidates. Drives
default to one anomaly-free and one never-seen-type validation drive (``bench/alert_eval.py --split val``
renders them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from _common import machine_info, machine_line, markdown_table, write_results

from ood_perception import runtime
from ood_perception.data.semantickitti import SemanticKittiReader
from ood_perception.pipeline import FusionConfig, FusionFrame, FusionPipeline
from ood_perception.replay.params import node_parameters, settings_from_params

ROOT = Path(__file__).resolve().parent.parent
BEFORE = {"low_height": 0.0, "min_points": 20, "support_points": 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drives", nargs="+", default=[str(ROOT / "build/drives/val_8601"),
                                                    str(ROOT / "build/drives/vala-world_oe_eval_8501")])
    ap.add_argument("--params", default=str(ROOT / "ood_perception/config/vehicle.yaml"))
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    args = ap.parse_args()
    fusion = dict(settings_from_params(node_parameters(args.params)).fusion)
    shipped = FusionConfig(**fusion)
    configs = {"shipped": shipped, "before": replace(shipped, objects=replace(shipped.objects, **BEFORE))}
    backend = runtime.load(None, intra_op_threads=1)
    post: dict[str, list[float]] = {k: [] for k in configs}
    cands: dict[str, list[int]] = {k: [] for k in configs}
    for drive in args.drives:
        pipes = {k: FusionPipeline(backend, c) for k, c in configs.items()}
        reader = SemanticKittiReader(drive)
        for i in range(len(reader)):
            f = reader[i]
            frame = FusionFrame(stamp=float(f.stamp if f.stamp is not None else 0.1 * i), image=f.image, points=f.points,
                                calib=f.calib)
            for k, pipe in pipes.items():  # alternating on the same frame
                res = pipe.process(frame)
                post[k].append(res.timings["post"] * 1e3)
                cands[k].append(len(res.objects))
    med = {k: statistics.median(v) for k, v in post.items()}
    rows = [[k, f"{med[k]:.1f}", f"{statistics.quantiles(post[k], n=20)[18]:.1f}", f"{statistics.mean(cands[k]):.1f}",
             len(post[k])] for k in configs]
    ratio = med["shipped"] / med["before"]
    md = (f"# Object decisions' post-processing, shipped vs before (2026-12-05)\n\n{machine_line()}; drives "
          f"{', '.join(Path(d).name for d in args.drives)}; `.venv/bin/python bench/object_step.py`.\n\n"
          + markdown_table(["settings", "post p50 [ms]", "post p95 [ms]", "candidates per frame", "frames"], rows)
          + f"\nRatio shipped / before (p50): {ratio:.2f}\n")
    write_results("object_step", {"drives": args.drives, "before": BEFORE, "post_ms": post, "candidates": cands,
                                  "median_ms": med, "ratio_p50": ratio, "machine": machine_info()}, md, Path(args.out))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
