"""NP-Mix baseline: FIFO queues, nearest-prototype partner of another class, Beta(10,10) mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_perception.synthesis import NPMix, npmix_outlier_map


def test_queue_is_fifo_per_class() -> None:
    q = NPMix(num_classes=3, dim=2, queue_size=4, k=2)
    q.update(torch.arange(12, dtype=torch.float32).view(6, 2), torch.tensor([0, 0, 1, 0, 0, 0]))
    assert q.filled(0) == 4 and q.filled(1) == 1 and q.filled(2) == 0
    # class 0 got 5 rows; only the newest 4 are kept
    assert {tuple(r) for r in q.queue[0].tolist()} == {(2.0, 3.0), (6.0, 7.0), (8.0, 9.0), (10.0, 11.0)}
    q.update(torch.tensor([[100.0, 100.0]]), torch.tensor([0]))  # overwrites the oldest, (2, 3)
    assert {tuple(r) for r in q.queue[0].tolist()} == {(100.0, 100.0), (6.0, 7.0), (8.0, 9.0), (10.0, 11.0)}
    with pytest.raises(ValueError):
        q.update(torch.zeros(2, 3), torch.zeros(2))


def test_mix_partner_is_a_nearest_other_class_sample() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [100, 100]], dtype=np.float32)
    q = NPMix(num_classes=4, dim=2, queue_size=50, k=2, seed=1)
    for c in range(4):
        q.update(torch.from_numpy(centres[c] + rng.normal(0, 0.5, (50, 2)).astype(np.float32)), torch.full((50,), c))
    anchors = torch.from_numpy(centres[[0] * 200] + rng.normal(0, 0.1, (200, 2)).astype(np.float32))
    labels = torch.zeros(200, dtype=torch.long)
    mixed, used = q.synthesize(anchors, labels)
    assert bool(used.all()) and mixed.shape == (200, 2)
    # k=2: the nearest prototypes of a class-0 anchor are class 0 and one of classes 1/2, never 3
    partner_region = (mixed - 0.5 * anchors) / 0.5  # rough partner position for lambda ~ 0.5
    assert bool((partner_region.norm(dim=1) < 30).all())
    # each outlier lies on the segment anchor -> some queued sample of class 1 or 2
    queued = np.concatenate([q.queue[1], q.queue[2]])
    a, m = anchors.numpy(), mixed.numpy()
    lams = []
    for i in range(200):
        d = queued - a[i]
        t = ((m[i] - a[i]) @ d.T) / (d * d).sum(1)
        resid = np.linalg.norm(a[i] + t[:, None] * d - m[i], axis=1)
        j = int(np.argmin(resid))
        assert resid[j] < 1e-3
        lams.append(1 - t[j])
    lams = np.array(lams)
    assert 0.2 < lams.min() and lams.max() < 0.8  # Beta(10, 10) mass
    assert abs(lams.mean() - 0.5) < 0.03


def test_state_roundtrip_reproduces_draws() -> None:
    q = NPMix(num_classes=3, dim=4, queue_size=8, k=3, seed=5)
    g = torch.Generator().manual_seed(0)
    q.update(torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g))
    state = q.state_dict()
    x, y = torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    a, _ = q.synthesize(x, y)
    q2 = NPMix(num_classes=3, dim=4, queue_size=8, k=3, seed=99)
    q2.load_state_dict(state)
    b, _ = q2.synthesize(x, y)
    torch.testing.assert_close(a, b)


def test_outlier_map_replaces_only_sampled_labelled_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    fused = torch.randn(2, 6, 4, 5, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[0, 0] = 255
    q = NPMix(num_classes=3, dim=6, queue_size=16, k=3)
    q.update(torch.randn(60, 6, generator=g), torch.arange(60) % 3)
    out, mask = npmix_outlier_map(fused, labels, q, num_anchors=10, generator=g)
    assert 0 < int(mask.sum()) <= 10
    assert not bool(mask[0, 0].any())  # ignore pixels are never anchors
    same = (out == fused).all(dim=1)
    assert bool((same | mask).all()) and not bool(same[mask].any())
