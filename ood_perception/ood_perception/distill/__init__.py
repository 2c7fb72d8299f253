"""Self multimodal OOD distillation ("Leveraging Dark Knowledge for Intrinsic Multimodal OOD Detection").

Frozen unimodal experts teach the joint head: teacher ``p^T = sum_m w_m p^m`` with
``w = softmax_m(-CE_m)`` per batch (:mod:`.teacher`), student = joint head only, loss
``CE + alpha * TCKD + beta * NCKD`` (decoupled KD, :mod:`.dkd`). :mod:`.trainer` runs it for the
recognition network (on cached embeddings) and for the fused segmentation head (per pixel);
:mod:`.cli` is ``ood-perception train distill``; :mod:`.ablation` writes docs/results/distillation.md.
"""

from __future__ import annotations

from ood_perception.distill.dkd import dkd_loss, full_kl, nckd, tckd
from ood_perception.distill.teacher import TEACHER_MODES, teacher_probs, teacher_weights

__all__ = ["TEACHER_MODES", "dkd_loss", "full_kl", "nckd", "tckd", "teacher_probs", "teacher_weights"]
