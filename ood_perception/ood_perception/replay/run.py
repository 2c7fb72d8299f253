"""Replay of many bags: sharding, worker processes, per-bag outputs, pooled metrics and report.

Layout of ``--out DIR``: one bag -> ``DIR/output.mcap``, ``DIR/metrics.json``, ``DIR/timing.json``,
``DIR/report.html``. Several bags -> the same per bag under ``DIR/<bag name>/`` (:func:`bag_output_name`) plus pooled
``DIR/metrics.json`` and ``DIR/report.html``. ``metrics.json`` holds only deterministic content
(identical for identical bag, model and params); wall-clock figures go to ``timing.json``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ood_perception import runtime
from ood_perception.atomic import install_worker_signal_handlers
from ood_perception.data.bag_output import OutputBag
from ood_perception.evaluation.segmentation import MetricsAccumulator
from ood_perception.pipeline import FusionConfig, FusionPipeline
from ood_perception.pipeline.fusion import spec_sha256
from ood_perception.replay.engine import BagReplay, LabelFolder, ReplaySettings, replay_bag
from ood_perception.replay.report import (
    atomic_write_text,
    frames_table,
    latency_summary,
    level_counts,
    render_html,
    write_json,
)


def select_shard(bags: Sequence[str | Path], shard: str | None) -> list[Path]:
    """The bags of shard ``i/n`` (bags sorted by path, every n-th from i); all when None.

    Raises:
        ValueError: malformed shard spec.
    """
    paths = sorted(Path(b) for b in bags)
    if not shard:
        return paths
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n with integers (e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {shard}: need n >= 1 and 0 <= i < n")
    return paths[i::n]


#: Names in ``--out`` that belong to the pooled results; a bag's folder never takes one of them.
RESERVED_OUTPUT_NAMES = frozenset({"metrics.json", "timing.json", "report.html", "output.mcap", "output"})


def bag_output_name(path: str | Path, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The folder name under ``--out`` for one bag's results when several bags are replayed.

    The bag's own name (``drive_07`` for ``/data/drive_07/`` or ``a/b/..`` normalised first), with
    characters other than letters, digits, ``._-+`` replaced by ``_`` and leading dots dropped, so
    the name is one plain path component: it cannot be ``.``, ``..``, empty, hidden or contain a
    separator, hence cannot leave ``--out`` or land on it. Names of the pooled outputs
    (:data:`RESERVED_OUTPUT_NAMES`) get a ``bag_`` prefix; a name already in ``taken`` (compared
    case-insensitively, for case-insensitive filesystems) gets ``_2``, ``_3``, ... Pure: the caller
    adds the result to ``taken``.
    """
    name = Path(os.path.abspath(os.fspath(path))).name  # "a/.." -> "a"'s parent, "." -> the cwd's name
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".") or "bag"
    if name.lower() in RESERVED_OUTPUT_NAMES:
        name = f"bag_{name}"
    used = {t.lower() for t in taken}
    candidate, k = name, 2
    while candidate.lower() in used:
        candidate, k = f"{name}_{k}", k + 1
    return candidate


@dataclasses.dataclass
class ReplayJob:
    """Everything a worker needs to replay one bag (picklable)."""

    bag: Path
    out_dir: Path
    model_dir: Path | None
    backend: str
    settings: ReplaySettings
    labels: Path | None = None
    label_sequence: str | None = None
    dataset_config: Path | None = None
    progress: bool = False
    threads: int = 1


def build_pipeline(model_dir: Path | None, backend: str, settings: ReplaySettings, threads: int = 1) -> Any:
    """Load the model and build the fusion node's pipeline with the replay settings."""

    opts: dict[str, Any] = {}
    if backend == "onnxruntime":
        opts["intra_op_threads"] = threads
    elif backend == "torch":
        opts["threads"] = threads
    model = runtime.load(model_dir, backend=backend, **opts)
    return FusionPipeline(model, FusionConfig(**settings.fusion))


def run_job(job: ReplayJob) -> BagReplay:
    """Replay one bag into ``job.out_dir`` (output bag, metrics.json, timing.json, report.html)."""

    pipeline = build_pipeline(job.model_dir, job.backend, job.settings, job.threads)
    dataset_config = None
    if job.dataset_config is not None:
        from ood_perception.data import DatasetConfig

        dataset_config = DatasetConfig.from_yaml(job.dataset_config)
    folder = LabelFolder(job.labels, job.label_sequence) if job.labels else None
    job.out_dir.mkdir(parents=True, exist_ok=True)
    out = OutputBag(job.out_dir / "output.mcap")
    try:
        result = replay_bag(job.bag, pipeline, job.settings, out, dataset_config, folder, progress=job.progress)
    except BaseException:
        out.abort()
        raise
    out.close()  # also after a damaged bag: the outputs up to the damage are kept
    write_outputs(job.out_dir, [result], info=_info(job, pipeline))
    return result


def _info(job: ReplayJob, pipeline: Any) -> dict[str, Any]:
    spec = pipeline.backend.spec

    return {
        "bags": [str(job.bag)],
        "model": str(job.model_dir or "default model"),
        "model_sha256": spec_sha256(spec),
        "score": getattr(spec, "score_name", "") if not callable(getattr(spec, "score_name", None)) else spec.score_name(),
        "backend": job.backend,
        "threshold": float(pipeline.threshold),
        "labels": str(job.labels) if job.labels else "bag label topics",
    }


def write_outputs(out_dir: Path, results: Sequence[BagReplay], info: dict[str, Any], metrics: Any = None,
                  extra_sections: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Write ``metrics.json``, ``timing.json`` and ``report.html`` for ``results`` into ``out_dir``."""

    if metrics is None:
        metrics = results[0].metrics
        for r in results[1:]:
            metrics.merge(r.metrics)
    summary = metrics.summary()
    frames = [f for r in results for f in r.frames]
    data = {
        "interrupted": any(r.interrupted for r in results),
        "info": {k: v for k, v in info.items()},
        "metrics": summary,
        "alerts": level_counts(frames),
        "bags": [
            {"bag": r.bag, "frames": len(r.frames), "bag_time_s": r.duration_s, "error": r.error, "salvaged": r.salvaged,
             "skipped": r.skipped, "interrupted": r.interrupted is not None,
             "topics": r.topics, "sync": r.sync_counters, "bad_inputs": r.bad_inputs, "extrinsics": r.extrinsics, **({"per_frame": frames_table(r.frames)} if len(results) == 1 else {})}
            for r in results
        ],
    }
    write_json(out_dir / "metrics.json", data)
    wall = sum(r.wall_s for r in results)
    duration = sum(r.duration_s for r in results)
    write_json(out_dir / "timing.json", {
        "wall_s": wall, "bag_time_s": duration, "x_real_time": duration / wall if wall else None,
        "latency": latency_summary(frames), "frames": len(frames), "cpu_count": os.cpu_count(),
    })
    title = "OOD replay: " + (Path(results[0].bag).name if len(results) == 1 else f"{len(results)} bags")
    atomic_write_text(out_dir / "report.html", render_html(title, results, metrics, summary, info, extra_sections))
    return data


def run_replay(
    bags: Sequence[str | Path],
    out_dir: str | Path,
    settings: ReplaySettings,
    model_dir: str | Path | None = None,
    backend: str = "onnxruntime",
    workers: int = 1,
    shard: str | None = None,
    labels: str | Path | None = None,
    label_sequence: str | None = None,
    dataset_config: str | Path | None = None,
    progress: bool = True,
) -> list[BagReplay]:
    """Replay ``bags`` (this shard of them) into ``out_dir``; see the module docstring for the layout."""
    out_dir = Path(out_dir)
    selected = select_shard(bags, shard)
    if not selected:
        raise ValueError(f"shard {shard} selects none of the {len(bags)} bags")
    for b in selected:
        if not Path(b).exists():
            raise FileNotFoundError(f"bag {b} does not exist")
    names: list[str] = []
    for b in selected:
        names.append(bag_output_name(b, set(names)))
    single = len(selected) == 1
    jobs = [
        ReplayJob(bag=b, out_dir=out_dir if single else out_dir / n, model_dir=Path(model_dir) if model_dir else None,
                  backend=backend, settings=settings, labels=Path(labels) if labels else None, label_sequence=label_sequence,
                  dataset_config=Path(dataset_config) if dataset_config else None, progress=progress and workers <= 1)
        for b, n in zip(selected, names, strict=True)
    ]
    if workers <= 1 or len(jobs) == 1:
        results = []
        for j in jobs:
            results.append(run_job(j))
            if results[-1].interrupted:  # Ctrl-C / SIGTERM: the bags done so far are the results
                break
    else:
        import multiprocessing as mp

        from tqdm import tqdm

        ctx = mp.get_context("spawn")
        # workers leave Ctrl-C to this process and unwind on SIGTERM (Pool.terminate), removing their temporaries
        with ctx.Pool(min(workers, len(jobs)), initializer=install_worker_signal_handlers) as pool:
            results = list(tqdm(pool.imap(run_job, jobs), total=len(jobs), desc="bags", disable=not progress))
    if not single:
        first = results[0]
        info = {"bags": [r.bag for r in results], "backend": backend, "model": str(model_dir or "default model"), "shard": shard or "all"}
        if len(results) < len(jobs):  # stopped by Ctrl-C / SIGTERM
            info["not_replayed"] = [str(j.bag) for j in jobs[len(results):]]
        write_outputs(out_dir, results, info, metrics=_pooled(first, results))
    return results


def _pooled(first: BagReplay, results: Sequence[BagReplay]) -> Any:

    pooled = MetricsAccumulator(first.metrics.config, first.metrics.threshold, first.metrics.input_hw)
    for r in results:
        pooled.merge(r.metrics)
    return pooled
