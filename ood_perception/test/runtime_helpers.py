"""Helpers of the runtime/export tests: a tiny FusionSegNet checkpoint and a tiny labelled dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ood_perception.data import DatasetConfig, Frame, SemanticKittiWriter
from ood_perception.geometry import Calibration, intrinsics_from_fov

H, W = 32, 64
TINY = {"num_classes": 4, "camera_backbone": "tiny", "camera_channels": 8, "lidar_channels": 8,
        "lidar_width": 8, "head_channels": 8, "tiny_width": 8}
CLASS_NAMES = ["road", "car", "building", "vegetation"]
COLORS = [[255, 0, 255], [100, 150, 245], [255, 200, 0], [0, 175, 0]]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def tiny_checkpoint(path: Path, seed: int = 0, num_classes: int = 4) -> Path:
    """Write a checkpoint of a randomly initialised tiny FusionSegNet (the training contract's keys)."""
    from ood_perception.models import build_model

    torch.manual_seed(seed)
    cfg = dict(TINY, num_classes=num_classes)
    model = build_model(cfg).eval()
    ckpt = {
        "model_config": cfg,
        "state_dict": model.state_dict(),
        "class_names": CLASS_NAMES[:num_classes] + [f"c{i}" for i in range(num_classes - 4)],
        "colors": (COLORS + [[1, 2, 3]] * num_classes)[:num_classes],
        "input_size": [H, W],
        "mean": MEAN,
        "std": STD,
        "train": {"command": "ood-perception train segmentation --data synth", "seed": 7, "data": "synth"},
        "metrics": {"miou": 0.5},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def tiny_inputs(batch: int = 2, seed: int = 1) -> dict[str, np.ndarray]:
    """Random network inputs at the tiny input size (LiDAR sparse like a real projection)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, 3, H, W)).astype(np.float32)
    lidar = np.zeros((batch, 6, H, W), np.float32)
    valid = rng.random((batch, H, W)) < 0.3
    xyz = rng.normal(size=(batch, 3, H, W)) * np.array([10.0, 5.0, 1.0])[None, :, None, None]
    lidar[:, :3] = xyz * valid[:, None]
    lidar[:, 3] = np.linalg.norm(xyz, axis=1) * valid
    lidar[:, 4] = rng.random((batch, H, W)) * valid
    lidar[:, 5] = valid
    return {"image": image, "lidar": lidar}


def tiny_dataset(root: Path, frames_per_split: int = 3, seed: int = 0) -> Path:
    """A labelled SemanticKITTI-layout dataset (train = seq 00, val = seq 08) of random frames at
    2x the tiny input size, in :func:`tiny_checkpoint`'s label space (road, car, building,
    vegetation: SemanticKITTI's raw ids 40, 10, 50, 70); pixel labels include unlabelled (0) and an
    OOD id (200)."""
    kitti = DatasetConfig.semantic_kitti().to_dict()
    raw = {0: "unlabeled", 40: "road", 10: "car", 50: "building", 70: "vegetation", 200: "anomaly"}
    d = {"labels": raw, "color_map": {k: kitti["color_map"].get(k, [0, 0, 255]) for k in raw},
         "learning_map": {0: 0, 40: 1, 10: 2, 50: 3, 70: 4, 200: 0},
         "learning_map_inv": {0: 0, 1: 40, 2: 10, 3: 50, 4: 70}, "ood_ids": [200],
         "splits": {"train": ["00"], "val": ["08"]}}
    cfg = DatasetConfig.from_dict(d)
    writer = SemanticKittiWriter(root, cfg)
    writer.write_config()
    rng = np.random.default_rng(seed)
    h, w = 2 * H, 2 * W
    K = intrinsics_from_fov(w, h, 90.0)
    T = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)  # x fwd -> z cam
    calib = Calibration(K, w, h, T)
    raw_ids = np.array([0, 40, 10, 50, 70, 200], np.uint16)
    for seq in ("00", "08"):
        frames = []
        for i in range(frames_per_split):
            pts = np.c_[rng.uniform(2, 30, 500), rng.uniform(-10, 10, 500), rng.uniform(-2, 2, 500),
                        rng.random(500)].astype(np.float32)
            frames.append(Frame(seq, f"{i:06d}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8), pts,
                                np.full(500, 40, np.uint32), raw_ids[rng.integers(0, 6, (h, w))], calib,
                                np.eye(4), float(i)))
        writer.write_sequence(frames)
    return root
