"""NP-Mix (MultiOOD, Dong et al., NeurIPS 2024; github donghao51/MultiOOD): the outlier-synthesis
baseline Feature Mixing is compared with, in two modes.

What the original does (read in donghao51/MultiOOD ``HMDB-rgb-flow/train_video_flow.py``,
``train_one_step`` with ``--use_npmix``; a second stored training script of the repository
has the identical block):

* Samples are clips. The embedding is ``[v_emd || f_emd]``, the two modality heads' penultimate
  clip features (2304 + 2048 = 4352-d), detached.
* Queues: ``data_dict`` ``[num_class, sample_number, D]`` on the GPU, ``sample_number=65``. Until
  every class holds 65 entries each sample is written into the next free slot of its class
  (a full class drops further samples); once all are full, every sample of the batch is pushed
  FIFO, one Python-loop iteration per sample (``torch.cat((q[1:], x))``).
* From ``start_epoch`` (10) on, once the queues are full, every step: push the batch, then the
  class prototypes are the queue means, a ``scipy.spatial.KDTree`` (since SciPy 1.6 the same
  compiled tree as ``cKDTree``; no faiss) is built over the ``num_class`` prototypes (rebuilt
  every step), and for each class i (a Python loop) the tree is
  queried with prototype i itself, ``k=nn_k=3``, the first hit (i itself) dropped; one of the
  remaining k-1 classes j is drawn uniformly, one random queued embedding of i and one of j are
  mixed with ``lam ~ Beta(mixup_alpha=10, 10)`` (numpy's global RNG, one lam per class).
* So the neighbour search runs over the K prototypes, not over samples or queued embeddings;
  each step makes exactly ``num_class`` outliers, from queued (past, detached) features only;
  they are split per modality and go through each modality's linear classifier with a
  -normalised-entropy loss (and an optional discrepancy term).

Modes here:

* ``anchors`` (default, used by the trainer): our segmentation adaptation. Anchors are pixel
  embeddings sampled from the current concatenated pre-fusion map ``[Fc || Fl]`` (ID-labelled
  pixels, ``num_anchors`` per step); each anchor queries its ``k`` nearest prototypes (scipy
  ``cKDTree``, rebuilt each step), a class other than its own among them is drawn, a random
  queued embedding of it is taken, and the two are mixed with ``lambda ~ Beta(alpha, alpha)``
  (alpha=10 as in MultiOOD). The anchor keeps its gradient; queued partners are detached.
  The outliers sit at pixel positions of the map, so they go through the same fused (conv) head
  as Feature Mixing's. Queue size, k and the anchor count are our choices.
* ``faithful``: MultiOOD's algorithm with a pixel as the sample. Every labelled pixel's
  embedding enters the queues (in batch, row, column order) with the fill-then-FIFO rule above;
  when the queues were full at the start of the step, the prototypes' KD-tree
  (``scipy.spatial.KDTree``, rebuilt each step) is queried per class and one outlier per class
  is made (:func:`npmix_faithful_outliers`). Use :data:`MULTIOOD_QUEUE_SIZE` (65),
  :data:`MULTIOOD_K` (3) and the default alpha=10 for the original's values (verified against its
  code; the class defaults are the ``anchors`` mode's). The queue push is vectorised (same queue
  contents as the per-sample loop); ``start_epoch`` is the caller's business. Not wired into the
  trainer: K detached vectors per step carry no gradient to the encoders and have no spatial
  context for a conv head, so the ``anchors`` mode stays the training one.

How the Feature Mixing paper timed NP-Mix for segmentation (its "370x") could not be read; the
cost comparison of both modes with Feature Mixing is in ``bench/results/synthesis.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial import KDTree, cKDTree

#: MultiOOD's mixing coefficient distribution Beta(alpha, alpha) (``--mixup_alpha``, verified in its code).
DEFAULT_ALPHA: float = 10.0
#: MultiOOD's per-class queue length (``--sample_number``) and neighbour count (``--nn_k``), from its code.
MULTIOOD_QUEUE_SIZE: int = 65
MULTIOOD_K: int = 3
#: The two modes (see the module docstring).
NPMIX_MODES: tuple[str, ...] = ("anchors", "faithful")


class NPMix:
    """Per-class queues + nearest-prototype mixing.

    Args:
        num_classes: K.
        dim: embedding size D.
        queue_size: entries kept per class (FIFO).
        k: nearest prototypes queried per anchor (``anchors``: its own class usually among them)
            or per class prototype (``faithful``: the first hit, itself, is dropped).
        alpha: Beta(alpha, alpha) for the mixing coefficient.
        seed: seed of the numpy generator used for every random draw (state is checkpointed).
        mode: ``anchors`` (our segmentation adaptation, :meth:`synthesize`) or ``faithful``
            (MultiOOD's fill-then-FIFO queues and per-class mixing, :meth:`synthesize_per_class`).
    """

    def __init__(self, num_classes: int, dim: int, queue_size: int = 256, k: int = 3,
                 alpha: float = DEFAULT_ALPHA, seed: int = 0, mode: str = "anchors") -> None:
        if num_classes < 2:
            raise ValueError(f"NP-Mix needs >= 2 classes, got {num_classes}")
        if queue_size < 1 or k < 2 or alpha <= 0:
            raise ValueError(f"bad NP-Mix parameters queue_size={queue_size}, k={k} (>=2), alpha={alpha}")
        if mode not in NPMIX_MODES:
            raise ValueError(f"NP-Mix mode must be one of {NPMIX_MODES}, got {mode!r}")
        self.num_classes, self.dim, self.queue_size, self.k, self.alpha = num_classes, dim, queue_size, k, alpha
        self.mode = mode
        self.queue = np.zeros((num_classes, queue_size, dim), dtype=np.float32)
        self.count = np.zeros(num_classes, dtype=np.int64)  # total ever pushed per class
        self.rng = np.random.default_rng(seed)

    def filled(self, c: int) -> int:
        """Entries currently held for class ``c``."""
        return int(min(self.count[c], self.queue_size))

    def all_full(self) -> bool:
        """Whether every class queue holds ``queue_size`` entries (the original's condition to mix)."""
        return bool((self.count >= self.queue_size).all())

    def update(self, embeddings: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Push ``[M, D]`` embeddings with labels ``[M]`` (0..K-1; others ignored) into the queues.

        ``anchors`` mode: FIFO per class. ``faithful`` mode (MultiOOD): while some queue is not
        full, rows only fill free slots (a full class drops further rows); once all are full at
        the start of the call, FIFO. Rows enter in the given order in both modes.
        """
        emb = embeddings.detach().float().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings, np.float32)
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if emb.ndim != 2 or emb.shape[1] != self.dim or lab.shape != (emb.shape[0],):
            raise ValueError(f"expected embeddings [M, {self.dim}] and labels [M], got {emb.shape}, {lab.shape}")
        fill_only = self.mode == "faithful" and not self.all_full()
        for c in np.unique(lab):
            if not 0 <= c < self.num_classes:
                continue
            if fill_only:
                rows = emb[lab == c][: self.queue_size - self.filled(c)]
            else:
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

    def synthesize_per_class(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """MultiOOD's mixing step: one outlier per class from the (full) queues.

        Prototypes are the queue means; a ``scipy.spatial.KDTree`` over them (built here, every
        call) is queried with each class's own prototype, ``k`` hits, the first dropped; a
        neighbour j is drawn among the other k-1, one queued row of i and one of j are drawn and
        mixed with ``lam ~ Beta(alpha, alpha)``. Draw order per class as in the original
        (row of i, neighbour, row of j, lam), from this object's generator.

        Returns:
            ``(outliers [K, D] float32, pairs [K, 2] (i, j), lam [K])``; empty when some queue
            is not full (the original only mixes with full queues).
        """
        kk = self.num_classes
        if not self.all_full():
            return torch.zeros((0, self.dim)), np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        protos = self.queue.mean(axis=1)
        tree = KDTree(protos)
        k = min(self.k, kk)
        out = np.empty((kk, self.dim), np.float32)
        pairs = np.empty((kk, 2), np.int64)
        lams = np.empty(kk, np.float32)
        for i in range(kk):
            _, ind = tree.query(protos[i], k=k)
            neighbours = np.atleast_1d(ind)[1:]
            r1 = self.rng.integers(self.queue_size)
            j = int(self.rng.choice(neighbours))
            r2 = self.rng.integers(self.queue_size)
            lam = self.rng.beta(self.alpha, self.alpha)
            out[i] = lam * self.queue[i, r1] + (1 - lam) * self.queue[j, r2]
            pairs[i], lams[i] = (i, j), lam
        return torch.from_numpy(out), pairs, lams

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


def npmix_faithful_outliers(fused: torch.Tensor, labels: torch.Tensor, npmix: NPMix) -> torch.Tensor:
    """Segmentation NP-Mix as MultiOOD does it per clip, with every labelled pixel as a sample.

    As in the original step: if the queues were full at the start, push all labelled pixel
    embeddings (FIFO) and return one outlier per class (:meth:`NPMix.synthesize_per_class`);
    otherwise only fill the queues and return none.

    Args:
        fused: ``[B, D, h, w]`` concatenated pre-fusion features ``[Fc || Fl]``.
        labels: ``[B, h, w]`` train ids at the feature resolution (255 = ignore).
        npmix: queues in ``faithful`` mode.

    Returns:
        ``[K, D]`` outliers (detached: built from queued features, as in the original) on
        ``fused``'s device, or ``[0, D]``.
    """
    if npmix.mode != "faithful":
        raise ValueError(f"npmix_faithful_outliers needs an NPMix in 'faithful' mode, got {npmix.mode!r}")
    b, d, h, w = fused.shape
    if labels.shape != (b, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match features {tuple(fused.shape)}")
    mix = npmix.all_full()
    npmix.update(fused.detach().permute(0, 2, 3, 1).reshape(-1, d), labels.reshape(-1))
    if not mix:
        return fused.new_zeros((0, d))
    out, _, _ = npmix.synthesize_per_class()
    return out.to(fused.device, fused.dtype)
