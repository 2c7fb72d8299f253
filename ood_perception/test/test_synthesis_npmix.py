"""NP-Mix baseline: FIFO queues, nearest-prototype partner of another class, Beta(10,10) mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ood_perception.synthesis import NPMix, npmix_faithful_outliers, npmix_outlier_map


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


# ------------------------------------------------------------------------------------------
# faithful mode (MultiOOD's algorithm: fill-then-FIFO queues, per-class prototype search)
# ------------------------------------------------------------------------------------------


def _faithful_full(centres: np.ndarray, queue_size: int = 4, k: int = 2, seed: int = 0) -> NPMix:
    """Faithful NP-Mix whose every queue holds copies of its class centre (prototype = centre)."""
    kk, d = centres.shape
    q = NPMix(num_classes=kk, dim=d, queue_size=queue_size, k=k, seed=seed, mode="faithful")
    q.update(torch.from_numpy(np.repeat(centres, queue_size, axis=0)), torch.arange(kk).repeat_interleave(queue_size))
    assert q.all_full()
    return q


def test_faithful_fills_first_then_fifo() -> None:
    q = NPMix(num_classes=2, dim=1, queue_size=3, k=2, mode="faithful")
    q.update(torch.arange(5.0).view(5, 1), torch.zeros(5, dtype=torch.long))
    # class 1 is still empty: class 0 keeps its first 3 rows and drops the rest (no FIFO yet)
    assert sorted(q.queue[0, :, 0].tolist()) == [0.0, 1.0, 2.0] and q.filled(0) == 3 and q.filled(1) == 0
    q.update(torch.tensor([[10.0], [11.0], [12.0], [13.0]]), torch.ones(4, dtype=torch.long))
    assert sorted(q.queue[1, :, 0].tolist()) == [10.0, 11.0, 12.0] and q.all_full()
    q.update(torch.tensor([[5.0], [6.0]]), torch.zeros(2, dtype=torch.long))  # now FIFO: 0 and 1 leave
    assert sorted(q.queue[0, :, 0].tolist()) == [2.0, 5.0, 6.0]
    # the default (anchors) mode is FIFO from the start: the newest 3 of class 0
    a = NPMix(num_classes=2, dim=1, queue_size=3, k=2)
    a.update(torch.arange(5.0).view(5, 1), torch.zeros(5, dtype=torch.long))
    assert sorted(a.queue[0, :, 0].tolist()) == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError):
        NPMix(num_classes=2, dim=1, mode="per-pixel")


def test_faithful_fifo_matches_the_original_per_sample_loop() -> None:
    """Vectorised push == the original's per-sample ``q = cat(q[1:], x)`` loop (queues full)."""
    g = torch.Generator().manual_seed(3)
    kk, s, d = 3, 5, 4
    q = NPMix(num_classes=kk, dim=d, queue_size=s, k=2, mode="faithful")
    q.update(torch.randn(kk * s, d, generator=g), torch.arange(kk).repeat_interleave(s))
    ref = torch.from_numpy(q.queue.copy())  # ring order == age order right after the fill
    x, y = torch.randn(23, d, generator=g), torch.randint(0, kk, (23,), generator=g)
    q.update(x, y)
    for i in range(len(y)):
        c = int(y[i])
        ref[c] = torch.cat((ref[c][1:], x[i].view(1, -1)), 0)
    for c in range(kk):
        start = int(q.count[c]) % s  # oldest slot of the ring buffer
        np.testing.assert_array_equal(np.roll(q.queue[c], -start, axis=0), ref[c].numpy())


def test_faithful_neighbour_is_the_nearest_other_prototype() -> None:
    # prototypes on a line: 0 at 0, 1 at 1, 2 at 3, 3 at 10 -> nearest other class: 0->1, 1->0, 2->1, 3->2
    centres = np.array([[0, 0], [1, 0], [3, 0], [10, 0]], dtype=np.float32)
    q = _faithful_full(centres, k=2)
    out, pairs, lam = q.synthesize_per_class()
    assert out.shape == (4, 2) and pairs.tolist() == [[0, 1], [1, 0], [2, 1], [3, 2]]
    expected = lam[:, None] * centres[pairs[:, 0]] + (1 - lam[:, None]) * centres[pairs[:, 1]]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    # k=3: the two nearest other classes are the candidates, each drawn, never the farthest one
    q3 = _faithful_full(centres, k=3, seed=7)
    seen: dict[int, set[int]] = {c: set() for c in range(4)}
    for _ in range(50):
        _, pairs, _ = q3.synthesize_per_class()
        for i, j in pairs:
            seen[int(i)].add(int(j))
    assert seen == {0: {1, 2}, 1: {0, 2}, 2: {1, 0}, 3: {2, 1}}


def test_faithful_lambda_is_beta_10_10() -> None:
    centres = np.array([[0.0], [1.0], [5.0]], dtype=np.float32)
    q = _faithful_full(centres, k=2, seed=11)
    lams = np.concatenate([q.synthesize_per_class()[2] for _ in range(400)])
    # Beta(10, 10): mean 0.5, sd sqrt(1 / (4 * 21)) = 0.109
    assert lams.size == 1200 and 0.1 < lams.min() and lams.max() < 0.9
    assert abs(lams.mean() - 0.5) < 0.01 and abs(lams.std() - 0.109) < 0.01


def test_faithful_outliers_shapes_and_warm_up() -> None:
    g = torch.Generator().manual_seed(0)
    fused = torch.randn(2, 6, 4, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[:, 0] = 255
    q = NPMix(num_classes=3, dim=6, queue_size=100, k=3, mode="faithful")
    out = npmix_faithful_outliers(fused, labels, q)
    assert out.shape == (0, 6)  # queues were empty at the start: fill only
    assert int(q.count.sum()) == int((labels != 255).sum())  # every labelled pixel entered, no ignore pixel
    small = NPMix(num_classes=3, dim=6, queue_size=2, k=3, mode="faithful")
    assert npmix_faithful_outliers(fused, labels, small).shape == (0, 6) and small.all_full()
    out = npmix_faithful_outliers(fused, labels, small)
    assert out.shape == (3, 6) and out.dtype == fused.dtype and not out.requires_grad
    with pytest.raises(ValueError):
        npmix_faithful_outliers(fused, labels, NPMix(num_classes=3, dim=6))
    with pytest.raises(ValueError):
        npmix_faithful_outliers(fused, labels[:, :2], small)
