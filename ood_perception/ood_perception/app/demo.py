"""``ood-perception demo`` (what ``make demo`` runs): the whole system on the built-in world.

Steps, each real (nothing is faked; a missing piece stops the demo with one line saying what):

1. the default model (``runtime.default_model_dir()``, or ``--model``) and the default
   recognition model (``runtime.default_recognition_model_dir()``, or ``--recognition-model``)
   are checked first;
2. a short synthetic drive with anomalies is synthesised as an MCAP bag with the world's
   ``synth --bag`` command, cached under ``<out>/cache/`` (same seed -> reused);
3. the drive is replayed through the fusion pipeline, with the drive's ``calib.txt`` extrinsics
   (:func:`drive_params`) (:func:`ood_perception.replay.run.run_job`):
   output bag, metrics against the world's exact labels, report;
4. the real fusion node runs in-process over rclpy, fed the same bag (:func:`~.live.run_live`);
   its masks and alerts are compared with replay's, frame by frame (:func:`compare_live`);
5. action recognition with the recognition node's own recogniser
   (``pipeline.recognition.ClipRecognizer``) on clips of the world's motion generator that no
   model saw (in-distribution, near- and far-OOD motions; :func:`recognize_world_clips`), and the
   recognition node's frame processor (stamp rules, clip buffer, model, alert state machine) on
   Debian opencv-doc's street video ``vtest.avi`` when installed, checked against an independent
   ``ClipRecognizer`` on the same frames (:func:`recognize_video`);
6. ``<out>/report.html``, ``<out>/recognition.json`` and ``<out>/overlay_*.png`` are written and
   their paths printed.
"""

from __future__ import annotations

import base64
import html
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ood_perception import runtime
from ood_perception.app.live import run_live
from ood_perception.atomic import atomic_write_bytes
from ood_perception.data.bag_reader import BagSource
from ood_perception.metrics import ood_metrics
from ood_perception.pipeline.frame_handler import MATRIX_PARAM
from ood_perception.pipeline.recognition import ClipRecognizer, RecognitionFrameProcessor
from ood_perception.replay.engine import ReplaySettings
from ood_perception.replay.params import extrinsics_from_kitti_calib, settings_from_params
from ood_perception.replay.report import atomic_write_text, render_html, write_json
from ood_perception.replay.run import ReplayJob, build_pipeline, run_job
from ood_perception.world.clips import (
    FAR_OOD_CLASSES,
    ID_CLASSES,
    NEAR_OOD_CLASSES,
    ClipConfig,
    clip_rng,
    render_clip,
)
from ood_perception.world.config import WorldConfig
from ood_perception.world.synth import generate_dataset

#: Debian opencv-doc's example street video (795 frames of pedestrians, 768x576 at 10 fps), checked on Debian 12.
VTEST_AVI = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

#: Node parameters the demo runs the live node and replay with (defaults otherwise).
#: stale_timeout is long because the live node's start-up grace is wall time, replay's bag time.
DEMO_PARAMS = {"stale_timeout": 60.0, "diagnostics_period": 1.0}

#: Inference threads of the demo's replay and live node: 1, chosen with the previous (smaller) default
#: model, which replayed faster on 1 than on 2 on a loaded 2-CPU box (0.89x vs 0.66x at load average
#: 3-5); with the current model `replay` defaults to the usable cores (1.76x vs 1.43x on an idle box,
#: bench/results/replay.md), but the demo runs its live node beside the replay and keeps 1 (not re-measured).
REPLAY_THREADS = 1

#: Split name of the world clips the demo renders: ``world.clips.clip_rng`` hashes it, so these
#: clips differ from the recognition model's training (``train``/``test``) and calibration clips.
DEMO_CLIP_SPLIT = "demo"


class DemoError(ValueError):
    """A step of the demo cannot run; the text says which and why (printed as one line)."""


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does: drive frames, world clips per motion, video frames, video clip stride."""

    frames: int
    clips_per_motion: int
    video_frames: int
    video_stride: int


#: The full demo (under 5 minutes on 2 CPU cores after set-up) and ``--quick`` (CI).
FULL = DemoSize(frames=40, clips_per_motion=4, video_frames=800, video_stride=16)
QUICK = DemoSize(frames=8, clips_per_motion=1, video_frames=48, video_stride=16)


def check_model(model_dir: str | Path | None) -> Path:
    """The model directory to use, after checking it loads; DemoError otherwise."""

    path = Path(model_dir) if model_dir else runtime.default_model_dir()
    try:
        runtime.load_spec(path)
    except Exception as exc:  # noqa: BLE001 - any problem with the model stops the demo with one line
        raise DemoError(f"no usable model at {path} ({type(exc).__name__}: {exc}); "
                        "the default model ships with the package in ood_perception/assets/default_model "
                        "($OOD_PERCEPTION_MODEL overrides it); or pass --model DIR") from None
    return path


def check_recognition_model(model_dir: str | Path | None) -> Path:
    """The recognition model directory to use, after checking it holds a recognition model; DemoError otherwise."""

    path = Path(model_dir) if model_dir else runtime.default_recognition_model_dir()
    try:
        spec = runtime.load_spec(path)
    except Exception as exc:  # noqa: BLE001 - one line, as for the segmentation model
        raise DemoError(f"no usable recognition model at {path} ({type(exc).__name__}: {exc}); the default recognition "
                        "model ships with the package (docs/recognition_model.md) - or pass --recognition-model DIR") from None
    if spec.kind != "recognition":
        raise DemoError(f"{path} holds a {spec.kind!r} model, not a recognition model (--recognition-model)")
    return path


def synthesize_drive(cache: Path, frames: int, seed: int) -> Path:
    """The cached demo drive bag (synthesised as ``ood-perception synth --bag mcap`` would, if absent)."""
    target = cache / f"drive_v2_f{frames}_s{seed}"  # v2: bag stamps start at 1 s (world.synth.BAG_START_NS)
    done = target / "DONE"
    if done.exists():
        return _find_bag(target)
    shutil.rmtree(target, ignore_errors=True)
    generate_dataset(target, sequences=1, frames=frames, seed=seed, config=WorldConfig(), bag="mcap", progress=True)
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

    calibs = sorted(root.rglob("calib.txt"))
    if not calibs:
        raise DemoError(f"the synthetic drive under {root} has no calib.txt")
    T = extrinsics_from_kitti_calib(calibs[0])
    return {**DEMO_PARAMS, MATRIX_PARAM: [float(v) for v in T.ravel()]}


# ------------------------------------------------------------------------------ live vs replay


@dataclass
class LiveComparison:
    """Frame-by-frame agreement of the live fusion node with replay."""

    frames: int  # frames replay processed
    alerts_received: int  # per-frame alerts the live node published
    same_level: int  # frames whose live alert level equals replay's
    masks_compared: int  # frames with a mask in both replay's output bag and live
    masks_identical: int  # of those, bit-identical masks
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for recognition.json / summary)."""
        return dict(self.__dict__)


def compare_live(replay_out: Path, frames: Sequence[Any], live: Any, mask_topic: str = "/ood/mask") -> LiveComparison:
    """Compare the live node's record (:class:`~.live.LiveRecord`) with replay's frames and the
    masks in replay's output bag (``replay_out/output/``, a rosbag2 directory), keyed by camera stamp."""

    replay_masks: dict[int, np.ndarray] = {}
    with BagSource(replay_out / "output") as src:
        for m in src.messages([mask_topic]):
            msg = m.msg
            stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
            buf = np.frombuffer(bytes(msg.data), np.uint8).reshape(int(msg.height), int(msg.step))
            replay_masks[stamp] = buf[:, : int(msg.width)]
    same_level = sum(1 for f in frames if live.alerts.get(f.stamp_ns, (None,))[0] == f.level)
    common = [s for s in replay_masks if s in live.masks]
    identical = sum(1 for s in common if np.array_equal(replay_masks[s], np.asarray(live.masks[s]).reshape(replay_masks[s].shape))
                    if np.asarray(live.masks[s]).size == replay_masks[s].size)
    return LiveComparison(frames=len(frames), alerts_received=len(live.alerts), same_level=same_level,
                          masks_compared=len(common), masks_identical=identical, wall_s=float(live.wall_s))


# ------------------------------------------------------------------------------ recognition


@dataclass
class ClipRow:
    """One recognised clip for the report.

    Attributes:
        source: ``"world"`` or the video file's name; ``name``: which clip.
        group: ``"ID"``, ``"near OOD"``, ``"far OOD"`` (world clips) or ``"real video"``.
        truth: the true motion of a world clip (None for the video).
        result: the recogniser's :class:`~ood_perception.pipeline.recognition.RecognitionResult`.
        thumb: RGB uint8 thumbnail (a strip of clip frames, or the video frame).
        reference_agrees: for the video: whether an independent ``ClipRecognizer`` on the same
            frames gave the same class and score (None when not checked).
    """

    source: str
    name: str
    group: str
    truth: str | None
    result: Any
    thumb: np.ndarray
    reference_agrees: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (no thumbnail)."""
        r = self.result
        return {"source": self.source, "name": self.name, "group": self.group, "truth": self.truth,
                "class_name": r.class_name, "confidence": float(r.confidence), "ood_score": float(r.ood_score),
                "threshold": float(r.threshold), "is_ood": bool(r.is_ood), "score_name": r.score_name,
                "reference_agrees": self.reference_agrees, **self.extra}


def demo_motions(size: DemoSize) -> list[tuple[str, str]]:
    """(motion, group) of the world clips the demo renders: every motion, ``size.clips_per_motion`` of each."""

    groups = [(ID_CLASSES, "ID"), (NEAR_OOD_CLASSES, "near OOD"), (FAR_OOD_CLASSES, "far OOD")]
    return [(m, g) for motions, g in groups for m in motions for _ in range(size.clips_per_motion)]


def _strip(frames: np.ndarray, picks: int = 4) -> np.ndarray:
    """A horizontal strip of ``picks`` evenly spaced clip frames at their own size (1-pixel white gaps)."""
    idx = np.linspace(0, len(frames) - 1, picks).round().astype(int)
    row = np.concatenate([np.pad(frames[i], ((0, 0), (0, 1), (0, 0)), constant_values=255) for i in idx], axis=1)
    return row


def recognize_world_clips(recognizer: Any, size: DemoSize, seed: int) -> list[ClipRow]:
    """Render the world's motion clips (:func:`demo_motions`, split :data:`DEMO_CLIP_SPLIT`) at
    the model's clip length and size and recognise each with ``recognizer.process_clip``."""

    cfg = ClipConfig(frames=recognizer.buffer.clip_len, size=recognizer.buffer.size)
    rows = []
    count: dict[str, int] = {}
    for i, (motion, group) in enumerate(demo_motions(size)):
        clip = render_clip(motion, clip_rng(seed, DEMO_CLIP_SPLIT, i), cfg)
        k = count[motion] = count.get(motion, -1) + 1
        result = recognizer.process_clip(clip.frames)
        rows.append(ClipRow("world", f"{motion} #{k}", group, motion, result, _strip(clip.frames)))
    return rows


def world_summary(rows: Sequence[ClipRow], class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy on the ID clips, share flagged OOD per group and AUROC (ID vs near / far OOD, by
    :func:`ood_perception.metrics.ood_metrics` of the OOD score, checked against scikit-learn's
    ``roc_auc_score`` in the metrics tests) over the demo's world clips."""

    out: dict[str, Any] = {}
    ids = [r for r in rows if r.group == "ID"]
    out["ID accuracy"] = float(np.mean([r.result.class_name == r.truth for r in ids])) if ids else None
    for g in ("ID", "near OOD", "far OOD"):
        rs = [r for r in rows if r.group == g]
        out[f"{g} flagged"] = float(np.mean([r.result.is_ood for r in rs])) if rs else None
        out[f"{g} clips"] = len(rs)
    for g in ("near OOD", "far OOD"):
        rs = [r for r in rows if r.group == g]
        if ids and rs:
            y = [0] * len(ids) + [1] * len(rs)
            s = [r.result.ood_score for r in ids] + [r.result.ood_score for r in rs]
            out[f"AUROC ID vs {g}"] = float(ood_metrics(s, y)["auroc"])
    return out


def open_video(path: Path) -> tuple[Any, float, tuple[int, int]]:
    """An OpenCV capture of a video file, its frame rate and ``(height, width)``; DemoError when unreadable."""

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"OpenCV cannot open the video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS)) or 10.0
    hw = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
    return cap, fps, hw


def recognize_video(path: Path, max_frames: int, model_dir: Path, stride: int,
                    clock_jump: float = 1.0) -> tuple[list[ClipRow], dict[str, Any]]:
    """Stream up to ``max_frames`` frames of the video at ``path`` through the recognition node's
    own frame processor (:class:`~ood_perception.pipeline.recognition.RecognitionFrameProcessor`:
    the stamp rules, clip buffer, model and alert state machine the node runs; stamps 1 s + i / fps)
    and record each clip's result and alert level. An independent ``ClipRecognizer`` over the same
    model directory, fed the same frames, checks every result (same class and decision, score within
    1e-5). Frames are streamed, not held (a thumbnail of each clip's middle frame is kept).
    Returns the rows and facts about the run."""
    cap, fps, hw = open_video(path)
    processor = RecognitionFrameProcessor(ClipRecognizer.from_model_dir(model_dir, stride=stride), clock_jump=clock_jump)
    ref = ClipRecognizer.from_model_dir(model_dir, stride=stride)
    clip_len = ref.buffer.clip_len
    level_names = {0: "CLEAR", 1: "WARNING", 2: "ALERT", 3: "DEGRADED"}
    recent: list[np.ndarray] = []  # thumbnails of the last clip_len frames
    rows: list[ClipRow] = []
    latencies: list[float] = []
    n = 0
    t0 = time.perf_counter()
    try:
        while n < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            t = 1.0 + n / fps
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            recent = [*recent[-(clip_len - 1):], cv2.resize(rgb, (192, round(192 * hw[0] / hw[1])), interpolation=cv2.INTER_AREA)]
            reset, reason = processor.admit(t)
            if reason is not None:
                raise DemoError(f"frame {n} of {path} refused by the recognition processor: {reason}")
            if reset:
                processor.reset()
            out = processor.process(rgb, t)
            exp = ref.push(rgb, t)
            if out is not None:
                if out.result is None:
                    raise DemoError(f"the recognition model failed on {path} at frame {n}: {out.error}")
                r = out.result
                latencies.append(r.latency_s)
                agrees = exp is not None and (r.class_id == exp.class_id and abs(r.ood_score - exp.ood_score) <= 1e-5
                                              and r.is_ood == exp.is_ood)
                first = n - r.num_frames + 1
                rows.append(ClipRow(path.name, f"frames {first}-{n} ({first / fps:.1f}-{n / fps:.1f} s)", "real video",
                                    None, r, recent[len(recent) // 2], agrees, {"alert": level_names.get(out.level, "?")}))
            n += 1
    finally:
        cap.release()
    if n < 2:
        raise DemoError(f"the video {path} gave {n} frame(s)")
    info = {"frames": n, "fps": fps, "clip_stride": stride, "clips": len(rows),
            "latency_p50_ms": float(np.median(latencies) * 1e3) if latencies else float("nan"),
            "wall_s": time.perf_counter() - t0, "frame_size": list(hw)}
    return rows, info


# ------------------------------------------------------------------------------ report sections


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.3f}"
    return html.escape(str(v))


def jpeg_b64(rgb: np.ndarray, quality: int = 85) -> str:
    """An RGB uint8 image as base64 JPEG (clip thumbnails: noisy frames compress poorly as PNG)."""


    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode thumbnail")
    return base64.b64encode(buf.tobytes()).decode()


def _rows_table(rows: Sequence[ClipRow], thumbs: set[int], with_truth: bool, with_node: bool) -> str:
    head = ["clip", *(["group", "true motion"] if with_truth else []), "class", "confidence", "OOD score", "OOD?",
            *(["node alert", "= reference"] if with_node else []), "frames"]
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):
        res = r.result
        cells = [html.escape(r.name)]
        if with_truth:
            ok = r.group != "ID" or res.class_name == r.truth
            cells += [html.escape(r.group), html.escape(str(r.truth)) + ("" if ok else " &#10007;")]
        cells += [html.escape(res.class_name), _fmt(res.confidence), _fmt(res.ood_score), "yes" if res.is_ood else "no"]
        if with_node:
            cells += [html.escape(str(r.extra.get("alert", ""))), {True: "yes", False: "NO", None: "n/a"}[r.reference_agrees]]
        # small clip frames are shown at twice their size, pixelated (keeps the report small)
        zoom = 2 if r.thumb.shape[0] <= 96 else 1
        img = (f'<img alt="{html.escape(r.name)}" width="{r.thumb.shape[1] * zoom}" style="image-rendering:pixelated" '
               f'src="data:image/jpeg;base64,{jpeg_b64(r.thumb)}">') if i in thumbs else ""
        cells.append(img)
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def recognition_html(world: Sequence[ClipRow], summary: dict[str, Any], video: Sequence[ClipRow],
                     video_info: dict[str, Any] | None, video_note: str | None, model_dir: Path, spec: Any) -> str:
    """The report's action recognition section: model, world-clip summary and table, video table."""
    ev = (getattr(spec, "provenance", None) or {}).get("evaluation") or {}
    parts = [f"<p>Model: <code>{html.escape(str(model_dir))}</code> ({len(spec.class_names)} in-distribution motions: "
             f"{html.escape(', '.join(spec.class_names))}; score {html.escape(spec.score_name)}, OOD when score &gt; "
             f"{spec.threshold:.4f}, the threshold that keeps 95% of in-distribution validation clips).</p>"]
    if ev:
        acc = (ev.get("accuracy") or {}).get("joint")
        ood = ev.get("ood") or {}
        parts.append("<p>Its held-out evaluation (model.json): accuracy " + _fmt(acc) + ", AUROC near / far OOD "
                     + _fmt((ood.get("near_ood") or {}).get("auroc")) + " / " + _fmt((ood.get("far_ood") or {}).get("auroc"))
                     + f" on {sum((ev.get('n_clips') or {}).values())} clips.</p>")
    parts.append(f"<h3>World clips ({len(world)}, split '{DEMO_CLIP_SPLIT}': no model saw them)</h3>")
    parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in summary.items())
                 + "</table><p class='note'>A handful of clips: these rates are anecdotal; the held-out numbers "
                 "above are the model's evaluation.</p>")
    first = {}
    for i, r in enumerate(world):
        first.setdefault(r.truth, i)
    parts.append(_rows_table(world, set(first.values()), with_truth=True, with_node=False))
    parts.append(f"<h3>Real video: {html.escape(VTEST_AVI.name)} through the recognition node's frame processor</h3>")
    if video_note:
        parts.append(f"<p class='note'>{html.escape(video_note)}</p>")
    if video_info:
        agree = sum(1 for r in video if r.reference_agrees)
        flagged = sum(1 for r in video if r.result.is_ood)
        classes: dict[str, int] = {}
        for r in video:
            classes[r.result.class_name] = classes.get(r.result.class_name, 0) + 1
        parts.append(
            f"<p>{video_info['frames']} frames ({video_info['frame_size'][1]}x{video_info['frame_size'][0]} at "
            f"{video_info['fps']:.0f} fps; the processor squeezes each frame to the model's "
            f"{spec.input_size[0]}x{spec.input_size[1]}) gave {len(video)} clips (stride {video_info['clip_stride']}); "
            f"{flagged} of them flagged OOD; classes: {html.escape(', '.join(f'{k} {v}' for k, v in sorted(classes.items())))}. "
            f"The processor's results equal an independent ClipRecognizer's on {agree} of {len(video)} clips; "
            f"clip latency (flow + model) p50 {video_info['latency_p50_ms']:.0f} ms. "
            "Real pedestrians in a street scene are far from the synthetic stick figures the model learned (far "
            "OOD for this model), so every clip not flagged is a missed detection: softmax confidence (MSP) is "
            "known to stay high far from the training data.</p>")
        picks = set(np.linspace(0, len(video) - 1, min(6, len(video))).round().astype(int).tolist()) if video else set()
        parts.append(_rows_table(video, picks, with_truth=False, with_node=True))
    return "".join(parts)


# ------------------------------------------------------------------------------ the demo


def run_demo(out: str | Path = "demo_out", model_dir: str | Path | None = None, quick: bool = False,
             seed: int = 7, backend: str = "onnxruntime", recognition_model: str | Path | None = None,
             video: str | Path | None = None) -> Path:
    """Run the demo into ``out``; returns the report path. Raises :class:`DemoError` with one line.

    Args:
        video: real video for the recognition node (default :data:`VTEST_AVI` when it exists).
    """

    t0 = time.perf_counter()
    out = Path(out)
    size = QUICK if quick else FULL
    model = check_model(model_dir)
    rec_model = check_recognition_model(recognition_model)
    video_path = Path(video) if video else (VTEST_AVI if VTEST_AVI.exists() else None)
    if video is not None and not Path(video).exists():
        raise DemoError(f"--video {video} does not exist")
    print(f"[1/5] drive: {size.frames} frames of the synthetic world (cached in {out / 'cache'})", flush=True)
    bag = synthesize_drive(out / "cache", size.frames, seed)
    params = drive_params(next((p for p in bag.parents if (p / "sequences").is_dir()), bag.parent))
    settings = settings_from_params(params, ReplaySettings())
    print("[2/5] replay through the fusion pipeline", flush=True)
    ds = _dataset_yaml(bag if bag.is_dir() else bag.parent) or _dataset_yaml(out / "cache")
    job = ReplayJob(bag=bag, out_dir=out / "replay", model_dir=model, backend=backend, settings=settings,
                    dataset_config=ds, progress=True, threads=REPLAY_THREADS)
    rep = run_job(job)
    print(f"      {len(rep.frames)} frames at {rep.x_real_time:.1f}x real time", flush=True)
    print("[3/5] live: the fusion node over rclpy, fed the same bag", flush=True)
    pipeline = build_pipeline(model, backend, settings, threads=REPLAY_THREADS)
    live = run_live(bag, {f.bag_time_ns: f.stamp_ns for f in rep.frames},
                    {**params, "model_dir": str(model), "backend": backend}, backend=pipeline.backend,
                    topics=settings.topics)
    cmp = compare_live(out / "replay", rep.frames, live)
    print(f"      live = replay: alert level on {cmp.same_level}/{cmp.frames} frames, "
          f"identical masks on {cmp.masks_identical}/{cmp.masks_compared}", flush=True)
    live_section = (f"<p>The fusion node ran live over DDS (in-process rclpy, clocked by /clock = bag time) on the same "
                    f"bag: {cmp.alerts_received} frame alerts received; the alert level equals replay's on "
                    f"{cmp.same_level} of {cmp.frames} frames and the published mask is bit-identical to replay's "
                    f"output bag on {cmp.masks_identical} of {cmp.masks_compared} frames (live wall time "
                    f"{cmp.wall_s:.1f} s).</p>")
    print(f"[4/5] recognition: world clips with {rec_model}", flush=True)
    spec = runtime.load_spec(rec_model)
    recognizer = ClipRecognizer.from_model_dir(rec_model)
    world = recognize_world_clips(recognizer, size, seed)
    summary = world_summary(world, spec.class_names)
    print(f"      {len(world)} clips: ID accuracy {_fmt(summary['ID accuracy'])}, flagged OOD: ID "
          f"{_fmt(summary['ID flagged'])}, near {_fmt(summary['near OOD flagged'])}, far {_fmt(summary['far OOD flagged'])}",
          flush=True)
    video_rows: list[ClipRow] = []
    video_info: dict[str, Any] | None = None
    note: str | None = None
    if video_path is None:
        note = f"{VTEST_AVI} not found (Debian package opencv-doc; `make demo` installs it): real-video part skipped."
        print(f"[5/5] recognition node on a real video: skipped ({note})", flush=True)
    else:
        print(f"[5/5] recognition node over rclpy on {video_path} ({size.video_frames} frames at most)", flush=True)
        video_rows, video_info = recognize_video(video_path, size.video_frames, rec_model, size.video_stride)
        print(f"      {len(video_rows)} clips, {sum(r.result.is_ood for r in video_rows)} flagged OOD, processor = reference on "
              f"{sum(1 for r in video_rows if r.reference_agrees)}", flush=True)
    rec_html = recognition_html(world, summary, video_rows, video_info, note, rec_model, spec)
    # overlays as files, for the README and quick looks


    written = []
    for name in ("worst", "best"):
        for k, (_idx, img) in enumerate(rep.thumbnails.get(name, [])[:2]):
            p = out / f"overlay_{name}_{k}.png"
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
            if not ok:
                raise DemoError(f"cannot encode {p}")
            atomic_write_bytes(p, buf.tobytes())
            written.append(p)
    wall = round(time.perf_counter() - t0, 1)
    info = {"model": str(model), "recognition model": str(rec_model), "backend": backend, "bag": str(bag),
            "frames": len(rep.frames), "mode": "quick" if quick else "full", "demo wall time [s]": wall}
    write_json(out / "recognition.json", {
        "recognition_model": str(rec_model), "world_summary": summary, "world": [r.as_dict() for r in world],
        "video": {"path": str(video_path) if video_path else None, "info": video_info, "note": note,
                  "clips": [r.as_dict() for r in video_rows]},
        "live_vs_replay": cmp.as_dict(), "replay_x_real_time": rep.x_real_time, "demo_wall_s": wall,
    })
    report = atomic_write_text(out / "report.html", render_html(
        "ood_perception demo", [rep], rep.metrics, rep.metrics.summary(), info,
        extra_sections=[("Live vs replay", live_section), ("Action recognition", rec_html)]))
    print(f"report: {report.resolve()}")
    print(f"recognition results: {(out / 'recognition.json').resolve()}")
    for p in written:
        print(f"overlay: {p.resolve()}")
    print(f"demo wall time: {wall:.1f} s")
    return report


def demo_main(args: Any) -> int:
    """CLI handler body (see commands/demo.py)."""
    run_demo(args.out, args.model, args.quick, args.seed, args.backend,
             getattr(args, "recognition_model", None), getattr(args, "video", None))
    return 0
