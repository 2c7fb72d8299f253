"""Outlier synthesis in feature space, train-time only.

* :func:`feature_mixing` (Feature Mixing, arXiv 2505.16985): swap N channels between the cloned
  camera and LiDAR feature maps; defaults N=10, gamma1=3.0 (paper, segmentation).
* :class:`NPMix` / :func:`npmix_outlier_map` (MultiOOD's NP-Mix): nearest-prototype mixing, the
  baseline (``anchors`` mode, the trainer's); :func:`npmix_faithful_outliers`: the original's
  per-class algorithm with pixels as samples (``faithful`` mode, for the cost comparison).
* :class:`~ood_perception.synthesis.dynamic_beta.DynamicBetaMixup` (MoFE's Dynamic-beta Mixup,
  used by ``train crops --method mofe-dbm``; import it from its module).
* :data:`SYNTHESIS_METHODS`: the names the trainer accepts (``none``, ``fm``, ``npmix``).
"""

from __future__ import annotations

from ood_perception.synthesis.feature_mixing import (
    DEFAULT_GAMMA1,
    DEFAULT_N,
    MixResult,
    feature_mixing,
    swap_mask,
)
from ood_perception.synthesis.npmix import (
    DEFAULT_ALPHA,
    MULTIOOD_K,
    MULTIOOD_QUEUE_SIZE,
    NPMIX_MODES,
    NPMix,
    npmix_faithful_outliers,
    npmix_outlier_map,
)

#: Synthesis methods of the segmentation trainer.
SYNTHESIS_METHODS: tuple[str, ...] = ("none", "fm", "npmix")

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_GAMMA1",
    "DEFAULT_N",
    "MULTIOOD_K",
    "MULTIOOD_QUEUE_SIZE",
    "MixResult",
    "NPMIX_MODES",
    "NPMix",
    "SYNTHESIS_METHODS",
    "feature_mixing",
    "npmix_faithful_outliers",
    "npmix_outlier_map",
    "swap_mask",
]
