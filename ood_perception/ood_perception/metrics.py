"""Metrics room: OOD detection metrics, threshold calibration and segmentation metrics.

numpy + scikit-learn only, so training, evaluation, replay and the benchmarks report the same
numbers from the same code.

Conventions (see ``docs/architecture.md`` and ``shared/DESIGN.md``):

* scores: **higher = more anomalous** (the scorers in :mod:`ood_perception.scoring` follow this);
* OOD is the **positive** class for ``auroc``, ``fpr95`` and ``aupr_out``;
* two FPR95 conventions are reported side by side, both named:

  ``fpr95`` (OpenOOD / MultiOOD code, SegmentMeIfYouCan)
      Take the ROC curve of (``is_ood``, ``score``) with every threshold (``drop_intermediate=False``),
      and report the FPR at the first point whose TPR >= 0.95. In words: among the thresholds ``t``
      with rule "flag as OOD when ``score >= t``" that catch at least 95% of the OOD samples, the
      smallest share of ID samples flagged. (OpenOOD/MultiOOD call ``roc_curve`` with its default
      ``drop_intermediate=True``; that can skip a collinear point when scores tie and so report a
      slightly larger FPR. We keep every threshold, which equals the brute-force definition.)

  ``fpr95_id`` (Hendrycks & Gimpel / ODIN / Energy papers: ID is the positive class)
      Choose the threshold that keeps (accepts as ID) at least 95% of the ID samples with rule
      "accept as ID when ``score <= t``", taking the smallest such ``t`` (which is
      :func:`calibrate_threshold` ``(id_scores, 0.95)``); report the share of OOD samples accepted
      as ID at it. This is the number those papers call "FPR at 95% TPR".

* ``aupr_in`` (ID positive, scores negated) and ``aupr_out`` (OOD positive): by default the
  trapezoid rule over the precision-recall curve, i.e. ``sklearn.metrics.auc(recall, precision)``
  over :func:`sklearn.metrics.precision_recall_curve`, as in the OpenOOD and MultiOOD code, so
  numbers compare with their tables; ``aupr_method="average_precision"`` gives the step-wise
  :func:`sklearn.metrics.average_precision_score` (not optimistic) instead.

All curve metrics come from a single sort of the scores (so millions of pixels are cheap); the
tests check them against scikit-learn and brute-force threshold scans.

Segmentation metrics use a confusion matrix with rows = ground truth and columns = prediction.
Pixels whose ground truth equals ``ignore_index`` are left out. The IoU of a class absent from both
the ground truth and the prediction is undefined (NaN) and excluded from the mIoU; a class present
in the prediction only has IoU 0 and counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "calibrate_threshold",
    "confusion_matrix",
    "fpr_at_tpr",
    "fpr_at_tpr_id",
    "id_accuracy",
    "mean_iou",
    "ood_metrics",
    "per_class_iou",
    "segmentation_metrics",
]

_AUPR_METHODS = ("trapezoid", "average_precision")


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _as_scores(scores: ArrayLike, name: str = "scores") -> NDArray[np.float64]:
    """Return ``scores`` flattened to float64, raising ValueError on empty or non-finite input."""
    arr = np.asarray(scores)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf)"
        )
    return arr


def _as_labels(is_ood: ArrayLike) -> NDArray[np.bool_]:
    """Return the OOD indicator flattened to bool; only {0, 1} / {False, True} values are allowed."""
    arr = np.asarray(is_ood)
    if arr.size == 0:
        raise ValueError("is_ood is empty")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"is_ood must be bool or 0/1, got dtype {arr.dtype}")
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            raise ValueError(
                f"is_ood must contain only 0/1 (or bools), got values {np.unique(arr[bad])[:10].tolist()}"
            )
        arr = arr.astype(bool)
    return arr.ravel()


def _checked_pair(scores: ArrayLike, is_ood: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    s_shape, l_shape = np.shape(scores), np.shape(is_ood)
    if s_shape != l_shape:
        raise ValueError(f"scores and is_ood differ in shape: {s_shape} vs {l_shape}")
    s = _as_scores(scores)
    y = _as_labels(is_ood)
    n_ood = int(y.sum())
    if n_ood == 0 or n_ood == y.size:
        which = "ID" if n_ood == y.size else "OOD"
        raise ValueError(
            f"OOD metrics need both ID and OOD samples; there are no {which} samples "
            f"({y.size} samples, {n_ood} OOD)"
        )
    return s, y


def _check_rate(rate: float, name: str) -> float:
    rate = float(rate)
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {rate}")
    return rate


# ---------------------------------------------------------------------------------------------
# OOD detection metrics
# ---------------------------------------------------------------------------------------------


def _curve_counts(
    s: NDArray[np.float64], y: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Distinct scores in decreasing order ``v_1 > ... > v_m`` with ``tps[k]`` / ``fps[k]`` = number
    of OOD / ID samples with ``score >= v_k`` (one sort; the counts behind ROC and PR curves, as in
    sklearn's ``_binary_clf_curve``)."""
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted, y_sorted = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last_of_value]
    fps = (last_of_value + 1) - tps
    return s_sorted[last_of_value], tps, fps


def _trapezoid_pr(tp: NDArray[np.int64], fp: NDArray[np.int64], n_pos: int) -> float:
    """Trapezoid area under the PR path (threshold decreasing), starting at (recall 0, precision 1),
    exactly what ``sklearn.metrics.auc(recall, precision)`` over ``precision_recall_curve`` gives."""
    recall = np.r_[0.0, tp / n_pos]
    precision = np.r_[1.0, tp / np.maximum(tp + fp, 1)]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def _average_precision(tp: NDArray[np.int64], fp: NDArray[np.int64], n_pos: int) -> float:
    """Step-wise average precision ``sum (R_k - R_{k-1}) P_k`` (sklearn's average_precision_score)."""
    recall = np.r_[0.0, tp / n_pos]
    precision = tp / np.maximum(tp + fp, 1)
    return float(np.sum(np.diff(recall) * precision))


def _min_count(rate: float, total: int) -> int:
    """Smallest integer count whose share of ``total`` is >= ``rate`` (float-safe)."""
    return max(int(np.ceil(rate * total - 1e-9)), 0)


def roc_points(scores: ArrayLike, is_ood: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(fpr, tpr)`` of the ROC curve at every distinct score, OOD positive, from (0, 0): the points of
    ``sklearn.metrics.roc_curve(is_ood, scores, drop_intermediate=False)`` with one sort and about a
    third of its memory (a replay's pixel ROC has millions of samples)."""
    s, y = _checked_pair(scores, is_ood)
    _, tps, fps = _curve_counts(s, y)
    n_ood = int(tps[-1])
    return np.r_[0.0, fps / (y.size - n_ood)], np.r_[0.0, tps / n_ood]


def fpr_at_tpr(scores: ArrayLike, is_ood: ArrayLike, tpr: float = 0.95) -> float:
    """FPR at the first ROC point whose TPR >= ``tpr``, OOD positive (the ``fpr95`` convention).

    Equals ``min over t of mean(id_scores >= t)`` subject to ``mean(ood_scores >= t) >= tpr``, and
    OpenOOD's ``fpr_list[np.argmax(tpr_list >= 0.95)]`` over ``roc_curve(is_ood, score)`` with every
    threshold kept.
    """
    s, y = _checked_pair(scores, is_ood)
    tpr = _check_rate(tpr, "tpr")
    _, tps, fps = _curve_counts(s, y)
    n_ood = int(y.sum())
    return float(fps[np.argmax(tps >= _min_count(tpr, n_ood))] / (y.size - n_ood))


def fpr_at_tpr_id(scores: ArrayLike, is_ood: ArrayLike, tpr: float = 0.95) -> float:
    """Share of OOD samples accepted as ID at the threshold keeping ``tpr`` of ID (``fpr95_id``).

    ID is the positive class; a sample is accepted as ID when ``score <= t`` with
    ``t = calibrate_threshold(id_scores, tpr)``.
    """
    s, y = _checked_pair(scores, is_ood)
    t = calibrate_threshold(s[~y], tpr)
    return float(np.mean(s[y] <= t))


def calibrate_threshold(id_scores: ArrayLike, tpr: float = 0.95) -> float:
    """Deployment threshold from in-distribution scores: the smallest ID score ``t`` with
    ``mean(id_scores <= t) >= tpr``.

    A sample is flagged as OOD when ``score > t``; on the calibration set at most ``1 - tpr``
    of the ID samples are flagged (fewer when scores tie at ``t``). This is the empirical
    ``tpr``-quantile with numpy's ``method="inverted_cdf"``.
    """
    s = _as_scores(id_scores, "id_scores")
    tpr = _check_rate(tpr, "tpr")
    k = max(_min_count(tpr, s.size), 1)  # number of ID samples that must be <= t
    return float(np.partition(s, k - 1)[k - 1])


def auroc(scores: ArrayLike, is_ood: ArrayLike) -> float:
    """Area under the ROC curve, OOD positive, ties counted half (scikit-learn's ``roc_auc_score``;
    the tests compare the two). The AUROC alone, as :func:`ood_metrics` computes it, for callers that
    need only it per frame: no scikit-learn import (0.6 s) in the processes that replay bags."""
    s, y = _checked_pair(scores, is_ood)
    n_ood = int(y.sum())
    n_id = int(y.size) - n_ood
    _, tps, fps = _curve_counts(s, y)
    return _auroc_of_counts(tps, fps, n_id, n_ood)


def _auroc_of_counts(tps: NDArray[np.int64], fps: NDArray[np.int64], n_id: int, n_ood: int) -> float:
    """Trapezoid area of the ROC through every threshold of :func:`_curve_counts`, from (0, 0)."""
    roc_fpr, roc_tpr = np.r_[0.0, fps / n_id], np.r_[0.0, tps / n_ood]
    return float(np.sum(np.diff(roc_fpr) * (roc_tpr[1:] + roc_tpr[:-1]) / 2.0))


def ood_metrics(
    scores: ArrayLike,
    is_ood: ArrayLike,
    tpr: float = 0.95,
    aupr_method: str = "trapezoid",
) -> dict[str, Any]:
    """OOD detection metrics of ``scores`` (higher = more anomalous) against ``is_ood``.

    All curves come from one sort of the scores (per-pixel evaluations have millions of samples);
    the tests check every number against scikit-learn (``roc_auc_score``,
    ``precision_recall_curve`` + ``auc``, ``average_precision_score``) and brute-force threshold
    scans.

    Args:
        scores: any shape; flattened (e.g. a per-pixel score map with its OOD mask).
        is_ood: same shape as ``scores``; bool or 0/1, True/1 = OOD sample.
        tpr: recall level of the FPR metrics (0.95 gives FPR95).
        aupr_method: ``"trapezoid"`` (OpenOOD/MultiOOD) or ``"average_precision"``.

    Returns:
        ``auroc``, ``fpr95`` (OOD positive), ``fpr95_id`` (ID positive), ``aupr_in``, ``aupr_out``
        (all fractions in [0, 1]), ``threshold_id`` (the ID-calibrated threshold used by
        ``fpr95_id``), ``tpr`` and the counts ``n``, ``n_id``, ``n_ood``.

    Raises:
        ValueError: empty input, shape mismatch, NaN/Inf scores, labels other than 0/1, or only
            one class present.
    """
    if aupr_method not in _AUPR_METHODS:
        raise ValueError(f"aupr_method must be one of {_AUPR_METHODS}, got {aupr_method!r}")
    s, y = _checked_pair(scores, is_ood)
    tpr = _check_rate(tpr, "tpr")
    n_ood = int(y.sum())
    n_id = int(y.size) - n_ood

    _, tps, fps = _curve_counts(s, y)
    # ROC with every threshold, from (0, 0): its trapezoid area is the AUROC (ties count half)
    area_roc = _auroc_of_counts(tps, fps, n_id, n_ood)
    fpr95 = float(fps[np.argmax(tps >= _min_count(tpr, n_ood))] / n_id)
    # ID positive with the score negated: the sets {score <= v_k} are the complements of
    # {score >= v_(k-1)}, so their counts come from the same cumulative sums, reversed
    in_tp = (n_id - np.r_[0, fps[:-1]])[::-1]
    in_fp = (n_ood - np.r_[0, tps[:-1]])[::-1]
    area = _trapezoid_pr if aupr_method == "trapezoid" else _average_precision
    threshold_id = calibrate_threshold(s[~y], tpr)
    return {
        "auroc": area_roc,
        "fpr95": fpr95,
        "fpr95_id": float(np.mean(s[y] <= threshold_id)),
        "aupr_in": area(in_tp, in_fp, n_id),
        "aupr_out": area(tps, fps, n_ood),
        "aupr_method": aupr_method,
        "threshold_id": threshold_id,
        "tpr": tpr,
        "n": int(y.size),
        "n_id": n_id,
        "n_ood": n_ood,
    }


# ---------------------------------------------------------------------------------------------
# classification / segmentation metrics
# ---------------------------------------------------------------------------------------------


def _as_int_labels(x: ArrayLike, name: str) -> NDArray[np.int64]:
    arr = np.asarray(x)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False).ravel()


def confusion_matrix(
    gt: ArrayLike, pred: ArrayLike, num_classes: int, ignore_index: int | None = 255
) -> NDArray[np.int64]:
    """``[K, K]`` confusion matrix, rows = ground truth, columns = prediction.

    Pixels/samples whose ground truth is ``ignore_index`` are skipped. Any other ground-truth or
    predicted id outside ``0..num_classes-1`` is an error (it would silently skew the IoU).
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    k = int(num_classes)
    if np.shape(gt) != np.shape(pred):
        raise ValueError(f"gt and pred differ in shape: {np.shape(gt)} vs {np.shape(pred)}")
    g = _as_int_labels(gt, "gt")
    p = _as_int_labels(pred, "pred")
    if ignore_index is not None:
        keep = g != ignore_index
        g, p = g[keep], p[keep]
    for arr, name in ((g, "gt"), (p, "pred")):
        bad = (arr < 0) | (arr >= k)
        if bad.any():
            raise ValueError(
                f"{name} has ids outside 0..{k - 1} (and not ignore_index={ignore_index}): "
                f"{np.unique(arr[bad])[:10].tolist()}"
            )
    return np.bincount(g * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def per_class_iou(conf: ArrayLike) -> NDArray[np.float64]:
    """IoU per class from a confusion matrix: ``TP / (TP + FP + FN)``; NaN for classes absent from
    both the ground truth and the prediction."""
    c = np.asarray(conf, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"confusion matrix must be square [K, K], got shape {c.shape}")
    tp = np.diag(c)
    union = c.sum(axis=0) + c.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(conf: ArrayLike) -> float:
    """Mean of :func:`per_class_iou` over classes present in the ground truth or the prediction
    (NaN when no class is present)."""
    iou = per_class_iou(conf)
    valid = ~np.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else float("nan")


def segmentation_metrics(
    gt: ArrayLike,
    pred: ArrayLike,
    num_classes: int,
    ignore_index: int | None = 255,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Closed-set segmentation metrics: ``miou``, ``per_class_iou`` (list, None for absent classes,
    or a name -> IoU dict when ``class_names`` is given), ``pixel_accuracy`` and the
    ``confusion_matrix`` (nested lists), over pixels whose ground truth is not ``ignore_index``."""
    conf = confusion_matrix(gt, pred, num_classes, ignore_index)
    iou = per_class_iou(conf)
    total = int(conf.sum())
    iou_list = [None if np.isnan(v) else float(v) for v in iou]
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
        per_class: Any = dict(zip(class_names, iou_list, strict=True))
    else:
        per_class = iou_list
    return {
        "miou": mean_iou(conf),
        "per_class_iou": per_class,
        "pixel_accuracy": float(np.trace(conf) / total) if total else float("nan"),
        "n_pixels": total,
        "confusion_matrix": conf.tolist(),
    }


def id_accuracy(
    pred: ArrayLike,
    labels: ArrayLike,
    is_ood: ArrayLike | None = None,
    ignore_index: int | None = 255,
) -> float:
    """Classification accuracy on in-distribution samples only.

    Samples with ``is_ood`` true and samples labelled ``ignore_index`` are excluded (MultiOOD
    reports accuracy on the ID test set). Raises ValueError if nothing is left to score.
    """
    if np.shape(pred) != np.shape(labels):
        raise ValueError(f"pred and labels differ in shape: {np.shape(pred)} vs {np.shape(labels)}")
    p = _as_int_labels(pred, "pred")
    y = _as_int_labels(labels, "labels")
    keep = np.ones(y.shape, dtype=bool)
    if is_ood is not None:
        if np.shape(is_ood) != np.shape(labels):
            raise ValueError(f"is_ood and labels differ in shape: {np.shape(is_ood)} vs {np.shape(labels)}")
        keep &= ~_as_labels(is_ood)
    if ignore_index is not None:
        keep &= y != ignore_index
    if not keep.any():
        raise ValueError("no in-distribution samples left to compute the accuracy on")
    return float(np.mean(p[keep] == y[keep]))
