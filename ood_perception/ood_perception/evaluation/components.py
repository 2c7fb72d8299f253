"""Component-level anomaly segmentation metrics as SegmentMeIfYouCan defines them (sIoU, PPV, F1).

Verified against the benchmark's code (github.com/adynathos/road-anomaly-benchmark,
``road_anomaly_benchmark/metrics/instance_segmentation.py``, its newest version, where false
positives are decided by the PPV ``prec_pred``; an older version used a symmetric sIoU of the
predicted component, which we report beside it as ``siou_pred_mean``). Checked during
development against a transcription of their ``default_instancer`` + ``segment_metrics`` on 30
random 60x80 frames with void pixels and size filters: identical sIoU, PPV and TP/FN/FP at every
tau (that script is not part of the repository; the tests use hand-computed cases and a
brute-force implementation of the definitions). Per frame:

1. **Binarise**: the caller passes a boolean anomaly mask (the published ``ood/mask``, or
   ``score > threshold``; the benchmark takes the best pixel-F1 threshold, an oracle).
   Predicted pixels on ignore (void) pixels are dropped *before* labelling.
2. **Connected components**, 8-connected (their ``scipy.ndimage.label`` with a 3x3 structure; we
   use ``cv2.connectedComponentsWithStats``, same labelling), of the ground-truth anomaly mask and
   of the prediction. Ground-truth components are the connected components of the anomaly mask,
   not the annotated instances (two touching objects form one component), as in their code;
   ``gt_components=`` passes an instance map instead (a deviation, named in the result).
3. **Size filters**: predicted components with fewer than ``min_pred_pixels`` pixels (counted
   over the whole frame before step 4, as their ``default_instancer`` does) are deleted; ground-
   truth components with fewer than ``min_gt_pixels`` pixels become ignore pixels (their
   ``thresh_instsize``). Their anomaly track uses 500 / 100 px, the obstacle track 50 / 10 px, at
   the benchmark's resolution; :meth:`ComponentConfig.scaled_to` scales them by pixel count to
   ours (``round(n_ref * H * W / (H_ref * W_ref))``), with the reference resolution explicit.
   Note: their code applies the predicted-size filter only when it binarises scores itself, not
   to a mask a method uploads (``anomaly_instances_from_mask``); ``min_pred_pixels=0`` reproduces
   that path. Their loop also treats the background as "component 0" and would ignore all of it
   if it had < ``thresh_instsize`` pixels; we do not copy that corner case.
4. **Region of interest**: everything that is not ignore; sizes below are counted inside it.
5. For ground-truth component ``G`` with the predicted components ``P_1..P_m`` touching it
   (``P`` = their union) and ``A`` = the pixels of *other* ground-truth components:
   ``sIoU(G) = |G ∩ P| / (|G ∪ P| - |P ∩ A|)`` (their ``intersection / adjusted_union``), which
   equals ``|G ∩ P| / (|G| + |P \\ all GT|)``; 0 when no prediction touches ``G``.
   For predicted component ``P``: ``PPV(P) = |P ∩ all GT| / |P|``.
6. At each ``tau`` in 0.25, 0.30, ..., 0.75: TP = ground-truth components with ``sIoU >= tau``,
   FN = the others, FP = predicted components with ``PPV < tau``; counts are summed over all
   frames, ``F1 = 2 TP / (2 TP + FN + FP)`` per tau and ``f1_mean`` = the mean over the 11 taus.

Everything is vectorised: one labelling per mask and ``np.bincount`` / ``np.unique`` over the
(ground truth, prediction) label pairs; no per-component Python loops.

:class:`ComponentAccumulator` collects the per-component values of many frames (``add``), pools
accumulators (``merge``, e.g. bags), round-trips through JSON (``state`` / ``from_state``) and
reports a JSON-serialisable dict (``result``) whose content does not depend on the order frames
or accumulators were added in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "SMIYC_ANOMALY_TRACK",
    "SMIYC_OBSTACLE_TRACK",
    "SMIYC_TAUS",
    "ComponentAccumulator",
    "ComponentConfig",
    "FrameComponents",
    "frame_components",
    "scaled_pixel_count",
]

#: sIoU / PPV thresholds of SegmentMeIfYouCan, exactly their code's ``np.linspace(0.25, 0.75, 11)``
#: floats: the eighth is 0.6000000000000001, so a PPV or sIoU of exactly 0.6 (e.g. 3/5) is below it,
#: as in their code (tested). Results name each tau rounded to 4 decimals.
SMIYC_TAUS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.25, 0.75, 11))

#: (min predicted component px, min ground-truth component px, reference (H, W)) of the two tracks.
#: The sizes are their code's ``thresh_segsize`` / ``thresh_instsize`` (verified); the resolutions
#: (RoadAnomaly21 2048x1024, RoadObstacle21 1920x1080) are those the SegmentMeIfYouCan paper gives
#: for its images, not read from the code.
SMIYC_ANOMALY_TRACK: tuple[int, int, tuple[int, int]] = (500, 100, (1024, 2048))
SMIYC_OBSTACLE_TRACK: tuple[int, int, tuple[int, int]] = (50, 10, (1080, 1920))


def scaled_pixel_count(count_ref: float, hw: tuple[int, int], ref_hw: tuple[int, int]) -> int:
    """A pixel count defined at resolution ``ref_hw`` scaled by pixel count to ``hw`` (rounded half up).

    E.g. 500 px at 1024x2048 -> 31 px at 256x512 (500 / 16 = 31.25).
    """
    h, w = (int(v) for v in hw)
    rh, rw = (int(v) for v in ref_hw)
    if min(h, w, rh, rw) <= 0:
        raise ValueError(f"resolutions must be positive, got hw={hw}, ref_hw={ref_hw}")
    if count_ref < 0:
        raise ValueError(f"pixel count must be >= 0, got {count_ref}")
    return int(math.floor(count_ref * (h * w) / (rh * rw) + 0.5))


@dataclass(frozen=True)
class ComponentConfig:
    """Size filters (pixels at *our* resolution) and sIoU/PPV thresholds of the component metrics.

    Build it with :meth:`scaled_to` to get SegmentMeIfYouCan's filters scaled to a camera size.
    """

    min_pred_pixels: int = 0
    min_gt_pixels: int = 0
    taus: tuple[float, ...] = SMIYC_TAUS
    #: where the sizes came from (kept in the results): e.g. "500/100 px at 1024x2048 scaled to 256x512"
    provenance: str = "explicit"

    def __post_init__(self) -> None:
        if self.min_pred_pixels < 0 or self.min_gt_pixels < 0:
            raise ValueError(f"size filters must be >= 0, got min_pred_pixels={self.min_pred_pixels}, "
                             f"min_gt_pixels={self.min_gt_pixels}")
        if not self.taus or any(not 0.0 < t <= 1.0 for t in self.taus):
            raise ValueError(f"taus must be a non-empty list of values in (0, 1], got {self.taus}")
        object.__setattr__(self, "taus", tuple(float(t) for t in self.taus))

    @classmethod
    def scaled_to(cls, hw: tuple[int, int], track: tuple[int, int, tuple[int, int]] = SMIYC_ANOMALY_TRACK,
                  taus: tuple[float, ...] = SMIYC_TAUS) -> ComponentConfig:
        """The filters of a SegmentMeIfYouCan ``track`` (default: anomaly track, 500 / 100 px at
        1024x2048) scaled by pixel count to images of size ``hw`` = (H, W)."""
        pred_ref, gt_ref, ref_hw = track
        return cls(
            min_pred_pixels=scaled_pixel_count(pred_ref, hw, ref_hw),
            min_gt_pixels=scaled_pixel_count(gt_ref, hw, ref_hw),
            taus=taus,
            provenance=(f"SegmentMeIfYouCan {pred_ref}/{gt_ref} px at {ref_hw[0]}x{ref_hw[1]} "
                        f"scaled to {int(hw[0])}x{int(hw[1])}"),
        )


@dataclass
class FrameComponents:
    """Per-component values of one frame (ground-truth components first, then predicted ones).

    Attributes:
        siou: sIoU of each ground-truth component kept by the size filter.
        gt_sizes: its pixel count.
        ppv: PPV of each predicted component kept by the size filter (and with pixels in the ROI).
        siou_pred: the symmetric sIoU of each predicted component (the benchmark's older FP rule).
        pred_sizes: its pixel count inside the ROI.
    """

    siou: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    gt_sizes: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    ppv: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    siou_pred: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    pred_sizes: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def counts(self, tau: float) -> tuple[int, int, int]:
        """(TP, FN, FP) of this frame at threshold ``tau``."""
        tp = int(np.count_nonzero(self.siou >= tau))
        return tp, int(self.siou.size - tp), int(np.count_nonzero(self.ppv < tau))


def _as_mask(x: ArrayLike, name: str, shape: tuple[int, ...] | None) -> NDArray[np.bool_]:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [H, W] mask, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    return arr.astype(bool, copy=False) if arr.dtype != bool else arr


def _label8(mask: NDArray[np.bool_]) -> tuple[int, NDArray[np.int32], NDArray[np.int64]]:
    """8-connected components: (number of components, label map 0 = background, sizes [n])."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.ascontiguousarray(mask).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n - 1, labels, stats[1:, cv2.CC_STAT_AREA].astype(np.int64)


def _dense_instances(instances: ArrayLike, gt: NDArray[np.bool_]) -> tuple[int, NDArray[np.int64], NDArray[np.int64]]:
    """Instance ids on the anomaly pixels relabelled 1..n (0 elsewhere), with sizes."""
    inst = np.asarray(instances)
    ids, inv = np.unique(inst[gt], return_inverse=True)
    labels = np.zeros(gt.shape, np.int64)
    labels[gt] = inv.ravel() + 1
    return int(ids.size), labels, np.bincount(inv.ravel(), minlength=ids.size).astype(np.int64)


def _keep_lut(keep: NDArray[np.bool_]) -> tuple[int, NDArray[np.int64]]:
    """Lookup table label -> new label keeping components ``keep[k]`` (k = label - 1), renumbered
    1..n in order; the others (and the background) map to 0."""
    lut = np.zeros(keep.size + 1, np.int64)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    return int(keep.sum()), lut


def frame_components(
    pred_mask: ArrayLike,
    gt_anomaly: ArrayLike,
    ignore: ArrayLike | None = None,
    *,
    min_pred_pixels: int = 0,
    min_gt_pixels: int = 0,
    gt_components: ArrayLike | None = None,
) -> FrameComponents:
    """sIoU per ground-truth component and PPV per predicted component of one frame.

    Args:
        pred_mask: ``[H, W]`` predicted anomaly mask (bool, or nonzero = anomalous, e.g. the
            published mono8 mask with 255).
        gt_anomaly: ``[H, W]`` bool, labelled anomaly pixels.
        ignore: optional ``[H, W]`` bool, void / unlabelled pixels (left out, as the benchmark's
            label 255); must not overlap ``gt_anomaly``.
        min_pred_pixels, min_gt_pixels: size filters in pixels at this resolution (see the module
            docstring and :class:`ComponentConfig`).
        gt_components: optional ``[H, W]`` integer instance map; when given, ground-truth
            components are the instances on the anomaly pixels instead of connected components.

    Returns:
        :class:`FrameComponents`; components are ordered by their label (cv2's raster order of
        first pixel, or increasing instance id).
    """
    gt = _as_mask(gt_anomaly, "gt_anomaly", None)
    pred = _as_mask(pred_mask, "pred_mask", gt.shape)
    void = np.zeros(gt.shape, bool) if ignore is None else _as_mask(ignore, "ignore", gt.shape)
    if (void & gt).any():
        raise ValueError(f"ignore overlaps gt_anomaly at {int((void & gt).sum())} pixels (anomalies are labelled pixels)")
    pred = pred & ~void
    inst = None if gt_components is None else np.asarray(gt_components)
    if inst is not None and inst.shape != gt.shape:
        raise ValueError(f"gt_components has shape {inst.shape}, expected {gt.shape}")
    # work inside the bounding box of all ground-truth and predicted pixels: components, sizes and
    # overlaps are the same there, and anomaly frames are mostly empty
    fg = gt | pred
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return FrameComponents()
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    gt, pred, void = gt[box], pred[box], void[box]

    if inst is None:
        n_g, lab_g, size_g = _label8(gt)
    else:
        n_g, lab_g, size_g = _dense_instances(inst[box], gt)
    n_p, lab_p, size_p = _label8(pred)
    n_p, lut_p = _keep_lut(size_p >= int(min_pred_pixels))
    small = size_g < int(min_gt_pixels)
    roi = ~void
    if small.any():
        roi &= ~np.r_[False, small][lab_g]  # small GT components become ignore pixels
    n_g, lut_g = _keep_lut(~small)

    g = lut_g[lab_g[roi]]
    p = lut_p[lab_p[roi]]
    gsz = np.bincount(g, minlength=n_g + 1)[1:]
    psz = np.bincount(p, minlength=n_p + 1)[1:]
    both = (g > 0) & (p > 0)
    pairs, n_ij = np.unique((g[both] - 1) * max(n_p, 1) + (p[both] - 1), return_counts=True)
    gi, pj = pairs // max(n_p, 1), pairs % max(n_p, 1)
    inter_g = np.bincount(gi, weights=n_ij, minlength=n_g)  # |G ∩ (any prediction)| = |G ∩ P|
    on_gt_p = np.bincount(pj, weights=n_ij, minlength=n_p)  # |P_j ∩ all GT|
    off_gt_p = psz - on_gt_p  # pixels of P_j on no ground truth
    # adjusted union |G| + |P| - |G ∩ P| - |P ∩ other GT| = |G| + sum over touching P_j of |P_j \ all GT|
    union_g = gsz + np.bincount(gi, weights=off_gt_p[pj], minlength=n_g)
    # symmetric: |P_j| + sum over touching G_i of |G_i \ any prediction|
    union_p = psz + np.bincount(pj, weights=(gsz - inter_g)[gi], minlength=n_p)

    present = psz > 0  # a kept prediction lying wholly on ignored pixels leaves the ROI
    with np.errstate(divide="ignore", invalid="ignore"):
        siou = np.where(gsz > 0, inter_g / np.maximum(union_g, 1), 0.0)
        ppv = on_gt_p[present] / psz[present]
        siou_pred = on_gt_p[present] / union_p[present]
    return FrameComponents(siou=siou.astype(np.float64), gt_sizes=gsz.astype(np.int64),
                           ppv=ppv.astype(np.float64), siou_pred=siou_pred.astype(np.float64),
                           pred_sizes=psz[present].astype(np.int64))


def _fmean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


class ComponentAccumulator:
    """SegmentMeIfYouCan component metrics pooled over frames (and over accumulators with :meth:`merge`).

    Usage::

        acc = ComponentAccumulator(ComponentConfig.scaled_to((H, W)))
        for frame in frames:
            acc.add(mask > 0, gt_anomaly, ignore=unlabelled)
        json.dumps(acc.result())
    """

    def __init__(self, config: ComponentConfig | None = None) -> None:
        self.config = config or ComponentConfig()
        self.frames = 0
        self.siou: list[float] = []
        self.gt_sizes: list[int] = []
        self.ppv: list[float] = []
        self.siou_pred: list[float] = []
        self.pred_sizes: list[int] = []

    def add(self, pred_mask: ArrayLike, gt_anomaly: ArrayLike, ignore: ArrayLike | None = None,
            gt_components: ArrayLike | None = None) -> FrameComponents:
        """Add one frame (see :func:`frame_components` for the arguments); returns its components."""
        fc = frame_components(pred_mask, gt_anomaly, ignore, min_pred_pixels=self.config.min_pred_pixels,
                              min_gt_pixels=self.config.min_gt_pixels, gt_components=gt_components)
        self.frames += 1
        self.siou += fc.siou.tolist()
        self.gt_sizes += fc.gt_sizes.tolist()
        self.ppv += fc.ppv.tolist()
        self.siou_pred += fc.siou_pred.tolist()
        self.pred_sizes += fc.pred_sizes.tolist()
        return fc

    def merge(self, other: ComponentAccumulator) -> None:
        """Pool ``other`` (same configuration) into this accumulator."""
        if other.config != self.config:
            raise ValueError(f"cannot merge component accumulators with different configs: {self.config} vs {other.config}")
        self.frames += other.frames
        for name in ("siou", "gt_sizes", "ppv", "siou_pred", "pred_sizes"):
            getattr(self, name).extend(getattr(other, name))

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state; :meth:`from_state` rebuilds the accumulator."""
        cfg = asdict(self.config)
        cfg["taus"] = list(cfg["taus"])
        return {"config": cfg, "frames": self.frames, "siou": list(self.siou), "gt_sizes": list(self.gt_sizes),
                "ppv": list(self.ppv), "siou_pred": list(self.siou_pred), "pred_sizes": list(self.pred_sizes)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ComponentAccumulator:
        """Inverse of :meth:`state`."""
        cfg = dict(state["config"])
        cfg["taus"] = tuple(cfg["taus"])
        acc = cls(ComponentConfig(**cfg))
        acc.frames = int(state["frames"])
        acc.siou = [float(v) for v in state["siou"]]
        acc.gt_sizes = [int(v) for v in state["gt_sizes"]]
        acc.ppv = [float(v) for v in state["ppv"]]
        acc.siou_pred = [float(v) for v in state["siou_pred"]]
        acc.pred_sizes = [int(v) for v in state["pred_sizes"]]
        if not (len(acc.siou) == len(acc.gt_sizes) and len(acc.ppv) == len(acc.siou_pred) == len(acc.pred_sizes)):
            raise ValueError("component state: per-component lists differ in length")
        return acc

    def result(self) -> dict[str, Any]:
        """The component metrics (JSON-serialisable; undefined values are None).

        Keys: ``frames``, ``n_gt_components``, ``n_pred_components``, ``min_pred_pixels``,
        ``min_gt_pixels``, ``provenance``, ``per_tau`` (list of ``{tau, tp, fn, fp, f1}``),
        ``f1_mean`` (mean F1 over the taus), ``f1_25``, ``f1_50``, ``f1_75`` (when those taus are
        used), ``siou_gt_mean``, ``ppv_mean``, ``siou_pred_mean`` (means over components).
        """
        siou, ppv = np.asarray(self.siou, np.float64), np.asarray(self.ppv, np.float64)
        per_tau = []
        for t in self.config.taus:
            tp = int(np.count_nonzero(siou >= t))
            fn = int(siou.size - tp)
            fp = int(np.count_nonzero(ppv < t))
            den = 2 * tp + fn + fp
            per_tau.append({"tau": round(t, 4), "tp": tp, "fn": fn, "fp": fp, "f1": (2 * tp / den) if den else None})
        f1s = [r["f1"] for r in per_tau]
        out: dict[str, Any] = {
            "frames": self.frames,
            "n_gt_components": int(siou.size),
            "n_pred_components": int(ppv.size),
            "min_pred_pixels": self.config.min_pred_pixels,
            "min_gt_pixels": self.config.min_gt_pixels,
            "provenance": self.config.provenance,
            "per_tau": per_tau,
            "f1_mean": None if any(f is None for f in f1s) else math.fsum(f1s) / len(f1s),
        }
        for r in per_tau:  # the benchmark's table columns
            if r["tau"] in (0.25, 0.5, 0.75):
                out[f"f1_{round(r['tau'] * 100)}"] = r["f1"]
        out["siou_gt_mean"] = _fmean(self.siou)
        out["ppv_mean"] = _fmean(self.ppv)
        out["siou_pred_mean"] = _fmean(self.siou_pred)
        return out
