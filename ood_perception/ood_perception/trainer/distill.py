"""Distillation loops: retrain only the joint (fused) head with dark knowledge from frozen experts.

Recognition (:func:`distill_recognition_head`): the experts (video/flow encoders and heads) are
frozen, so their embeddings are computed once and cached; each step computes the experts' logits
on the batch, the teacher ``p^T = sum_m w_m p^m`` (:func:`~ood_perception.distill.teacher.teacher_probs`)
and trains the joint head with ``CE + alpha * TCKD + beta * NCKD``. Optional Feature Mixing on the
cached embeddings adds ``fm_weight * -entropy`` of the head on mixed outliers ("FM + distillation").

Segmentation (:func:`distill_segmentation`): teachers are the camera-only and LiDAR-only heads of a
:class:`~ood_perception.models.FusionSegNet`, per pixel, ignore index 255 respected; the student
is ``model.classifier`` (the fused head's final 1x1 conv) on the frozen ``features``.

Defaults: ``alpha = beta = 0.5`` (paper's advice for unknown OOD type; its code is said to use
0.2/0.8), temperature 1, Adam lr 1e-4 for 10 epochs (the paper's head retraining, from the paper
text, not verified against code).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ood_perception.distill.dkd import dkd_loss
from ood_perception.distill.teacher import TEACHER_MODES, teacher_probs


@dataclass
class DistillConfig:
    """Distillation hyper-parameters (see module docstring for where the defaults come from).

    Attributes:
        alpha, beta: TCKD and NCKD weights (0, 0 = plain CE retraining, the "Vanilla" row).
        teacher: ``weighted`` (paper), ``uniform`` or ``best`` (ablations).
        epochs, lr, batch_size: head retraining schedule (Adam).
        reinit: re-initialise the student head before training (otherwise fine-tune it).
        temperature: DKD temperature.
        feature_mixing, fm_channels, fm_weight: FM outliers on the cached embeddings.
        seed: shuffling, dropout and FM draws.
    """

    alpha: float = 0.5
    beta: float = 0.5
    teacher: str = "weighted"
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 32
    reinit: bool = False
    temperature: float = 1.0
    feature_mixing: bool = False
    fm_channels: int = 32
    fm_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.teacher not in TEACHER_MODES:
            raise ValueError(f"teacher must be one of {TEACHER_MODES}, got {self.teacher!r}")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1 or self.temperature <= 0:
            raise ValueError("epochs, batch_size must be >= 1 and lr, temperature > 0")


def freeze_all_but(model: nn.Module, student: nn.Module) -> list[nn.Parameter]:
    """Set ``requires_grad`` False everywhere except ``student``'s parameters; returns those."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(student.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def distill_recognition_head(model, zv: np.ndarray | torch.Tensor, zf: np.ndarray | torch.Tensor,
                             labels: np.ndarray | torch.Tensor, cfg: DistillConfig = DistillConfig()) -> list[dict[str, float]]:
    """Retrain ``model.joint_head`` of a :class:`~ood_perception.models.recognition.RecognitionNet`
    on cached embeddings with the DKD loss; every other parameter stays frozen and unchanged.

    Args:
        model: the recognition network (experts already trained).
        zv, zf: cached video / flow embeddings ``[N, D]`` of the training clips.
        labels: train ids ``[N]``.
    Returns:
        per-epoch means of ``loss``, ``ce``, ``tckd``, ``nckd`` (and ``fm_entropy``), plus the mean
        teacher weights ``w_video``, ``w_flow``.
    """
    zv, zf = torch.as_tensor(zv, dtype=torch.float32), torch.as_tensor(zf, dtype=torch.float32)
    y = torch.as_tensor(labels).long()
    if not (len(zv) == len(zf) == len(y)) or len(y) == 0:
        raise ValueError(f"zv/zf/labels must be non-empty and equally long, got {len(zv)}/{len(zf)}/{len(y)}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.eval()  # frozen experts; the student's dropout is applied explicitly below
    head = model.joint_head
    if cfg.reinit:
        head.reset_parameters()
    params = freeze_all_but(model, head)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    with torch.no_grad():
        expert_logits = [model.video_head(zv), model.flow_head(zf)]
    feats = torch.cat([zv, zf], 1)
    drop = float(getattr(model.config, "dropout", 0.0))
    history = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y), generator=gen)
        sums: dict[str, float] = {}
        for s in range(0, len(y), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            yb = y[idx]
            p_t, w = teacher_probs([e[idx] for e in expert_logits], yb, cfg.teacher, cfg.temperature, None)
            z_s = head(F.dropout(feats[idx], drop, training=True))
            parts = dkd_loss(z_s, p_t, yb, cfg.alpha, cfg.beta, cfg.temperature, ignore_index=None)
            loss = parts["ce"] + cfg.alpha * parts["tckd"] + cfg.beta * parts["nckd"]
            if cfg.feature_mixing:
                from ood_perception.losses import outlier_entropy_loss
                from ood_perception.synthesis.feature_mixing import feature_mixing

                mix = feature_mixing(zv[idx], zf[idx], n=cfg.fm_channels, generator=gen)
                parts["fm_entropy"] = outlier_entropy_loss(head(mix.outliers))
                loss = loss + cfg.fm_weight * parts["fm_entropy"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            parts["loss"] = loss
            parts["w_video"], parts["w_flow"] = w[0], w[1]
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(torch.as_tensor(v).detach()) * len(idx)
        history.append({k: v / len(y) for k, v in sums.items()})
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def _seg_dkd_step(z_s: torch.Tensor, camera_logits: torch.Tensor, lidar_logits: torch.Tensor, target: torch.Tensor,
                  cfg: DistillConfig, opt: torch.optim.Optimizer, sums: dict[str, float], ignore_index: int) -> None:
    """One per-pixel distillation step of the student logits ``z_s`` (at the target's size) against
    the camera/LiDAR teachers; adds the loss parts and teacher weights to ``sums``."""
    p_t, w = teacher_probs([camera_logits, lidar_logits], target, cfg.teacher, cfg.temperature, ignore_index)
    parts = dkd_loss(z_s, p_t, target, cfg.alpha, cfg.beta, cfg.temperature, ignore_index)
    opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    opt.step()
    parts["w_camera"], parts["w_lidar"] = w[0], w[1]
    for k, v in parts.items():
        sums[k] = sums.get(k, 0.0) + float(torch.as_tensor(v).detach())


def distill_segmentation(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                         cfg: DistillConfig = DistillConfig(), ignore_index: int = 255,
                         device: str | torch.device = "cpu") -> list[dict[str, float]]:
    """Retrain ``model.classifier`` of a FusionSegNet per pixel with camera/LiDAR teachers.

    Args:
        model: a :class:`~ood_perception.models.FusionSegNet` (contract in docs/architecture.md:
            ``forward`` gives ``logits``, ``camera_logits``, ``lidar_logits`` at input size and
            ``features``, the input of ``model.classifier``).
        batches: re-iterable of ``(image [B,3,H,W], lidar [B,6,H,W], target [B,H,W])`` train ids,
            ``ignore_index`` for unlabelled/OOD pixels.
    Returns:
        per-epoch mean ``loss``, ``ce``, ``tckd``, ``nckd``, ``w_camera``, ``w_lidar``.
    """
    torch.manual_seed(cfg.seed)
    model.to(device).eval()  # BatchNorm statistics of the frozen parts stay as trained
    head = model.classifier
    if cfg.reinit:
        head.reset_parameters()
    params = freeze_all_but(model, head)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    history = []
    for _ in range(cfg.epochs):
        sums: dict[str, float] = {}
        n = 0
        for image, lidar, target in batches:
            image, lidar, target = image.to(device), lidar.to(device), target.to(device).long()
            with torch.no_grad():
                out = model(image, lidar)
            if not bool((target != ignore_index).any()):
                continue
            z_s = F.interpolate(head(out["features"]), size=target.shape[-2:], mode="bilinear", align_corners=False)
            _seg_dkd_step(z_s, out["camera_logits"], out["lidar_logits"], target, cfg, opt, sums, ignore_index)
            n += 1
        if n == 0:
            raise ValueError("no batch with labelled pixels (all targets are ignore_index)")
        history.append({k: v / n for k, v in sums.items()})
    for p in model.parameters():
        p.requires_grad_(True)
    return history


def cache_segmentation_features(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                                device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Run the frozen FusionSegNet once per frame and keep what head retraining needs.

    Returns ``features`` ``[N, D, h, w]`` (input of ``model.classifier``), ``camera_logits`` and
    ``lidar_logits`` ``[N, K, h, w]`` at the feature resolution (the model's forward upsamples these
    bilinearly to the input size, which :func:`distill_segmentation_cached` repeats, so training on
    the cache sees exactly the teachers of :func:`distill_segmentation`) and ``target`` ``[N, H, W]``.
    """
    model.to(device).eval()
    keep: dict[str, list[torch.Tensor]] = {"features": [], "camera_logits": [], "lidar_logits": [], "target": []}
    with torch.no_grad():
        for image, lidar, target in batches:
            fc, fl = model.encode(image.to(device), lidar.to(device))
            feats, _ = model.fused_head(torch.cat([fc, fl], 1))
            keep["features"].append(feats.cpu())
            keep["camera_logits"].append(model.camera_head(fc)[1].cpu())
            keep["lidar_logits"].append(model.lidar_head(fl)[1].cpu())
            keep["target"].append(target.to(torch.uint8 if int(target.max()) < 256 else torch.long).cpu())
    if not keep["target"]:
        raise ValueError("no frames to cache")
    return {k: torch.cat(v) for k, v in keep.items()}


def distill_segmentation_cached(head: nn.Conv2d, cache: dict[str, torch.Tensor], cfg: DistillConfig = DistillConfig(),
                                ignore_index: int = 255) -> list[dict[str, float]]:
    """Retrain the fused 1x1 ``head`` on cached features (:func:`cache_segmentation_features`).

    Same loss as :func:`distill_segmentation` (student and expert logits upsampled bilinearly to the
    target size, teacher per pixel, ``ignore_index`` left out), frames shuffled per epoch with
    ``cfg.seed``; ``cfg.alpha = cfg.beta = 0`` gives plain CE retraining. Only ``head`` is trained
    (the experts are not touched: their logits are cached tensors).
    """
    feats, cam, lid, tgt = cache["features"], cache["camera_logits"], cache["lidar_logits"], cache["target"]
    if not (len(feats) == len(cam) == len(lid) == len(tgt)) or len(tgt) == 0:
        raise ValueError("cache tensors must be non-empty and equally long")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.reinit:
        head.reset_parameters()
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    size = tgt.shape[-2:]

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    history = []
    for _ in range(cfg.epochs):
        sums: dict[str, float] = {}
        n = 0
        perm = torch.randperm(len(tgt), generator=gen)
        for s in range(0, len(tgt), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            target = tgt[idx].long()
            if not bool((target != ignore_index).any()):
                continue
            _seg_dkd_step(up(head(feats[idx])), up(cam[idx]), up(lid[idx]), target, cfg, opt, sums, ignore_index)
            n += 1
        if n == 0:
            raise ValueError("no batch with labelled pixels (all targets are ignore_index)")
        history.append({k: v / n for k, v in sums.items()})
    return history
