"""Inference benchmark: latency p50/p95 per backend at the default model's input size.

ONNX Runtime and torch eager run interleaved in one process (same threads, same inputs), so their
ratio is a fair same-run figure. Achieved GFLOP/s uses the FLOPs of one forward pass counted by
``torch.utils.flop_counter`` (2 per multiply-add; convs, matmuls) and is compared with the CPU's
nominal FP32 peak: cores x GHz x FLOP/cycle, where FLOP/cycle is 32 for AVX2/AVX-512 with two
256-bit FMA pipes (AMD Zen 2-4, most desktop Intel) or 64 for Intel AVX-512 with two 512-bit FMA
units (server Xeon) -- an assumption printed in the result; override with ``--peak-gflops``.
A GPU section (torch CUDA FP32/FP16, ONNX Runtime CUDA when installed) runs where CUDA exists.

Writes ``bench/results/inference-<machine>.json`` and ``.md``.

usage: python bench/inference.py [--model DIR] [--threads N] [--batch B] [--repeat N] [--machine NAME]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine_info, machine_line, markdown_table, write_results

HERE = Path(__file__).resolve().parent


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "n": len(times)}


def _interleaved(fns: dict[str, Any], repeat: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def cpu_peak_gflops(info: dict[str, Any], cores: int) -> dict[str, Any]:
    """Nominal FP32 peak of ``cores`` cores from /proc/cpuinfo (frequency and ISA flags)."""
    flags, mhz, vendor = "", 0.0, ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1)  # type: ignore[union-attr]
        mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M).group(1))  # type: ignore[union-attr]
        vendor = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    avx512 = "avx512f" in flags.split()
    fma = "fma" in flags.split()
    per_cycle = 64 if (avx512 and vendor == "GenuineIntel") else (32 if fma else 16)
    ghz = mhz / 1e3
    return {"cores": cores, "ghz": ghz, "flop_per_cycle": per_cycle, "vendor": vendor, "avx512": avx512,
            "peak_gflops": cores * ghz * per_cycle,
            "assumption": "cores x nominal GHz x FP32 FLOP/cycle (2 FMA pipes; 64 only for Intel AVX-512)"}


def count_flops(module: Any, inputs: dict[str, np.ndarray]) -> int:
    """FLOPs of one forward pass (torch.utils.flop_counter: 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    args = [torch.from_numpy(v) for v in inputs.values()]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    return int(counter.get_total_flops())


def _fallback_model(tmp: Path, backbone: str) -> Path:
    """Export a randomly initialised model with the training config's architecture and input size
    (latency and FLOPs do not depend on weight values) when no default model exists yet."""
    import torch
    import yaml

    from ood_perception.models import build_model
    from ood_perception.trainer.export import export_segmentation

    cfg = yaml.safe_load((HERE.parent / "ood_perception" / "config" / "train_segmentation.yaml").read_text())
    model_cfg = dict(cfg["model"], num_classes=10, camera_backbone=backbone, pretrained=None)
    torch.manual_seed(0)
    model = build_model(model_cfg)
    torch.save({"model_config": model_cfg, "state_dict": model.state_dict(), "class_names": [f"c{i}" for i in range(10)],
                "input_size": cfg["input_size"], "mean": cfg["image_mean"], "std": cfg["image_std"]}, tmp / "c.pt")
    export_segmentation(tmp / "c.pt", tmp / "model")
    return tmp / "model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported model directory (default: the shipped default model)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both CPU backends")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--machine", help="name in the result file (default: from the CPU/GPU model)")
    parser.add_argument("--peak-gflops", type=float, help="override the CPU's nominal FP32 peak")
    parser.add_argument("--fallback-backbone", default="resnet34",
                        help="architecture of the random-weight model used when no default model exists")
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.warmup = 5, 1

    import torch

    from ood_perception import runtime

    torch.set_num_threads(args.threads)
    info = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    model_dir = Path(args.model) if args.model else runtime.default_model_dir()
    note = ""
    if not (model_dir / "model.json").is_file():
        model_dir = _fallback_model(tmp, args.fallback_backbone)
        note = f"no default model yet: random-weight {args.fallback_backbone} model at the training input size"
    ort_b = runtime.load(model_dir, "onnxruntime", "cpu", intra_op_threads=args.threads)
    torch_b = runtime.load(model_dir, "torch", "cpu", threads=args.threads)
    spec = ort_b.spec
    h, w = spec.image_hw
    rng = np.random.default_rng(0)
    inputs = {"image": rng.normal(size=(args.batch, 3, h, w)).astype(np.float32),
              "lidar": np.zeros((args.batch, 6, h, w), np.float32)}
    inputs["lidar"][:, 5] = rng.random((args.batch, h, w)) < 0.3
    inputs["lidar"][:, 3] = inputs["lidar"][:, 5] * rng.uniform(2, 50, (args.batch, h, w))
    flops = count_flops(torch_b.module, inputs)
    cpus = info.get("cpus_usable") or 1
    peak = cpu_peak_gflops(info, min(args.threads, cpus))
    if args.peak_gflops:
        peak.update(peak_gflops=args.peak_gflops, assumption="given with --peak-gflops")

    times = _interleaved({"onnxruntime": lambda: ort_b.infer(inputs), "torch": lambda: torch_b.infer(inputs)},
                         args.repeat, args.warmup)
    cpu_rows = {}
    for name, t in times.items():
        r = _percentiles(t)
        r["gflops_per_s"] = flops / 1e9 / (r["p50_ms"] / 1e3)
        r["share_of_peak"] = r["gflops_per_s"] / peak["peak_gflops"] if peak["peak_gflops"] else None
        cpu_rows[name] = r
    speedup = cpu_rows["torch"]["p50_ms"] / cpu_rows["onnxruntime"]["p50_ms"]

    gpu: dict[str, Any] = {"available": bool(torch.cuda.is_available())}
    if torch.cuda.is_available():
        gpu["device"] = torch.cuda.get_device_name(0)
        fns = {}
        for prec in ("fp32", "fp16"):
            b = runtime.load(model_dir, "torch", "cuda", precision=prec)
            fns[f"torch_cuda_{prec}"] = (lambda b=b: (b.infer(inputs), torch.cuda.synchronize()))
        try:
            b = runtime.load(model_dir, "onnxruntime", "cuda")
            fns["onnxruntime_cuda"] = lambda b=b: b.infer(inputs)
        except runtime.BackendUnavailableError as exc:
            gpu["onnxruntime_cuda"] = f"unavailable: {exc}"
        gtimes = _interleaved(fns, args.repeat * 3, args.warmup * 3)
        for name, t in gtimes.items():
            r = _percentiles(t)
            r["gflops_per_s"] = flops / 1e9 / (r["p50_ms"] / 1e3)
            gpu[name] = r
    else:
        gpu["note"] = ("no CUDA device on this machine (no GPU was lent for this run); "
                       "run `python bench/inference.py` on a GPU machine for torch CUDA FP32/FP16 figures")

    machine = args.machine or _machine_name(info)
    data = {
        "model": {"dir": str(model_dir), "onnx_sha256": spec.files["onnx"].sha256, "input_hw": [h, w],
                  "batch": args.batch, "score": spec.score_name, "note": note or None,
                  "provenance_checkpoint": spec.provenance.get("checkpoint", {}).get("path")},
        "threads": args.threads,
        "flops_per_forward": flops,
        "gflop_per_forward": flops / 1e9,
        "cpu_peak": peak,
        "cpu": cpu_rows,
        "onnxruntime_speedup_vs_torch_eager": speedup,
        "target_speedup": 2.0,
        "gpu": gpu,
        "machine": info,
    }
    rows = [[k, v["p50_ms"], v["p95_ms"], v["gflops_per_s"], 100 * (v["share_of_peak"] or 0)] for k, v in cpu_rows.items()]
    md = [f"# Inference benchmark ({machine})", "", machine_line(info), "",
          f"Model: `{model_dir}` ({h}x{w}, batch {args.batch}, score {spec.score_name}), "
          f"{flops / 1e9:.3f} GFLOP per forward; {args.threads} thread(s); {args.repeat} interleaved runs."]
    if note:
        md += ["", f"Note: {note}."]
    md += ["", markdown_table(["backend (CPU)", "p50 ms", "p95 ms", "GFLOP/s", "% of peak"], rows),
           f"ONNX Runtime is **{speedup:.2f}x** faster than torch eager (p50; target >= 2x). "
           f"Nominal peak {peak['peak_gflops']:.1f} GFLOP/s ({peak['assumption']}; "
           f"{peak['cores']} core(s) x {peak['ghz']:.2f} GHz x {peak['flop_per_cycle']}).", ""]
    if gpu["available"]:
        grows = [[k, v["p50_ms"], v["p95_ms"], v["gflops_per_s"]] for k, v in gpu.items() if isinstance(v, dict)]
        md += [f"## GPU: {gpu['device']}", "", markdown_table(["backend", "p50 ms", "p95 ms", "GFLOP/s"], grows)]
    else:
        md += ["## GPU", "", gpu["note"] + "."]
    j, m = write_results(f"inference-{machine}", data, "\n".join(md))
    print(f"wrote {j} and {m}: ORT p50 {cpu_rows['onnxruntime']['p50_ms']:.1f} ms, torch p50 "
          f"{cpu_rows['torch']['p50_ms']:.1f} ms ({speedup:.2f}x)")
    return 0


def _machine_name(info: dict[str, Any]) -> str:
    gpu = info.get("cuda_device")
    base = gpu or info.get("cpu") or "machine"
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return slug if gpu else f"{slug}-{info.get('cpus_usable')}cpu"


if __name__ == "__main__":
    sys.exit(main())
