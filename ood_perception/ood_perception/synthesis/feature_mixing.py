"""Feature Mixing (Liu, Dong et al., arXiv 2505.16985): multimodal outlier synthesis by swapping
channels between the two modalities' feature maps.

Given camera features ``Fc`` ``[B, dc, ...]`` and LiDAR features ``Fl`` ``[B, dl, ...]``, clone
both, pick N channel indices below ``min(dc, dl)`` (so each index exists in both modalities) and
exchange those channels between the clones: ``Fc'[j] = Fl[j]``, ``Fl'[j] = Fc[j]``. The outlier
features are ``Fo = [Fc' || Fl']`` and go through the same fused head as ID features.

Our documented choices where the paper summary is silent (the official code could not be read):
the channel axis is dim 1 (per-pixel features keep their spatial layout), and indices are drawn
independently for every sample of the batch (``per_sample=True``; ``False`` draws one set for
the whole batch). Defaults N=10 and gamma1=3.0 are the paper's segmentation values (from the
paper text, not verified against code).

Deviation bound (what the unit tests check). With ``F = [Fc || Fl]`` and ``S`` the swapped
set, the difference ``Fo - F`` is zero outside ``S`` and equals ``+-(Fl_j - Fc_j)`` in channel j
of each half, so at every pixel p::

    ||Fo(p) - F(p)||_2 = sqrt(2 * sum_{j in S} (Fc_j(p) - Fl_j(p))^2) <= sqrt(2N) * delta(p)

with ``delta(p) = max_{j in S} |Fc_j(p) - Fl_j(p)|`` (hence also <= sqrt(2N) * delta for any
``delta >= max_{j < min(dc, dl)} |Fc_j(p) - Fl_j(p)|``, the paper's sqrt(2N) * delta).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Paper defaults for segmentation (arXiv 2505.16985): swapped channels N, entropy weight gamma1.
DEFAULT_N: int = 10
DEFAULT_GAMMA1: float = 3.0


@dataclass
class MixResult:
    """Output of :func:`feature_mixing`.

    Attributes:
        outliers: ``Fo = [Fc' || Fl']`` ``[B, dc + dl, ...]``.
        camera: ``Fc'``; lidar: ``Fl'``.
        indices: ``[B, N]`` (or ``[1, N]`` when not per sample) swapped channel indices.
    """

    outliers: torch.Tensor
    camera: torch.Tensor
    lidar: torch.Tensor
    indices: torch.Tensor


def swap_mask(batch: int, channels: int, n: int, per_sample: bool = True,
              generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random boolean mask ``[B, channels]`` with exactly ``n`` True entries per row, and the
    ``[B, n]`` (sorted) indices. Rows are independent when ``per_sample`` else identical."""
    if not 0 < n <= channels:
        raise ValueError(f"N must be in 1..{channels} (channels valid in both modalities), got {n}")
    rows = batch if per_sample else 1
    keys = torch.rand(rows, channels, generator=generator, device=generator.device if generator else device)
    idx = keys.argsort(dim=1)[:, :n].sort(dim=1).values.to(device)
    mask = torch.zeros(rows, channels, dtype=torch.bool, device=device)
    mask.scatter_(1, idx, True)
    if not per_sample:
        mask = mask.expand(batch, channels)
    return mask, idx


def feature_mixing(fc: torch.Tensor, fl: torch.Tensor, n: int = DEFAULT_N, per_sample: bool = True,
                   generator: torch.Generator | None = None) -> MixResult:
    """Synthesise outlier features by swapping ``n`` channels between ``fc`` and ``fl``.

    Args:
        fc: camera features ``[B, dc, ...]``; fl: LiDAR features ``[B, dl, ...]`` (same B and
            trailing shape).
        n: channels to swap (must be <= min(dc, dl)).
        per_sample: draw indices per sample (default) or once for the batch.
        generator: torch RNG for reproducible draws (CPU generator is fine for CUDA tensors).

    The inputs are not modified; gradients flow to both.
    """
    if fc.dim() < 2 or fl.dim() < 2 or fc.shape[0] != fl.shape[0] or fc.shape[2:] != fl.shape[2:]:
        raise ValueError(f"Fc {tuple(fc.shape)} and Fl {tuple(fl.shape)} must share batch and spatial shape")
    m, dc = min(fc.shape[1], fl.shape[1]), fc.shape[1]
    _, idx = swap_mask(fc.shape[0], m, n, per_sample, generator, fc.device)
    # One pass to build Fo = [Fc || Fl], then overwrite only the 2N swapped channels per sample, in
    # place: Fo is our own fresh tensor and cat's backward does not need it, so autograd allows it
    # (out-of-place index_put copied Fo twice more: 3x the time at the paper's scale).
    fo = torch.cat([fc, fl], dim=1)
    rows = torch.arange(fc.shape[0], device=fc.device).unsqueeze(1)
    cols = idx.expand(fc.shape[0], n)
    fo.index_put_((rows, cols), fl[rows, cols])
    fo.index_put_((rows, cols + dc), fc[rows, cols])
    return MixResult(outliers=fo, camera=fo[:, :dc], lidar=fo[:, dc:], indices=idx)
