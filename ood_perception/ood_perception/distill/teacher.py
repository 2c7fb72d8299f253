"""Teacher of multimodal OOD distillation: a weighted mixture of the frozen experts' probabilities.

``w = softmax_m(-CE_m)`` where ``CE_m`` is expert m's cross-entropy on the current batch (one scalar
per modality per batch), and ``p^T = sum_m w_m softmax(z^m / T)`` (the distillation paper).
Ablation modes: ``uniform`` (``w_m = 1/M``) and ``best`` (all weight on the lowest-CE expert).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Teacher weighting modes: the paper's, and its two ablations.
TEACHER_MODES: tuple[str, ...] = ("weighted", "uniform", "best")


def expert_ce(expert_logits: Sequence[torch.Tensor], target: torch.Tensor, ignore_index: int | None = 255) -> torch.Tensor:
    """Cross-entropy of each expert on the batch, ``[M]`` (pixels with ``ignore_index`` excluded)."""
    if len(expert_logits) == 0:
        raise ValueError("need at least one expert")
    ii = ignore_index if ignore_index is not None else -100
    return torch.stack([F.cross_entropy(z, target.long(), ignore_index=ii) for z in expert_logits])


def teacher_weights(expert_logits: Sequence[torch.Tensor], target: torch.Tensor, mode: str = "weighted",
                    ignore_index: int | None = 255) -> torch.Tensor:
    """Per-batch modality weights ``[M]`` summing to one (lower CE -> higher weight)."""
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher mode must be one of {TEACHER_MODES}, got {mode!r}")
    with torch.no_grad():
        ce = expert_ce(expert_logits, target, ignore_index)
        if mode == "weighted":
            return torch.softmax(-ce, dim=0)
        if mode == "uniform":
            return torch.full_like(ce, 1.0 / len(expert_logits))
        w = torch.zeros_like(ce)
        w[torch.argmin(ce)] = 1.0
        return w


def teacher_probs(expert_logits: Sequence[torch.Tensor], target: torch.Tensor, mode: str = "weighted",
                  temperature: float = 1.0, ignore_index: int | None = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p^T, w)``: teacher probabilities (shape of each expert's logits) and the weights ``[M]``."""
    shapes = {tuple(z.shape) for z in expert_logits}
    if len(shapes) != 1:
        raise ValueError(f"expert logits differ in shape: {sorted(shapes)}")
    w = teacher_weights(expert_logits, target, mode, ignore_index)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(z.detach() / temperature, dim=1) for z in expert_logits])
        shape = (-1,) + (1,) * (probs.dim() - 1)
        return (w.view(shape) * probs).sum(0), w
