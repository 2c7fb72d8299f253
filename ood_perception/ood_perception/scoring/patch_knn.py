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
256x512 frame), the bank is a seeded random subset of ``bank_size`` training cells; labelled
anomalies are kept out of the statistics (cells on pixels labelled ignore, which includes the training world's
exposed anomalies, are left out; a cell counts as in-distribution when its nearest-neighbour label on
the stride-8 grid does, so a cell whose block is partly anomalous can enter). Each head's MaxLogit is
standardised on its own training pixels. Everything is ``torch`` and exports to ONNX (Gemm,
ReduceMin, Resize).
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
    fit_buffers = ("centre", "components", "bank", "bank_sq", "stats", "head_stats")
    feature_dim_buffer = "centre"
    #: expert heads with their own MaxLogit statistics (:meth:`logit_score`)
    heads: ClassVar[tuple[str, ...]] = ("fused", "camera", "lidar")

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
        camera_logits: Any = None,
        lidar_logits: Any = None,
        **extra: Any,
    ) -> MaxLogitPatchKNN:
        """Principal axes, bank and the scores' mean and spread, from in-distribution pixels
        (``logits`` of the fused head; ``camera_logits`` / ``lidar_logits`` of the expert heads, whose
        MaxLogit gets its own mean and spread: the fused head's when not given) and cells
        (``features``) of training frames."""
        super().fit(**extra)
        f, _, lg = flat_fit_inputs(features, logits=logits)
        if f is None or lg is None:
            raise ValueError("maxlogit_knn is fitted on in-distribution logits and features")
        if f.shape[0] < max(2 * self.k, 20) or lg.shape[0] < 2:
            raise ValueError(f"maxlogit_knn needs at least {max(2 * self.k, 20)} in-distribution cells and 2 pixels, "
                             f"got {f.shape[0]} and {lg.shape[0]}")
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
        knn = self._knn(rest.to(self.bank)).double()  # cells that are not in the bank
        fused = _spread(-lg.amax(dim=-1), "logits")
        self._set("stats", torch.cat([fused, _spread(knn, "kNN distances")]))
        heads = []
        for name, other in (("camera_logits", camera_logits), ("lidar_logits", lidar_logits)):
            _, _, olg = flat_fit_inputs(logits=other) if other is not None else (None, None, None)
            heads.append(fused if olg is None else _spread(-olg.amax(dim=-1), name))
        self._set("head_stats", torch.stack(heads))
        return self

    # ------------------------------------------------------------------ score

    def _knn(self, proj: Tensor) -> Tensor:
        """Squared distance of projected cells ``[N, dim]`` to their k-th nearest bank cell."""
        # |q|^2 + min_j(|b_j|^2 - 2 q.b_j): one Gemm with the bank's norms as its bias (ONNX Gemm),
        # then the reduction; |q|^2 is added to the N minima, not to the N x bank matrix
        part = torch.addmm(self.bank_sq[None], proj, self.bank.t(), beta=1.0, alpha=-2.0)
        kth = -torch.topk(-part, self.k, dim=-1).values[:, -1] if self.k > 1 else part.amin(dim=-1)
        return (kth + (proj * proj).sum(-1)).clamp(min=0.0)

    def _check(self, features: Tensor | None) -> None:
        if not self.fitted:
            raise RuntimeError("scorer 'maxlogit_knn' needs fit() (or a fitted state_dict) before scoring")
        if features is not None and features.shape[1] != self.centre.shape[0]:
            raise ValueError(f"scorer 'maxlogit_knn' was fitted on {self.centre.shape[0]}-dim features, got {features.shape[1]}")

    def cell_scores(self, features: Tensor) -> Tensor:
        """Raw kNN distance of ``[N, C]`` features -> ``[N]`` (computed in the buffers' dtype)."""
        return self._knn((_normalise(features.to(self.centre.dtype)) - self.centre) @ self.components.t())

    def _cell_z(self, cells: Tensor) -> Tensor:
        """The kNN half z-scored on the training cells: ``[N, C]`` -> ``[N]``."""
        return (self.cell_scores(cells) - self.stats[2]) / self.stats[3]

    def knn_map(self, features: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        """The z-scored kNN half: ``[B, C, h, w]`` embedding -> ``[B, H, W]`` at ``size`` (bilinear)."""
        self._check(features)
        b, c, h, w = features.shape
        cells = features.permute(0, 2, 3, 1).reshape(-1, c)
        z = self._cell_z(cells).reshape(b, 1, h, w)
        return F.interpolate(z, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]

    def logit_score(self, logits: Tensor, head: str = "fused") -> Tensor:
        """The MaxLogit half alone, z-scored with ``head``'s statistics (``fused``, ``camera`` or
        ``lidar``): ``[B, K, H, W]`` -> ``[B, H, W]`` or ``[N, K]`` -> ``[N]``. A LiDAR-only frame is
        scored by this alone (no image, no embedding)."""
        self._check(None)
        if head not in self.heads:
            raise ValueError(f"head must be one of {self.heads}, got {head!r}")
        m = self.stats[:2] if head == "fused" else self.head_stats[self.heads.index(head) - 1]
        return (-logits.to(m.dtype).amax(dim=1) - m[0]) / m[1]

    def forward(self, logits: Tensor | None, features: Tensor | None = None, head: str = "fused") -> Tensor:
        if logits is None or features is None:
            raise ValueError("scorer 'maxlogit_knn' needs logits and features (the model's embedding)")
        self._check(features)
        if logits.shape[0] != features.shape[0] or logits.dim() != features.dim() or logits.dim() not in (2, 4):
            raise ValueError(f"logits {tuple(logits.shape)} and features {tuple(features.shape)}: need [N, K] and "
                             "[N, C], or [B, K, H, W] and [B, C, h, w] with the same N or B")
        if logits.dim() == 2:
            return torch.maximum(self.logit_score(logits, head), self._cell_z(features))
        return torch.maximum(self.logit_score(logits, head), self.knn_map(features, logits.shape[-2:]))


def _spread(x: Tensor, name: str) -> Tensor:
    """``[mean, std]`` of ``x``; a spread of 0 (constant scores: nothing to standardise by) is refused."""
    std = x.std()
    if not torch.isfinite(std) or float(std) <= 1e-6 * max(1.0, float(x.abs().mean())):
        raise ValueError(f"maxlogit_knn: the {name} of the fit data do not vary (std {float(std):.3g}); fit on more frames")
    return torch.stack([x.mean(), std])
