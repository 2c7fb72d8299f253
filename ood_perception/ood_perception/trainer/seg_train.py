"""Implementation of the segmentation training loop (imported lazily by
:mod:`ood_perception.trainer.segmentation`, which holds the settings and the CLI)."""


from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from ood_perception.losses import a2d_loss, focal_loss, lovasz_softmax, outlier_entropy_loss
from ood_perception.models import FusionSegNet, ModelConfig, build_model
from ood_perception.synthesis import NPMix, feature_mixing, npmix_outlier_map
from ood_perception.trainer.checkpoint import atomic_torch_save, capture_rng, restore_rng
from ood_perception.trainer.seg_data import SegmentationData, collate
from ood_perception.trainer.segmentation import dist_info, validate_config

# ------------------------------------------------------------------------------------------
# the loss module (wrapped by DDP)
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Batch norm still normalises with batch statistics but does not update running stats."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    counts = [m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom, c in zip(bns, saved, counts, strict=True):
            m.momentum = mom
            if c is not None:
                m.num_batches_tracked.copy_(c)


class SegTrainModule(nn.Module):
    """Model + losses + synthesis in one ``forward`` (so DDP sees a single graph)."""

    def __init__(self, model: FusionSegNet, cfg: dict[str, Any], npmix: NPMix | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.npmix = npmix

    def forward(self, image: torch.Tensor, lidar: torch.Tensor, target: torch.Tensor,
                generator: torch.Generator, pixel_ood: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, lc, sc = self.cfg, self.cfg["loss"], self.cfg["synthesis"]
        out = self.model(image, lidar)
        g = float(lc["focal_gamma"])
        parts: dict[str, torch.Tensor] = {}
        parts["focal"] = focal_loss(out["logits"], target, gamma=g)
        parts["lovasz"] = lovasz_softmax(out["logits"], target)
        parts["camera"] = focal_loss(out["camera_logits"], target, gamma=g)
        parts["lidar"] = focal_loss(out["lidar_logits"], target, gamma=g)
        loss = parts["focal"] + float(lc["lovasz_weight"]) * parts["lovasz"] \
            + float(lc["unimodal_weight"]) * (parts["camera"] + parts["lidar"])
        fc, fl = out["camera_features"], out["lidar_features"]
        method = sc["method"]
        if method != "none":
            if method == "fm":
                fo = feature_mixing(fc, fl, n=int(sc["n"]), per_sample=bool(sc["per_sample"]), generator=generator).outliers
                mask = None
            else:
                small = F.interpolate(target[:, None].float(), size=fc.shape[-2:], mode="nearest")[:, 0].long()
                fo, mask = npmix_outlier_map(torch.cat([fc, fl], 1), small, self.npmix,
                                             int(sc["npmix"]["anchors"]), generator=generator)
            with frozen_bn_stats(self.model.fusion):
                _, out_logits = self.model.fused_head(fo)
            parts["outlier_entropy"] = outlier_entropy_loss(out_logits, mask)
            loss = loss + float(sc["gamma1"]) * parts["outlier_entropy"]
        if cfg["outlier_exposure"]["enabled"] and pixel_ood is not None:
            # real anomaly pixels of the training split to uniform (outlier exposure); 0 without any
            parts["outlier_exposure"] = outlier_entropy_loss(out["logits"], pixel_ood)
            loss = loss + float(cfg["outlier_exposure"]["weight"]) * parts["outlier_exposure"]
        if cfg["a2d"]["enabled"]:
            parts["a2d"] = a2d_loss(out["camera_logits"], out["lidar_logits"], target,
                                    max_pixels=int(cfg["a2d"]["max_pixels"]), generator=generator)
            loss = loss + float(cfg["a2d"]["gamma2"]) * parts["a2d"]
        parts["total"] = loss
        return loss, {k: v.detach() for k, v in parts.items()}


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (the rank's GPU) when available, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def flip_batch(batch: dict[str, Any], generator: torch.Generator) -> None:
    """Random horizontal flips (per sample, from ``generator``) of image, lidar, target and the
    anomaly pixel mask."""
    b = batch["image"].shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    for key in ("image", "lidar", "target", "pixel_ood"):
        t = batch[key]
        t[flip] = t[flip].flip(-1)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------


def train(cfg: dict[str, Any], data_root: str | os.PathLike[str], out_dir: str | os.PathLike[str],
          resume: bool = True, show_progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Train; returns a summary (per-step losses, epoch times, paths). See the module docstring."""


    validate_config(cfg)
    rank, world, local_rank = dist_info()
    distributed = world > 1
    device = resolve_device(cfg["device"], local_rank)
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        torch.set_num_threads(int(cfg["num_threads"]))
    out_dir = Path(out_dir)
    seed = int(cfg["seed"])
    seed_everything(seed)

    data = SegmentationData(data_root, cfg["data"]["train_split"], cfg["input_size"], cfg["data"]["cache_dir"],
                            cfg["data"]["schema"], show_progress=show_progress and rank == 0)
    dcfg = data.config
    outlier_types = data.anomaly_types_seen()  # model.json outlier_types: every anomaly type in training
    model_cfg = dict(cfg["model"], num_classes=dcfg.num_classes)
    if cfg["lidar_norm"] == "data":
        model_cfg["lidar_mean"], model_cfg["lidar_std"] = data.lidar_stats()
    model = build_model(ModelConfig.from_dict(model_cfg)).to(device)
    npmix = None
    sc = cfg["synthesis"]
    if sc["method"] == "npmix":
        npc = sc["npmix"]
        npmix = NPMix(dcfg.num_classes, model.config.camera_channels + model.config.lidar_channels,
                      int(npc["queue_size"]), int(npc["k"]), float(npc["alpha"]), seed=seed + rank)
    module = SegTrainModule(model, cfg, npmix).to(device)
    wrapped: nn.Module = module
    if distributed:
        wrapped = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    bs = int(cfg["batch_size"])
    steps_per_epoch = math.ceil(len(sampler) / bs)
    total_steps = int(cfg["epochs"]) * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    power = float(cfg["poly_power"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1.0 - s / max(total_steps, 1), 0.0) ** power)
    use_amp = bool(cfg["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator().manual_seed(seed * 1000 + 17 + rank)

    epoch, batch_pos, step = 0, 0, 0
    history: list[dict[str, float]] = []
    epoch_times: list[float] = []
    last = out_dir / "last.pt"
    if resume and last.is_file():
        from ood_perception.models import read_checkpoint

        ck = read_checkpoint(last, map_location="cpu")
        saved_cfg = ck["train"]["config"]
        saved_cfg = {"outlier_exposure": {"enabled": False, "weight": 0.5}, **saved_cfg}  # runs from before the key
        for key in ("model", "synthesis", "a2d", "outlier_exposure", "loss", "input_size", "batch_size", "seed", "lr"):
            if saved_cfg.get(key) != cfg.get(key):
                raise ValueError(f"{last}: cannot resume, setting '{key}' differs ({saved_cfg.get(key)} vs {cfg.get(key)}); "
                                 "use another --out or --no-resume")
        model.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        epoch, batch_pos, step = int(ck["epoch"]), int(ck["batch_in_epoch"]), int(ck["step"])
        history = list(ck.get("history", []))
        epoch_times = list(ck.get("epoch_times", []))
        restore_rng(ck["rng"], gen)
        if npmix is not None:
            npmix.load_state_dict(ck["npmix"])
        if rank == 0 and show_progress:
            print(f"resuming from {last}: epoch {epoch}, batch {batch_pos}, step {step}", file=sys.stderr)

    writer = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))

    train_info = {"config": cfg, "command": command or "", "data": str(Path(data_root).resolve()), "seed": seed}

    def checkpoint(path: Path, metrics: dict[str, Any] | None = None) -> None:
        if rank != 0:
            return
        atomic_torch_save({
            "model_config": model.config.to_dict(), "state_dict": model.state_dict(),
            "class_names": dcfg.class_names, "colors": dcfg.colors.tolist(), "input_size": list(cfg["input_size"]),
            "mean": list(cfg["image_mean"]), "std": list(cfg["image_std"]), "train": train_info,
            "metrics": metrics or {}, "dataset": dcfg.to_dict(), "outlier_types": outlier_types,
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epoch, "batch_in_epoch": batch_pos, "step": step, "rng": capture_rng(gen),
            "npmix": npmix.state_dict() if npmix is not None else {}, "history": history,
            "epoch_times": epoch_times,
        }, path)

    max_steps = cfg["max_steps"]
    stopped = False
    wrapped.train()
    while epoch < int(cfg["epochs"]) and not stopped:
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        t0 = time.perf_counter()
        bar = tqdm(total=len(batches), initial=batch_pos, desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                   disable=not (show_progress and rank == 0), leave=False)
        while batch_pos < len(batches):
            batch = collate([data[i] for i in batches[batch_pos]], cfg["image_mean"], cfg["image_std"])
            if cfg["hflip"]:
                flip_batch(batch, gen)
            image, lidar, target, pixel_ood = (batch[k].to(device) for k in ("image", "lidar", "target", "pixel_ood"))
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss, parts = wrapped(image, lidar, target, gen, pixel_ood)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            batch_pos += 1
            rec = {k: float(v) for k, v in parts.items()}
            rec["lr"] = float(sched.get_last_lr()[0])
            history.append(rec)
            if writer is not None and (step % int(cfg["log_every"]) == 0 or step == 1):
                for k, v in rec.items():
                    writer.add_scalar(f"train/{k}", v, step)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['total']:.3f}")
            if not math.isfinite(rec["total"]):
                raise FloatingPointError(f"loss became {rec['total']} at step {step} (parts {rec})")
            if batch_pos == len(batches):
                epoch_times.append(time.perf_counter() - t0)
                epoch, batch_pos = epoch + 1, 0
                if writer is not None:
                    writer.add_scalar("train/epoch_time_s", epoch_times[-1], step)
                checkpoint(last)
                break
            if step % int(cfg["checkpoint_every"]) == 0:
                checkpoint(last)
            if max_steps is not None and step >= int(max_steps):
                checkpoint(last)
                stopped = True
                break
        bar.close()
        if max_steps is not None and step >= int(max_steps):
            stopped = True
    finished = epoch >= int(cfg["epochs"])
    summary = {"steps": step, "epochs_done": epoch, "finished": finished, "history": history,
               "epoch_times": epoch_times, "last": str(last), "out": str(out_dir),
               "mean_epoch_time_s": float(np.mean(epoch_times)) if epoch_times else None,
               "world_size": world, "samples_per_rank_per_epoch": len(sampler)}
    if distributed:  # replicas must hold identical weights: compare a checksum across ranks
        with torch.no_grad():
            chk = torch.stack([sum(p.double().sum() for p in model.parameters()),
                               sum((p.double() ** 2).sum() for p in model.parameters())]).to(device)
        lo, hi = chk.clone(), chk.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        summary["ddp_in_sync"] = bool(torch.equal(lo, hi))
    if finished:
        checkpoint(out_dir / "model.pt", {"final_loss": history[-1]["total"] if history else None,
                                          "mean_epoch_time_s": summary["mean_epoch_time_s"]})
        summary["model"] = str(out_dir / "model.pt")
    if rank == 0:
        from ood_perception.data.config import atomic_write_bytes

        atomic_write_bytes(out_dir / "train_summary.json",
                           json.dumps(_jsonable({k: v for k, v in summary.items() if k != "history"}), indent=2).encode())
    if writer is not None:
        writer.close()
    if distributed:
        torch.distributed.barrier()
    return summary


