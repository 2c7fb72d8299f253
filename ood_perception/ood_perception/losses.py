"""Training losses of the segmentation room: focal, Lovasz-softmax, outlier entropy maximisation, A2D.

All take per-pixel logits ``[B, K, H, W]`` (or per-sample ``[N, K]`` where stated) and integer
targets with ``ignore_index`` (255: unlabelled and, in training, OOD pixels).

* :func:`focal_loss` (Lin et al., 2017), gamma=2 default.
* :func:`lovasz_softmax` (Berman et al., 2018, "The Lovasz-Softmax loss"): the convex surrogate
  of per-class IoU, averaged over classes present in the batch (the paper's ``classes='present'``).
* :func:`outlier_entropy_loss`: minus the mean normalised entropy of outlier predictions
  (minimising it maximises entropy); Feature Mixing weights it by gamma1.
* :func:`a2d_loss` (MultiOOD): minus the Hellinger distance between two modalities' softmax over
  the *non-target* classes, pushing their disagreement up on ID data.
* :func:`cma_loss` (CMA, CLIP fine-tuning that closes the modality gap): CLIP's symmetric
  cross-entropy plus ``lambda`` times the negative log-sum-exp alignment term in both directions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX: int = 255


def _flatten(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, K, H, W]`` / ``[B, H, W]`` (or ``[N, K]`` / ``[N]``) -> ``[P, K]``, ``[P]``."""
    if logits.dim() == 2:
        if target.shape != logits.shape[:1]:
            raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        return logits, target
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits must be [B, K, H, W] with target [B, H, W]; got {tuple(logits.shape)}, {tuple(target.shape)}")
    k = logits.shape[1]
    return logits.permute(0, 2, 3, 1).reshape(-1, k), target.reshape(-1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean over non-ignored pixels of ``-(1 - p_t)^gamma * log p_t``; 0 if none (keeps the graph).

    ``gamma=0`` is cross-entropy.
    """
    lg, t = _flatten(logits, target)
    valid = t != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    lg, t = lg[valid].float(), t[valid].long()
    if int(t.max()) >= lg.shape[1] or int(t.min()) < 0:
        raise ValueError(f"target ids must be in 0..{lg.shape[1] - 1} or {ignore_index}")
    logp = F.log_softmax(lg, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    pt = logp.exp()
    return (-((1 - pt) ** gamma) * logp).mean()


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman et al.)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   classes: str = "present") -> torch.Tensor:
    """Multi-class Lovasz-softmax loss over all non-ignored pixels of the batch.

    Args:
        classes: ``"present"`` (average over classes present in the target, the paper's default
            for segmentation) or ``"all"``.
    """
    lg, t = _flatten(logits, target)
    valid = t != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    probs = F.softmax(lg[valid].float(), dim=1)
    t = t[valid].long()
    losses = []
    for c in range(probs.shape[1]):
        fg = (t == c).float()
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


def normalised_entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along ``dim`` divided by log K (in [0, 1])."""
    logp = F.log_softmax(logits.float(), dim=dim)
    k = logits.shape[dim]
    return -(logp.exp() * logp).sum(dim) / math.log(k)


def outlier_entropy_loss(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Minus the mean normalised entropy of outlier logits (``[B, K, H, W]`` or ``[N, K]``).

    Minimum -1 at uniform predictions. ``mask`` (``[B, H, W]`` / ``[N]`` bool) restricts the mean
    to synthesised positions; empty mask gives 0 (graph kept).
    """
    ent = normalised_entropy(logits, dim=1)
    if mask is not None:
        if mask.shape != ent.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match {tuple(ent.shape)}")
        if not bool(mask.any()):
            return logits.sum() * 0.0
        ent = ent[mask]
    return -ent.mean()


def hellinger(p: torch.Tensor, q: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    """Hellinger distance ``sqrt(sum (sqrt p - sqrt q)^2) / sqrt 2`` along ``dim`` (in [0, 1])."""
    d = (p.clamp_min(eps).sqrt() - q.clamp_min(eps).sqrt()).pow(2).sum(dim)
    return (d.clamp_min(eps)).sqrt() / math.sqrt(2.0)


def non_target_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax over the K-1 non-target classes, ``[P, K] -> [P, K-1]`` (target column removed)."""
    p, k = logits.shape
    keep = torch.ones(p, k, dtype=torch.bool, device=logits.device)
    keep[torch.arange(p, device=logits.device), target] = False
    return F.softmax(logits[keep].view(p, k - 1).float(), dim=1)


def a2d_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, target: torch.Tensor,
             ignore_index: int = IGNORE_INDEX, max_pixels: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Agree-to-Disagree (MultiOOD): ``-mean Hellinger(p_a^nt, p_b^nt)`` over labelled pixels,
    where ``p^nt`` is each modality's softmax with the ground-truth class removed.

    ``max_pixels`` optionally subsamples labelled pixels (cost control); the weight (gamma2)
    is applied by the caller.
    """
    la, t = _flatten(logits_a, target)
    lb, _ = _flatten(logits_b, target)
    valid = torch.nonzero(t != ignore_index, as_tuple=False).squeeze(1)
    if valid.numel() == 0:
        return (logits_a.sum() + logits_b.sum()) * 0.0
    if max_pixels is not None and valid.numel() > max_pixels:
        perm = torch.randperm(valid.numel(), generator=generator,
                              device=generator.device if generator else "cpu")[:max_pixels]
        valid = valid[perm.to(valid.device)]
    tt = t[valid].long()
    pa = non_target_softmax(la[valid], tt)
    pb = non_target_softmax(lb[valid], tt)
    return -hellinger(pa, pb, dim=1).mean()


def cma_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float,
             align_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """CMA loss of a batch of matching image/text pairs (row i of each is one pair).

    With L2-normalised embeddings and logits ``L = scale * v t^T`` ``[B, B]``::

        clip  = (CE(L, arange(B)) + CE(L^T, arange(B))) / 2          (CLIP's symmetric CE)
        align = -(mean_i logsumexp_j L_ij + mean_j logsumexp_i L_ij) / 2
        total = clip + align_weight * align

    Minimising ``align`` raises all image-text similarities together, pulling the two modalities'
    embeddings into one region (closing the modality gap) while ``clip`` keeps pairs apart.
    ``align_weight`` (lambda) default 0.1 is our choice (REFERENCES.md gives the form, not a value).

    Args:
        image_emb, text_emb: ``[B, D]`` (normalised here).
        logit_scale: the multiplier (CLIP's ``exp(logit_scale)``, e.g. 100), not its log.

    Returns:
        ``{"total", "clip", "align"}``.
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must both be [B, D], got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    v = F.normalize(image_emb, dim=-1)
    t = F.normalize(text_emb, dim=-1)
    logits = logit_scale * v @ t.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    align = -(torch.logsumexp(logits, dim=1).mean() + torch.logsumexp(logits, dim=0).mean()) / 2
    return {"total": clip + align_weight * align, "clip": clip, "align": align}
