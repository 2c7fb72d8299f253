"""Tests of ood_perception.scoring: known answers, numpy re-implementations, per-pixel == per-sample,
fit/state_dict behaviour and errors. ONNX parity lives in test_scoring_onnx.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_perception.scoring import available_scorers, get_scorer

torch.set_num_threads(1)

ALL = [
    "ash",
    "energy",
    "entropy",
    "gen",
    "himplos",
    "knn",
    "mahalanobis",
    "maxlogit",
    "maxlogit_knn",
    "msp",
    "neglabel",
    "react",
    "vim",
]


def t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


class Problem:
    """A small ID problem: C classes, D-dim non-negative features clustered by class, a linear head."""

    def __init__(self, seed: int = 0, c: int = 5, d: int = 12, n: int = 400) -> None:
        rng = np.random.default_rng(seed)
        self.c, self.d = c, d
        centres = rng.uniform(0, 2, size=(c, d))
        self.labels = rng.integers(0, c, size=n)
        self.features = np.maximum(centres[self.labels] + 0.3 * rng.normal(size=(n, d)), 0).astype(np.float32)
        self.weight = rng.normal(size=(c, d)).astype(np.float32)
        self.bias = rng.normal(size=c).astype(np.float32)
        self.logits = self.features @ self.weight.T + self.bias
        self.neg_text = rng.normal(size=(9, d)).astype(np.float32)

    def fit(self, scorer):
        extra = {"neg_text_embeddings": self.neg_text} if scorer.name == "neglabel" else {}
        return scorer.fit(
            logits=self.logits,
            features=self.features,
            labels=self.labels,
            classifier_weight=self.weight,
            classifier_bias=self.bias,
            **extra,
        )

    def maps(self, seed: int = 1, b: int = 2, h: int = 3, w: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        f = np.maximum(rng.uniform(-0.5, 2.5, size=(b, self.d, h, w)), 0).astype(np.float32)
        lg = np.einsum("bdhw,cd->bchw", f, self.weight) + self.bias[None, :, None, None]
        return t(lg), t(f)


def np_logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


# ------------------------------------------------------------------ registry


def test_registry_lists_all_scorers() -> None:
    assert available_scorers() == sorted(ALL)
    assert get_scorer("  Energy ").name == "energy"
    with pytest.raises(ValueError, match="unknown scorer 'nope'.*available: ash"):
        get_scorer("nope")
    with pytest.raises(ValueError, match="energy.*bogus"):
        get_scorer("energy", bogus=1)
    for bad in (
        dict(name="energy", temperature=0),
        dict(name="gen", m=0),
        dict(name="react", percentile=120),
    ):
        name = bad.pop("name")
        with pytest.raises(ValueError):
            get_scorer(name, **bad)


@pytest.mark.parametrize("name", ALL)
def test_attributes_and_fit_requirement(name: str) -> None:
    s = get_scorer(name)
    assert isinstance(s, torch.nn.Module) and s.paper
    assert s.needs_logits or s.needs_features
    p = Problem()
    lg, f = t(p.logits[:4]), t(p.features[:4])
    if s.requires_fit:
        assert not s.fitted
        with pytest.raises(RuntimeError, match="fit"):
            s(lg, f)
    p.fit(s)
    assert s.fitted
    out = s(lg, f)
    assert out.shape == (4,) and torch.isfinite(out).all()


# ------------------------------------------------------------------ known answers, logit scorers


def test_msp_known_answer() -> None:
    out = get_scorer("msp")(t([[0.0, 0.0], [math.log(3.0), 0.0]]))
    np.testing.assert_allclose(out.numpy(), [0.5, 0.25], atol=1e-7)


def test_maxlogit_known_answer() -> None:
    np.testing.assert_allclose(
        get_scorer("maxlogit")(t([[1.0, 3.0, 2.0], [-1, -2, -5]])).numpy(), [-3.0, 1.0]
    )


def test_energy_known_answer() -> None:
    out = get_scorer("energy")(t([[0.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(out.numpy(), [-math.log(2), -(1 + math.log(2))], atol=1e-6)
    out_t2 = get_scorer("energy", temperature=2.0)(t([[2.0, 2.0]]))
    np.testing.assert_allclose(out_t2.numpy(), [-2.0 * (1 + math.log(2))], atol=1e-6)


def test_entropy_known_answer() -> None:
    out = get_scorer("entropy")(
        t([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e4, -1e4]])
    )
    h3 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(out.numpy(), [math.log(4), 0.0, h3], atol=1e-5)


def test_gen_known_answer() -> None:
    # p = (0.5, 0.5): gamma 0.5 -> each term sqrt(0.25) = 0.5
    np.testing.assert_allclose(get_scorer("gen", gamma=0.5, m=2)(t([[0.0, 0.0]])).numpy(), [1.0], atol=1e-6)
    np.testing.assert_allclose(get_scorer("gen", gamma=0.5, m=1)(t([[0.0, 0.0]])).numpy(), [0.5], atol=1e-6)
    # p = (0.75, 0.25, ~0): top-2 with gamma 1 -> 0.75*0.25 * 2
    out = get_scorer("gen", gamma=1.0, m=2)(t([[math.log(3.0), 0.0, -1e4]]))
    np.testing.assert_allclose(out.numpy(), [2 * 0.75 * 0.25], atol=1e-6)
    # against numpy on random logits with defaults (m clipped to C)
    rng = np.random.default_rng(0)
    lg = rng.normal(size=(6, 7)) * 3
    p = np.exp(lg - np_logsumexp(lg)[:, None])
    ref = (p**0.1 * (1 - p) ** 0.1).sum(-1)
    np.testing.assert_allclose(get_scorer("gen")(t(lg)).numpy(), ref, rtol=1e-5)
    top3 = np.sort(p, axis=1)[:, -3:]
    np.testing.assert_allclose(
        get_scorer("gen", m=3)(t(lg)).numpy(), (top3**0.1 * (1 - top3) ** 0.1).sum(-1), rtol=1e-5
    )


# ------------------------------------------------------------------ known answers, feature scorers


def test_react_known_answer_and_percentile() -> None:
    s = get_scorer("react", threshold=1.0).fit(classifier_weight=np.eye(2), classifier_bias=[0.0, 0.0])
    expected = -math.log(math.exp(1.0) + math.exp(0.5))  # [3, 0.5] clipped to [1, 0.5]
    np.testing.assert_allclose(s(None, t([[3.0, 0.5]])).numpy(), [expected], atol=1e-6)
    f = np.arange(100, dtype=np.float32).reshape(50, 2)
    s2 = get_scorer("react").fit(features=f, classifier_weight=np.eye(2))
    assert float(s2.threshold) == pytest.approx(np.percentile(f, 90))
    p = Problem()
    s3 = p.fit(get_scorer("react", percentile=80))
    c = np.percentile(p.features, 80)
    z = np.minimum(p.features[:10], c) @ p.weight.T + p.bias
    np.testing.assert_allclose(s3(None, t(p.features[:10])).numpy(), -np_logsumexp(z), rtol=1e-5)


def test_ash_known_answer() -> None:
    s = get_scorer("ash", percentile=50).fit(classifier_weight=np.eye(4), classifier_bias=np.zeros(4))
    # k = 4 - 2 = 2 largest (4, 3) kept, set to sum / k = 10 / 2 = 5
    np.testing.assert_allclose(s.shape(t([[1.0, 4.0, 2.0, 3.0]])).numpy(), [[0, 5, 0, 5]])
    expected = -math.log(2 * math.exp(5.0) + 2.0)
    np.testing.assert_allclose(s(None, t([[1.0, 4.0, 2.0, 3.0]])).numpy(), [expected], atol=1e-5)


def test_vim_matches_numpy() -> None:
    p = Problem(seed=3, d=16)
    s = p.fit(get_scorer("vim", dim=6))
    f, w, b = p.features.astype(np.float64), p.weight.astype(np.float64), p.bias.astype(np.float64)
    u = -np.linalg.pinv(w) @ b
    cov = (f - u).T @ (f - u) / len(f)
    vals, vecs = np.linalg.eigh(cov)
    ns = vecs[:, np.argsort(-vals)[6:]]
    alpha = (f @ w.T + b).max(-1).mean() / np.linalg.norm((f - u) @ ns, axis=-1).mean()
    q = np.maximum(np.random.default_rng(9).normal(1, 1, size=(8, 16)), 0)
    ref = alpha * np.linalg.norm((q - u) @ ns, axis=-1) - np_logsumexp(q @ w.T + b)
    np.testing.assert_allclose(s(None, t(q)).numpy(), ref, rtol=1e-4, atol=1e-4)
    assert get_scorer("vim").fit(features=p.features, classifier_weight=p.weight).ns.shape == (16, 8)
    with pytest.raises(ValueError, match="dim"):
        get_scorer("vim", dim=16).fit(features=p.features, classifier_weight=p.weight)


def test_knn_known_answer_and_bruteforce() -> None:
    s = get_scorer("knn", k=2).fit(features=[[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])
    # query along +x: normalised distances^2 to bank = 0, 2, 4 -> 2nd nearest = 2
    np.testing.assert_allclose(s(None, t([[5.0, 0.0]])).numpy(), [2.0], atol=1e-6)
    rng = np.random.default_rng(4)
    bank, q = rng.normal(size=(50, 6)), rng.normal(size=(7, 6))
    nb = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    nq = q / np.linalg.norm(q, axis=1, keepdims=True)
    d2 = ((nq[:, None, :] - nb[None]) ** 2).sum(-1)
    ref = np.sort(d2, axis=1)[:, 4]
    np.testing.assert_allclose(get_scorer("knn", k=5).fit(features=bank)(None, t(q)).numpy(), ref, atol=1e-5)
    sub = get_scorer("knn", k=3, bank_size=20, seed=1).fit(features=bank)
    assert sub.bank.shape == (20, 6)
    with pytest.raises(ValueError, match="at least k"):
        get_scorer("knn", k=10).fit(features=bank[:5])


def test_mahalanobis_known_answer_and_numpy() -> None:
    # two classes at (0,0) and (4,0), within-class spread +-1 along x and y -> cov = I / 2 ... computed:
    f = np.array([[-1, 0], [1, 0], [0, -1], [0, 1], [3, 0], [5, 0], [4, -1], [4, 1]], dtype=np.float32)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = get_scorer("mahalanobis").fit(features=f, labels=y)
    # cov = diag(0.5, 0.5) -> precision 2 I; query (1, 1): to class 0: 2*(1+1) = 4; class 1: 2*(9+1) = 20
    np.testing.assert_allclose(s(None, t([[1.0, 1.0]])).numpy(), [4.0], atol=1e-5)
    p = Problem(seed=5)
    labels = p.labels.copy()
    labels[:20] = 255  # ignored
    s2 = get_scorer("mahalanobis").fit(features=p.features, labels=labels, classifier_weight=p.weight)
    keep = labels != 255
    fk, yk = p.features[keep].astype(np.float64), labels[keep]
    means = np.stack([fk[yk == c].mean(0) for c in range(p.c)])
    centred = fk - means[yk]
    prec = np.linalg.pinv(centred.T @ centred / len(fk))
    q = p.features[:6].astype(np.float64) + 0.5
    ref = np.min([np.einsum("nd,de,ne->n", q - m, prec, q - m) for m in means], axis=0)
    np.testing.assert_allclose(s2(None, t(q)).numpy(), ref, rtol=1e-4)


def test_neglabel_known_answer() -> None:
    s = get_scorer(
        "neglabel",
        temperature=1.0,
        id_text_embeddings=[[2.0, 0.0]],
        neg_text_embeddings=[[0.0, 1.0], [0.0, -1.0]],
    )
    # query along +x: cos = 1 to ID, 0 to both negatives -> neg mass = 2 / (e + 2)
    np.testing.assert_allclose(s(None, t([[3.0, 0.0]])).numpy(), [2 / (math.e + 2)], atol=1e-6)
    with pytest.raises(ValueError, match="text embeddings"):
        get_scorer("neglabel").fit(classifier_weight=np.ones((3, 4)), neg_text_embeddings=np.ones((2, 5)))


def test_himplos_step_by_step_numpy() -> None:
    """HIMPLoS by hand: mask from W's top entries, ReAct clip, prototype cosine, energy."""
    p = Problem(seed=7, c=4, d=10)
    s = p.fit(get_scorer("himplos", mask_percentile=60, react_percentile=85))
    w, b = p.weight.astype(np.float64), p.bias.astype(np.float64)
    f_id = p.features.astype(np.float64)
    # 1. per-class mask: entries of W[c] at or above its 60th percentile (4 of 10 kept)
    masks = np.zeros_like(w)
    for c in range(4):
        masks[c] = w[c] >= np.percentile(w[c], 60)
    assert (masks.sum(1) == 4).all()
    np.testing.assert_array_equal(s.masks.numpy(), masks)
    # 2. ReAct threshold: 85th percentile of all ID activations
    lam = np.percentile(f_id, 85)
    assert float(s.threshold) == pytest.approx(lam, rel=1e-6)
    # 3. prototypes: class means
    protos = np.stack([f_id[p.labels == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(s.prototypes.numpy(), protos, rtol=1e-5)
    # 4. score queries one by one
    q = np.maximum(np.random.default_rng(1).normal(1, 1.2, size=(6, 10)), 0)
    expected = []
    for x in q:
        pred = int(np.argmax(w @ x + b))
        g = np.minimum(x * masks[pred], lam)
        cos = x @ protos[pred] / (np.linalg.norm(x) * np.linalg.norm(protos[pred]))
        z = (w @ g + b) * cos
        expected.append(-np_logsumexp(z[None])[0])
    np.testing.assert_allclose(s(None, t(q)).numpy(), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ per-pixel, state_dict, errors


@pytest.mark.parametrize("name", ALL)
def test_per_pixel_equals_per_sample(name: str) -> None:
    p = Problem()
    s = p.fit(get_scorer(name))
    lg, f = p.maps()
    out = s(lg, f)
    assert out.shape == (2, 3, 5)
    flat = s(lg.movedim(1, -1).reshape(-1, p.c), f.movedim(1, -1).reshape(-1, p.d))
    torch.testing.assert_close(out.reshape(-1), flat, rtol=0, atol=0)
    # pixel (b=1, h=2, w=3) scored alone
    torch.testing.assert_close(s(lg[1:2, :, 2, 3], f[1:2, :, 2, 3]), out[1:2, 2, 3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in ALL if get_scorer(n).requires_fit])
def test_state_dict_round_trip(name: str) -> None:
    p = Problem()
    s = p.fit(get_scorer(name))
    cfg = s.config()
    fresh = get_scorer(cfg["name"], **cfg["params"])
    assert not fresh.fitted
    fresh.load_state_dict(s.state_dict())
    assert fresh.fitted
    lg, f = p.maps()
    torch.testing.assert_close(fresh(lg, f), s(lg, f))


def test_fit_on_per_pixel_maps_equals_flat() -> None:
    p = Problem()
    f = t(p.features[:300]).reshape(2, 10, 15, p.d).permute(0, 3, 1, 2)  # [2, D, 10, 15]
    y = torch.as_tensor(p.labels[:300]).reshape(2, 10, 15)
    a = get_scorer("himplos").fit(features=f, labels=y, classifier_weight=p.weight, classifier_bias=p.bias)
    b = get_scorer("himplos").fit(
        features=p.features[:300], labels=p.labels[:300], classifier_weight=p.weight, classifier_bias=p.bias
    )
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])


def test_forward_and_fit_errors() -> None:
    p = Problem()
    s = p.fit(get_scorer("react"))
    with pytest.raises(ValueError, match="needs features"):
        s(t(p.logits[:2]))
    with pytest.raises(ValueError, match="needs logits"):
        get_scorer("energy")(None)
    with pytest.raises(ValueError, match=r"\[N, C\] or \[B, C, H, W\]"):
        get_scorer("msp")(torch.zeros(2, 3, 4))
    s2 = p.fit(get_scorer("himplos"))
    s2.needs_logits = True  # no built-in scorer reads both inputs; exercise the shape check
    with pytest.raises(ValueError, match="share batch"):
        s2(torch.zeros(2, p.c, 3, 3), torch.zeros(2, p.d, 3, 4))
    with pytest.raises(ValueError, match="fitted on 12-dim features, got 5"):
        s(None, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="fitted on 12-dim features, got 7"):
        p.fit(get_scorer("knn"))(None, torch.zeros(1, 7, 2, 2))
    with pytest.raises(ValueError, match="input features"):
        get_scorer("react").fit(features=p.features, classifier_weight=np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        get_scorer("knn").fit(features=np.full((20, 3), np.nan))
    with pytest.raises(ValueError, match="labels"):
        get_scorer("mahalanobis").fit(features=p.features)
    with pytest.raises(ValueError, match="unexpected fit arguments"):
        get_scorer("energy").fit(bogus=1)
    with pytest.raises(ValueError, match="no labels in"):
        get_scorer("mahalanobis").fit(features=p.features, labels=np.full(len(p.features), 255))


@pytest.mark.parametrize("name", ["knn", "mahalanobis", "vim"])
def test_feature_space_scorers_separate_novel_clusters(name: str) -> None:
    """End to end with metrics: samples from unseen feature clusters score higher than ID samples."""
    from ood_perception.metrics import ood_metrics

    p = Problem(seed=0, n=2000)
    rng = np.random.default_rng(11)
    means = np.stack([p.features[p.labels == c].mean(0) for c in range(p.c)])
    f_id = np.maximum(means[rng.integers(0, p.c, 300)] + 0.3 * rng.normal(size=(300, p.d)), 0)
    novel = rng.uniform(0, 2, size=(3, p.d))
    f_ood = np.maximum(novel[rng.integers(0, 3, 300)] + 0.3 * rng.normal(size=(300, p.d)), 0)
    f = np.concatenate([f_id, f_ood]).astype(np.float32)
    score = p.fit(get_scorer(name))(t(f @ p.weight.T + p.bias), t(f)).numpy()
    m = ood_metrics(score, np.r_[np.zeros(300, bool), np.ones(300, bool)])
    assert m["auroc"] > 0.95 and m["fpr95"] < 0.2, m
