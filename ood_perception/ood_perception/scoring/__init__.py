"""Scoring room: post-hoc OOD scores as ``torch.nn.Module``s behind one registry.

``get_scorer(name, **params)`` builds a scorer; ``available_scorers()`` lists the names:
msp, maxlogit, energy, entropy, gen (logits only) and react, ash, vim, knn, mahalanobis,
himplos, neglabel (features, most also the classifier), maxlogit_knn (logits and the
model's frozen-encoder ``embedding``). Every scorer returns
**higher = more anomalous**, works per sample (``[N, C]`` -> ``[N]``) and per pixel
(``[B, C, H, W]`` -> ``[B, H, W]``), keeps fitted statistics in buffers and exports to ONNX, so
training, evaluation and the deployed graph share one scoring code path.

Typical use::

    scorer = get_scorer("react", percentile=90)
    if scorer.requires_fit:
        scorer.fit(features=id_feats, labels=id_labels,
                   classifier_weight=head.weight, classifier_bias=head.bias)
    score_map = scorer(logits, features)          # [B, H, W]

torch only (no numpy/sklearn), so the scorers run on CPU and CUDA alike.
"""

from ood_perception.scoring.base import (
    Scorer,
    available_scorers,
    flatten_channels,
    get_scorer,
    percentile,
    register,
)
from ood_perception.scoring.feature_based import ASH, KNN, HIMPLoS, Mahalanobis, ReAct, ViM
from ood_perception.scoring.logit_based import GEN, MSP, Energy, Entropy, MaxLogit
from ood_perception.scoring.neglabel import NegLabel
from ood_perception.scoring.patch_knn import MaxLogitPatchKNN

__all__ = [
    "ASH",
    "GEN",
    "HIMPLoS",
    "KNN",
    "MSP",
    "MaxLogitPatchKNN",
    "Energy",
    "Entropy",
    "Mahalanobis",
    "MaxLogit",
    "NegLabel",
    "ReAct",
    "Scorer",
    "ViM",
    "available_scorers",
    "flatten_channels",
    "get_scorer",
    "percentile",
    "register",
]
