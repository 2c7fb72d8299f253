"""Recognition pipeline without ROS: clip buffer over a frame stream, flow, inference, OOD score.

The recognition node (``ros`` room) feeds frames with their stamps into
:meth:`RecognitionPipeline.push`; every ``stride`` frames, once ``clip_len`` frames are buffered,
the pipeline computes Farneback flow over the clip, runs the video + flow network (torch or ONNX
Runtime), scores the joint head's logits and returns a :class:`RecognitionResult`. numpy, OpenCV
and torch / onnxruntime only (no rclpy).

Score convention: higher = more anomalous; ``is_ood = ood_score > threshold`` where the threshold
keeps 95% of ID test clips (``ood_perception.metrics.calibrate_threshold``), stored in the
checkpoint by ``ood-perception train recognition``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ood_perception.data.clips import FlowParams, compute_flow, normalise_flow, normalise_frames


@dataclass
class RecognitionResult:
    """The recognition of one clip (fields named as in ``ood_perception_msgs/Recognition``).

    Attributes:
        class_id: predicted in-distribution class (joint head), ``class_name`` its name.
        confidence: softmax probability of that class.
        ood_score: joint-head OOD score (higher = more anomalous) by ``score_name``;
            ``is_ood``: ``ood_score > threshold``.
        modality_names, modality_scores: the experts (``["video", "flow"]``) and the score of each
            expert head (same scorer; NaN for feature-based scorers, fitted on the joint head only).
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
        import torch

        self.torch = torch
        self.model = model.to(device).eval()
        self.device = device

    def __call__(self, video: np.ndarray, flow: np.ndarray) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            out = self.model(self.torch.from_numpy(video).to(self.device), self.torch.from_numpy(flow).to(self.device))
        return {k: v.cpu().numpy() for k, v in out.items()}


class _OnnxBackend:
    def __init__(self, path: str | os.PathLike) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, video: np.ndarray, flow: np.ndarray) -> dict[str, np.ndarray]:
        res = self.session.run(self.outputs, {"video": video, "flow": flow})
        return dict(zip(self.outputs, res, strict=True))


class _RuntimeBackend:
    """An ``ood_perception.runtime`` Backend (``infer({"video", "flow"}) -> dict``) of an exported
    recognition graph with the :data:`ONNX_OUTPUTS`."""

    def __init__(self, backend) -> None:
        self.backend = backend

    def __call__(self, video: np.ndarray, flow: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(self.backend.infer({"video": video, "flow": flow}))
        missing = [k for k in ("logits", "video_logits", "flow_logits") if k not in out]
        if missing:
            raise ValueError(f"recognition backend returned no {missing}; outputs: {sorted(out)}")
        return out


#: Outputs of the exported recognition graph.
ONNX_OUTPUTS: tuple[str, ...] = ("logits", "video_logits", "flow_logits", "features", "video_features", "flow_features")


def export_recognition_onnx(model, path: str | os.PathLike, clip_len: int = 16, size: int = 64, opset: int = 17) -> Path:
    """Export a :class:`~ood_perception.models.recognition.RecognitionNet` to ONNX (dynamic batch), atomically."""
    import tempfile

    import torch

    class _Wrap(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, video, flow):
            out = self.m(video, flow)
            return tuple(out[k] for k in ONNX_OUTPUTS)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    v = torch.zeros(1, 3, clip_len, size, size)
    f = torch.zeros(1, 2, clip_len - 1, size, size)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.onnx.export(_Wrap(model), (v, f), tmp, input_names=["video", "flow"], output_names=list(ONNX_OUTPUTS),
                          dynamic_axes={"video": {0: "batch"}, "flow": {0: "batch"}, **{o: {0: "batch"} for o in ONNX_OUTPUTS}},
                          opset_version=opset, dynamo=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class RecognitionPipeline:
    """Clip buffer + flow + network + scorer.

    Args:
        backend: a :class:`~ood_perception.models.recognition.RecognitionNet` (torch) or the path of
            an ONNX model from :func:`export_recognition_onnx`.
        class_names: K names of the ID classes.
        threshold: OOD threshold on the score (higher = more anomalous).
        scorer: a logit-based scorer name of :mod:`ood_perception.scoring` (default ``msp``) or a
            fitted :class:`~ood_perception.scoring.Scorer` (feature scorers get the features).
        clip_len, stride, size: clip buffer geometry (the model's training clip length and size).
    """

    def __init__(self, backend, class_names: Sequence[str], threshold: float, scorer: Any = "msp",
                 clip_len: int = 16, stride: int = 8, size: int = 64, flow_params: FlowParams = FlowParams(),
                 device: str = "cpu") -> None:
        from ood_perception.scoring import get_scorer

        if isinstance(backend, (str, os.PathLike)):
            self.backend = _OnnxBackend(backend)
        elif hasattr(backend, "infer"):  # an ood_perception.runtime Backend
            self.backend = _RuntimeBackend(backend)
        else:
            self.backend = _TorchBackend(backend, device)
        self.scorer = get_scorer(scorer) if isinstance(scorer, str) else scorer
        if self.scorer.requires_fit and not self.scorer.fitted:
            raise ValueError(f"scorer {self.scorer.name!r} needs fitting before use in the pipeline")
        self.class_names = list(class_names)
        self.threshold = float(threshold)
        self.buffer = ClipBuffer(clip_len, stride, size)
        self.flow_params = flow_params

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, threshold: float | None = None, stride: int = 8,
                        device: str = "cpu") -> RecognitionPipeline:
        """Build from a recognition checkpoint (its clip geometry, class names and MSP threshold)."""
        from ood_perception.models.recognition import load_recognition_checkpoint

        model, ckpt = load_recognition_checkpoint(path, device)
        thr = threshold
        if thr is None:
            thr = (ckpt.get("metrics") or {}).get("threshold", {}).get("value")
            if thr is None:
                raise ValueError(f"checkpoint {path} stores no OOD threshold; pass threshold=")
        scorer = (ckpt.get("metrics") or {}).get("threshold", {}).get("scorer", "msp")
        return cls(model, ckpt["class_names"], thr, scorer, int(ckpt.get("clip_len", 16)), stride,
                   int(ckpt.get("size", 64)), FlowParams(**ckpt.get("flow_params", {})), device)

    def _score(self, logits: np.ndarray, features: np.ndarray | None) -> float:
        import torch

        lg = torch.from_numpy(np.asarray(logits, np.float32))
        ft = torch.from_numpy(np.asarray(features, np.float32)) if features is not None else None
        if self.scorer.needs_features and ft is None:
            return float("nan")
        with torch.no_grad():
            return float(self.scorer(lg, ft)[0])

    def process_clip(self, clip: np.ndarray, stamps: Sequence[float] | None = None) -> RecognitionResult:
        """Recognise one uint8 ``[T, H, W, 3]`` RGB clip (already at the model's size)."""
        t0 = time.perf_counter()
        flow = compute_flow(clip, self.flow_params)
        out = self.backend(normalise_frames(clip)[None], normalise_flow(flow)[None])
        logits = out["logits"][0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        cid = int(np.argmax(logits))
        joint = self._score(out["logits"], out.get("features"))
        names = ["video", "flow"]
        # expert scores: the expert's own head; feature-based scorers are fitted on the joint head only
        per = [self._score(out[f"{m}_logits"], None) if not self.scorer.needs_features else float("nan") for m in names]
        st = np.asarray(stamps if stamps is not None else [0.0, 0.0], float)
        return RecognitionResult(
            class_id=cid, class_name=self.class_names[cid], confidence=float(p[cid]), ood_score=joint,
            is_ood=bool(joint > self.threshold), threshold=self.threshold, score_name=self.scorer.name,
            modality_names=names, modality_scores=per,
            modality_classes={m: int(np.argmax(out[f"{m}_logits"][0])) for m in names},
            stamp_start=float(st[0]), stamp_end=float(st[-1]), num_frames=len(clip), latency_s=time.perf_counter() - t0,
        )

    def push(self, frame_rgb: np.ndarray, stamp: float) -> RecognitionResult | None:
        """Feed one frame; returns a result when the buffer emits a clip, else None."""
        ready = self.buffer.push(frame_rgb, stamp)
        if ready is None:
            return None
        return self.process_clip(*ready)


class ClipRecognizer(RecognitionPipeline):
    """The recognition node's entry point (``ros/recognition_node.py``): a :class:`RecognitionPipeline`
    built from a runtime backend whose ``spec`` (model.json) names ``class_names`` and, optionally,
    ``threshold``, ``score``, ``clip_len``/``clip_length`` and ``size``.

    Args:
        backend: a runtime Backend (``infer``/``spec``), a RecognitionNet, or an ONNX path.
        clip_length, stride: clip geometry (``clip_length`` defaults to the spec's, else 16).
        threshold: OOD threshold; None = the spec's ``threshold`` (error when it has none).
        class_names: override of the spec's class names.
    """

    def __init__(self, backend, clip_length: int | None = None, stride: int = 8, threshold: float | None = None,
                 class_names: Sequence[str] | None = None, scorer: Any = None, size: int | None = None,
                 device: str = "cpu") -> None:
        spec = getattr(backend, "spec", None) or {}
        spec = spec if isinstance(spec, dict) else getattr(spec, "__dict__", {})
        names = class_names if class_names is not None else spec.get("class_names")
        if not names:
            raise ValueError("ClipRecognizer needs class_names (argument or the backend spec's class_names)")
        thr = threshold if threshold is not None else spec.get("threshold")
        if thr is None:
            raise ValueError("ClipRecognizer needs a threshold (argument or the backend spec's threshold)")
        clip_len = int(clip_length or spec.get("clip_len") or spec.get("clip_length") or 16)
        super().__init__(backend, names, float(thr), scorer or spec.get("score", "msp"), clip_len, stride,
                         int(size or spec.get("size") or 64), device=device)
