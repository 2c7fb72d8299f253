"""Benchmark: recognition clips per second — Farneback flow, inference (torch / ONNX Runtime), both.

One synthetic clip (``ood_perception.world.clips``, 16 frames of 64x64 by default) at a time, as
the recognition node processes a stream (batch 1). Timed in one run, interleaved, on the same
clip and thread count: flow alone, torch inference alone, ONNX Runtime inference alone, and the
whole :class:`ood_perception.pipeline.recognition.RecognitionPipeline` step (flow + inference +
score) with each backend. The weights are random unless ``--checkpoint`` is given (the timing does
not depend on them). Absolute figures depend on the machine (named in the result) and its load.

Writes bench/results/recognition.json and recognition.md.
usage: python bench/recognition.py [--quick] [--threads N] [--repeat N] [--checkpoint PT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import machine_info, machine_line, markdown_table, time_interleaved, write_results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--checkpoint", default=None, help="recognition checkpoint (default: random weights)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    import torch

    from ood_perception import runtime
    from ood_perception.data.clips import compute_flow, normalise_flow, normalise_frames
    from ood_perception.models.recognition import (
        RecognitionConfig,
        build_recognition_model,
        load_recognition_checkpoint,
    )
    from ood_perception.pipeline.recognition import RecognitionPipeline
    from ood_perception.trainer.export import export_recognition
    from ood_perception.trainer.recognition import save_recognition_checkpoint
    from ood_perception.world.clips import ID_CLASSES, ClipConfig, clip_rng, render_clip

    torch.set_num_threads(args.threads)
    repeat = 5 if args.quick else args.repeat
    if args.checkpoint:
        model, ck = load_recognition_checkpoint(args.checkpoint)
        names, frames, size = ck["class_names"], int(ck.get("clip_len", 16)), int(ck.get("size", 64))
    else:
        torch.manual_seed(0)
        model, names, frames, size = build_recognition_model(RecognitionConfig(len(ID_CLASSES))).eval(), list(ID_CLASSES), args.frames, args.size
    clip = render_clip("walking", clip_rng(0, "bench", 0), ClipConfig(frames=frames, size=size)).frames
    flow = compute_flow(clip)
    v, f = normalise_frames(clip)[None], normalise_flow(flow)[None]
    with tempfile.TemporaryDirectory() as tmp:
        # the deployed export: model + MSP scorer in one graph (ood-perception export)
        save_recognition_checkpoint(Path(tmp) / "rec.pt", model, list(names), {"clip_len": frames, "size": size})
        export_recognition(Path(tmp) / "rec.pt", Path(tmp) / "rec", score="msp")
        backend = runtime.load(Path(tmp) / "rec", intra_op_threads=args.threads)
        ort = lambda v_, f_: backend.infer({"video": v_, "flow": f_})  # noqa: E731
        pipe_t = RecognitionPipeline(model, names, 0.5, "msp", frames, frames, size)
        pipe_o = RecognitionPipeline(backend, names, 0.5, None, frames, frames, size)
        tv, tf = torch.from_numpy(v), torch.from_numpy(f)

        def torch_infer():
            with torch.no_grad():
                model(tv, tf)

        t = time_interleaved({
            "flow": lambda: compute_flow(clip),
            "infer_torch": torch_infer,
            "infer_onnxruntime": lambda: ort(v, f),
            "pipeline_torch": lambda: pipe_t.process_clip(clip),
            "pipeline_onnxruntime": lambda: pipe_o.process_clip(clip),
        }, repeat=repeat, warmup=2)
        r_t, r_o = pipe_t.process_clip(clip), pipe_o.process_clip(clip)
    rows = [[k, v_["median"] * 1e3, 1.0 / v_["median"], v_["min"] * 1e3, v_["max"] * 1e3] for k, v_ in t.items()]
    info = machine_info()
    data = {
        "clip": {"frames": frames, "size": size}, "threads": args.threads, "repeat": repeat,
        "weights": args.checkpoint or "random", "timings_s": t,
        "clips_per_s": {k: 1.0 / v_["median"] for k, v_ in t.items()},
        "torch_vs_onnx_score_abs_diff": abs(r_t.ood_score - r_o.ood_score), "machine": info,
    }
    md = (f"# Recognition: clips per second (batch 1, {frames} frames of {size}x{size})\n\n"
          f"{machine_line(info)}; torch threads {args.threads}; {repeat} repeats, median.\n\n"
          + markdown_table(["step", "ms / clip", "clips / s", "min ms", "max ms"], rows)
          + f"\nflow share of the torch pipeline: {t['flow']['median'] / t['pipeline_torch']['median']:.0%}; "
          f"|score torch - score ONNX Runtime| = {data['torch_vs_onnx_score_abs_diff']:.2e}.\n")
    j, m = write_results("recognition", data, md)
    print(md)
    print(f"wrote {j} and {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
