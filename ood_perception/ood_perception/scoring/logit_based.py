"""Scorers computed from logits alone: MSP, MaxLogit, Energy, Entropy, GEN.

None needs fitting. All return higher = more anomalous. Scores computed on ``[N, C]`` logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ood_perception.scoring.base import Scorer, register


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


@register
class MSP(Scorer):
    """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

    ``score = 1 - max_c softmax(logits)_c`` (in ``[0, 1 - 1/C]``); the paper thresholds the MSP
    itself, this is its anomaly-oriented form (same ranking). No parameters.
    """

    name = "msp"
    paper = "Hendrycks & Gimpel, A Baseline for Detecting Misclassified and OOD Examples, ICLR 2017"

    def score_flat(self, logits: Tensor | None, features: Tensor | None) -> Tensor:
        assert logits is not None
        return 1.0 - torch.softmax(logits, dim=-1).amax(dim=-1)


@register
class MaxLogit(Scorer):
    """Maximum logit (Hendrycks et al., "Scaling OOD detection to real-world settings", ICML 2022).

    ``score = -max_c logits_c``. The Feature Mixing paper's default segmentation score.
    """

    name = "maxlogit"
    paper = "Hendrycks et al., Scaling Out-of-Distribution Detection for Real-World Settings, ICML 2022"

    def score_flat(self, logits: Tensor | None, features: Tensor | None) -> Tensor:
        assert logits is not None
        return -logits.amax(dim=-1)


@register
class Energy(Scorer):
    """Free energy (Liu et al., "Energy-based OOD detection", NeurIPS 2020).

    ``score = E(x) = -T * logsumexp(logits / T)``. Default ``temperature=1`` (the paper's choice);
    the formula matches public implementations read here (``T * logsumexp(logits / T)`` as the
    confidence, e.g. the HIMPLoS authors' ``iterate_data_energy``).
    """

    name = "energy"
    paper = "Liu et al., Energy-based Out-of-distribution Detection, NeurIPS 2020"

    def __init__(self, temperature: float = 1.0) -> None:
        temperature = _positive(temperature, "temperature")
        super().__init__(temperature=temperature)
        self.temperature = temperature

    def score_flat(self, logits: Tensor | None, features: Tensor | None) -> Tensor:
        assert logits is not None
        t = self.temperature
        return -t * torch.logsumexp(logits / t, dim=-1)


@register
class Entropy(Scorer):
    """Shannon entropy of the softmax, ``-sum_c p_c log p_c`` (nats). No parameters."""

    name = "entropy"
    paper = (
        "predictive entropy of the softmax (classic baseline, e.g. Hendrycks et al. 2019 outlier exposure)"
    )

    def score_flat(self, logits: Tensor | None, features: Tensor | None) -> Tensor:
        assert logits is not None
        logp = torch.log_softmax(logits, dim=-1)
        return -(logp.exp() * logp).sum(dim=-1)


@register
class GEN(Scorer):
    """Generalized entropy (Liu, Lochman & Zach, "GEN: Pushing the limits of softmax-based OOD
    detection", CVPR 2023).

    ``score = sum over the M largest probabilities of p^gamma * (1 - p)^gamma`` (the paper's
    confidence is its negative). Defaults ``gamma=0.1``, ``m=100`` (clipped to the number of
    classes) are the paper's; formula and defaults checked against a public
    ``generalized_entropy`` implementation read here (same defaults), not copied.
    """

    name = "gen"
    paper = "Liu, Lochman & Zach, GEN: Pushing the Limits of Softmax-Based OOD Detection, CVPR 2023"

    def __init__(self, gamma: float = 0.1, m: int = 100) -> None:
        gamma = _positive(gamma, "gamma")
        if int(m) < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        super().__init__(gamma=gamma, m=int(m))
        self.gamma = gamma
        self.m = int(m)

    def score_flat(self, logits: Tensor | None, features: Tensor | None) -> Tensor:
        assert logits is not None
        p = torch.softmax(logits, dim=-1)
        if self.m < p.shape[-1]:  # static size, not a tensor value
            p = torch.topk(p, self.m, dim=-1).values
        return (p.pow(self.gamma) * (1.0 - p).pow(self.gamma)).sum(dim=-1)
