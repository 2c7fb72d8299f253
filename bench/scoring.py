"""Benchmark: per-pixel OOD scoring time of every scorer, torch eager vs ONNX Runtime (CPU).

One 19-class 256x512 score map (features D=64 for the feature-based scorers), as the fusion node
scores a frame. Each scorer is fitted on synthetic ID features, exported (TorchScript exporter,
opset 17) and both backends are timed in the same run on the same input with the same thread
count; the ratio torch/ORT is the figure to read (absolute times depend on the machine, which is
named in the result). The two outputs are compared too (max abs difference).

Writes bench/results/scoring.json and scoring.md. usage: python bench/scoring.py [--quick]
[--threads N] [--repeat N] [--height H --width W]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings

import numpy as np
from _common import machine_info, machine_line, markdown_table, time_interleaved, write_results

NUM_CLASSES, FEAT_DIM = 19, 64
KNN_BANK = 512  # kNN compares every pixel with the bank: N x bank floats of memory
NEG_LABELS = 256  # the NegLabel paper mines 10000; the cost grows linearly with this


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128x256 map, 2 repeats (smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ORT intra-op threads (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per backend (default 3)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args(argv)
    if args.quick:
        args.height, args.width, args.repeat = 128, 256, 2

    import onnxruntime as ort
    import torch

    from ood_perception.scoring import available_scorers, get_scorer

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    # synthetic ID statistics: class-clustered non-negative features and a linear head
    centres = rng.uniform(0, 2, size=(NUM_CLASSES, FEAT_DIM))
    labels = rng.integers(0, NUM_CLASSES, size=20000)
    feats = np.maximum(centres[labels] + 0.4 * rng.normal(size=(labels.size, FEAT_DIM)), 0).astype(np.float32)
    weight = (rng.normal(size=(NUM_CLASSES, FEAT_DIM)) / np.sqrt(FEAT_DIM)).astype(np.float32)
    bias = (0.1 * rng.normal(size=NUM_CLASSES)).astype(np.float32)
    neg_text = rng.normal(size=(NEG_LABELS, FEAT_DIM)).astype(np.float32)

    h, w = args.height, args.width
    f_map = torch.from_numpy(
        np.maximum(rng.uniform(-0.5, 2.5, size=(1, FEAT_DIM, h, w)), 0).astype(np.float32)
    )
    logits = (
        torch.einsum("bdhw,cd->bchw", f_map, torch.from_numpy(weight))
        + torch.from_numpy(bias)[None, :, None, None]
    )

    class ScoreHead(torch.nn.Module):
        def __init__(self, scorer: torch.nn.Module) -> None:
            super().__init__()
            self.scorer = scorer

        def forward(self, lg: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
            return self.scorer(lg, ft)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    rows, results = [], {}
    for name in available_scorers():
        params = {"bank_size": KNN_BANK} if name == "knn" else {}
        scorer = get_scorer(name, **params)
        extra = {"neg_text_embeddings": neg_text} if name == "neglabel" else {}
        scorer.fit(
            features=feats, labels=labels, classifier_weight=weight, classifier_bias=bias, **extra
        ).eval()
        buf = io.BytesIO()
        small = (logits[:, :, :8, :8].contiguous(), f_map[:, :, :8, :8].contiguous())
        dyn = {0: "b", 2: "h", 3: "w"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                ScoreHead(scorer).eval(), small, buf, dynamo=False, opset_version=17,
                input_names=["logits", "features"], output_names=["score"],
                dynamic_axes={"logits": dyn, "features": dyn, "score": {0: "b", 1: "h", 2: "w"}},
            )  # fmt: skip
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        feeds = {k: v.numpy() for k, v in (("logits", logits), ("features", f_map)) if k in names}

        def run_torch(s=scorer) -> torch.Tensor:
            with torch.inference_mode():
                return s(logits, f_map)

        def run_ort(s=sess, fd=feeds) -> np.ndarray:
            return s.run(None, fd)[0]

        # interleaved, so load changes on a shared machine hit both backends alike
        timed = time_interleaved({"torch": run_torch, "ort": run_ort}, repeat=args.repeat)
        t_torch, t_ort = timed["torch"], timed["ort"]
        ref = run_torch().numpy()
        diff = float(np.abs(run_ort() - ref).max())
        rel = diff / max(float(np.abs(ref).max()), 1e-12)
        ratio = t_torch["median"] / t_ort["median"]
        results[name] = {
            "params": scorer.config()["params"],
            "inputs": sorted(names),
            "torch_s": t_torch,
            "onnxruntime_s": t_ort,
            "torch_over_ort": ratio,
            "max_abs_diff": diff,
            "max_rel_diff": rel,
        }
        rows.append(
            [name, ",".join(sorted(names)), t_torch["median"] * 1e3, t_ort["median"] * 1e3, ratio, diff, rel]
        )
        print(f"{name:12s} torch {t_torch['median'] * 1e3:8.1f} ms  ort {t_ort['median'] * 1e3:8.1f} ms  "
              f"torch/ort {ratio:5.2f}  max|diff| {diff:.1e}", flush=True)  # fmt: skip

    info = machine_info()
    setup = {
        "map": [1, h, w],
        "num_classes": NUM_CLASSES,
        "feature_dim": FEAT_DIM,
        "pixels": h * w,
        "threads": args.threads,
        "repeat": args.repeat,
        "knn_bank": KNN_BANK,
        "neglabel_negatives": int(neg_text.shape[0]),
        "load_avg_1m_at_start": load_start,
        "exporter": "torch.onnx.export(dynamo=False, opset_version=17)",
        "timing": "median wall-clock seconds of repeat calls after 1 warm-up, torch and ORT calls interleaved, same input",
    }
    md = (
        "# Per-pixel OOD scoring: torch eager vs ONNX Runtime (CPU)\n\n"
        f"Machine: {machine_line(info)}.\n\n"
        f"One {NUM_CLASSES}-class {h}x{w} map ({h * w} pixels), features D={FEAT_DIM}; "
        f"{args.threads} threads for both backends; median of {args.repeat} interleaved calls after a warm-up; "
        f"kNN bank {KNN_BANK} features; NegLabel with {NEG_LABELS} negative labels. Generated by `python bench/scoring.py`; "
        "the ratio is the figure to compare, absolute times depend on the machine and its load.\n\n"
        + markdown_table(
            ["scorer", "inputs", "torch ms", "ORT ms", "torch/ORT", "max abs diff", "rel diff"], rows
        )
    )
    write_results("scoring", {"setup": setup, "machine": info, "results": results}, md)
    print(f"wrote bench/results/scoring.json and .md in {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
