"""``ood-perception train recognition``: train the video + flow recognition network.

Loss per batch (MultiOOD recipe, joint training of experts and joint head)::

    CE(joint) + CE(video head) + CE(flow head)
      [+ a2d_weight * A2D(video_logits, flow_logits)]                  (--a2d-weight, MultiOOD: 1.0)
      [+ fm_weight * -entropy(joint_head(FeatureMixing(z_video, z_flow, N)))]   (--feature-mixing)

Feature Mixing at the embedding level swaps ``N`` random channels between the video and flow
embeddings (``ood_perception.synthesis.feature_mixing``). The paper used N=512 for 2304/2048-dim
SlowFast/I3D embeddings (~22-25% of the channels); our embeddings are 128-dim, so the default is
N=32 (25%), our scaling. ``fm_weight`` defaults to 1.0 (our choice; the paper's gamma1=3.0 is its
segmentation value). A2D is ``ood_perception.losses.a2d_loss``.

Data: ``--data DIR`` is a synthetic clip dataset (``dataset.yaml`` with ``kind: clips``), a
class-per-folder video dataset, or an empty/missing directory, in which case synthetic clips are
generated there first (``ood_perception.world.clips``; this is where clip generation lives on
the CLI). Checkpoints are written atomically (temp + rename) and load with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.atomic import atomic_path
from ood_perception.data.clips import FlowParams, SyntheticClipDataset, VideoFolderDataset, stack_dataset
from ood_perception.metrics import calibrate_threshold, ood_metrics


@dataclass
class RecognitionTrainConfig:
    """Hyper-parameters of :func:`train_recognition` (defaults: our choices sized for 2 CPU cores)."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    feature_mixing: bool = False
    fm_channels: int = 32
    fm_weight: float = 1.0
    a2d_weight: float = 0.0
    device: str = "cpu"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def load_splits(data: str | os.PathLike, clip_len: int = 16, size: int = 64, ood_data: str | None = None,
                progress: bool = True) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    """Arrays ``{split: (video, flow, labels)}`` and the class names.

    Synthetic data gives ``train``, ``test``, ``near_ood``, ``far_ood``; a video folder gives
    ``train``/``test`` (a deterministic 80/20 split per class) and, with ``ood_data`` (another
    class-per-folder directory), ``ood``.
    """

    root = Path(data)
    if (root / "dataset.yaml").is_file():
        import yaml

        meta = yaml.safe_load((root / "dataset.yaml").read_text())
        if meta.get("kind") == "clips":
            out = {s: stack_dataset(SyntheticClipDataset(root, s), progress) for s in meta["splits"]}
            return out, list(meta["classes"])
    ds = VideoFolderDataset(root, clip_len=clip_len, size=size)
    video, flow, labels = stack_dataset(ds, progress)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.permutation(idx)[: max(1, len(idx) // 5)]] = True
    out = {"train": (video[~test], flow[~test], labels[~test]), "test": (video[test], flow[test], labels[test])}
    if ood_data:
        out["ood"] = stack_dataset(VideoFolderDataset(ood_data, clip_len, size, ood=True), progress)
    return out, ds.class_names


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def recognition_loss(model, out: dict, labels, cfg: RecognitionTrainConfig, generator=None) -> dict[str, Any]:
    """The training loss of one batch (see module docstring) and its parts."""
    import torch.nn.functional as F  # lazy: torch is heavy to import and only this path needs it

    parts = {
        "ce_joint": F.cross_entropy(out["logits"], labels),
        "ce_video": F.cross_entropy(out["video_logits"], labels),
        "ce_flow": F.cross_entropy(out["flow_logits"], labels),
    }
    loss = parts["ce_joint"] + parts["ce_video"] + parts["ce_flow"]
    if cfg.a2d_weight > 0:
        from ood_perception.losses import a2d_loss

        parts["a2d"] = a2d_loss(out["video_logits"], out["flow_logits"], labels)
        loss = loss + cfg.a2d_weight * parts["a2d"]
    if cfg.feature_mixing:
        from ood_perception.losses import outlier_entropy_loss
        from ood_perception.synthesis.feature_mixing import feature_mixing

        mix = feature_mixing(out["video_features"], out["flow_features"], n=cfg.fm_channels, generator=generator)
        parts["fm_entropy"] = outlier_entropy_loss(model.joint_head(mix.outliers))
        loss = loss + cfg.fm_weight * parts["fm_entropy"]
    parts["loss"] = loss
    return parts


def train_recognition(model, video: np.ndarray, flow: np.ndarray, labels: np.ndarray,
                      cfg: RecognitionTrainConfig, progress: bool = True) -> list[dict[str, float]]:
    """Train ``model`` in place on arrays; returns per-epoch mean losses and train accuracy."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    if not (len(video) == len(flow) == len(labels)) or len(labels) == 0:
        raise ValueError(f"video/flow/labels must be non-empty and equally long, got {len(video)}/{len(flow)}/{len(labels)}")
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"training labels must be in [0, {model.num_classes}), got [{labels.min()}, {labels.max()}]")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(labels) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.2)
    rng = np.random.default_rng(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(labels))
        sums: dict[str, float] = {}
        correct = 0
        t0 = time.time()
        for start in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[start:start + cfg.batch_size])
            v = torch.from_numpy(video[idx]).to(dev)
            f = torch.from_numpy(flow[idx]).to(dev)
            y = torch.from_numpy(labels[idx]).to(dev)
            out = model(v, f)
            parts = recognition_loss(model, out, y, cfg, gen)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            sched.step()
            for k, val in parts.items():
                sums[k] = sums.get(k, 0.0) + float(val.detach()) * len(idx)
            correct += int((out["logits"].argmax(1) == y).sum())
        rec = {k: v / len(labels) for k, v in sums.items()}
        rec.update(epoch=epoch + 1, train_acc=correct / len(labels), seconds=time.time() - t0)
        history.append(rec)
        if progress:
            _log(f"epoch {epoch + 1}/{cfg.epochs} loss {rec['loss']:.3f} acc {rec['train_acc']:.3f} ({rec['seconds']:.1f}s)")
    model.eval()
    return history


def embed_arrays(model, video: np.ndarray, flow: np.ndarray, batch_size: int = 64, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Frozen per-modality embeddings ``(z_video, z_flow)`` ``[N, D]`` of whole arrays (eval mode)."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    model.eval().to(device)
    zv, zf = [], []
    with torch.no_grad():
        for s in range(0, len(video), batch_size):
            a, b = model.embed(torch.from_numpy(video[s:s + batch_size]).to(device),
                               torch.from_numpy(flow[s:s + batch_size]).to(device))
            zv.append(a.cpu().numpy())
            zf.append(b.cpu().numpy())
    return np.concatenate(zv), np.concatenate(zf)


def save_recognition_checkpoint(path: str | os.PathLike, model, class_names: list[str], extra: dict[str, Any]) -> Path:
    """Atomically write a recognition checkpoint (``task: recognition``; ``weights_only``-loadable)."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "task": "recognition",
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "class_names": list(class_names),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def evaluate_recognition(model, splits: dict, scorer: str = "msp", device: str = "cpu") -> dict[str, Any]:
    """ID accuracy of each head on ``test`` and, per OOD split, AUROC/FPR95 of ``scorer`` on the joint head."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.scoring import (  # lazy: torch is heavy to import and only this path needs it
        get_scorer,
    )

    def run(split):
        v, f, _ = splits[split]
        outs: dict[str, list] = {}
        model.eval().to(device)
        with torch.no_grad():
            for s in range(0, len(v), 64):
                o = model(torch.from_numpy(v[s:s + 64]).to(device), torch.from_numpy(f[s:s + 64]).to(device))
                for k in ("logits", "video_logits", "flow_logits"):
                    outs.setdefault(k, []).append(o[k].cpu())
        return {k: torch.cat(x) for k, x in outs.items()}

    test = run("test")
    y = torch.from_numpy(splits["test"][2])
    res: dict[str, Any] = {f"acc_{k.replace('logits', '').strip('_') or 'joint'}": float((test[k].argmax(1) == y).float().mean())
                           for k in test}
    sc = get_scorer(scorer)
    s_id = sc(test["logits"]).numpy()
    # threshold keeping 95% of ID test clips (used by the pipeline / node)
    res["threshold"] = {"scorer": scorer, "value": calibrate_threshold(s_id, 0.95), "tpr_id": 0.95}
    for split in splits:
        if split in ("train", "test"):
            continue
        s_ood = sc(run(split)["logits"]).numpy()
        m = ood_metrics(np.concatenate([s_id, s_ood]), np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))])
        res[split] = {"auroc": m["auroc"], "fpr95": m["fpr95"]}
    return res


# ----------------------------------------------------------------------------------------------
# CLI (dispatched by commands/train.py as `ood-perception train recognition`)
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ood-perception train recognition``."""
    d = RecognitionTrainConfig()
    parser.add_argument("--data", required=True, help="synthetic clip dataset, class-per-folder video dataset, "
                        "or an empty/missing directory (synthetic clips are generated there)")
    parser.add_argument("--out", default="runs/recognition/model.pt", help="checkpoint path (default %(default)s)")
    parser.add_argument("--ood-data", default=None, help="class-per-folder OOD videos (video-folder datasets only)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--embed-dim", type=int, default=128, help="embedding size per modality (default %(default)s)")
    parser.add_argument("--width", type=int, default=16, help="first 3D conv width (default %(default)s)")
    parser.add_argument("--feature-mixing", action="store_true", help="Feature Mixing outlier synthesis on embeddings")
    parser.add_argument("--fm-channels", type=int, default=d.fm_channels,
                        help="N swapped channels (default %(default)s = 25%% of 128; paper: 512 of 2304/2048)")
    parser.add_argument("--fm-weight", type=float, default=d.fm_weight, help="outlier entropy weight (default %(default)s)")
    parser.add_argument("--a2d-weight", type=float, default=d.a2d_weight, help="A2D weight, 0 = off (MultiOOD: 1.0)")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip (video folders, generation)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (video folders, generation)")
    parser.add_argument("--clips-per-class", type=int, default=60, help="train clips per class when generating")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    """Train, evaluate on the held-out splits, write the checkpoint; returns 0."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    from ood_perception.models.recognition import (  # lazy: torch is heavy to import and only this path needs it
        RecognitionConfig,
        build_recognition_model,
    )

    torch.set_num_threads(max(1, args.threads))
    root = Path(args.data)
    if not root.is_dir() or not any(root.iterdir()):
        raise ValueError(f"no clips in {root}: give a clip dataset, or let `ood-perception train recognition` "
                         "generate synthetic clips there")
    splits, class_names = load_splits(root, args.clip_len, args.size, args.ood_data)
    cfg = RecognitionTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 feature_mixing=args.feature_mixing, fm_channels=args.fm_channels,
                                 fm_weight=args.fm_weight, a2d_weight=args.a2d_weight, device=args.device)
    torch.manual_seed(args.seed)
    model = build_recognition_model(RecognitionConfig(len(class_names), args.embed_dim, args.width))
    history = train_recognition(model, *splits["train"], cfg)
    metrics = evaluate_recognition(model, splits, device=args.device) if "test" in splits else {}
    _log(f"metrics: {metrics}")
    out = save_recognition_checkpoint(args.out, model.cpu(), class_names, {
        "clip_len": int(splits["train"][0].shape[2]),
        "size": int(splits["train"][0].shape[-1]),
        "flow_params": asdict(FlowParams()),
        "train": {"config": asdict(cfg), "command": " ".join(sys.argv), "data": str(root), "seed": args.seed},
        "metrics": metrics,
        "history": history,
    })
    _log(f"wrote {out}")
    return 0
