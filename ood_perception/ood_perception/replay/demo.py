"""``ood-perception demo`` (what ``make demo`` runs): the whole system on the built-in world.

Steps, each real (nothing is faked; a missing piece stops the demo with one line saying what):

1. the default model (``runtime.default_model_dir()``, or ``--model``) is checked first;
2. a short synthetic drive with anomalies is synthesised as an MCAP bag with the world's
   ``synth --bag`` command, cached under ``<out>/cache/`` (same seed -> reused);
3. the drive is replayed through the fusion pipeline, with the drive's ``calib.txt`` extrinsics
   (:func:`drive_params`) (:func:`ood_perception.replay.run.run_job`):
   output bag, metrics against the world's exact labels, report;
4. the real fusion node runs in-process over rclpy, fed the same bag (:func:`~.live.run_live`);
   its masks and alerts are compared with replay's, frame by frame;
5. action recognition runs on the world's clips and, when Debian's ``opencv-doc`` is installed, on
   its real street video ``vtest.avi``;
6. ``<out>/report.html`` and ``<out>/overlay_*.png`` are written and their paths printed.
"""

from __future__ import annotations

import html
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Debian opencv-doc's example street video (795 frames of pedestrians), checked on Debian 12.
VTEST_AVI = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

#: Node parameters the demo runs the live node and replay with (defaults otherwise).
#: stale_timeout is long because the live node's start-up grace is wall time, replay's bag time.
DEMO_PARAMS = {"stale_timeout": 60.0, "diagnostics_period": 1.0}


class DemoError(ValueError):
    """A step of the demo cannot run; the text says which and why (printed as one line)."""


def check_model(model_dir: str | Path | None) -> Path:
    """The model directory to use, after checking it loads; DemoError otherwise."""
    from ood_perception import runtime

    path = Path(model_dir) if model_dir else runtime.default_model_dir()
    try:
        runtime.load_spec(path)
    except Exception as exc:  # noqa: BLE001 - any problem with the model stops the demo with one line
        raise DemoError(f"no usable model at {path} ({type(exc).__name__}: {exc}); "
                        "the default model ships with the package (issue 5) - or pass --model DIR") from None
    return path


def synthesize_drive(cache: Path, frames: int, seed: int) -> Path:
    """The cached demo drive bag (synthesised with ``ood-perception synth --bag mcap`` if absent)."""
    from ood_perception import cli

    target = cache / f"drive_v2_f{frames}_s{seed}"  # v2: bag stamps start at 1 s (world.synth.BAG_START_NS)
    done = target / "DONE"
    if done.exists():
        return _find_bag(target)
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    if "synth" not in choices:
        raise DemoError("the synthetic world's `ood-perception synth` command is not available in this install")
    shutil.rmtree(target, ignore_errors=True)
    rc = cli.main(["synth", "--out", str(target), "--sequences", "1", "--frames", str(frames),
                   "--seed", str(seed), "--bag", "mcap"])
    if rc != 0:
        raise DemoError(f"`ood-perception synth` failed with exit code {rc}")
    bag = _find_bag(target)
    done.write_text("ok\n")
    return bag


def _find_bag(root: Path) -> Path:
    for meta in sorted(root.rglob("metadata.yaml")):
        return meta.parent
    mcaps = sorted(root.rglob("*.mcap"))
    if mcaps:
        return mcaps[0]
    raise DemoError(f"`synth --bag` wrote no rosbag2 under {root}")


def _dataset_yaml(root: Path) -> Path | None:
    found = sorted(root.rglob("dataset.yaml"))
    return found[0] if found else None


def drive_params(root: Path) -> dict[str, Any]:
    """:data:`DEMO_PARAMS` plus the drive's extrinsics (``lidar_to_camera.matrix`` from its
    ``calib.txt`` Tr), so replay and the live node project the LiDAR as the world rendered it."""
    from ood_perception.pipeline.frame_handler import MATRIX_PARAM
    from ood_perception.replay.params import extrinsics_from_kitti_calib

    calibs = sorted(root.rglob("calib.txt"))
    if not calibs:
        raise DemoError(f"the synthetic drive under {root} has no calib.txt")
    T = extrinsics_from_kitti_calib(calibs[0])
    return {**DEMO_PARAMS, MATRIX_PARAM: [float(v) for v in T.ravel()]}


def recognition_section(quick: bool) -> tuple[str, list[str]]:
    """Run the recognition pipeline on the world's clips and vtest.avi; (HTML, console lines)."""
    try:
        from ood_perception.pipeline import recognition as rec  # the recognition room's clip pipeline
    except ImportError as exc:
        msg = f"recognition pipeline not available in this install ({exc})"
        return f"<p class='note'>{html.escape(msg)}</p>", [f"recognition: skipped: {msg}"]
    run = getattr(rec, "run_demo", None)
    if run is None:
        msg = "ood_perception.pipeline.recognition has no run_demo(clips, video) entry point yet"
        return f"<p class='note'>{html.escape(msg)}</p>", [f"recognition: skipped: {msg}"]
    video = VTEST_AVI if VTEST_AVI.exists() else None
    rows = run(max_clips=4 if quick else 12, video=video, max_video_frames=64 if quick else 256)
    body = ["<table><tr><th>input</th><th>class</th><th>confidence</th><th>OOD score</th><th>OOD?</th></tr>"]
    for r in rows:
        body.append(f"<tr><td>{html.escape(str(r['input']))}</td><td>{html.escape(str(r['class_name']))}</td>"
                    f"<td>{r['confidence']:.2f}</td><td>{r['ood_score']:.3f}</td><td>{'yes' if r['is_ood'] else 'no'}</td></tr>")
    body.append("</table>")
    if video is None:
        body.append(f"<p class='note'>{VTEST_AVI} not found (Debian package opencv-doc): real-video part skipped.</p>")
    return "".join(body), [f"recognition: {len(rows)} clips/videos scored"]


def run_demo(out: str | Path = "demo_out", model_dir: str | Path | None = None, quick: bool = False,
             seed: int = 7, backend: str = "onnxruntime") -> Path:
    """Run the demo into ``out``; returns the report path. Raises :class:`DemoError` with one line."""
    from ood_perception.replay.engine import ReplaySettings
    from ood_perception.replay.live import run_live
    from ood_perception.replay.params import settings_from_params
    from ood_perception.replay.report import atomic_write_text, render_html
    from ood_perception.replay.run import ReplayJob, build_pipeline, run_job

    t0 = time.perf_counter()
    out = Path(out)
    model = check_model(model_dir)
    frames = 12 if quick else 40
    print(f"[1/4] drive: {frames} frames of the synthetic world (cached in {out / 'cache'})", flush=True)
    bag = synthesize_drive(out / "cache", frames, seed)
    params = drive_params(next((p for p in bag.parents if (p / "sequences").is_dir()), bag.parent))
    settings = settings_from_params(params, ReplaySettings())
    print("[2/4] replay through the fusion pipeline", flush=True)
    ds = _dataset_yaml(bag if bag.is_dir() else bag.parent) or _dataset_yaml(out / "cache")
    job = ReplayJob(bag=bag, out_dir=out / "replay", model_dir=model, backend=backend, settings=settings,
                    dataset_config=ds, progress=True, threads=2)
    rep = run_job(job)
    print("[3/4] live: the fusion node over rclpy, fed the same bag", flush=True)
    pipeline = build_pipeline(model, backend, settings, threads=2)
    live = run_live(bag, {f.bag_time_ns: f.stamp_ns for f in rep.frames},
                    {**params, "model_dir": str(model), "backend": backend}, backend=pipeline.backend,
                    topics=settings.topics)
    same_alerts = sum(1 for f in rep.frames if live.alerts.get(f.stamp_ns, (None,))[0] == f.level)
    live_section = (f"<p>The fusion node ran live over DDS on the same bag: {len(live.alerts)} alerts received, "
                    f"{same_alerts} of {len(rep.frames)} frames with the same level as replay "
                    f"(live wall time {live.wall_s:.1f} s).</p>")
    print("[4/4] recognition", flush=True)
    rec_html, rec_lines = recognition_section(quick)
    for line in rec_lines:
        print(line)
    # overlays as files, for the README and quick looks
    written = []
    for name in ("worst", "best"):
        for k, (_idx, img) in enumerate(rep.thumbnails.get(name, [])[:2]):
            import cv2

            p = out / f"overlay_{name}_{k}.png"
            cv2.imwrite(str(p), np.ascontiguousarray(img[:, :, ::-1]))
            written.append(p)
    info = {"model": str(model), "backend": backend, "bag": str(bag), "frames": len(rep.frames),
            "demo wall time [s]": round(time.perf_counter() - t0, 1)}
    report = atomic_write_text(out / "report.html", render_html(
        "ood_perception demo", [rep], rep.metrics, rep.metrics.summary(), info,
        extra_sections=[("Live vs replay", live_section), ("Action recognition", rec_html)]))
    print(f"report: {report}")
    for p in written:
        print(f"overlay: {p}")
    return report


def demo_main(args: Any) -> int:
    """CLI handler body (see commands/demo.py)."""
    run_demo(args.out, args.model, args.quick, args.seed, args.backend)
    return 0
