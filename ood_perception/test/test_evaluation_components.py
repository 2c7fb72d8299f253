"""Tests of the SegmentMeIfYouCan component metrics (ood_perception.evaluation.components).

Expected values are worked out by hand in the comments; a brute-force implementation of the
definitions (explicit pixel sets, scipy labelling) checks random masks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from ood_perception.evaluation import (
    SMIYC_TAUS,
    ComponentAccumulator,
    ComponentConfig,
    frame_components,
    scaled_pixel_count,
)


def two_blobs_frame() -> tuple[np.ndarray, np.ndarray]:
    """10x10 frame: GT components A (rows 1-3, cols 1-3) and B (rows 1-3, cols 6-8), 9 px each;
    prediction P1 (rows 1-3, cols 2-7, 18 px) touches both, P2 (rows 7-8, cols 0-1, 4 px) no GT."""
    gt = np.zeros((10, 10), bool)
    gt[1:4, 1:4] = True
    gt[1:4, 6:9] = True
    pred = np.zeros((10, 10), bool)
    pred[1:4, 2:8] = True
    pred[7:9, 0:2] = True
    return pred, gt


def test_taus_and_scaling() -> None:
    # exactly the benchmark's np.linspace(0.25, 0.75, 11), whose eighth value is 0.6000000000000001
    assert SMIYC_TAUS == tuple(np.linspace(0.25, 0.75, 11))
    assert SMIYC_TAUS[3] == 0.4 and SMIYC_TAUS[7] > 0.6
    # 512x256 has 1/16 of 2048x1024's pixels: 500/16 = 31.25 -> 31, 100/16 = 6.25 -> 6
    assert scaled_pixel_count(500, (256, 512), (1024, 2048)) == 31
    assert scaled_pixel_count(100, (256, 512), (1024, 2048)) == 6
    assert scaled_pixel_count(50, (2048, 4096), (1024, 2048)) == 200
    cfg = ComponentConfig.scaled_to((256, 512))
    assert (cfg.min_pred_pixels, cfg.min_gt_pixels) == (31, 6)
    assert "500/100 px at 1024x2048 scaled to 256x512" in cfg.provenance
    with pytest.raises(ValueError, match="positive"):
        scaled_pixel_count(500, (0, 512), (1024, 2048))
    with pytest.raises(ValueError, match="taus"):
        ComponentConfig(taus=(0.0,))


def test_siou_with_adjustment_and_ppv_by_hand() -> None:
    pred, gt = two_blobs_frame()
    fc = frame_components(pred, gt)
    # sIoU(A): P1 touches A; |A ∩ P1| = rows 1-3 x cols 2-3 = 6; union |A ∪ P1| = 9 + 18 - 6 = 21,
    # minus the pixels of P1 on the *other* GT component B (cols 6-7: 6 px) = 15 -> 6/15 = 0.4.
    # B likewise: |B ∩ P1| = 6, adjusted union 15 -> 0.4.
    np.testing.assert_allclose(fc.siou, [0.4, 0.4])
    assert fc.gt_sizes.tolist() == [9, 9]
    # PPV(P1) = pixels on any GT / |P1| = 12 / 18; PPV(P2) = 0 / 4. cv2 numbers components in
    # raster order of their first pixel: P1 (row 1) before P2 (row 7).
    np.testing.assert_allclose(fc.ppv, [12 / 18, 0.0])
    assert fc.pred_sizes.tolist() == [18, 4]
    # symmetric sIoU of P1 = 12 / (18 + (9 - 6) + (9 - 6)) = 0.5; P2 = 0
    np.testing.assert_allclose(fc.siou_pred, [0.5, 0.0])


def test_f1_per_tau_and_mean_by_hand() -> None:
    pred, gt = two_blobs_frame()
    acc = ComponentAccumulator()
    acc.add(pred, gt)
    res = acc.result()
    by_tau = {r["tau"]: r for r in res["per_tau"]}
    # tau <= 0.40: both GT have sIoU 0.4 >= tau -> TP 2, FN 0; FP = P2 (PPV 0) -> F1 = 4 / 5
    for t in (0.25, 0.3, 0.35, 0.4):
        assert (by_tau[t]["tp"], by_tau[t]["fn"], by_tau[t]["fp"]) == (2, 0, 1)
        assert by_tau[t]["f1"] == pytest.approx(0.8)
    # 0.45 .. 0.65: TP 0, FN 2, FP 1 (P1's PPV 0.667 >= tau) -> F1 0
    for t in (0.45, 0.5, 0.55, 0.6, 0.65):
        assert (by_tau[t]["tp"], by_tau[t]["fn"], by_tau[t]["fp"]) == (0, 2, 1)
        assert by_tau[t]["f1"] == 0.0
    # 0.70, 0.75: P1's PPV < tau too -> FP 2
    for t in (0.7, 0.75):
        assert (by_tau[t]["tp"], by_tau[t]["fn"], by_tau[t]["fp"]) == (0, 2, 2)
    assert res["f1_mean"] == pytest.approx(4 * 0.8 / 11)
    assert res["f1_25"] == pytest.approx(0.8) and res["f1_50"] == 0.0 and res["f1_75"] == 0.0
    assert res["siou_gt_mean"] == pytest.approx(0.4)
    assert res["ppv_mean"] == pytest.approx((12 / 18 + 0) / 2)
    assert res["siou_pred_mean"] == pytest.approx(0.25)
    assert (res["n_gt_components"], res["n_pred_components"], res["frames"]) == (2, 2, 1)


def test_tie_at_tau_decided_as_the_benchmark_code() -> None:
    # GT row 0 cols 0-2 (3 px), prediction row 0 cols 0-4 (5 px): sIoU = 3 / 5 and PPV = 3 / 5,
    # both exactly 0.6, which is below the benchmark's tau 0.6000000000000001: FN and FP there,
    # while at tau 0.55 it is a TP and no FP.
    gt = np.zeros((3, 6), bool)
    gt[0, 0:3] = True
    pred = np.zeros((3, 6), bool)
    pred[0, 0:5] = True
    acc = ComponentAccumulator()
    fc = acc.add(pred, gt)
    assert fc.siou.tolist() == [0.6] and fc.ppv.tolist() == [0.6]
    by_tau = {r["tau"]: r for r in acc.result()["per_tau"]}
    assert (by_tau[0.55]["tp"], by_tau[0.55]["fn"], by_tau[0.55]["fp"]) == (1, 0, 0)
    assert (by_tau[0.6]["tp"], by_tau[0.6]["fn"], by_tau[0.6]["fp"]) == (0, 1, 1)


def test_eight_connectivity() -> None:
    # two diagonal GT pixels form ONE 8-connected component; the prediction covers one of them:
    # sIoU = 1 / 2
    gt = np.zeros((4, 4), bool)
    gt[0, 0] = gt[1, 1] = True
    pred = np.zeros((4, 4), bool)
    pred[0, 0] = True
    fc = frame_components(pred, gt)
    assert fc.gt_sizes.tolist() == [2]
    np.testing.assert_allclose(fc.siou, [0.5])
    np.testing.assert_allclose(fc.ppv, [1.0])


def test_void_pixels_removed_before_labelling_split_a_prediction() -> None:
    # a 7 px predicted row with a void pixel in the middle: void prediction pixels are dropped
    # before the labelling, so it is two components of 3 px, both below min_pred_pixels = 4
    pred = np.zeros((3, 9), bool)
    pred[0, 0:7] = True
    void = np.zeros((3, 9), bool)
    void[0, 3] = True
    gt = np.zeros((3, 9), bool)
    fc = frame_components(pred, gt, void, min_pred_pixels=4)
    assert fc.ppv.size == 0
    fc = frame_components(pred, gt, void, min_pred_pixels=3)
    assert fc.pred_sizes.tolist() == [3, 3]
    np.testing.assert_allclose(fc.ppv, [0.0, 0.0])


def test_small_gt_component_becomes_ignore() -> None:
    # GT component of 2 px (row 5, cols 5-6) with min_gt_pixels = 3 -> its pixels are ignored.
    # The prediction (row 5, cols 4-7, 4 px) passes min_pred_pixels = 4 (counted before the ROI
    # cut); inside the ROI it keeps cols 4 and 7 (2 px, no GT): PPV 0 -> one FP, no GT components.
    gt = np.zeros((8, 8), bool)
    gt[5, 5:7] = True
    pred = np.zeros((8, 8), bool)
    pred[5, 4:8] = True
    fc = frame_components(pred, gt, min_pred_pixels=4, min_gt_pixels=3)
    assert fc.siou.size == 0
    assert fc.pred_sizes.tolist() == [2]
    np.testing.assert_allclose(fc.ppv, [0.0])
    acc = ComponentAccumulator(ComponentConfig(min_pred_pixels=4, min_gt_pixels=3))
    acc.add(pred, gt)
    res = acc.result()
    assert all((r["tp"], r["fn"], r["fp"], r["f1"]) == (0, 0, 1, 0.0) for r in res["per_tau"])
    # a prediction lying wholly on the ignored component leaves the ROI: no component at all
    pred2 = np.zeros((8, 8), bool)
    pred2[5, 5:7] = True
    fc = frame_components(pred2, gt, min_gt_pixels=3)
    assert fc.siou.size == 0 and fc.ppv.size == 0
    # nothing at all -> F1 undefined (None), never a division by zero
    empty = ComponentAccumulator(ComponentConfig(min_gt_pixels=3))
    empty.add(pred2, gt)
    assert empty.result()["f1_mean"] is None and empty.result()["siou_gt_mean"] is None


def test_missed_gt_and_instance_components() -> None:
    # GT untouched by any prediction: sIoU 0 (FN at every tau)
    gt = np.zeros((5, 5), bool)
    gt[0:2, 0:2] = True
    fc = frame_components(np.zeros((5, 5), bool), gt)
    np.testing.assert_allclose(fc.siou, [0.0])
    # two touching instances are ONE connected component, but two with gt_components=instances:
    # instance 7 = cols 0-1, instance 9 = cols 2-3 (rows 0-1, 4 px each); the prediction covers
    # instance 7 exactly: sIoU(7) = 4 / 4 = 1; sIoU(9) = 0 (no prediction touches it)
    gt = np.zeros((4, 6), bool)
    gt[0:2, 0:4] = True
    inst = np.zeros((4, 6), np.uint16)
    inst[0:2, 0:2] = 7
    inst[0:2, 2:4] = 9
    pred = np.zeros((4, 6), bool)
    pred[0:2, 0:2] = True
    np.testing.assert_allclose(frame_components(pred, gt).siou, [0.5])  # 4 / 8 as one component
    np.testing.assert_allclose(frame_components(pred, gt, gt_components=inst).siou, [1.0, 0.0])
    with pytest.raises(ValueError, match="overlaps"):
        frame_components(pred, gt, ignore=gt)
    with pytest.raises(ValueError, match="shape"):
        frame_components(pred[:2], gt)


def test_pooling_merge_and_state_round_trip() -> None:
    pred1, gt1 = two_blobs_frame()
    gt2 = np.zeros((6, 6), bool)
    gt2[2:4, 2:4] = True
    pred2 = gt2.copy()  # exact hit: sIoU 1, PPV 1
    one = ComponentAccumulator()
    one.add(pred1, gt1)
    one.add(pred2, gt2)
    a, b = ComponentAccumulator(), ComponentAccumulator()
    a.add(pred1, gt1)
    b.add(pred2, gt2)
    b.merge(a)  # order of pooling must not matter
    assert json.dumps(b.result(), sort_keys=True) == json.dumps(one.result(), sort_keys=True)
    res = one.result()
    # pooled sIoU [0.4, 0.4, 1], PPV [2/3, 0, 1]:
    # tau <= 0.40: TP 3 FN 0 FP 1 -> 6/7; 0.45..0.65: TP 1 FN 2 FP 1 -> 2/5; 0.70, 0.75: FP 2 -> 2/6
    assert res["f1_mean"] == pytest.approx((4 * 6 / 7 + 5 * 0.4 + 2 * 2 / 6) / 11)
    state = json.loads(json.dumps(one.state()))
    again = ComponentAccumulator.from_state(state)
    assert json.dumps(again.result(), sort_keys=True) == json.dumps(res, sort_keys=True)
    with pytest.raises(ValueError, match="different configs"):
        one.merge(ComponentAccumulator(ComponentConfig(min_pred_pixels=5)))


def brute_force(pred: np.ndarray, gt: np.ndarray, void: np.ndarray, min_pred: int, min_gt: int):
    """The definitions with explicit pixel sets (scipy labelling, loops over components)."""
    s8 = np.ones((3, 3), int)
    lab_g, n_g = ndimage.label(gt, s8)
    lab_p, n_p = ndimage.label(pred & ~void, s8)
    for j in range(1, n_p + 1):
        if (lab_p == j).sum() < min_pred:
            lab_p[lab_p == j] = 0
    roi = ~void
    keep_g = []
    for i in range(1, n_g + 1):
        if (lab_g == i).sum() < min_gt:
            roi &= lab_g != i
        else:
            keep_g.append(i)
    siou, ppv = [], []
    all_gt = np.isin(lab_g, keep_g) & roi
    for i in keep_g:
        g = (lab_g == i) & roi
        touching = set(np.unique(lab_p[g])) - {0}
        p = np.isin(lab_p, list(touching)) & roi
        other = all_gt & ~g
        siou.append((g & p).sum() / ((g | p) & ~other).sum())
    for j in sorted(set(np.unique(lab_p[roi])) - {0}):
        p = (lab_p == j) & roi
        ppv.append((p & all_gt).sum() / p.sum())
    return sorted(siou), sorted(ppv)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 40, 50
    gt = ndimage.binary_opening(rng.random((h, w)) < 0.35)
    pred = ndimage.binary_opening(rng.random((h, w)) < 0.4) | (gt & (rng.random((h, w)) < 0.7))
    void = (rng.random((h, w)) < 0.05) & ~gt
    for min_pred, min_gt in ((0, 0), (6, 4)):
        fc = frame_components(pred, gt, void, min_pred_pixels=min_pred, min_gt_pixels=min_gt)
        siou, ppv = brute_force(pred, gt, void, min_pred, min_gt)
        assert len(siou) > 0 and len(ppv) > 0
        np.testing.assert_allclose(np.sort(fc.siou), siou)
        np.testing.assert_allclose(np.sort(fc.ppv), ppv)
