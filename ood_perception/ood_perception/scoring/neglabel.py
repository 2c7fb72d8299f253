"""NegLabel: OOD score of a vision-language model from ID and negative text embeddings.

Jiang et al., "Negative Label Guided OOD Detection with Pretrained Vision-Language Models",
ICLR 2024. With image embedding ``v`` and text embeddings of the ID labels ``t_i`` and of the
negative labels ``n_j`` (all L2-normalised), the paper's ID score is

    S(v) = sum_i exp(cos(v, t_i) / tau) / (sum_i exp(cos(v, t_i) / tau) + sum_j exp(cos(v, n_j) / tau))

and this scorer returns ``1 - S(v)`` (the softmax mass on the negative labels), so higher = more
anomalous. Default ``temperature=0.01`` (the paper's tau, CLIP's logit scale 100; taken from the
paper, not verified against the authors' code, which could not be read here). The paper's
optional grouping strategy (averaging S over random groups of negatives) is not implemented;
choosing the negative labels (NegMining over a corpus) is the caller's job (the CMA trainer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ood_perception.scoring.base import Scorer, _as_tensor, flatten_channels, register


@register
class NegLabel(Scorer):
    """NegLabel score on image embeddings (``features``); see the module docstring.

    Text embeddings come either as constructor arguments (``id_text_embeddings``,
    ``neg_text_embeddings``) or through :meth:`fit` (``classifier_weight`` = ID text embeddings,
    the zero-shot classifier of a CLIP model, plus ``neg_text_embeddings=``).
    """

    name = "neglabel"
    paper = (
        "Jiang et al., Negative Label Guided OOD Detection with Pretrained Vision-Language Models, ICLR 2024"
    )
    requires_fit = True
    needs_logits = False
    needs_features = True
    needs_classifier = True
    fit_buffers = ("id_text", "neg_text")
    feature_dim_buffer = "id_text"

    def __init__(
        self,
        temperature: float = 0.01,
        id_text_embeddings: Any = None,
        neg_text_embeddings: Any = None,
    ) -> None:
        if float(temperature) <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(temperature=float(temperature))
        self.temperature = float(temperature)
        if id_text_embeddings is not None or neg_text_embeddings is not None:
            self.fit(classifier_weight=id_text_embeddings, neg_text_embeddings=neg_text_embeddings)

    @staticmethod
    def _normalise(x: Tensor) -> Tensor:
        return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-12)

    @torch.no_grad()
    def fit(
        self,
        logits: Any = None,
        features: Any = None,
        labels: Any = None,
        classifier_weight: Any = None,
        classifier_bias: Any = None,
        neg_text_embeddings: Any = None,
        **extra: Any,
    ) -> NegLabel:
        """Store L2-normalised ID (``classifier_weight`` ``[C, D]``) and negative (``[M, D]``) text
        embeddings."""
        super().fit(**extra)
        id_text = _as_tensor(classifier_weight, "ID text embeddings (classifier_weight)")
        neg_text = _as_tensor(neg_text_embeddings, "neg_text_embeddings")
        if id_text.dim() != 2 or neg_text.dim() != 2 or id_text.shape[1] != neg_text.shape[1]:
            raise ValueError(
                f"text embeddings must be [C, D] and [M, D] with one D, got {tuple(id_text.shape)} "
                f"and {tuple(neg_text.shape)}"
            )
        if features is not None:
            d = flatten_channels(_as_tensor(features, "features"), "features").shape[1]
            if d != id_text.shape[1]:
                raise ValueError(f"image embeddings have {d} dims, text embeddings {id_text.shape[1]}")
        self._set("id_text", self._normalise(id_text))
        self._set("neg_text", self._normalise(neg_text))
        return self

    def score_flat(self, logits: Tensor | None, features: Tensor | None) -> Tensor:
        assert features is not None
        v = self._normalise(features)
        sims = torch.cat([v @ self.id_text.t(), v @ self.neg_text.t()], dim=-1) / self.temperature
        p = torch.softmax(sims, dim=-1)
        return p[:, self.id_text.shape[0] :].sum(dim=-1)
