"""Losses against independent computations: CE, hard-prediction IoU, entropy, Hellinger."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ood_perception.losses import (
    a2d_loss,
    focal_loss,
    hellinger,
    lovasz_softmax,
    non_target_softmax,
    normalised_entropy,
    outlier_entropy_loss,
)


def _data(seed=0, b=2, k=4, h=6, w=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g)
    target = torch.randint(0, k, (b, h, w), generator=g)
    target[0, :2] = 255
    return logits, target


def test_focal_gamma0_is_cross_entropy_and_focal_is_smaller() -> None:
    logits, target = _data()
    ce = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), ce)
    assert focal_loss(logits, target, gamma=2.0) < ce
    all_ignored = torch.full_like(target, 255)
    assert float(focal_loss(logits, all_ignored)) == 0.0
    with pytest.raises(ValueError, match="target ids"):
        focal_loss(logits, torch.full_like(target, 7))


def test_lovasz_on_hard_predictions_is_one_minus_iou() -> None:
    _, target = _data(seed=1)
    g = torch.Generator().manual_seed(2)
    pred = torch.randint(0, 4, target.shape, generator=g)
    pred[target != 255] = torch.where(torch.rand(int((target != 255).sum()), generator=g) < 0.6,
                                      target[target != 255], pred[target != 255])
    logits = F.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 100.0  # softmax ~ one-hot
    valid = (target != 255).numpy()
    t, p = target.numpy()[valid], pred.numpy()[valid]
    ious = [np.sum((t == c) & (p == c)) / np.sum((t == c) | (p == c)) for c in range(4) if np.any(t == c)]
    expected = 1.0 - float(np.mean(ious))
    assert float(lovasz_softmax(logits, target)) == pytest.approx(expected, abs=1e-4)
    perfect = F.one_hot(target.clamp_max(3), 4).permute(0, 3, 1, 2).float() * 100.0
    assert float(lovasz_softmax(perfect, target)) == pytest.approx(0.0, abs=1e-5)


def test_lovasz_gradient_flows() -> None:
    logits, target = _data()
    logits.requires_grad_(True)
    lovasz_softmax(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_outlier_entropy() -> None:
    uniform = torch.zeros(3, 5, 2, 2)
    assert float(outlier_entropy_loss(uniform)) == pytest.approx(-1.0)
    confident = torch.zeros(3, 5, 2, 2)
    confident[:, 0] = 50.0
    assert float(outlier_entropy_loss(confident)) == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([[0.7, 0.2, 0.1]])
    ent = -(p * p.log()).sum() / math.log(3)
    torch.testing.assert_close(normalised_entropy(p.log()), ent.view(1))
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    mixed = confident.clone()
    mixed[0, :, 0, 0] = 0.0
    assert float(outlier_entropy_loss(mixed, mask)) == pytest.approx(-1.0)


def test_hellinger_and_a2d() -> None:
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.0, 0.0, 1.0])
    assert float(hellinger(p, q)) == pytest.approx(1.0, abs=1e-5)
    a, b = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.4, 0.4, 0.2])
    ref = math.sqrt(sum((math.sqrt(x) - math.sqrt(y)) ** 2 for x, y in zip(a.tolist(), b.tolist(), strict=True))) / math.sqrt(2)
    assert float(hellinger(a, b)) == pytest.approx(ref, rel=1e-5)
    lg = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(non_target_softmax(lg, torch.tensor([1])), F.softmax(torch.tensor([[1.0, 3.0]]), 1))
    logits, target = _data()
    assert float(a2d_loss(logits, logits, target)) == pytest.approx(0.0, abs=1e-5)
    # its own generator: the global RNG after another test's torch.manual_seed(0) would repeat _data()'s draw
    other = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    val = float(a2d_loss(logits, other, target))
    assert -1.0 <= val < -0.01
    # the target column does not matter: changing it leaves A2D unchanged
    bumped = logits.clone()
    tv = target.clone()
    tv[tv == 255] = 0
    bumped.scatter_add_(1, tv.unsqueeze(1), torch.full_like(tv.unsqueeze(1), 9.0, dtype=torch.float32))
    assert float(a2d_loss(bumped, other, target)) == pytest.approx(val, abs=1e-5)
    logits.requires_grad_(True)
    a2d_loss(logits, other, target).backward()
    assert torch.isfinite(logits.grad).all()
