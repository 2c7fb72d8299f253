"""Feature Mixing: exactly the swapped channels change, by exchange, within sqrt(2N)*delta."""

from __future__ import annotations

import math

import pytest
import torch

from ood_perception.synthesis import DEFAULT_GAMMA1, DEFAULT_N, feature_mixing, swap_mask


def _feats(b=3, dc=16, dl=16, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, dc, h, w, generator=g), torch.randn(b, dl, h, w, generator=g) + 3.0


def test_paper_defaults() -> None:
    assert DEFAULT_N == 10 and DEFAULT_GAMMA1 == 3.0


def test_only_swapped_channels_change_and_they_are_exchanged() -> None:
    fc, fl = _feats()
    fc0, fl0 = fc.clone(), fl.clone()
    res = feature_mixing(fc, fl, n=5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(fc, fc0)  # inputs untouched
    torch.testing.assert_close(fl, fl0)
    assert res.outliers.shape == (3, 32, 4, 5)
    torch.testing.assert_close(res.outliers, torch.cat([res.camera, res.lidar], 1))
    for b in range(3):
        swapped = set(res.indices[b].tolist())
        assert len(swapped) == 5
        changed_c = {j for j in range(16) if not torch.equal(res.camera[b, j], fc[b, j])}
        changed_l = {j for j in range(16) if not torch.equal(res.lidar[b, j], fl[b, j])}
        assert changed_c == swapped == changed_l
        for j in swapped:  # an exchange between modalities, not a copy or a blend
            assert torch.equal(res.camera[b, j], fl[b, j])
            assert torch.equal(res.lidar[b, j], fc[b, j])


def test_indices_are_per_sample_or_per_batch() -> None:
    fc, fl = _feats(b=8, dc=64, dl=64)
    res = feature_mixing(fc, fl, n=10, generator=torch.Generator().manual_seed(0))
    assert len({tuple(r.tolist()) for r in res.indices}) > 1
    res1 = feature_mixing(fc, fl, n=10, per_sample=False, generator=torch.Generator().manual_seed(0))
    assert res1.indices.shape == (1, 10)
    for b in range(8):
        changed = {j for j in range(64) if not torch.equal(res1.camera[b, j], fc[b, j])}
        assert changed == set(res1.indices[0].tolist())


def test_indices_valid_in_both_modalities_when_widths_differ() -> None:
    fc, fl = _feats(dc=8, dl=20)
    res = feature_mixing(fc, fl, n=8, generator=torch.Generator().manual_seed(2))
    assert int(res.indices.max()) < 8
    torch.testing.assert_close(res.lidar[:, 8:], fl[:, 8:])  # LiDAR-only channels never move
    with pytest.raises(ValueError, match="N must be"):
        feature_mixing(fc, fl, n=9)


def test_l2_deviation_bound_sqrt_2n_delta() -> None:
    fc, fl = _feats(b=4, dc=32, dl=32, seed=3)
    n = 10
    res = feature_mixing(fc, fl, n=n, generator=torch.Generator().manual_seed(4))
    f = torch.cat([fc, fl], 1)
    dev = (res.outliers - f).norm(dim=1)  # per-pixel L2 deviation [B, H, W]
    diff = (fc - fl).abs()  # |Fc_j - Fl_j| per channel and pixel
    delta_all = diff.amax(dim=1)  # max over every shared channel
    sel = torch.zeros_like(diff, dtype=torch.bool)
    for b in range(4):
        sel[b, res.indices[b]] = True
    delta_swapped = torch.where(sel, diff, torch.zeros_like(diff)).amax(dim=1)
    # exact identity: ||Fo - F|| = sqrt(2 * sum_{j in S} (Fc_j - Fl_j)^2)
    exact = torch.sqrt(2 * torch.where(sel, diff**2, torch.zeros_like(diff)).sum(1))
    torch.testing.assert_close(dev, exact)
    assert bool((dev <= math.sqrt(2 * n) * delta_swapped + 1e-5).all())
    assert bool((dev <= math.sqrt(2 * n) * delta_all + 1e-5).all())
    # tight: when every swapped channel differs by exactly delta the bound is reached
    fc2 = torch.zeros(1, 12, 2, 2)
    fl2 = torch.full((1, 12, 2, 2), 0.7)
    res2 = feature_mixing(fc2, fl2, n=n)
    dev2 = (res2.outliers - torch.cat([fc2, fl2], 1)).norm(dim=1)
    torch.testing.assert_close(dev2, torch.full((1, 2, 2), math.sqrt(2 * n) * 0.7))


def test_reproducible_and_differentiable() -> None:
    fc, fl = _feats()
    fc.requires_grad_(True)
    fl.requires_grad_(True)
    a = feature_mixing(fc, fl, generator=torch.Generator().manual_seed(7))
    b = feature_mixing(fc, fl, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.indices, b.indices)
    a.outliers.sum().backward()
    torch.testing.assert_close(fc.grad, torch.ones_like(fc))  # each Fc entry lands exactly once in Fo
    mask, idx = swap_mask(5, 12, 3, generator=torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [3] * 5 and idx.shape == (5, 3)
