"""``ood-perception calibrate MODEL_DIR --data VAL [VAL ...]``: decisions calibrated to a false-alert budget.

Runs the fusion pipeline (object decisions, the params file's settings) over the validation
datasets (SemanticKITTI layout, e.g. ``ood-perception synth --split val`` output; drives with and
without anomalies) - twice when ``object.w_ood`` > 0 and no ``threshold`` parameter is set, the
second time at the calibrated pixel threshold, since the OOD share of each object depends on it
(recorded as ``decision.ood_share_threshold``) - then chooses the pixel threshold, the scene-shift fraction, the region
threshold, the track window and the ALERT persistence (k of n frames) so that at most ``--budget`` (default 1%) of the anomaly-free
frames are in ALERT (:func:`ood_perception.pipeline.calibration.calibrate_decisions`), and
writes them with their validation figures into ``MODEL_DIR/model.json`` (``decision``; atomic
rewrite, the model files and their sha256 are untouched). The nodes and replay use these values
unless a parameter (``threshold``, ``region_threshold``, ``scene_shift_fraction``, ``raise_k``/``raise_n``,
``object.track_window``) overrides them. Use validation seeds that are not the ones you report on.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.atomic import atomic_path
from ood_perception.commands._help import PlainHelpFormatter

#: Fewer budget frames than this (anomaly-free frames x budget) draw a warning: a false alert
#: episode lasts 10-30 frames, so a budget of fewer frames is met only by avoiding every one.
MIN_BUDGET_FRAMES = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` subcommand."""
    p = subparsers.add_parser(
        "calibrate",
        help="calibrate pixel/region thresholds, track window and scene-shift rule to a false-alert budget",
        description=__doc__,
        formatter_class=PlainHelpFormatter,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="exported model directory ('default' = the packaged model, whose model.json is then "
                        "rewritten in place: use --dry-run or a copy of the directory to experiment)")
    p.add_argument("--data", nargs="+", required=True, metavar="VAL_DATASET",
                   help="validation dataset roots (SemanticKITTI layout with dataset.yaml), each sequence one drive")
    p.add_argument("--params", default=None, help="fusion node params file (e.g. ood_perception/config/vehicle.yaml)")
    p.add_argument("--budget", type=float, default=0.01, help="largest share of anomaly-free frames in ALERT (default %(default)s)")
    p.add_argument("--pixel-fpr", type=float, default=0.05, help="share of anomaly-free pixels above the pixel threshold (default %(default)s)")
    p.add_argument("--windows", default="1,2,3,4,5", help="track windows [frames] to choose from (default %(default)s)")
    p.add_argument("--persistence", default="3/5",
                   help="ALERT persistences k/n (k of the last n frames with evidence) to choose from, unless the "
                        "params set raise_k/raise_n, e.g. 2/3,3/5 (default %(default)s: docs/model.md, \"Persistence\")")
    p.add_argument("--max-frames", type=int, default=None, help="at most this many frames per drive")
    p.add_argument("--dry-run", action="store_true", help="print the values, do not write model.json")
    p.add_argument("--frames-cache", default=None, metavar="PATH",
                   help="pickle of the per-frame candidates: written after the model run, read instead of running "
                        "the model when it exists (re-calibrate to another budget in seconds; a local cache, "
                        "pickle: only load files you wrote)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run the calibration; prints the chosen values and figures."""
    # lazy: the CLI imports every command module at start; the model runtime is heavy
    from ood_perception import runtime
    from ood_perception.data import DatasetConfig
    from ood_perception.models.spec import SPEC_NAME, load_spec, write_spec
    from ood_perception.pipeline import FusionConfig, FusionPipeline
    from ood_perception.pipeline.alerts import AlertConfig
    from ood_perception.pipeline.calibration import CalibrationFrame, CalibrationSettings, calibrate_decisions
    from ood_perception.pipeline.fusion import object_bank_unavailable, with_settings_before
    from ood_perception.pipeline.object_bank import BANK_ROLE
    from ood_perception.replay.dataset import replay_dataset
    from ood_perception.replay.params import node_parameters, settings_from_params

    model_dir = runtime.default_model_dir() if args.model_dir == "default" else Path(args.model_dir)
    spec = load_spec(model_dir)
    if spec.kind != "segmentation":
        raise ValueError(f"{model_dir}: calibrate is for segmentation models, this one is {spec.kind}")
    roots = [Path(d) for d in args.data]
    for r in roots:
        if not (r / "dataset.yaml").is_file():
            raise FileNotFoundError(f"{r}: no dataset.yaml (give `ood-perception synth` output)")
    try:
        windows = tuple(int(w) for w in args.windows.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"--windows must be comma-separated integers, got {args.windows!r}") from None
    try:
        persistence = tuple((int(k), int(n)) for k, n in (p.split("/") for p in args.persistence.split(",") if p.strip()))
    except ValueError:
        raise ValueError(f"--persistence must be comma-separated k/n pairs such as 2/3,3/5, got {args.persistence!r}") from None
    fusion: dict[str, Any] = {}
    if args.params:
        fusion = dict(settings_from_params(node_parameters(args.params)).fusion)
    base = FusionConfig(**fusion)
    # judge every candidate, never a scene shift; the thresholds are chosen afterwards
    # the runtime's order: a calibrated pixel threshold first, then export's
    model_thr = spec.decision.get("pixel_threshold") if spec.decision.get("pixel_threshold") is not None else spec.threshold
    run_thr = base.threshold if base.threshold is not None else model_thr
    backend = runtime.load(model_dir, intra_op_threads=1)
    no_bank = object_bank_unavailable(backend)
    if base.objects.w_extra > 0 and no_bank is not None:
        # what the runtime does for such a model: record the weights it will use
        print(f"calibrate: object.w_extra {base.objects.w_extra:g} has no effect: {no_bank}; calibrating with "
              "w_extra 0", file=sys.stderr)
        base = replace(base, objects=replace(base.objects, w_extra=0.0))
        fusion["objects"] = base.objects
    settings = CalibrationSettings(budget=args.budget, pixel_fpr=args.pixel_fpr, windows=windows, persistence=persistence,
                                   alert=base.alert or AlertConfig(raise_k=0, raise_n=0), objects=base.objects)
    datasets = [(root, DatasetConfig.from_yaml(root / "dataset.yaml")) for root in roots]
    for root, ds in datasets:
        if ds.splits.get("test") and not (ds.splits.get("val") or ds.splits.get("train")):
            print(f"calibrate: warning: {root} is a test split (synth --split test): figures later reported on "
                  "these drives are no longer held out; calibrate on --split val drives", file=sys.stderr)

    def collect(threshold: float | None) -> list[CalibrationFrame]:
        """One model run over the validation drives at pixel ``threshold`` (the OOD-share evidence)."""
        config = FusionConfig(**{**fusion, "decision": "objects", "region_threshold": 2.0,
                                 "scene_shift_fraction": 1.0, "threshold": threshold})
        pipe = FusionPipeline(backend, config)
        out: list[CalibrationFrame] = []
        for root, ds in datasets:
            for frame, res in replay_dataset(pipe, root, max_frames=args.max_frames):
                if res.score is None:
                    continue
                ood = ds.ood_mask(frame.pixel_labels) if frame.pixel_labels is not None else np.zeros(res.score.shape, bool)
                sample = res.score[::4, ::4]
                keep = ~ood[::4, ::4]
                out.append(CalibrationFrame(
                    sequence=f"{root}/{frame.sequence}", stamp=float(res.stamp),
                    centroids=np.array([ob.centroid for ob in res.objects], np.float64).reshape(-1, 3),
                    scores=np.array([ob.score for ob in res.objects], np.float64),
                    pixel_scores=sample[keep].astype(np.float32), all_pixel_scores=sample.ravel().astype(np.float32),
                    anomaly_pixels=int(ood.sum()),
                ))
        if not out:
            raise ValueError("no frame could be scored in the calibration data")
        return out

    t0 = time.perf_counter()
    cache = Path(args.frames_cache) if args.frames_cache else None
    cache_objects = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(base.objects).items()}
    # the region scores also depend on the model and, with w_extra > 0, on the object bank
    cache_objects["model_sha256"] = spec.files["onnx"].sha256
    cache_objects["object_bank_sha256"] = spec.files[BANK_ROLE].sha256 if base.objects.w_extra > 0 and BANK_ROLE in spec.files else None
    if cache is not None and cache.is_file():
        with cache.open("rb") as fh:
            stored = pickle.load(fh)
        # {"threshold", "objects", "frames"}; a bare list: a cache written before these were recorded
        frames, ood_thr = (stored["frames"], stored["threshold"]) if isinstance(stored, dict) else (stored, run_thr)
        made_with = stored.get("objects") if isinstance(stored, dict) else None
        if made_with is not None:  # settings added since count at the value of the earlier rule
            made_with = with_settings_before(made_with)
        if made_with is not None and made_with != cache_objects:
            raise ValueError(f"{cache}: its region scores were computed with other object settings, another "
                             f"model or another object bank ({made_with}); delete it or use the same --params")
    else:
        frames, ood_thr = collect(run_thr), run_thr
        if settings.objects.w_ood > 0 and base.threshold is None:
            # the OOD share of each object counts points at or above the pixel threshold the runtime will
            # use, which is the one chosen here: a second run with it, so the region threshold is
            # calibrated on the region scores the node computes (the pixel threshold itself comes from the
            # pixel scores, which do not depend on it)
            pixel_thr = float(calibrate_decisions(frames, settings)["pixel_threshold"])
            if ood_thr is None or pixel_thr != float(ood_thr):
                print(f"calibrate: object.w_ood > 0: second run with the calibrated pixel threshold {pixel_thr:.4f} "
                      "(the OOD-share evidence depends on it)", file=sys.stderr)
                frames, ood_thr = collect(pixel_thr), pixel_thr
        if cache is not None:
            with atomic_path(cache) as tmp, tmp.open("wb") as fh:
                pickle.dump({"threshold": ood_thr, "objects": cache_objects, "frames": frames}, fh)
    block = calibrate_decisions(frames, settings)
    wanted = base.threshold if base.threshold is not None else float(block["pixel_threshold"])
    if settings.objects.w_ood > 0 and ood_thr is not None and float(ood_thr) != float(wanted):
        print(f"calibrate: warning: object.w_ood > 0 and the region scores were computed at pixel threshold "
              f"{float(ood_thr):.4f}, not the one the node will use, {float(wanted):.4f} (a frames cache made before); "
              "delete the cache to re-run", file=sys.stderr)
    block["ood_share_threshold"] = None if ood_thr is None else float(ood_thr)
    clean = block["validation"]["budget_frames"]
    if clean * args.budget < 1.0:
        print(f"calibrate: warning: {clean} anomaly-free frames cannot resolve a budget of {args.budget:.2%} "
              f"(one false ALERT is {1 / max(clean, 1):.2%}); use >= {int(np.ceil(1 / args.budget))} anomaly-free "
              "validation frames", file=sys.stderr)
    elif clean * args.budget < MIN_BUDGET_FRAMES:
        # measured: 240 frames (6 drives) met the 1% budget with no false episode at all, and new
        # drives then had 9-16% of their frames in ALERT; 2400 frames: 1.5-2.5% (docs/model.md)
        print(f"calibrate: warning: {clean} anomaly-free frames: the {args.budget:.2%} budget allows "
              f"{clean * args.budget:.0f} false ALERT frames, less than one false alert episode, so it is met "
              "only above every false object these drives happen to show and will not hold on new drives; "
              f"use >= {int(np.ceil(MIN_BUDGET_FRAMES / args.budget))} anomaly-free validation frames "
              "(docs/model.md, \"Calibration on 60 drives\")", file=sys.stderr)
    block.update({"data": [str(d) for d in args.data], "params": args.params, "max_frames": args.max_frames,
                  "calibrated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model_sha256": spec.files["onnx"].sha256,
                  "object_bank_sha256": spec.files[BANK_ROLE].sha256 if base.objects.w_extra > 0 and BANK_ROLE in spec.files else None,
                  "objects": {k: v for k, v in cache_objects.items()
                              if k not in ("track_window", "model_sha256", "object_bank_sha256")}})
    v = block["validation"]
    print(f"calibrated on {v['drives']} drives, {v['frames']} frames ({v['anomaly_free_frames']} anomaly-free, "
          f"{v['positive_frames']} with >= 200 anomaly pixels; budget on {v['budget_frames']} {v['budget_set']}) "
          f"in {time.perf_counter() - t0:.0f} s")
    print(f"pixel_threshold {block['pixel_threshold']:.4f} (pixel FPR {args.pixel_fpr:.0%}); scene_shift_fraction "
          f"{block['scene_shift_fraction']:.3f} (largest validation fraction {v['max_anomalous_fraction']:.3f})")
    print(f"region_threshold {block['region_threshold']:.4f}, track_window {block['track_window']}, ALERT on "
          f"{block['alert']['raise_k']} of {block['alert']['raise_n']} frames "
          f"({v['window_choice']}): anomaly-free frames in ALERT {v['anomaly_free_alert_share']:.2%} "
          f"(budget {args.budget:.2%}; all anomaly-free frames {v['anomaly_free_frames_all_drives_alert_share']:.2%}), "
          f"frames with anomalies in ALERT "
          f"{'n/a' if v['positive_alert_share'] is None else format(v['positive_alert_share'], '.1%')}")
    if args.dry_run:
        return 0
    spec.decision = block
    write_spec(model_dir / SPEC_NAME, spec)
    print(f"wrote {model_dir / SPEC_NAME} (decision)")
    return 0
