"""Recognition pipeline without ROS: clip buffer over a frame stream, flow, inference, OOD score.

The recognition node (``ros`` room) feeds frames with their stamps into
:meth:`RecognitionPipeline.push`; every ``stride`` frames, once ``clip_len`` frames are buffered,
the pipeline computes Farneback flow over the clip, runs the video + flow network (torch or ONNX
Runtime through ``ood_perception.runtime``), scores it and returns a :class:`RecognitionResult`.
An exported model directory (``ood-perception export`` of a recognition checkpoint,
``trainer.export.export_recognition``) carries the scorer inside its graph and its calibrated
threshold in ``model.json``; a torch RecognitionNet is scored here. numpy, OpenCV and torch /
onnxruntime only (no rclpy).

Score convention: higher = more anomalous; ``is_ood = ood_score > threshold`` where the threshold
keeps 95% of ID clips (``ood_perception.metrics.calibrate_threshold``): of the ID test clips in the
checkpoint (``ood-perception train recognition``), of ID validation clips in an exported
``model.json``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ood_perception import runtime
from ood_perception.geometry.video import FlowParams, compute_flow, normalise_flow, normalise_frames
from ood_perception.pipeline.alerts import AlertStateMachine


@dataclass
class RecognitionResult:
    """The recognition of one clip (fields named as in ``ood_perception_msgs/Recognition``).

    Attributes:
        class_id: predicted in-distribution class (joint head), ``class_name`` its name.
        confidence: softmax probability of that class.
        ood_score: joint-head OOD score (higher = more anomalous) by ``score_name``;
            ``is_ood``: ``ood_score > threshold``.
        modality_names, modality_scores: the experts (``["video", "flow"]``) and the score of each
            expert head by the logit-only unimodal scorer (an exported model's ``unimodal`` score,
            e.g. max logit when the joint scorer is fitted on features; NaN when there is none).
        modality_classes: each expert's predicted class id.
        stamp_start, stamp_end: stamps of the first and last frame of the clip.
        num_frames: clip length; latency_s: flow + inference wall time.
    """

    class_id: int
    class_name: str
    confidence: float
    ood_score: float
    is_ood: bool
    threshold: float
    score_name: str
    modality_names: list[str] = field(default_factory=list)
    modality_scores: list[float] = field(default_factory=list)
    modality_classes: dict[str, int] = field(default_factory=dict)
    stamp_start: float = 0.0
    stamp_end: float = 0.0
    num_frames: int = 0
    latency_s: float = 0.0

    @property
    def clip_duration(self) -> float:
        """Seconds from the first to the last frame (``Recognition.clip_duration``)."""
        return self.stamp_end - self.stamp_start


class ClipBuffer:
    """Ring buffer of resized RGB frames; emits a clip every ``stride`` frames once full.

    Frames whose stamp is not later than the previous one are dropped (counted in ``dropped``),
    so a replayed or reordered stream never produces clips running backwards in time.
    """

    def __init__(self, clip_len: int = 16, stride: int = 8, size: int = 64) -> None:
        if clip_len < 2 or stride < 1 or size < 8:
            raise ValueError(f"need clip_len >= 2, stride >= 1, size >= 8; got {clip_len}, {stride}, {size}")
        self.clip_len, self.stride, self.size = clip_len, stride, size
        self.frames: deque[np.ndarray] = deque(maxlen=clip_len)
        self.stamps: deque[float] = deque(maxlen=clip_len)
        self.since_emit = 0
        self.emitted = False
        self.dropped = 0

    def reset(self) -> None:
        """Forget buffered frames (e.g. after a stream gap)."""
        self.frames.clear()
        self.stamps.clear()
        self.since_emit = 0
        self.emitted = False

    def push(self, frame_rgb: np.ndarray, stamp: float) -> tuple[np.ndarray, np.ndarray] | None:
        """Add a uint8 ``[H, W, 3]`` RGB frame; returns ``(clip [T, size, size, 3], stamps [T])`` when due."""
        f = np.asarray(frame_rgb)
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 [H, W, 3] RGB, got {f.dtype} {f.shape}")
        if self.stamps and stamp <= self.stamps[-1]:
            self.dropped += 1
            return None
        if f.shape[:2] != (self.size, self.size):
            f = cv2.resize(f, (self.size, self.size), interpolation=cv2.INTER_AREA)
        self.frames.append(f)
        self.stamps.append(float(stamp))
        self.since_emit += 1
        if len(self.frames) == self.clip_len and (self.since_emit >= self.stride or not self.emitted):
            self.since_emit = 0
            self.emitted = True
            return np.stack(self.frames), np.asarray(self.stamps)
        return None


class _TorchBackend:
    def __init__(self, model, device: str = "cpu") -> None:
        import torch  # lazy: torch is heavy to import and only this path needs it

        self.torch = torch
        self.model = model.to(device).eval()
        self.device = device

    def __call__(self, video: np.ndarray, flow: np.ndarray) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            out = self.model(self.torch.from_numpy(video).to(self.device), self.torch.from_numpy(flow).to(self.device))
        return {k: v.cpu().numpy() for k, v in out.items()}


class _RuntimeBackend:
    """An ``ood_perception.runtime`` Backend (``infer({"video", "flow"}) -> dict``): an exported
    recognition model directory (:data:`GRAPH_OUTPUTS`, scorer inside the graph) or any object
    returning the network's ``logits``, ``video_logits``, ``flow_logits`` (scored here)."""

    def __init__(self, backend) -> None:
        self.backend = backend

    def __call__(self, video: np.ndarray, flow: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(self.backend.infer({"video": video, "flow": flow}))
        if "logits" in out:
            need = ("logits", "video_logits", "flow_logits")
        else:
            need = GRAPH_OUTPUTS
        missing = [k for k in need if k not in out]
        if missing:
            raise ValueError(f"recognition backend returned no {missing}; outputs: {sorted(out)}")
        return out


#: Outputs of an exported recognition model directory that the pipeline reads
#: (``ood_perception.models.spec.RECOGNITION_OUTPUTS``; ``trainer.export.export_recognition``).
GRAPH_OUTPUTS: tuple[str, ...] = ("class", "confidence", "score", "video_class", "video_score", "flow_class", "flow_score")
#: Modalities of the recognition network, in ``modality_names`` order.
MODALITIES: tuple[str, ...] = ("video", "flow")


def spec_fields(spec: Any) -> dict[str, Any]:
    """A backend spec as a flat dict: a ``runtime.ModelSpec`` (its fields plus the extra
    ``model.json`` keys such as ``clip_len``, ``flow_params``), a dict, or None (empty)."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    fields = getattr(spec, "__dataclass_fields__", None)
    d = {k: getattr(spec, k) for k in fields if k != "extra"} if fields else dict(getattr(spec, "__dict__", {}))
    d.update(getattr(spec, "extra", None) or {})
    return d


class RecognitionPipeline:
    """Clip buffer + flow + network + scorer.

    Args:
        backend: a :class:`~ood_perception.models.recognition.RecognitionNet` (torch; scored here),
            an exported recognition model directory (``str``/``PathLike``, loaded with
            ``ood_perception.runtime.load``) or a runtime Backend (``infer``); an exported graph
            scores inside (``class``, ``confidence``, ``score``, ``video_*``, ``flow_*`` outputs).
        class_names: K names of the ID classes.
        threshold: OOD threshold on the score (higher = more anomalous).
        scorer: for a torch model or a logits backend: a logit-based scorer name of
            :mod:`ood_perception.scoring` (default ``msp``) or a fitted
            :class:`~ood_perception.scoring.Scorer` (feature scorers get the features); for an
            exported graph: None or the graph's scorer name (its ``score_name``).
        clip_len, stride, size: clip buffer geometry (the model's training clip length and size).
        unimodal_scorer: scorer of the expert heads (logits only); None = ``scorer`` when it needs
            no features, else the expert scores are NaN.
        flow_scale: flow in pixels is divided by this (``model.json`` ``flow_scale``).
    """

    def __init__(self, backend, class_names: Sequence[str], threshold: float, scorer: Any = "msp",
                 clip_len: int = 16, stride: int = 8, size: int = 64, flow_params: FlowParams = FlowParams(),
                 device: str = "cpu", unimodal_scorer: Any = None, flow_scale: float = 4.0) -> None:
        if isinstance(backend, (str, os.PathLike)):
            backend = runtime.load(backend, device=device, intra_op_threads=max(1, min(2, os.cpu_count() or 1)))
        self.model_spec = spec_fields(getattr(backend, "spec", None)) if hasattr(backend, "infer") else {}
        self.graph_scored = self.model_spec.get("kind") == "recognition"
        if self.model_spec.get("kind") not in (None, "recognition"):
            raise ValueError(f"backend holds a {self.model_spec['kind']!r} model, not a recognition model "
                             "(export a recognition checkpoint: ood-perception export)")
        if hasattr(backend, "infer"):  # an ood_perception.runtime Backend
            self.backend = _RuntimeBackend(backend)
        else:
            self.backend = _TorchBackend(backend, device)
        if self.graph_scored:
            graph_score = _score_name(self.model_spec.get("score"))
            if scorer is not None and (scorer if isinstance(scorer, str) else getattr(scorer, "name", None)) != graph_score:
                raise ValueError(f"the exported model scores with {graph_score!r} inside its graph; cannot use scorer "
                                 f"{scorer!r} (export again with --score)")
            self.scorer = None
            self.unimodal_scorer = None
            self.score_name = graph_score
        else:
            # lazy: the scorers are torch modules (~1.5 s to import); a graph-scored (exported) model
            # runs without torch, so a node on ONNX Runtime starts without it
            from ood_perception.scoring import get_scorer

            self.scorer = get_scorer(scorer or "msp") if isinstance(scorer, str) or scorer is None else scorer
            if self.scorer.requires_fit and not self.scorer.fitted:
                raise ValueError(f"scorer {self.scorer.name!r} needs fitting before use in the pipeline")
            uni = unimodal_scorer if unimodal_scorer is not None else (None if self.scorer.needs_features else self.scorer)
            self.unimodal_scorer = get_scorer(uni) if isinstance(uni, str) else uni
            if self.unimodal_scorer is not None and self.unimodal_scorer.needs_features:
                raise ValueError(f"unimodal scorer {self.unimodal_scorer.name!r} needs features; the expert heads give logits only")
            self.score_name = self.scorer.name
        self.class_names = list(class_names)
        self.threshold = float(threshold)
        self.buffer = ClipBuffer(clip_len, stride, size)
        self.flow_params = flow_params
        if not flow_scale > 0:
            raise ValueError(f"flow_scale must be > 0, got {flow_scale}")
        self.flow_scale = float(flow_scale)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, threshold: float | None = None, stride: int = 8,
                        device: str = "cpu", unimodal_scorer: Any = None) -> RecognitionPipeline:
        """Build from a recognition checkpoint (its clip geometry, class names and MSP threshold)."""
        from ood_perception.models.recognition import (  # lazy: torch is heavy to import and only this path needs it
            load_recognition_checkpoint,
        )

        model, ckpt = load_recognition_checkpoint(path, device)
        thr = threshold
        if thr is None:
            thr = (ckpt.get("metrics") or {}).get("threshold", {}).get("value")
            if thr is None:
                raise ValueError(f"checkpoint {path} stores no OOD threshold; pass threshold=")
        scorer = (ckpt.get("metrics") or {}).get("threshold", {}).get("scorer", "msp")
        return cls(model, ckpt["class_names"], thr, scorer, int(ckpt.get("clip_len", 16)), stride,
                   int(ckpt.get("size", 64)), FlowParams(**ckpt.get("flow_params", {})), device,
                   unimodal_scorer=unimodal_scorer)

    @staticmethod
    def _score(scorer, logits: np.ndarray, features: np.ndarray | None) -> float:
        import torch  # lazy: torch is heavy to import and only this path needs it

        if scorer is None or (scorer.needs_features and features is None):
            return float("nan")
        lg = torch.from_numpy(np.asarray(logits, np.float32))
        ft = torch.from_numpy(np.asarray(features, np.float32)) if features is not None else None
        with torch.no_grad():
            return float(scorer(lg, ft)[0])

    def _read(self, out: dict[str, np.ndarray]) -> tuple[int, float, float, list[float], dict[str, int]]:
        """(class id, confidence, joint score, expert scores, expert classes) of batch item 0."""
        if "logits" not in out:  # exported graph: the scorer ran inside it
            return (int(out["class"][0]), float(out["confidence"][0]), float(out["score"][0]),
                    [float(out[f"{m}_score"][0]) for m in MODALITIES], {m: int(out[f"{m}_class"][0]) for m in MODALITIES})
        logits = np.asarray(out["logits"][0], np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        cid = int(np.argmax(logits))
        joint = self._score(self.scorer, out["logits"], out.get("features"))
        per = [self._score(self.unimodal_scorer, out[f"{m}_logits"], None) for m in MODALITIES]
        return cid, float(p[cid]), joint, per, {m: int(np.argmax(out[f"{m}_logits"][0])) for m in MODALITIES}

    def process_clip(self, clip: np.ndarray, stamps: Sequence[float] | None = None) -> RecognitionResult:
        """Recognise one uint8 ``[T, H, W, 3]`` RGB clip (already at the model's size)."""
        t0 = time.perf_counter()
        flow = compute_flow(clip, self.flow_params)
        out = self.backend(normalise_frames(clip)[None], normalise_flow(flow, self.flow_scale)[None])
        cid, conf, joint, per, classes = self._read(out)
        if not 0 <= cid < len(self.class_names):
            raise ValueError(f"model predicted class {cid} but only {len(self.class_names)} class names are known")
        st = np.asarray(stamps if stamps is not None else [0.0, 0.0], float)
        return RecognitionResult(
            class_id=cid, class_name=self.class_names[cid], confidence=conf, ood_score=joint,
            is_ood=bool(joint > self.threshold), threshold=self.threshold, score_name=self.score_name,
            modality_names=list(MODALITIES), modality_scores=per, modality_classes=classes,
            stamp_start=float(st[0]), stamp_end=float(st[-1]), num_frames=len(clip), latency_s=time.perf_counter() - t0,
        )

    def push(self, frame_rgb: np.ndarray, stamp: float) -> RecognitionResult | None:
        """Feed one frame; returns a result when the buffer emits a clip, else None."""
        ready = self.buffer.push(frame_rgb, stamp)
        if ready is None:
            return None
        return self.process_clip(*ready)


def _score_name(score: Any) -> str:
    """The scorer name of a spec's ``score`` (``{"name": ...}`` in ``model.json``, or a plain name)."""
    if isinstance(score, dict):
        return str(score.get("name", ""))
    return str(score or "msp")


class ClipRecognizer(RecognitionPipeline):
    """The recognition node's entry point (``ros/recognition_node.py``): a :class:`RecognitionPipeline`
    built from a runtime backend of an exported recognition model directory
    (``ood_perception.runtime.load(model_dir)``; ``model.json`` gives ``class_names``,
    ``threshold``, ``score``, ``clip_len``, ``input_size``, ``flow_params``, ``flow_scale``).

    Args:
        backend: a runtime Backend (``infer``/``spec``), an exported model directory, or a
            RecognitionNet (then ``class_names`` and ``threshold`` are required).
        clip_length: frames per clip; None = the model's ``clip_len`` (else 16). A value differing
            from the model's ``clip_len`` is refused.
        stride: frames between the starts of consecutive clips.
        threshold: OOD threshold; None = the spec's calibrated ``threshold`` (error when it has none).
        class_names: override of the spec's class names.
        scorer: see :class:`RecognitionPipeline` (an exported graph has its scorer inside).
        size: frame side; None = the model's ``input_size``.
    """

    def __init__(self, backend, clip_length: int | None = None, stride: int = 8, threshold: float | None = None,
                 class_names: Sequence[str] | None = None, scorer: Any = None, size: int | None = None,
                 device: str = "cpu") -> None:
        if isinstance(backend, (str, os.PathLike)):

            backend = runtime.load(backend, device=device, intra_op_threads=max(1, min(2, os.cpu_count() or 1)))
        spec = spec_fields(getattr(backend, "spec", None))
        names = class_names if class_names is not None else spec.get("class_names")
        if not names:
            raise ValueError("ClipRecognizer needs class_names (argument or the backend spec's class_names)")
        thr = threshold if threshold is not None else spec.get("threshold")
        if thr is None:
            raise ValueError("ClipRecognizer needs a threshold (argument or the backend spec's threshold)")
        model_len = spec.get("clip_len") or spec.get("clip_length")
        if clip_length and model_len and int(clip_length) != int(model_len):
            raise ValueError(f"clip_length {clip_length} differs from the model's clip_len {model_len} "
                             "(use the model's, e.g. clip_length 0 on the node)")
        clip_len = int(clip_length or model_len or 16)
        model_size = spec.get("size")
        hw = spec.get("input_size") or []
        if model_size is None and spec.get("kind") == "recognition" and len(hw) == 2:
            if int(hw[0]) != int(hw[1]):
                raise ValueError(f"recognition model input_size {list(hw)} is not square; the clip buffer needs H == W")
            model_size = int(hw[0])
        if size is not None and model_size is not None and int(size) != int(model_size):
            raise ValueError(f"size {size} differs from the model's frame size {model_size}")
        if scorer is None and spec.get("kind") != "recognition":
            scorer = _score_name(spec.get("score"))
        super().__init__(backend, names, float(thr), scorer, clip_len, stride, int(size or model_size or 64),
                         FlowParams(**dict(spec.get("flow_params") or {})), device=device,
                         flow_scale=float(spec.get("flow_scale") or 4.0))

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike | None = None, backend: str = "onnxruntime",
                       device: str = "cpu", **kwargs: Any) -> ClipRecognizer:
        """Load an exported recognition model directory (None: ``runtime.default_recognition_model_dir()``)
        with ``runtime.load(model_dir, backend, device)``; ``kwargs`` go to :class:`ClipRecognizer`."""

        model_dir = runtime.default_recognition_model_dir() if model_dir is None else model_dir
        opts = {"intra_op_threads": max(1, min(2, os.cpu_count() or 1))} if backend == "onnxruntime" else {}
        return cls(runtime.load(model_dir, backend=backend, device=device, **opts), device=device, **kwargs)


# ------------------------------------------------------------------------------ frame processor

#: Why a video frame was not taken (the node counts these per reason, replay and the demo alike).
REJECT_ZERO_STAMP = "zero_stamp"
REJECT_DUPLICATE_STAMP = "duplicate_stamp"
REJECT_OLD_STAMP = "old_stamp"


@dataclass
class RecognitionOutput:
    """What the recognition node publishes for one clip (or for one failed clip).

    Attributes:
        stamp: stamp of the clip's last frame (the published header's stamp).
        result: the clip's :class:`RecognitionResult`, None when the model failed on it.
        level, description: the alert decision (``OodAlert.level`` / ``description``).
        modalities, score, threshold: the alert's modalities, frame score and threshold.
        error: the model failure, when there was one.
    """

    stamp: float
    result: RecognitionResult | None
    level: int
    description: str
    modalities: list[str]
    score: float
    threshold: float
    error: str | None = None


class RecognitionFrameProcessor:
    """The recognition node's per-frame decisions without ROS, shared by the node, replay and the demo.

    Two sides, each used from one thread (the node calls :meth:`admit` in its subscription
    callback and :meth:`process` / :meth:`reset` in its worker; replay and the demo call both in
    order on one thread):

    * :meth:`admit` (stamp rules): a zero stamp, a stamp equal to or behind the newest one
      (within ``clock_jump``) is rejected with a reason; a stamp more than ``clock_jump`` seconds
      behind the newest is a clock reset (bag loop, simulator restart): the frame is taken and
      the caller must :meth:`reset` before processing it;
    * :meth:`process`: feeds the clip recogniser; when a clip completes, decides the alert level
      with the same state machine as the fusion pipeline (``is_ood`` is the evidence) and
      returns a :class:`RecognitionOutput`; a failing model gives a DEGRADED output, never an
      exception.

    Args:
        recognizer: an object with ``push(frame_rgb, stamp) -> RecognitionResult | None``
            (:class:`ClipRecognizer`; tests inject others) and optionally ``buffer.reset()``.
        alerts: the alert state machine settings.
        clock_jump: seconds a stamp may go back before it counts as a clock reset.
    """

    def __init__(self, recognizer: Any, alerts: Any = None, clock_jump: float = 1.0) -> None:
        self.recognizer = recognizer
        self.alerts = AlertStateMachine(alerts)
        self.clock_jump = float(clock_jump)
        self.newest_stamp: float | None = None
        self.resets = 0

    def admit(self, stamp: float) -> tuple[bool, str | None]:
        """``(reset, reason)`` for a frame stamped ``stamp``: ``reason`` is a ``REJECT_*`` code
        (frame not taken) or None; ``reset`` True when the clock jumped back (taken, reset first)."""
        if not stamp > 0:
            return False, REJECT_ZERO_STAMP
        newest = self.newest_stamp
        reset = newest is not None and stamp < newest - self.clock_jump
        if not reset and newest is not None and stamp <= newest:
            return False, REJECT_DUPLICATE_STAMP if stamp == newest else REJECT_OLD_STAMP
        self.newest_stamp = stamp
        if reset:
            self.resets += 1
        return reset, None

    def reset(self) -> None:
        """Start clips and alert history afresh (after a clock reset)."""
        buffer = getattr(self.recognizer, "buffer", None)
        if buffer is not None and hasattr(buffer, "reset"):
            buffer.reset()
        self.alerts.reset()

    def process(self, frame_rgb: np.ndarray, stamp: float) -> RecognitionOutput | None:
        """Feed one admitted frame; an output when a clip completes (or the model failed), else None."""
        try:
            result = self.recognizer.push(frame_rgb, stamp)
        except Exception as exc:  # noqa: BLE001 - a failed clip is DEGRADED, not a crash
            error = f"{type(exc).__name__}: {exc}"
            d = self.alerts.update(stamp, None, f"model failure: {error}")
            return RecognitionOutput(stamp, None, d.level, d.description, [], float("nan"), float("nan"), error)
        if result is None:
            return None
        d = self.alerts.update(stamp, bool(result.is_ood))
        return RecognitionOutput(stamp, result, d.level, f"{result.class_name}: {d.description}",
                                 list(result.modality_names) or ["video"], float(result.ood_score),
                                 float(result.threshold))
