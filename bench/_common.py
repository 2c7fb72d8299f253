"""Small helpers shared by the benchmark scripts in bench/ (not a benchmark itself).

Scripts run as ``python bench/<name>.py`` (bench/ is then on ``sys.path``), so they use
``from _common import ...``. Benchmarks report figures measured in one run, on a machine that is
named in the result (:func:`machine_info`); results are written atomically (:func:`write_results`).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ood_perception.atomic import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"

__all__ = [
    "RESULTS_DIR",
    "atomic_write_text",
    "machine_info",
    "machine_line",
    "markdown_table",
    "time_call",
    "time_interleaved",
    "write_results",
]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Describe the machine: OS, CPU model, logical CPUs (``os.cpu_count``), CPUs this process may
    use, the 1-minute load average (other work on a shared machine skews timings), Python and
    (when importable) torch / onnxruntime versions and the CUDA device."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One human line naming the machine, for Markdown reports."""
    i = info or machine_info()
    gpu = f", GPU {i['cuda_device']}" if i.get("cuda_device") else ""
    return (
        f"{i['cpu']} ({i['cpus_usable']} of {i['cpu_count']} logical CPUs usable, load average "
        f"{i.get('load_avg_1m') or 0:.1f}){gpu}; {i['platform']}; "
        f"Python {i['python']}, torch {i.get('torch', '-')}, onnxruntime {i.get('onnxruntime', '-')}"
    )


def time_call(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> dict[str, float]:
    """Wall-clock seconds of ``fn()``: ``median``, ``min`` and ``max`` over ``repeat`` timed calls
    after ``warmup`` untimed ones."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "repeat": repeat}


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeat: int = 5, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Like :func:`time_call` for several functions whose calls alternate (a, b, a, b, ...), so a
    change of machine load during the run affects all of them alike; keyed like ``fns``."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v), "repeat": repeat}
        for k, v in times.items()
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (floats printed with 4 significant digits)."""

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(
    name: str, data: dict[str, Any], markdown: str, results_dir: Path | None = None
) -> tuple[Path, Path]:
    """Write ``<results_dir>/<name>.json`` (``data`` plus ``machine`` and ``created`` when absent)
    and ``<name>.md`` atomically; return both paths."""
    out = Path(results_dir) if results_dir is not None else RESULTS_DIR
    payload = {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}
    payload.setdefault("machine", machine_info())
    j = atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=2, sort_keys=False) + "\n")
    m = atomic_write_text(out / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")
    return j, m
