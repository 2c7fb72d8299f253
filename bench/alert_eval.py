"""Alert-level evaluation of the fusion pipeline's decisions on held-out synthetic drives and a real clip.

Renders drives with ``ood-perception synth --split SPLIT --seed S --sequences 1 --frames N`` (clean
drives with ``--anomaly-rate 0``) into ``build/drives/`` (cached: a drive is rendered once), replays
each through :class:`~ood_perception.pipeline.FusionPipeline` with the params file's settings
(:func:`ood_perception.replay.dataset.replay_dataset`: the dataset's frames and ``calib.txt``, no
transport) and evaluates with :class:`~ood_perception.evaluation.AlertEvaluator` (frame AUROC of
``OodAlert.score``, anomaly-object recall, anomaly-free frames in ALERT, object AUROC) and
:class:`~ood_perception.evaluation.ComponentAccumulator` (SMIYC component F1 of ``ood/mask``).
Each ``--decision`` is run on the same frames. A real camera clip (``--real-video``, default
opencv-doc's vtest.avi) is run camera-only: share of frames in ALERT, DEGRADED and judged a scene
shift; and again with the first clean drive's LiDAR scans and calibration paired frame by frame
(synthetic LiDAR under a real image, so the object decisions have candidates and LiDAR evidence).

Usage (the figures of docs/model.md)::

    nice -n 10 python bench/alert_eval.py --clean-seeds 8201,8202,8203 --anomaly-seeds 8211,8212,8213 \\
        --decision pixels --decision objects --out bench/results/alert_eval_test.json

Object score per observation (object AUROC): the track score of the candidate holding most of the
object's points (0 when no candidate holds >= 5 of them: the decisions never saw it as an object)
for object decisions; the mean point score for pixel decisions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from _common import machine_info, markdown_table, write_results

from ood_perception import runtime
from ood_perception.data import DatasetConfig, SemanticKittiReader
from ood_perception.evaluation import (
    AlertEvaluator,
    ComponentAccumulator,
    ComponentConfig,
    candidate_object_scores,
)
from ood_perception.pipeline import FusionConfig, FusionFrame, FusionPipeline
from ood_perception.replay.dataset import replay_dataset
from ood_perception.replay.params import node_parameters, settings_from_params

ROOT = Path(__file__).resolve().parent.parent
DRIVES = ROOT / "build" / "drives"
REAL_VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


def render(split: str, seed: int, frames: int, clean: bool, world_config: str | None = None) -> Path:
    """The drive ``build/drives/<split>[a]_<seed>`` (rendered when missing); with a world config (e.g.
    one whose ``anomalies.types`` lists the types a model did not see) ``<split>a-<config stem>_<seed>``."""
    tag = f"-{Path(world_config).stem}" if world_config and not clean else ""
    out = DRIVES / f"{split}{'' if clean else 'a'}{tag}_{seed}"
    if (out / "bags").is_dir() and (out / "sequences" / "00" / "times.txt").is_file():
        return out
    cmd = [sys.executable, "-m", "ood_perception.cli", "synth", "--out", str(out), "--split", split, "--seed", str(seed),
           "--sequences", "1", "--frames", str(frames), "--bag", "mcap", "--quiet", "--overwrite"]
    if clean:
        cmd += ["--anomaly-rate", "0"]
    elif world_config:
        cmd += ["--config", str(world_config)]
    subprocess.run(cmd, check=True)
    return out


def fusion_config(params_file: str | None, decision: str, overrides: dict[str, Any]) -> FusionConfig:
    kw: dict[str, Any] = {}
    if params_file:
        kw = dict(settings_from_params(node_parameters(params_file)).fusion)
    kw["decision"] = decision
    kw.update(overrides)
    return FusionConfig(**kw)


def evaluate_drives(drives: list[Path], backend: Any, config: FusionConfig, clean: list[Path]) -> dict[str, Any]:
    # the anomaly types the model saw in training (model.json outlier_types) are left out
    ds_cfg = DatasetConfig.from_yaml(drives[0] / "dataset.yaml").excluding(backend.spec.outlier_types)
    ev = AlertEvaluator(ds_cfg.ood_ids, excluded_ids=ds_cfg.excluded_ids)
    comp = ComponentAccumulator(ComponentConfig.scaled_to((256, 512)))
    pipe = FusionPipeline(backend, config)
    shifts = 0
    per_frame: list[list[Any]] = []  # for paired comparisons of two runs (same drives, same frames)
    t0 = time.perf_counter()
    for drive in drives:
        for frame, res in replay_dataset(pipe, drive):
            iv = res.in_view
            plab = frame.point_labels[iv] if (iv is not None and frame.point_labels is not None) else None
            kw: dict[str, Any] = {}
            if plab is not None:
                kw = {"point_labels": plab, "point_scores": res.point_scores}
                if res.by_objects:
                    kw["object_scores"] = candidate_object_scores(res.objects, plab)
            ev.add(drive.name, float(res.stamp), res.level, res.frame_score, pixel_labels=frame.pixel_labels,
                   pixel_instances=frame.pixel_instances, **kw)
            if res.mask is not None:
                comp.add(res.mask > 0, ds_cfg.ood_mask(frame.pixel_labels))
            per_frame.append([drive.name, round(float(res.stamp), 3), float(res.frame_score), int(res.level),
                              int(ds_cfg.ood_mask(frame.pixel_labels).sum()) if frame.pixel_labels is not None else None])
            shifts += int(res.scene_shift)
    out = ev.result()
    clean_share = ev.select([d.name for d in clean]).result()["false_alerts"]["frame_share"] if clean else None
    return {"alerts": out, "clean_drives_alert_share": clean_share, "components": comp.result(), "scene_shift_frames": shifts,
            "decision_source": dict(pipe.decision_source), "region_threshold": pipe.region_threshold,
            "pixel_threshold": pipe.threshold, "scene_shift_fraction": pipe.scene_shift_fraction,
            "track_window": pipe.objects.track_window, "seconds": time.perf_counter() - t0,
            "per_frame": {"fields": ["drive", "stamp", "frame_score", "level", "anomaly_pixels"], "rows": per_frame}}


def lidar_scans(root: Path) -> list[tuple[np.ndarray, Any]]:
    """The LiDAR scans and calibrations of a rendered drive, in order (to pair with a real clip)."""
    reader = SemanticKittiReader(root)
    return [(f.points, f.calib) for f in (reader[i] for i in range(len(reader)))]


def evaluate_video(path: str, backend: Any, config: FusionConfig, max_frames: int, size: tuple[int, int],
                   lidar: list[tuple[np.ndarray, Any]] | None = None) -> dict[str, Any]:
    """Frames of a real video: camera-only (no LiDAR: decisions on pixels, as in the node), or with
    ``lidar``'s scans paired in turn (a synthetic world's LiDAR and calibration under a real image:
    the object decisions get candidates and LiDAR evidence, as with a real sensor pair)."""
    cap = cv2.VideoCapture(path)
    pipe = FusionPipeline(backend, config)
    levels, shifts, fractions, regions = [], 0, [], []
    i = 0
    while i < max_frames:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        points, calib = lidar[i % len(lidar)] if lidar else (None, None)
        res = pipe.process(FusionFrame(stamp=i / 10.0, image=rgb, points=points, calib=calib))
        levels.append(res.level)
        shifts += int(res.scene_shift)
        fractions.append(res.anomalous_fraction)
        regions.append(len(res.regions))
        i += 1
    cap.release()
    n = max(len(levels), 1)
    lv = np.asarray(levels)
    return {"video": path, "lidar": "paired synthetic scans" if lidar else "none", "frames": len(levels),
            "alert_share": float((lv == 2).sum() / n),
            "degraded_share": float((lv == 3).sum() / n), "scene_shift_share": shifts / n,
            "anomalous_fraction": {"min": float(np.min(fractions)), "median": float(np.median(fractions))},
            "regions_per_frame": float(np.mean(regions))}


def summary(r: dict[str, Any]) -> dict[str, Any]:
    a = r["alerts"]
    fr, ob, fa, os_ = a["frame"], a["objects"], a["false_alerts"], a["object_scores"]
    return {
        "clean_drives_frames_in_alert": r["clean_drives_alert_share"],
        "anomaly_free_frames_in_alert": fa.get("frame_share"),
        "acceptance_recall": ob["acceptance"].get("recall"),
        "acceptance_objects": ob["acceptance"].get("n"),
        "frame_auroc": fr["scores"].get("auroc"),
        "object_auroc": os_["observations"].get("auroc"),
        "object_track_auroc": os_["tracks"].get("auroc"),
        "false_episodes_per_min": fa.get("episodes_per_minute"),
        "component_f1_mean": r["components"].get("f1_mean"),
        "scene_shift_frames": r["scene_shift_frames"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test")
    ap.add_argument("--clean-seeds", default="8201,8202,8203")
    ap.add_argument("--anomaly-seeds", default="8211,8212,8213")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--model", default=None, help="model directory (default: the packaged default model)")
    ap.add_argument("--params", default=str(ROOT / "ood_perception" / "config" / "vehicle.yaml"))
    ap.add_argument("--decision", action="append", choices=["pixels", "objects", "auto"])
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="FusionConfig override")
    ap.add_argument("--real-video", default=REAL_VIDEO)
    ap.add_argument("--real-frames", type=int, default=100)
    ap.add_argument("--out", default=None, help="results JSON (default: print only)")
    ap.add_argument("--world-config", default=None,
                    help="world config YAML for the anomaly drives (e.g. anomalies.types: the types to evaluate)")
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    clean = [render(args.split, int(s), args.frames, True) for s in args.clean_seeds.split(",") if s]
    anomalous = [render(args.split, int(s), args.frames, False, args.world_config)
                 for s in args.anomaly_seeds.split(",") if s]
    backend = runtime.load(args.model, intra_op_threads=1)
    results: dict[str, Any] = {"seeds": {"split": args.split, "clean": args.clean_seeds, "anomaly": args.anomaly_seeds,
                                         "frames": args.frames, "world_config": args.world_config},
                               "outlier_types_excluded": backend.spec.outlier_types, "params": args.params, "overrides": overrides,
                               "model": args.model or "default", "machine": machine_info(), "decisions": {}}
    for decision in args.decision or ["objects"]:
        cfg = fusion_config(args.params, decision, overrides)
        r = evaluate_drives(clean + anomalous, backend, cfg, clean)
        if args.real_video and Path(args.real_video).is_file():
            r["real_video"] = evaluate_video(args.real_video, backend, cfg, args.real_frames, (512, 256))
            if clean:  # the same clip with the first clean drive's LiDAR scans paired frame by frame
                r["real_video_synthetic_lidar"] = evaluate_video(args.real_video, backend, cfg, args.real_frames,
                                                                 (512, 256), lidar_scans(clean[0]))
                r["real_video_synthetic_lidar"]["lidar_drive"] = clean[0].name
        r["summary"] = summary(r)
        results["decisions"][decision] = r
        print(decision, json.dumps(r["summary"]), json.dumps(r.get("real_video", {})),
              json.dumps(r.get("real_video_synthetic_lidar", {})), flush=True)
    if args.out:
        rows = [[d, *(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r["summary"].values()),
                 f"{r.get('real_video', {}).get('alert_share', float('nan')):.2f}",
                 f"{r.get('real_video_synthetic_lidar', {}).get('alert_share', float('nan')):.2f}"]
                for d, r in results["decisions"].items()]
        head = ["decision", *next(iter(results["decisions"].values()))["summary"].keys(), "real clip ALERT share",
                "real clip + synthetic LiDAR ALERT share"]
        md = (f"# Alert evaluation ({args.split} seeds clean {args.clean_seeds}, anomaly {args.anomaly_seeds})\n\n"
              + markdown_table(head, rows))
        write_results(Path(args.out).stem, results, md, Path(args.out).parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
