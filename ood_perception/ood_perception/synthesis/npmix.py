"""NP-Mix (MultiOOD, Dong et al., NeurIPS 2024; github donghao51/MultiOOD): the outlier-synthesis
baseline Feature Mixing is compared with.

Per-class FIFO queues of ID embeddings; class prototypes are the queue means, indexed by a
KD-tree (scipy ``cKDTree``, rebuilt each step since prototypes move); each anchor embedding
queries its ``k`` nearest prototypes, one of those classes other than its own is drawn, a random
queued embedding of it is taken, and the two are mixed with ``lambda ~ Beta(alpha, alpha)``
(alpha=10 as in MultiOOD). For segmentation the anchors are pixel embeddings sampled from the
concatenated pre-fusion map ``[Fc || Fl]`` (ID-labelled pixels only), so NP-Mix and Feature Mixing
synthesise in the same space and use the same fused head. Queue size, k and the number of anchors
per step are our choices (MultiOOD's values are for clip-level features). The anchor keeps its
gradient; queued partners are detached (they are past features).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

#: MultiOOD's mixing coefficient distribution Beta(alpha, alpha).
DEFAULT_ALPHA: float = 10.0


class NPMix:
    """Per-class queues + nearest-prototype mixing.

    Args:
        num_classes: K.
        dim: embedding size D.
        queue_size: entries kept per class (FIFO).
        k: nearest prototypes queried per anchor (its own class usually among them).
        alpha: Beta(alpha, alpha) for the mixing coefficient.
        seed: seed of the numpy generator used for every random draw (state is checkpointed).
    """

    def __init__(self, num_classes: int, dim: int, queue_size: int = 256, k: int = 3,
                 alpha: float = DEFAULT_ALPHA, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError(f"NP-Mix needs >= 2 classes, got {num_classes}")
        if queue_size < 1 or k < 2 or alpha <= 0:
            raise ValueError(f"bad NP-Mix parameters queue_size={queue_size}, k={k} (>=2), alpha={alpha}")
        self.num_classes, self.dim, self.queue_size, self.k, self.alpha = num_classes, dim, queue_size, k, alpha
        self.queue = np.zeros((num_classes, queue_size, dim), dtype=np.float32)
        self.count = np.zeros(num_classes, dtype=np.int64)  # total ever pushed per class
        self.rng = np.random.default_rng(seed)

    def filled(self, c: int) -> int:
        """Entries currently held for class ``c``."""
        return int(min(self.count[c], self.queue_size))

    def update(self, embeddings: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Push ``[M, D]`` embeddings with labels ``[M]`` (0..K-1; others ignored) into the queues."""
        emb = embeddings.detach().float().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings, np.float32)
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if emb.ndim != 2 or emb.shape[1] != self.dim or lab.shape != (emb.shape[0],):
            raise ValueError(f"expected embeddings [M, {self.dim}] and labels [M], got {emb.shape}, {lab.shape}")
        for c in np.unique(lab):
            if not 0 <= c < self.num_classes:
                continue
            rows = emb[lab == c][-self.queue_size:]
            pos = (self.count[c] + np.arange(len(rows))) % self.queue_size
            self.queue[c, pos] = rows
            self.count[c] += len(rows)

    def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(classes [P], prototypes [P, D])`` for the classes with a non-empty queue."""
        classes = np.flatnonzero(self.count > 0)
        protos = np.stack([self.queue[c, : self.filled(c)].mean(0) for c in classes]) if classes.size else np.zeros((0, self.dim))
        return classes, protos

    def synthesize(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix each anchor with a queued embedding of one of its nearest other classes.

        Returns:
            ``(mixed [M', D], used [M] bool)``: outliers for the anchors that could be mixed
            (a neighbouring class with a non-empty queue exists), in anchor order.
        """

        m = embeddings.shape[0]
        used = torch.zeros(m, dtype=torch.bool)
        classes, protos = self.prototypes()
        if m == 0 or classes.size < 2:
            return embeddings.new_zeros((0, self.dim)), used
        tree = cKDTree(protos)
        x = embeddings.detach().float().cpu().numpy()
        k = min(self.k, classes.size)
        _, nn_idx = tree.query(x, k=k)
        nn_cls = classes[nn_idx.reshape(m, k)]
        lab = labels.detach().cpu().numpy()
        other = nn_cls != lab[:, None]
        n_other = other.sum(1)
        keep = n_other > 0
        choice = self.rng.random(m)
        pick = self.rng.random(m)
        order = np.argsort(~other, axis=1, kind="stable")  # other-class columns first
        col = np.minimum((choice * n_other).astype(np.int64), np.maximum(n_other - 1, 0))
        partner_cls = nn_cls[np.arange(m), order[np.arange(m), col]]
        filled = np.minimum(self.count, self.queue_size)[partner_cls]
        slot = np.minimum((pick * filled).astype(np.int64), np.maximum(filled - 1, 0))
        partners = self.queue[partner_cls, slot]
        lam = self.rng.beta(self.alpha, self.alpha, size=int(keep.sum())).astype(np.float32)
        used = torch.from_numpy(keep)
        anchor = embeddings[used.to(embeddings.device)]
        lam_t = torch.from_numpy(lam).to(embeddings.device, embeddings.dtype).unsqueeze(1)
        partner_t = torch.from_numpy(partners[keep]).to(embeddings.device, embeddings.dtype)
        return lam_t * anchor + (1 - lam_t) * partner_t, used

    def state_dict(self) -> dict[str, Any]:
        """Queues, counters and RNG state (tensors/plain types: loadable with weights_only)."""
        return {"queue": torch.from_numpy(self.queue.copy()), "count": torch.from_numpy(self.count.copy()),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        queue = state["queue"].numpy()
        if queue.shape != self.queue.shape:
            raise ValueError(f"NP-Mix queue shape {queue.shape} does not match {self.queue.shape}")
        self.queue = queue.astype(np.float32).copy()
        self.count = state["count"].numpy().astype(np.int64).copy()
        self.rng.bit_generator.state = state["rng"]


def npmix_outlier_map(fused: torch.Tensor, labels: torch.Tensor, npmix: NPMix, num_anchors: int = 256,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation NP-Mix: mix sampled pixel embeddings of ``fused`` and write them back in place.

    Args:
        fused: ``[B, D, h, w]`` concatenated pre-fusion features ``[Fc || Fl]``.
        labels: ``[B, h, w]`` train ids at the feature resolution (255 = ignore).
        npmix: the queues (updated with the sampled ID embeddings after synthesis).
        num_anchors: pixels sampled per step among labelled ones.

    Returns:
        ``(outlier_map [B, D, h, w], mask [B, h, w] bool)``: a copy of ``fused`` whose pixels in
        ``mask`` hold NP-Mix outliers (to run through the fused head; loss only on ``mask``).
    """
    b, d, h, w = fused.shape
    flat_lab = labels.reshape(-1)
    cand = torch.nonzero(flat_lab != 255, as_tuple=False).squeeze(1)
    mask = torch.zeros(b * h * w, dtype=torch.bool, device=fused.device)
    if cand.numel() == 0:
        return fused, mask.view(b, h, w)
    perm = torch.randperm(cand.numel(), generator=generator, device=generator.device if generator else "cpu")
    sel = cand[perm[:num_anchors].to(cand.device)]
    emb = fused.permute(0, 2, 3, 1).reshape(-1, d)
    anchors, lab = emb[sel], flat_lab[sel]
    mixed, used = npmix.synthesize(anchors, lab)
    npmix.update(anchors, lab)
    rows = sel[used.to(sel.device)]
    mask[rows] = True
    bi, rem = rows // (h * w), rows % (h * w)
    out = fused.clone()
    out[bi, :, rem // w, rem % w] = mixed.to(out.dtype)
    return out, mask.view(b, h, w)
