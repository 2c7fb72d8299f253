"""MaxLogit joined with a patch-level nearest-neighbour score on frozen encoder features.

The MaxLogit of a segmentation head says how sure the head is of *some* known class; it misses
anomalies the head confidently calls road or car and flags thin known classes the head is unsure
of. A frozen ImageNet encoder's features say something else: whether a patch *looks like* any patch
of the training frames. :class:`MaxLogitPatchKNN` scores each grid cell of the encoder's feature
map (the ``embedding`` of ``models.segmentation.TapFusionNet``: its MobileNetV2 taps at stride 8)
by the distance to its nearest training cell, as PatchCore does with a memory bank of patch
features (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022) and Deep
kNN with a bank of features (Sun et al., ICML 2022), upsamples it bilinearly to the logits'
resolution and takes, per pixel, the larger of the two scores after z-scoring each on the training
frames' in-distribution pixels. Choice and figures: docs/model.md ("Pixel score").

Cells are L2-normalised, centred and projected on the ``dim`` leading principal axes of the
training cells (the distances are then a ``[cells, bank]`` matrix product: 2048 x 2048 x 128 for a
256x512 frame), the bank is a seeded random subset of ``bank_size`` training cells; none of the
statistics sees an anomaly (cells on pixels labelled ignore, which includes the training world's
exposed anomalies, are left out). Everything is ``torch`` and exports to ONNX (MatMul, TopK, Resize).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ood_perception.scoring.base import Scorer, flat_fit_inputs, register


def _normalise(x: Tensor) -> Tensor:
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + 1e-6)


@register
class MaxLogitPatchKNN(Scorer):
    """``max(z(MaxLogit), z(kNN distance of the cell's frozen-encoder feature)))`` per pixel.

    ``forward(logits [B, K, H, W], features [B, C, h, w])`` -> ``[B, H, W]`` at the logits'
    resolution (``features`` is the model's ``embedding``, on a coarser grid); per-sample inputs
    ``[N, K]`` / ``[N, C]`` score row by row. Fit with ``logits`` of in-distribution pixels
    (``[N, K]``) and ``features`` of in-distribution cells (``[M, C]``).

    Args:
        dim: principal axes kept (default 128; 472 -> 128 kept the validation figures, docs/model.md).
        bank_size: training cells in the bank (default 2048; half the cells when fewer than twice
            that are given: the others set the score's spread).
        k: the k-th nearest bank cell gives the distance (default 1, PatchCore's).
        seed: seed of the subsets (bank, PCA sample, statistics sample).
    """

    name = "maxlogit_knn"
    paper = ("Hendrycks et al., ICML 2022 (MaxLogit) + Roth et al., CVPR 2022 (PatchCore memory bank) / "
             "Sun et al., ICML 2022 (Deep kNN)")
    requires_fit = True
    needs_logits = True
    needs_features = True
    #: the features are the model's ``embedding`` output (frozen encoder taps), not the head's ``features``
    feature_source: ClassVar[str] = "embedding"
    fit_buffers = ("centre", "components", "bank", "bank_sq", "stats")
    feature_dim_buffer = "centre"

    def __init__(self, dim: int = 128, bank_size: int = 2048, k: int = 1, seed: int = 0) -> None:
        if int(dim) < 1 or int(k) < 1 or int(bank_size) < int(k):
            raise ValueError(f"need dim >= 1, k >= 1 and bank_size >= k; got dim={dim}, k={k}, bank_size={bank_size}")
        super().__init__(dim=int(dim), bank_size=int(bank_size), k=int(k), seed=int(seed))
        self.dim, self.bank_size, self.k, self.seed = int(dim), int(bank_size), int(k), int(seed)

    # ------------------------------------------------------------------ fit

    @torch.no_grad()
    def fit(
        self,
        logits: Any = None,
        features: Any = None,
        labels: Any = None,
        classifier_weight: Any = None,
        classifier_bias: Any = None,
        **extra: Any,
    ) -> MaxLogitPatchKNN:
        """Principal axes, bank and the two scores' mean and spread, from in-distribution pixels
        (``logits``) and cells (``features``) of training frames."""
        super().fit(**extra)
        f, _, lg = flat_fit_inputs(features, logits=logits)
        if f is None or lg is None:
            raise ValueError("maxlogit_knn is fitted on in-distribution logits and features")
        if f.shape[0] < max(2 * self.k, 20):
            raise ValueError(f"maxlogit_knn needs at least {max(2 * self.k, 20)} in-distribution cells, got {f.shape[0]}")
        n_bank = min(self.bank_size, f.shape[0] // 2)  # the other cells set the score's spread
        g = torch.Generator().manual_seed(self.seed)
        f = _normalise(f.double())[torch.randperm(f.shape[0], generator=g)]
        sample = f[: min(len(f), 30000)]
        centre = sample.mean(0)
        dim = min(self.dim, sample.shape[1])
        _, _, vh = torch.linalg.svd(sample - centre, full_matrices=False)
        components = vh[:dim]
        proj = (f - centre) @ components.t()
        bank, rest = proj[:n_bank], proj[n_bank: n_bank + 20000]
        self._set("centre", centre)
        self._set("components", components)
        self._set("bank", bank)
        self._set("bank_sq", (bank * bank).sum(1))
        knn = self._knn(rest.float()).double()  # cells that are not in the bank
        ml = -lg.amax(dim=-1)
        self._set("stats", torch.stack([ml.mean(), ml.std().clamp(min=1e-6), knn.mean(), knn.std().clamp(min=1e-6)]))
        return self

    # ------------------------------------------------------------------ score

    def _knn(self, proj: Tensor) -> Tensor:
        """Squared distance of projected cells ``[N, dim]`` to their k-th nearest bank cell."""
        # |q|^2 + min_j(|b_j|^2 - 2 q.b_j): one Gemm with the bank's norms as its bias (ONNX Gemm),
        # then the reduction; |q|^2 is added to the N minima, not to the N x bank matrix
        part = torch.addmm(self.bank_sq[None], proj, self.bank.t(), beta=1.0, alpha=-2.0)
        kth = -torch.topk(-part, self.k, dim=-1).values[:, -1] if self.k > 1 else part.amin(dim=-1)
        return (kth + (proj * proj).sum(-1)).clamp(min=0.0)

    def cell_scores(self, features: Tensor) -> Tensor:
        """Raw kNN distance of ``[N, C]`` features -> ``[N]``."""
        return self._knn((_normalise(features.float()) - self.centre) @ self.components.t())

    def logit_score(self, logits: Tensor) -> Tensor:
        """The MaxLogit half alone, z-scored: ``[B, K, H, W]`` -> ``[B, H, W]`` (a head without the
        image, e.g. LiDAR-only, on the same scale as the joined score)."""
        if not self.fitted:
            raise RuntimeError("scorer 'maxlogit_knn' needs fit() (or a fitted state_dict) before scoring")
        return (-logits.float().amax(dim=1) - self.stats[0]) / self.stats[1]

    def forward(self, logits: Tensor | None, features: Tensor | None = None) -> Tensor:
        if not self.fitted:
            raise RuntimeError("scorer 'maxlogit_knn' needs fit() (or a fitted state_dict) before scoring")
        if logits is None or features is None:
            raise ValueError("scorer 'maxlogit_knn' needs logits and features (the model's embedding)")
        if features.shape[1] != self.centre.shape[0]:
            raise ValueError(f"scorer 'maxlogit_knn' was fitted on {self.centre.shape[0]}-dim features, got {features.shape[1]}")
        m = self.stats
        z_logit = self.logit_score(logits)
        if logits.dim() == 2:
            return torch.maximum(z_logit, (self.cell_scores(features) - m[2]) / m[3])
        if logits.dim() != 4 or features.dim() != 4:
            raise ValueError(f"inputs must be [N, C] or [B, C, H, W], got {tuple(logits.shape)} and {tuple(features.shape)}")
        b, c, h, w = features.shape
        cells = features.permute(0, 2, 3, 1).reshape(-1, c)
        knn = ((self.cell_scores(cells) - m[2]) / m[3]).reshape(b, 1, h, w)
        knn = F.interpolate(knn, size=logits.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return torch.maximum(z_logit, knn)
