"""DKD losses and the multimodal teacher (issue 8 acceptance: Eq. 6, teacher weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax

from ood_perception.distill import dkd_loss, full_kl, nckd, tckd, teacher_probs, teacher_weights


def _np_kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tckd_plus_weighted_nckd_equals_full_kl(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 64, 9
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    p = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * 2, 1)
    t = torch.randint(0, k, (n,), generator=g)
    tc = tckd(z, p, t, reduction="none")
    nc = nckd(z, p, t, reduction="none")
    pt = p[torch.arange(n), t]
    kl = full_kl(z, p, t, reduction="none")
    torch.testing.assert_close(tc + (1 - pt) * nc, kl, rtol=1e-6, atol=1e-8)
    # independent numpy computation of the full KL and of both parts
    pn, qn, tn = p.numpy(), softmax(z.numpy(), axis=1), t.numpy()
    np.testing.assert_allclose(kl.numpy(), _np_kl(pn, qn), rtol=1e-6)
    rows = np.arange(n)
    b_t = np.stack([pn[rows, tn], 1 - pn[rows, tn]], 1)
    b_s = np.stack([qn[rows, tn], 1 - qn[rows, tn]], 1)
    np.testing.assert_allclose(tc.numpy(), _np_kl(b_t, b_s), rtol=1e-6)
    mask = np.ones_like(pn, bool)
    mask[rows, tn] = False
    ph = pn[mask].reshape(n, k - 1)
    qh = qn[mask].reshape(n, k - 1)
    np.testing.assert_allclose(nc.numpy(), _np_kl(ph / ph.sum(1, keepdims=True), qh / qh.sum(1, keepdims=True)), rtol=1e-6)


def test_kd_terms_vanish_when_student_matches_teacher():
    z = torch.randn(16, 5)
    t = torch.randint(0, 5, (16,))
    p = torch.softmax(z, 1)
    assert float(tckd(z, p, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(nckd(z, p, t)) == pytest.approx(0.0, abs=1e-6)


def test_dkd_loss_per_pixel_ignores_255():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 3, 5, generator=g)
    p = torch.softmax(torch.randn(2, 4, 3, 5, generator=g), 1)
    t = torch.randint(0, 4, (2, 3, 5), generator=g)
    t[0, :, :2] = 255
    out = dkd_loss(z, p, t, alpha=0.3, beta=0.7)
    keep = (t != 255).reshape(-1)
    zf = z.movedim(1, -1).reshape(-1, 4)[keep]
    pf = p.movedim(1, -1).reshape(-1, 4)[keep]
    tf = t.reshape(-1)[keep]
    torch.testing.assert_close(out["ce"], F.cross_entropy(zf, tf))
    torch.testing.assert_close(out["tckd"], tckd(zf, pf, tf))
    torch.testing.assert_close(out["nckd"], nckd(zf, pf, tf))
    torch.testing.assert_close(out["loss"], out["ce"] + 0.3 * out["tckd"] + 0.7 * out["nckd"])
    # changing logits at ignored pixels changes nothing
    z2 = z.clone()
    z2[0, :, :, :2] += 100.0
    torch.testing.assert_close(dkd_loss(z2, p, t)["loss"], dkd_loss(z, p, t)["loss"])


def test_teacher_weights_sum_to_one_and_rank_lower_ce_higher():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 6, (40,), generator=g)
    good = F.one_hot(t, 6).float() * 4 + torch.randn(40, 6, generator=g) * 0.5  # low CE expert
    bad = torch.randn(40, 6, generator=g)  # uninformative expert
    w = teacher_weights([bad, good], t)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert w[1] > w[0]
    ce = torch.stack([F.cross_entropy(bad, t), F.cross_entropy(good, t)])
    torch.testing.assert_close(w, torch.softmax(-ce, 0))
    p, w2 = teacher_probs([bad, good], t)
    torch.testing.assert_close(p, w[0] * torch.softmax(bad, 1) + w[1] * torch.softmax(good, 1))
    torch.testing.assert_close(p.sum(1), torch.ones(40))
    assert torch.equal(teacher_weights([bad, good], t, "best"), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(teacher_weights([bad, good], t, "uniform"), torch.tensor([0.5, 0.5]))


def test_teacher_rejects_bad_input():
    z = torch.randn(4, 3)
    t = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="teacher mode"):
        teacher_weights([z, z], t, "median")
    with pytest.raises(ValueError, match="differ in shape"):
        teacher_probs([z, torch.randn(4, 5)], t)
    with pytest.raises(ValueError, match="targets must be"):
        tckd(z, torch.softmax(z, 1), torch.full((4,), 7), ignore_index=None)
