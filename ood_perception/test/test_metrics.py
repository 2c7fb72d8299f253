"""Tests of ood_perception.metrics against independent computations (sklearn, brute force)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ood_perception import metrics


def brute_fpr95(scores: np.ndarray, is_ood: np.ndarray, tpr: float = 0.95) -> float:
    """OOD positive: min share of ID flagged (score >= t) among thresholds catching >= tpr of OOD."""
    best = 1.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        flagged = scores >= t
        if flagged[is_ood].mean() >= tpr:
            best = min(best, flagged[~is_ood].mean())
    return float(best)


def brute_fpr95_id(scores: np.ndarray, is_ood: np.ndarray, tpr: float = 0.95) -> float:
    """ID positive: min share of OOD accepted (score <= t) among thresholds keeping >= tpr of ID."""
    best = 1.0
    for t in np.concatenate([[-np.inf], np.unique(scores)]):
        accepted = scores <= t
        if accepted[~is_ood].mean() >= tpr:
            best = min(best, accepted[is_ood].mean())
    return float(best)


def brute_aupr_trapezoid(positive: np.ndarray, score: np.ndarray) -> float:
    """Trapezoid area under the precision-recall path traced as the threshold decreases over
    every distinct score, starting from (recall 0, precision 1)."""
    r, p = [0.0], [1.0]
    for t in np.unique(score)[::-1]:
        pred = score >= t
        tp = (pred & positive).sum()
        r.append(tp / positive.sum())
        p.append(tp / pred.sum())
    r_arr, p_arr = np.array(r), np.array(p)
    return float(np.sum(np.diff(r_arr) * (p_arr[1:] + p_arr[:-1]) / 2))


def _data(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_id, n_ood = 300, 120
    is_ood = np.r_[np.zeros(n_id, bool), np.ones(n_ood, bool)]
    if kind == "random":
        s = np.r_[rng.normal(0, 1, n_id), rng.normal(1.2, 1, n_ood)]
    elif kind == "ties":
        s = np.r_[rng.integers(0, 6, n_id), rng.integers(2, 9, n_ood)].astype(float)
    else:  # separated
        s = np.r_[rng.uniform(0, 1, n_id), rng.uniform(2, 3, n_ood)]
    perm = rng.permutation(s.size)
    return s[perm], is_ood[perm]


@pytest.mark.parametrize("kind", ["random", "ties", "separated"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_metrics_match_independent_computations(kind: str, seed: int) -> None:
    s, y = _data(kind, seed)
    m = metrics.ood_metrics(s, y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert metrics.auroc(s, y) == m["auroc"]
    assert m["fpr95"] == pytest.approx(brute_fpr95(s, y), abs=1e-12)
    assert m["fpr95_id"] == pytest.approx(brute_fpr95_id(s, y), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(brute_aupr_trapezoid(y, s), abs=1e-9)
    assert m["aupr_in"] == pytest.approx(brute_aupr_trapezoid(~y, -s), abs=1e-9)
    assert (m["n"], m["n_id"], m["n_ood"]) == (420, 300, 120)
    ap = metrics.ood_metrics(s, y, aupr_method="average_precision")
    assert ap["aupr_out"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert ap["aupr_in"] == pytest.approx(average_precision_score(~y, -s), abs=1e-12)
    # the OpenOOD/MultiOOD recipe written with sklearn
    fpr_l, tpr_l, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr_l[np.argmax(tpr_l >= 0.95)], abs=1e-12)
    prec, rec, _ = precision_recall_curve(y, s)
    assert m["aupr_out"] == pytest.approx(auc(rec, prec), abs=1e-12)
    prec, rec, _ = precision_recall_curve(~y, -s)
    assert m["aupr_in"] == pytest.approx(auc(rec, prec), abs=1e-12)
    if kind == "separated":
        assert m["auroc"] == 1.0 and m["fpr95"] == 0.0 and m["fpr95_id"] == 0.0
        assert m["aupr_in"] == pytest.approx(1.0) and m["aupr_out"] == pytest.approx(1.0)


def test_fpr95_conventions_differ_and_are_named() -> None:
    # 20 ID at 0..19, 20 OOD at 10..29: overlapping ranges
    s = np.r_[np.arange(20.0), np.arange(10.0, 30.0)]
    y = np.r_[np.zeros(20, bool), np.ones(20, bool)]
    m = metrics.ood_metrics(s, y)
    # OOD positive: catch 19 of 20 OOD -> t = 11 flags ID 11..19 = 9 of 20
    assert m["fpr95"] == pytest.approx(9 / 20)
    # ID positive: keep 19 of 20 ID -> t = 18 accepts OOD 10..18 = 9 of 20
    assert m["threshold_id"] == 18.0
    assert m["fpr95_id"] == pytest.approx(9 / 20)
    # asymmetric case: the two conventions give different numbers
    s2 = np.r_[np.arange(20.0), np.arange(15.0, 55.0)]
    y2 = np.r_[np.zeros(20, bool), np.ones(40, bool)]
    m2 = metrics.ood_metrics(s2, y2)
    assert m2["fpr95"] == pytest.approx(brute_fpr95(s2, y2))
    assert m2["fpr95_id"] == pytest.approx(brute_fpr95_id(s2, y2))
    assert m2["fpr95"] != m2["fpr95_id"]


@pytest.mark.parametrize("ood_share", [0.01, 0.3])
def test_large_tied_maps_match_sklearn(ood_share: float) -> None:
    rng = np.random.default_rng(8)
    y = rng.random(200_000) < ood_share
    s = np.round(rng.normal(size=y.size) + 1.3 * y, 2).astype(np.float32)  # many ties
    m = metrics.ood_metrics(s, y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert metrics.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    prec, rec, _ = precision_recall_curve(~y, -s.astype(np.float64))
    assert m["aupr_in"] == pytest.approx(auc(rec, prec), abs=1e-9)
    fpr_l, tpr_l, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["fpr95"] == pytest.approx(fpr_l[np.argmax(tpr_l >= 0.95)], abs=1e-12)


def test_metrics_accept_maps_and_01_labels() -> None:
    s, y = _data("random", 5)
    m_flat = metrics.ood_metrics(s, y)
    m_map = metrics.ood_metrics(s.reshape(20, 21), y.reshape(20, 21).astype(np.uint8))
    assert m_flat["auroc"] == m_map["auroc"] and m_flat["fpr95"] == m_map["fpr95"]


@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 1.0])
def test_calibrate_threshold(tpr: float) -> None:
    rng = np.random.default_rng(3)
    id_scores = rng.normal(size=137)
    t = metrics.calibrate_threshold(id_scores, tpr)
    assert t in id_scores
    assert np.mean(id_scores <= t) >= tpr
    assert np.mean(id_scores < t) < tpr  # smallest such value
    assert t == np.quantile(id_scores, tpr, method="inverted_cdf")
    # exact multiples: 20 samples at 95% -> the 19th smallest
    assert metrics.calibrate_threshold(np.arange(20.0), 0.95) == 18.0


@pytest.mark.parametrize(
    ("scores", "is_ood", "match"),
    [
        ([], [], "empty"),
        ([0.1, 0.2], [0, 1, 1], "shape"),
        ([0.1, np.nan, 0.3], [0, 1, 1], "NaN"),
        ([0.1, np.inf, 0.3], [0, 1, 1], "Inf"),
        ([0.1, 0.2, 0.3], [0, 0, 0], "no OOD"),
        ([0.1, 0.2, 0.3], [1, 1, 1], "no ID"),
        ([0.1, 0.2, 0.3], [0, 2, 1], "0/1"),
        (["a", "b"], [0, 1], "numeric"),
    ],
)
def test_ood_metrics_errors(scores, is_ood, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.ood_metrics(np.asarray(scores), np.asarray(is_ood))


def test_threshold_and_option_errors() -> None:
    with pytest.raises(ValueError, match="tpr"):
        metrics.calibrate_threshold([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="id_scores is empty"):
        metrics.calibrate_threshold([], 0.95)
    with pytest.raises(ValueError, match="aupr_method"):
        metrics.ood_metrics([0.0, 1.0], [0, 1], aupr_method="bogus")


def test_confusion_iou_miou_against_loops() -> None:
    rng = np.random.default_rng(7)
    k = 5
    gt = rng.integers(0, k, size=(4, 30, 40))
    gt[rng.random(gt.shape) < 0.1] = 255
    gt[gt == 3] = 2  # class 3 absent from gt ...
    pred = rng.integers(0, k, size=gt.shape)
    pred[pred == 3] = 1  # ... and from prediction -> excluded from mIoU
    pred[pred == 4] = 0  # class 4 in gt only -> IoU 0, counted
    conf = metrics.confusion_matrix(gt, pred, k)
    valid = gt != 255
    for i in range(k):
        for j in range(k):
            assert conf[i, j] == np.sum((gt[valid] == i) & (pred[valid] == j))
    iou = metrics.per_class_iou(conf)
    expected = []
    for c in range(k):
        inter = np.sum((gt[valid] == c) & (pred[valid] == c))
        union = np.sum((gt[valid] == c) | (pred[valid] == c))
        expected.append(np.nan if union == 0 else inter / union)
    np.testing.assert_allclose(iou, expected, equal_nan=True)
    assert np.isnan(iou[3]) and iou[4] == 0.0
    assert metrics.mean_iou(conf) == pytest.approx(np.nanmean(expected))
    seg = metrics.segmentation_metrics(gt, pred, k, class_names=list("abcde"))
    assert seg["per_class_iou"]["d"] is None
    assert seg["miou"] == pytest.approx(np.nanmean(expected))
    assert seg["pixel_accuracy"] == pytest.approx(np.mean(gt[valid] == pred[valid]))
    assert seg["n_pixels"] == int(valid.sum())


def test_confusion_matrix_errors() -> None:
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="pred has ids outside"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="integer"):
        metrics.confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="empty"):
        metrics.confusion_matrix(np.array([], int), np.array([], int), 3)


def test_id_accuracy() -> None:
    pred = np.array([0, 1, 2, 2, 1, 0])
    labels = np.array([0, 1, 1, 2, 255, 0])
    is_ood = np.array([0, 0, 0, 0, 0, 1], bool)
    # kept: idx 0..3 -> correct 0, 1, 3 -> 3 / 4
    assert metrics.id_accuracy(pred, labels, is_ood) == pytest.approx(0.75)
    assert metrics.id_accuracy(pred[:4], labels[:4]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no in-distribution"):
        metrics.id_accuracy(pred[5:], labels[5:], is_ood[5:])


@pytest.mark.parametrize("ties", [False, True])
def test_roc_points_equal_sklearns_curve_with_every_threshold(ties: bool) -> None:
    rng = np.random.default_rng(7)
    y = rng.random(5000) < 0.2
    s = rng.normal(size=5000) + y
    if ties:
        s = np.round(s, 1)
    fpr, tpr = metrics.roc_points(s, y)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    with pytest.raises(ValueError, match="both ID and OOD"):
        metrics.roc_points(s, np.zeros(5000, bool))
