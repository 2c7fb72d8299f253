"""Dynamic-beta Mixup (MoFE's training-time mixing) and its feature-norm regulariser.

Rule (REFERENCES.md, "MoFE + Dynamic-beta Mixup"; the paper's code was not read here): a sample of
class ``c`` is mixed with a random partner with ``lambda ~ Beta(s_c, s_c)``, where
``s_c = 1 - w * acc_c`` and ``acc_c`` is the current validation accuracy of class ``c``;
``lambda`` is folded to ``max(lambda, 1 - lambda) >= 0.5`` so the sample's own class stays the
dominant one (its label for routing). Accuracies start at 0 (``s = 1``: lambda uniform on
[0.5, 1]) and are updated during training (:meth:`DynamicBetaMixup.update`, e.g. after each
epoch); the better a class is learned, the smaller ``s_c`` and the more its lambdas pile up near
1 and 0.5 (a U-shaped Beta, folded). ``s`` is clamped to at least ``min_s`` (Beta needs s > 0).

Feature-norm regulariser (our reading of "add a feature-norm regulariser"; the exact form in the
paper could not be checked): ``norm_weight * mean ||f_mix||_2`` over the mixed samples' pooled
features, which keeps the in-between (mixed) inputs from producing the large-norm features of
confident ID samples; kNN on L2-normalised features is unaffected by the scale of ID features.
Defaults ``w = 0.5`` and ``norm_weight = 0.01`` are our choices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Default weight w of the class accuracy in s = 1 - w * acc (our choice).
DEFAULT_W: float = 0.5
#: Default weight of the feature-norm regulariser (our choice).
DEFAULT_NORM_WEIGHT: float = 0.01


class DynamicBetaMixup:
    """Per-class Beta(s_c, s_c) mixing coefficients driven by validation accuracy.

    Args:
        num_classes: C.
        w: weight of the accuracy in ``s = 1 - w * acc``; in [0, 1].
        min_s: lower clamp of ``s``.
    """

    def __init__(self, num_classes: int, w: float = DEFAULT_W, min_s: float = 0.05) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= float(w) <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {w}")
        if not 0.0 < float(min_s) <= 1.0:
            raise ValueError(f"min_s must be in (0, 1], got {min_s}")
        self.num_classes, self.w, self.min_s = int(num_classes), float(w), float(min_s)
        self.accuracy = torch.zeros(self.num_classes, dtype=torch.float64)

    def update(self, accuracy: Sequence[float] | Tensor) -> None:
        """Set the per-class validation accuracies (``[C]`` in [0, 1]; NaN = class not seen: kept)."""
        acc = torch.as_tensor(accuracy, dtype=torch.float64).flatten()
        if acc.numel() != self.num_classes:
            raise ValueError(f"{acc.numel()} accuracies for {self.num_classes} classes")
        seen = ~torch.isnan(acc)
        if ((acc[seen] < 0) | (acc[seen] > 1)).any():
            raise ValueError("accuracies must be in [0, 1]")
        self.accuracy = torch.where(seen, acc, self.accuracy)

    @property
    def s(self) -> Tensor:
        """``[C]`` Beta parameters ``max(1 - w * acc, min_s)``."""
        return torch.clamp(1.0 - self.w * self.accuracy, min=self.min_s)

    def sample_lambda(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Folded ``lambda >= 0.5`` ``[B]`` (float64) for samples of classes ``labels``.

        Beta(s, s) is drawn as ``G1 / (G1 + G2)`` with ``G1, G2 ~ Gamma(s, 1)``. torch's gamma
        sampler takes no generator, so a given ``generator`` seeds a forked global RNG state
        (the caller's global state is left untouched); without one the global RNG is used.
        """
        labels = torch.as_tensor(labels, dtype=torch.long)
        s = self.s[labels]
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                g1, g2 = torch._standard_gamma(s), torch._standard_gamma(s)
        else:
            g1, g2 = torch._standard_gamma(s), torch._standard_gamma(s)
        lam = g1 / (g1 + g2).clamp(min=1e-300)
        lam = torch.where(torch.isnan(lam), torch.full_like(lam, 0.5), lam)
        return torch.maximum(lam, 1.0 - lam)

    def mix(self, x: Tensor, labels: Tensor, generator: torch.Generator | None = None
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Mix each sample with a random partner of the batch.

        Returns:
            ``(x_mix, labels, labels_b, lam)``: ``x_mix = lam * x + (1 - lam) * x[perm]``
            (lam broadcast over the trailing dims), the dominant labels (unchanged), the partners'
            labels and ``lam`` ``[B]`` (in x's dtype).
        """
        labels = torch.as_tensor(labels, dtype=torch.long)
        perm = torch.randperm(x.shape[0], generator=generator)
        lam = self.sample_lambda(labels, generator).to(x.dtype)
        lb = lam.view(-1, *([1] * (x.dim() - 1)))
        return lb * x + (1 - lb) * x[perm], labels, labels[perm], lam


def feature_norm_regulariser(features: Tensor, weight: float = DEFAULT_NORM_WEIGHT) -> Tensor:
    """``weight * mean ||f||_2`` over the rows of ``features`` ``[B, D]``."""
    if features.dim() != 2:
        raise ValueError(f"features must be [B, D], got {tuple(features.shape)}")
    return weight * torch.linalg.vector_norm(features, dim=1).mean()


def class_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class accuracy ``[C]`` (float64; NaN for classes without samples)."""
    pred, labels = torch.as_tensor(pred).long().flatten(), torch.as_tensor(labels).long().flatten()
    total = torch.bincount(labels, minlength=num_classes).double()
    right = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    return torch.where(total > 0, right / total.clamp(min=1), torch.full_like(total, float("nan")))
