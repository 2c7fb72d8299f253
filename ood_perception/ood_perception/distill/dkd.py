"""Decoupled knowledge distillation (DKD, Zhao et al. CVPR 2022) against a probability teacher.

The teacher of multimodal OOD distillation is a *mixture of expert probabilities*, not logits, so
these functions take teacher probabilities ``p_t [N, K]`` and student logits ``z_s [N, K]``.
With ``b = [p_target, 1 - p_target]`` (binary) and ``p_hat`` the non-target probabilities
renormalised to sum to one,

    KL(p^T || p^S) = TCKD + (1 - p^T_target) * NCKD                     (DKD Eq. 6 / distillation paper)
    TCKD = KL(b^T || b^S),  NCKD = KL(p_hat^T || p_hat^S).

Losses are averaged over samples whose target is not ``ignore_index`` and multiplied by
``temperature**2`` (the DKD convention; temperature 1 in the distillation paper, so no effect there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def _flatten(z: torch.Tensor, p: torch.Tensor, target: torch.Tensor, ignore_index: int | None):
    """[B, K, ...] -> [N, K] (per-pixel inputs) and drop ignored targets."""
    if z.shape != p.shape:
        raise ValueError(f"student logits {tuple(z.shape)} and teacher probs {tuple(p.shape)} differ in shape")
    if z.dim() > 2:
        k = z.shape[1]
        z = z.movedim(1, -1).reshape(-1, k)
        p = p.movedim(1, -1).reshape(-1, k)
        target = target.reshape(-1)
    if target.shape[0] != z.shape[0]:
        raise ValueError(f"target has {target.shape[0]} entries, logits have {z.shape[0]} rows")
    target = target.long()
    if ignore_index is not None:
        keep = target != ignore_index
        z, p, target = z[keep], p[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= z.shape[1]):
        raise ValueError(f"targets must be in [0, {z.shape[1]}) or ignore_index, got range "
                         f"[{int(target.min())}, {int(target.max())}]")
    return z, p, target


def _parts(z_s: torch.Tensor, p_t: torch.Tensor, target: torch.Tensor, temperature: float):
    log_ps = F.log_softmax(z_s / temperature, dim=1)
    gt = F.one_hot(target, z_s.shape[1]).bool()
    pt_t = (p_t * gt).sum(1).clamp(_EPS, 1 - 1e-7)  # teacher target prob
    log_ps_t = (log_ps * gt).sum(1)  # student log target prob
    log_ps_nt = torch.log1p(-log_ps_t.exp().clamp(max=1 - 1e-7))
    # non-target distributions, renormalised
    masked = (z_s / temperature).masked_fill(gt, float("-inf"))
    log_ps_hat = F.log_softmax(masked, dim=1)
    p_hat = (p_t * ~gt) / (1 - pt_t).unsqueeze(1)
    return log_ps, gt, pt_t, log_ps_t, log_ps_nt, log_ps_hat, p_hat


def tckd(z_s: torch.Tensor, p_t: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
         ignore_index: int | None = 255, reduction: str = "mean") -> torch.Tensor:
    """Target-class KD: KL between the binary [target, rest] teacher and student distributions."""
    z_s, p_t, target = _flatten(z_s, p_t, target, ignore_index)
    _, _, pt_t, log_ps_t, log_ps_nt, _, _ = _parts(z_s, p_t, target, temperature)
    kl = pt_t * (pt_t.log() - log_ps_t) + (1 - pt_t) * (torch.log1p(-pt_t) - log_ps_nt)
    return _reduce(kl, reduction) * temperature**2


def nckd(z_s: torch.Tensor, p_t: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
         ignore_index: int | None = 255, reduction: str = "mean") -> torch.Tensor:
    """Non-target-class KD: KL between the renormalised non-target distributions."""
    z_s, p_t, target = _flatten(z_s, p_t, target, ignore_index)
    _, gt, _, _, _, log_ps_hat, p_hat = _parts(z_s, p_t, target, temperature)
    log_p_hat = p_hat.clamp_min(_EPS).log()
    terms = torch.where(~gt & (p_hat > 0), p_hat * (log_p_hat - log_ps_hat), torch.zeros_like(p_hat))
    return _reduce(terms.sum(1), reduction) * temperature**2


def full_kl(z_s: torch.Tensor, p_t: torch.Tensor, target: torch.Tensor | None = None, temperature: float = 1.0,
            ignore_index: int | None = 255, reduction: str = "mean") -> torch.Tensor:
    """Plain KL(p^T || softmax(z_s / T)) (the classic KD term), for checking Eq. 6."""
    if target is None:
        target = torch.zeros(z_s.shape[0], dtype=torch.long)
        ignore_index = None
    z_s, p_t, target = _flatten(z_s, p_t, target, ignore_index)
    log_ps = F.log_softmax(z_s / temperature, dim=1)
    terms = torch.where(p_t > 0, p_t * (p_t.clamp_min(_EPS).log() - log_ps), torch.zeros_like(p_t))
    return _reduce(terms.sum(1), reduction) * temperature**2


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return x
    if reduction == "mean":
        return x.mean() if x.numel() else x.sum()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def dkd_loss(z_s: torch.Tensor, p_t: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, beta: float = 0.5,
             temperature: float = 1.0, ignore_index: int | None = 255) -> dict[str, torch.Tensor]:
    """``CE + alpha * TCKD + beta * NCKD`` and its parts (``loss``, ``ce``, ``tckd``, ``nckd``).

    Defaults alpha = beta = 0.5: the distillation paper's advice when the OOD type is unknown
    (its public code is said to use alpha = 0.2, beta = 0.8; not verified against the code here).
    """
    k = z_s.shape[1]
    if z_s.dim() > 2:
        ce = F.cross_entropy(z_s, target.long(), ignore_index=ignore_index if ignore_index is not None else -100)
    else:
        flat_t = target.long()
        ce = F.cross_entropy(z_s.reshape(-1, k), flat_t, ignore_index=ignore_index if ignore_index is not None else -100)
    t = tckd(z_s, p_t, target, temperature, ignore_index)
    n = nckd(z_s, p_t, target, temperature, ignore_index)
    return {"loss": ce + alpha * t + beta * n, "ce": ce, "tckd": t, "nckd": n}
