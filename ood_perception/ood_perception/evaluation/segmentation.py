"""Metrics of a replay against labels, computed with :mod:`ood_perception.metrics` (as evaluate does).

The metrics convention shared with ``ood-perception evaluate`` (its default ``--resolution
camera``), so both give the same numbers on the same frames and model:

* pixels: the camera-resolution maps the fusion node publishes (score map upsampled bilinearly by
  :func:`ood_perception.geometry.maps.upsample_score_map`, class map by nearest neighbour)
  against the raw labels at camera resolution (:func:`pixel_truth`: resized nearest only when the
  label image has another size); the OOD set is :func:`labelled` (in-distribution class or anomaly;
  unlabelled/ignored pixels are left out) with a finite score; OOD = raw id in the dataset's
  ``ood_ids`` (positive class);
* points: the points the pipeline scores: in view at the model input size and not occluded at
  their model pixel (:func:`ood_perception.pipeline.fusion.occluded_points`; occluded points get
  a NaN score and class -1), with the same labelled rule; each carries its model pixel's score
  and class;
* closed-set mIoU (pixel and point level): the class map against train ids where the label is an
  in-distribution class.

Scores are kept (float32) so AUROC/FPR95 are exact, up to :data:`MAX_SAMPLES` per set: the exact
metrics need every sample sorted at the end (~90 bytes per sample at the peak, ~12 MB per labelled
512x256 frame), so a longer labelled replay keeps an evenly thinned sample instead (every k-th
sample of each frame, k doubling whenever the store is full, the phase varying by frame; the
summary says ``sampled``) and its pixel metrics are estimates from ~10 M samples in bounded memory
(a regular, not random, subsample: on neighbouring pixels of a smooth map close to a random one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ood_perception.geometry import lidar_to_camera_tensor
from ood_perception.geometry.inputs import resize_labels
from ood_perception.metrics import auroc, confusion_matrix, mean_iou, ood_metrics, per_class_iou, roc_points


def pixel_truth(raw: np.ndarray, hw: tuple[int, int], config: Any) -> tuple[np.ndarray, np.ndarray]:
    """Raw semantic label ids ``[h, w]`` -> (train ids uint8-valued ``[H, W]``, 255 = ignore; OOD
    mask bool ``[H, W]``) at camera resolution ``hw`` (labels resized by nearest neighbour only
    when their size differs)."""

    raw = np.asarray(raw)
    if raw.shape != tuple(hw):
        raw = resize_labels(raw, hw)
    return config.to_train_ids(raw), config.ood_mask(raw)


def labelled(train: np.ndarray, ood: np.ndarray) -> np.ndarray:
    """The items that enter the OOD metrics: an in-distribution class (train id != 255) or an anomaly."""
    return (np.asarray(train) != 255) | np.asarray(ood, bool)


#: Most scored samples kept per set (pixels, points) before thinning; see the module docstring.
MAX_SAMPLES = 10_000_000


class _Samples:
    """Scores and OOD flags of one set, per frame, thinned to at most ``cap`` samples: each frame
    keeps every ``stride``-th sample (starting at ``frame % stride``), ``stride`` doubling whenever
    the store would exceed ``cap``, each kept chunk then halved from an offset that alternates with
    its frame (``(frame // old stride) % 2``), so the kept pixel columns differ from frame to frame.
    Kept chunks are copies: a slice would keep its whole frame's array alive."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"the sample cap must be >= 1, got {cap}")
        self.cap = int(cap)
        self.chunks: list[tuple[int, np.ndarray, np.ndarray]] = []  # (frame, scores, is_ood)
        self.stride = 1
        self.offered = 0

    @property
    def kept(self) -> int:
        return sum(int(c[1].size) for c in self.chunks)

    def add(self, s: np.ndarray, y: np.ndarray, frame: int) -> None:
        self.offered += int(s.size)
        if self.stride > 1:
            start = frame % self.stride
            s, y = s[start::self.stride], y[start::self.stride]
        if s.size:
            self.chunks.append((int(frame), np.array(s, np.float32, copy=True), np.array(y, bool, copy=True)))
            self._fit()

    def _fit(self) -> None:
        while (kept := self.kept) > self.cap:
            self.chunks = _thinned(self.chunks, 2, self.stride)
            self.stride *= 2
            if self.kept >= kept:  # nothing left to halve (single-sample chunks): stop, over the cap
                break

    def merge(self, other: _Samples) -> None:
        """Pool ``other``: the finer of the two is thinned to the coarser stride, then both to the cap."""
        stride = max(self.stride, other.stride)
        self.chunks = (_thinned(self.chunks, stride // self.stride, self.stride)
                       + _thinned(other.chunks, stride // other.stride, other.stride))
        self.stride = stride
        self.offered += other.offered
        self._fit()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.chunks:
            return np.zeros(0, np.float32), np.zeros(0, bool)
        return np.concatenate([c[1] for c in self.chunks]), np.concatenate([c[2] for c in self.chunks])


def _thinned(chunks: list[tuple[int, np.ndarray, np.ndarray]], step: int,
             stride: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Every ``step``-th sample of each chunk (copies), from an offset that varies with the chunk's
    frame at the old ``stride``; empty chunks dropped; ``step`` 1 keeps them as they are."""
    if step == 1:
        return list(chunks)
    out = []
    for frame, s, y in chunks:
        o = (frame // stride) % step
        if s[o::step].size:
            out.append((frame, s[o::step].copy(), y[o::step].copy()))
    return out


class MetricsAccumulator:
    """Collects per-pixel and per-point scores and labels over frames (and over bags: :meth:`merge`).

    Args:
        config: :class:`~ood_perception.data.DatasetConfig` of the raw label ids.
        threshold: the pipeline's anomaly threshold (for the operating-point figures).
        input_hw: the model input size, to find which points the pipeline scored.
    """

    def __init__(self, config: Any, threshold: float | None = None, input_hw: tuple[int, int] | None = None,
                 max_samples: int = MAX_SAMPLES) -> None:
        self.config = config
        self.threshold = threshold
        self.input_hw = input_hw
        self.num_classes = int(config.num_classes)
        self._sets = {"pixel": _Samples(max_samples), "point": _Samples(max_samples)}
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.point_confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.frames = 0

    # ------------------------------------------------------------------ collecting
    def add(self, result: Any, pixel_raw: np.ndarray | None, point_raw: np.ndarray | None,
            points: np.ndarray | None = None, calib: Any = None) -> dict[str, float | None]:
        """Add one frame (a ``FusionResult``); returns per-frame ``auroc`` and ``ood_iou`` (or None)."""

        out: dict[str, float | None] = {"auroc": None, "ood_iou": None}
        if result.score is None:
            return out
        self.frames += 1
        if pixel_raw is not None:
            train, ood = pixel_truth(pixel_raw, result.score.shape, self.config)
            keep = labelled(train, ood) & np.isfinite(result.score)
            s, y = result.score[keep].astype(np.float32), ood[keep]
            self._sets["pixel"].add(s, y, self.frames)
            if y.any() and (~y).any():
                out["auroc"] = auroc(s, y)
            pred = result.mask[keep] > 0
            union = int((pred | y).sum())
            # neither labelled nor flagged: the mask is right (IoU 1, the empty-set convention), so an
            # anomaly-free frame ranks by whether it was flagged (0) or not (1), not as "no IoU"
            out["ood_iou"] = float((pred & y).sum() / union) if union else 1.0
            if result.classes is not None:
                valid = train != 255
                self.confusion += confusion_matrix(train[valid], result.classes[valid], self.num_classes, ignore_index=None)
        if point_raw is not None and points is not None and len(result.point_scores):
            inview = getattr(result, "in_view", None)  # the pipeline's own view test, when it kept it
            if inview is None or len(inview) != len(points):
                inview = self._inview(points, calib)
            if inview is not None and len(point_raw) == len(points):
                raw = np.asarray(point_raw)[inview]
                train = self.config.to_train_ids(raw)
                ood = self.config.ood_mask(raw)
                keep = labelled(train, ood) & np.isfinite(result.point_scores)
                self._sets["point"].add(result.point_scores[keep].astype(np.float32), ood[keep], self.frames)
                seg = keep & (train != 255) & (result.point_labels >= 0)
                self.point_confusion += confusion_matrix(train[seg], result.point_labels[seg], self.num_classes,
                                                         ignore_index=None)
        return out

    def _inview(self, points: np.ndarray, calib: Any) -> np.ndarray | None:
        if calib is None or self.input_hw is None:
            return None

        h, w = self.input_hw
        _, flat = lidar_to_camera_tensor(points, calib.scaled(w, h))
        return flat >= 0

    def merge(self, other: MetricsAccumulator) -> None:
        """Pool another accumulator (another bag) into this one."""
        for kind, samples in self._sets.items():
            samples.merge(other._sets[kind])
        self.confusion += other.confusion
        self.point_confusion += other.point_confusion
        self.frames += other.frames

    def state(self) -> dict[str, Any]:
        """Numbers and arrays that rebuild this accumulator with :meth:`from_state` (e.g. saved per
        bag and pooled later: replay shards). The label config is not included (the caller keeps it)."""
        pix_s, pix_y = self.arrays("pixel")
        pt_s, pt_y = self.arrays("point")
        return {"threshold": None if self.threshold is None else float(self.threshold),
                "input_hw": None if self.input_hw is None else [int(v) for v in self.input_hw],
                "frames": int(self.frames), "confusion": self.confusion.copy(), "point_confusion": self.point_confusion.copy(),
                "pixel_scores": pix_s, "pixel_ood": pix_y, "point_scores": pt_s, "point_ood": pt_y,
                "max_samples": self._sets["pixel"].cap,
                "sampling": {k: [v.stride, v.offered] for k, v in self._sets.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], config: Any) -> MetricsAccumulator:
        """Inverse of :meth:`state` with the label ``config`` it was collected with.

        Raises:
            ValueError: the confusion matrices do not fit ``config``'s classes.
        """
        hw = state.get("input_hw")
        acc = cls(config, state.get("threshold"), tuple(int(v) for v in hw) if hw is not None else None,
                  int(state.get("max_samples", MAX_SAMPLES)))
        for key in ("confusion", "point_confusion"):
            conf = np.asarray(state[key], np.int64)
            if conf.shape != (acc.num_classes, acc.num_classes):
                raise ValueError(f"accumulator state: {key} is {conf.shape}, the label config has {acc.num_classes} classes")
            setattr(acc, key, conf.copy())
        acc.frames = int(state["frames"])
        sampling = state.get("sampling") or {}
        for kind, scores, ood in (("pixel", "pixel_scores", "pixel_ood"), ("point", "point_scores", "point_ood")):
            s, y = np.asarray(state[scores], np.float32), np.asarray(state[ood], bool)
            if s.shape != y.shape:
                raise ValueError(f"accumulator state: {scores} and {ood} differ in length")
            store = acc._sets[kind]
            stride, offered = sampling.get(kind, (1, s.size))
            store.stride, store.offered = int(stride), int(offered)
            if s.size:
                store.chunks.append((0, s, y))
        return acc

    # ------------------------------------------------------------------ results
    def arrays(self, kind: str = "pixel") -> tuple[np.ndarray, np.ndarray]:
        """All (scores, is_ood) of ``kind`` (``pixel`` or ``point``) collected so far."""
        if kind not in self._sets:
            raise ValueError(f"kind must be 'pixel' or 'point', got {kind!r}")
        return self._sets[kind].arrays()

    def summary(self) -> dict[str, Any]:
        """``{"pixel": {...}, "point": {...}, "segmentation": {...}, "segmentation_point": {...}}``:
        for each set either the :func:`~ood_perception.metrics.ood_metrics` dict (``miou``,
        ``per_class_iou`` ... for the segmentation sets) or ``{"available": False, "reason": ...}``."""

        out: dict[str, Any] = {"frames_with_labels": self.frames}
        for kind in ("pixel", "point"):
            s, y = self.arrays(kind)
            if s.size == 0:
                out[kind] = {"available": False, "reason": f"no labelled {kind}s"}
            elif y.all() or not y.any():
                out[kind] = {"available": False, "reason": f"only {'OOD' if y.all() else 'in-distribution'} {kind}s labelled", "n": int(s.size)}
            else:
                m = ood_metrics(s, y)
                if self.threshold is not None:
                    m["at_threshold"] = {
                        "threshold": float(self.threshold),
                        "tpr": float((s[y] >= self.threshold).mean()),
                        "fpr": float((s[~y] >= self.threshold).mean()),
                    }
                out[kind] = {"available": True, **m}
                store = self._sets[kind]
                if store.stride > 1:  # thinned to bound memory: the metrics are estimates
                    out[kind]["sampled"] = {"every": store.stride, "kept": store.kept, "of": store.offered}
        for key, conf, level in (("segmentation", self.confusion, "pixel"), ("segmentation_point", self.point_confusion, "point")):
            if conf.sum():
                iou = per_class_iou(conf)
                out[key] = {
                    "available": True,
                    "miou": mean_iou(conf),
                    "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(self.config.class_names, iou, strict=True)},
                    f"{level}_accuracy": float(np.trace(conf) / conf.sum()),
                }
            else:
                out[key] = {"available": False, "reason": f"no labelled {level}s"}
        return out

    def roc(self, kind: str = "pixel", max_points: int = 400) -> tuple[np.ndarray, np.ndarray] | None:
        """(fpr, tpr) of the ROC curve, thinned to at most ``max_points`` points; None without both classes."""

        s, y = self.arrays(kind)
        if s.size == 0 or y.all() or not y.any():
            return None
        fpr, tpr = roc_points(s, y)
        if fpr.size > max_points:
            idx = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(int))
            fpr, tpr = fpr[idx], tpr[idx]
        return fpr, tpr
