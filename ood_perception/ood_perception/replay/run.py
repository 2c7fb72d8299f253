"""Replay of many bags: sharding, worker processes, per-bag outputs, pooled metrics and report.

Layout of ``--out DIR``: one bag -> ``DIR/output/`` (a rosbag2 directory: ``metadata.yaml`` +
``output.mcap``), ``DIR/metrics.json``, ``DIR/timing.json``, ``DIR/report.html`` and
``DIR/state.npz`` (the metric accumulators' state, :mod:`.state`). Several bags, or any ``--shard``
-> the same per bag under ``DIR/<bag name>/`` (:func:`bag_output_name`) plus pooled ``DIR/metrics.json`` and
``DIR/report.html``. ``DIR/shard.json`` (written last: a finished run) lists the bags and where
their outputs are. ``metrics.json`` holds only deterministic content (identical for identical bag,
model and params); wall-clock figures go to ``timing.json``.

A bag's outputs are written into a temporary folder next to its target and moved into place when
complete, so a failed bag leaves nothing behind (no half-written or empty output).

Shards: ``--shard i/n`` replays every n-th of the sorted bags from i (e.g. one array job task per
shard, each with its own ``--out``); :func:`merge_replays` (``replay --merge DIR... --out DIR``)
pools the shards' per-bag states into one ``metrics.json`` and ``report.html`` equal to a single
run over all the bags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ood_perception import runtime
from ood_perception.atomic import install_worker_signal_handlers, replace_dir
from ood_perception.data.bag_output import OutputBag
from ood_perception.evaluation.segmentation import MetricsAccumulator
from ood_perception.pipeline import FusionConfig, FusionPipeline
from ood_perception.pipeline.fusion import spec_sha256
from ood_perception.replay.alert_metrics import pool as pool_alert_metrics
from ood_perception.replay.engine import BagReplay, LabelFolder, ReplaySettings, replay_bag
from ood_perception.replay.labels import LabelSpace, check_model_classes, find_label_map
from ood_perception.replay.report import (
    atomic_write_text,
    frames_table,
    latency_summary,
    level_counts,
    render_html,
    write_json,
)
from ood_perception.replay.state import STATE_FILE, load_bag_state, save_bag_state

#: The output rosbag2 directory's name in a bag's output folder.
OUTPUT_BAG = "output"
#: The manifest of a finished replay output folder (bags, shard, per-bag folders).
MANIFEST = "shard.json"


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


#: Decision warnings already printed by this process.
_WARNED: set[str] = set()


def build_pipeline(model_dir: Path | None, backend: str, settings: ReplaySettings, threads: int = 1) -> Any:
    """Load the model and build the fusion node's pipeline with the replay settings."""

    opts: dict[str, Any] = {}
    if backend == "tensorrt":  # TensorRT engines run on CUDA only; the other backends replay on the CPU
        opts["device"] = "cuda"
    elif backend == "onnxruntime":
        opts["intra_op_threads"] = threads
    elif backend == "torch":
        opts["threads"] = threads
    model = runtime.load(model_dir, backend=backend, **opts)
    pipeline = FusionPipeline(model, FusionConfig(**settings.fusion))
    for note in pipeline.decision_warnings:
        if note not in _WARNED:  # once per process, not once per bag
            _WARNED.add(note)
            print(f"replay: warning: {note}", file=sys.stderr)
    return pipeline


def run_job(job: ReplayJob) -> BagReplay:
    """Replay one bag into ``job.out_dir`` (output bag, metrics.json, timing.json, report.html)."""

    pipeline = build_pipeline(job.model_dir, job.backend, job.settings, job.threads)
    folder = LabelFolder(job.labels, job.label_sequence) if job.labels else None
    classes = model_classes(pipeline)
    space = find_label_map(job.bag, job.dataset_config, folder.config if folder else None, classes)
    check_model_classes(space, classes, str(job.model_dir or "default model"), job.bag)
    seen = getattr(getattr(pipeline.backend, "spec", None), "outlier_types", None) or []
    without_seen = space.config.excluding(seen) if space.config is not None else None
    if without_seen is not space.config:
        # anomaly types the model saw in training (model.json outlier_types): evaluated without them
        space = LabelSpace(without_seen, f"{space.source}, without the model's outlier_types {', '.join(sorted(seen))}")
    settings = job.settings
    if space.config is None:  # labels of an unknown map are not scored
        settings = dataclasses.replace(settings, topics={**settings.topics, "labels": ""}, label_field="")
    with staged(job.out_dir) as stage:
        out = OutputBag(stage / OUTPUT_BAG)
        try:
            result = replay_bag(job.bag, pipeline, settings, out, space.config, folder, progress=job.progress)
        except BaseException:
            out.abort()
            raise
        out.close()  # also after a damaged bag: the outputs up to the damage are kept
        result.label_map = space.source
        info = _info(job, pipeline, space)
        write_outputs(stage, [result], info=info)
        save_bag_state(stage / STATE_FILE, result, accumulators_of(result), info)
    return result


def accumulators_of(result: BagReplay) -> dict[str, Any]:
    """The metric accumulators of a bag's result that shards pool (name -> object with ``state()``
    and ``merge()``, and a loader in :data:`ood_perception.replay.state.LOADERS`)."""
    accs: dict[str, Any] = {"segmentation": result.metrics}
    if result.alert_metrics is not None:
        accs["alerts"] = result.alert_metrics
    return accs


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A temporary folder next to ``out_dir``; on success each entry in it replaces the same-named
    entry of ``out_dir`` (created then), on failure it is deleted and ``out_dir`` is not touched.
    Entry by entry, not the whole folder: ``--out`` may hold other things (e.g. ``--out .``)."""
    out_dir = Path(os.path.abspath(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        out_dir.mkdir(exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            if entry.is_dir():
                replace_dir(entry, out_dir / entry.name)
            else:
                os.replace(entry, out_dir / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_classes(pipeline: Any) -> list[str] | None:
    """The model's class names (``model.json``), None for a backend without them (test doubles)."""
    names = getattr(getattr(pipeline.backend, "spec", None), "class_names", None)
    return [str(n) for n in names] if names else None


def _info(job: ReplayJob, pipeline: Any, space: LabelSpace) -> dict[str, Any]:
    spec = pipeline.backend.spec

    return {
        "bags": [str(job.bag)],
        "model": str(job.model_dir or "default model"),
        "model_sha256": spec_sha256(spec),
        "score": getattr(spec, "score_name", "") if not callable(getattr(spec, "score_name", None)) else spec.score_name(),
        "backend": job.backend,
        "threshold": float(pipeline.threshold),
        "labels": str(job.labels) if job.labels else "bag label topics",
        "label_map": space.source,
        "model_threads": job.threads,
        # settings other than those the model's decisions were calibrated with (the budget does not hold)
        "decision_warnings": "; ".join(getattr(pipeline, "decision_warnings", [])) or "none",
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
    alert_metrics = pool_alert_metrics([r.alert_metrics for r in results])  # pooled like MetricsAccumulator
    alert_eval = alert_metrics.result() if alert_metrics is not None else {}
    data = {
        "interrupted": any(r.interrupted for r in results),
        "info": {k: v for k, v in info.items()},
        "metrics": summary,
        "alerts": {"levels": level_counts(frames), **alert_eval.get("alerts", {})},
        "components": alert_eval.get("components", {"available": False, "reason": "no alert metrics"}),
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
    atomic_write_text(out_dir / "report.html", render_html(title, results, metrics, summary, info, extra_sections,
                                                                 alert_metrics=alert_metrics))
    return data


def earlier_results(out_dir: str | Path) -> list[str]:
    """The files of an earlier replay or merge in ``out_dir`` (``metrics.json``, the manifest): a new run
    would replace them, so the command asks for ``--overwrite``. Other files in ``--out`` are never touched."""
    d = Path(out_dir)
    return [n for n in ("metrics.json", MANIFEST) if (d / n).is_file()]


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
    threads: int = 0,
) -> list[BagReplay]:
    """Replay ``bags`` (this shard of them) into ``out_dir``; see the module docstring for the layout.
    ``threads``: the model's intra-op threads per worker (ONNX Runtime, torch); 0 = :func:`auto_threads`."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = the usable cores shared by the workers), got {threads}")
    out_dir = Path(out_dir)
    selected = select_shard(bags, shard)
    if not selected:
        raise ValueError(f"shard {shard} selects none of the {len(bags)} bags")
    for b in selected:
        if not Path(b).exists():
            raise FileNotFoundError(f"bag {b} does not exist")
    created = None  # the outermost folder of out_dir this run creates (None: out_dir exists already)
    probe = out_dir.absolute()
    while not probe.exists():
        created, probe = probe, probe.parent
    try:
        n_workers = min(workers, len(selected))
        usable = usable_cores()
        if threads and threads * n_workers > usable:
            print(f"ood-perception replay: warning: {n_workers} worker(s) x {threads} model threads > the {usable} usable "
                  "cores: the threads compete (0 = the cores shared by the workers)", file=sys.stderr)
        return _run_selected(bags, selected, out_dir, settings, model_dir, backend, workers, shard, labels,
                             label_sequence, dataset_config, progress, threads or auto_threads(n_workers))
    except BaseException:
        if created is not None:  # a failed replay leaves no empty folders behind; never touches one the user had
            _remove_empty_dirs(created)
        raise


def _remove_empty_dirs(root: Path) -> None:
    """Remove ``root`` and the folders under it that hold no file (bottom-up; files are never removed)."""
    if not root.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -len(Path(w[0]).parts)):
        try:
            os.rmdir(dirpath)  # fails (and keeps the folder) when anything is left in it
        except OSError:
            pass


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_threads(workers: int, cpus: int | None = None) -> int:
    """Model threads per replay worker when none are given: the usable cores shared by the workers
    (at least 1). One bag on 2 cores with the default model: 1.76x real time at 2 threads against
    1.43x at 1 (bench/results/replay.md, 2026-12-04; the model is most of a frame's time, so the
    second core serves it better than the overlapped post-processing alone)."""
    return max(1, (usable_cores() if cpus is None else cpus) // max(1, workers))


def _run_selected(bags: Sequence[str | Path], selected: list[Path], out_dir: Path, settings: ReplaySettings, model_dir: str | Path | None,
                  backend: str, workers: int, shard: str | None, labels: str | Path | None, label_sequence: str | None,
                  dataset_config: str | Path | None, progress: bool, threads: int = 1) -> list[BagReplay]:
    names: list[str] = []
    for b in selected:
        names.append(bag_output_name(b, set(names)))
    single = len(selected) == 1 and not shard
    jobs = [
        ReplayJob(bag=b, out_dir=out_dir if single else out_dir / n, model_dir=Path(model_dir) if model_dir else None,
                  backend=backend, settings=settings, labels=Path(labels) if labels else None, label_sequence=label_sequence,
                  dataset_config=Path(dataset_config) if dataset_config else None, progress=progress and workers <= 1,
                  threads=threads)
        for b, n in zip(selected, names, strict=True)
    ]
    existed = out_dir.exists()
    try:
        if workers <= 1 or len(jobs) == 1:
            results = []
            for j in jobs:
                results.append(run_job(j))
                if results[-1].interrupted:  # Ctrl-C / SIGTERM: the bags done so far are the results
                    break
        else:
            import multiprocessing as mp  # lazy: only for --workers > 1

            from tqdm import tqdm

            ctx = mp.get_context("spawn")
            # workers leave Ctrl-C to this process and unwind on SIGTERM (Pool.terminate), removing their temporaries
            with ctx.Pool(min(workers, len(jobs)), initializer=install_worker_signal_handlers) as pool:
                results = list(tqdm(pool.imap(run_job, jobs), total=len(jobs), desc="bags", disable=not progress))
    except BaseException:
        _clean_failed(out_dir, [] if single else names, existed)
        raise
    if not single:
        info = {"bags": [r.bag for r in results], "backend": backend, "model": str(model_dir or "default model"),
                "shard": shard or "all", "model_threads": threads}
        if len(results) < len(jobs):  # stopped by Ctrl-C / SIGTERM
            info["not_replayed"] = [str(j.bag) for j in jobs[len(results):]]
        write_outputs(out_dir, results, info, metrics=_pooled(results))
    if len(results) == len(jobs):  # a stopped run is no finished shard (--merge refuses it)
        write_json(out_dir / MANIFEST, {
            "shard": shard or "0/1", "bags": [str(b) for b in sorted(Path(b) for b in bags)],
            "dirs": {str(b): ("." if single else n) for b, n in zip(selected, names, strict=True)},
        })
    return results


def _clean_failed(out_dir: Path, names: Sequence[str], existed: bool) -> None:
    """After a failed run: drop the staging folders of killed workers, and ``out_dir`` if this run
    created it and left it empty."""
    if not out_dir.is_dir():
        return
    for n in names:
        for tmp in out_dir.glob(f".{n}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    if not existed and not any(out_dir.iterdir()):
        out_dir.rmdir()


def _pooled(results: Sequence[BagReplay]) -> Any:
    first = results[0].metrics
    pooled = MetricsAccumulator(first.config, first.threshold, first.input_hw)
    for r in results:
        pooled.merge(r.metrics)
    return pooled


def merge_replays(dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Pool finished replay outputs (the shards of one bag list) into ``out_dir``: ``metrics.json``,
    ``timing.json``, ``report.html`` and a manifest, equal to replaying all the bags in one run
    (up to the metrics' sample cap, ``evaluation.segmentation.MAX_SAMPLES``; beyond it both are
    thinned estimates).

    Raises:
        FileNotFoundError: a folder is not a finished replay output (no ``shard.json``).
        ValueError: the shards are of different bag lists or models, one is missing or given twice.
    """
    manifests = []
    for d in dirs:
        f = Path(d) / MANIFEST
        if not f.is_file():
            raise FileNotFoundError(f"{d} is not a finished replay output (no {MANIFEST}; was its run interrupted?)")
        m = json.loads(f.read_text())
        if "merged" in m:
            raise ValueError(f"{d} is itself a merge of {len(m['merged'])} shards; merge the shard folders")
        manifests.append((Path(d), m))
    bag_list = manifests[0][1]["bags"]
    n = int(manifests[0][1]["shard"].split("/")[1])
    seen: dict[int, Path] = {}
    for d, m in manifests:
        if m["bags"] != bag_list or int(m["shard"].split("/")[1]) != n:
            raise ValueError(f"{d} is a shard of another bag list or shard count than {manifests[0][0]}; "
                             "merge the shards of one run")
        i = int(m["shard"].split("/")[0])
        if i in seen:
            raise ValueError(f"shard {i}/{n} given twice: {seen[i]} and {d}")
        seen[i] = d
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise ValueError(f"shards {', '.join(missing)} missing (have {', '.join(f'{i}/{n}' for i in sorted(seen))})")
    loaded = []
    for d, m in manifests:
        for bag, sub in m["dirs"].items():
            loaded.append((Path(bag), d / sub / STATE_FILE))
    loaded.sort(key=lambda x: x[0])  # the order a single run pools in (select_shard's sort)
    results, pooled, infos = [], {}, []
    for _, state in loaded:
        result, accs, info = load_bag_state(state)
        results.append(result)
        infos.append(info)
        for name, acc in accs.items():
            if name not in pooled:
                pooled[name] = load_bag_state(state)[1][name]  # a fresh copy to pool into
            else:
                pooled[name].merge(acc)
    models = {i.get("model_sha256") for i in infos}
    if len(models) > 1:
        raise ValueError(f"the shards were replayed with different models ({len(models)} model hashes); merge one run")
    info = {"bags": [r.bag for r in results], "backend": infos[0].get("backend"), "model": infos[0].get("model"),
            "shard": f"merged {n} shards",
            "decision_warnings": "; ".join(sorted({str(i.get("decision_warnings", "none")) for i in infos} - {"none"})) or "none"}
    out_dir = Path(out_dir)
    with staged(out_dir) as stage:
        data = write_outputs(stage, results, info, metrics=pooled["segmentation"])
        write_json(stage / MANIFEST, {"merged": [str(d) for d, _ in manifests], "bags": bag_list})
    return data
