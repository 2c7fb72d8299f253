"""A tiny SemanticKITTI-layout camera + LiDAR dataset for tests and smoke runs (seconds to make).

Each frame: a sky/building band, a road band, a few cars and (optionally) one anomaly, drawn as
flat colour regions with noise; LiDAR points are back-projected from a pixel grid at a
per-class depth, labelled like the pixel they come from. Classes are deliberately easy (colour and
depth separate them) so a few optimisation steps measurably learn; the anomaly has its own
colour and depth, raw id 150, listed in ``ood_ids``. This is not the synthetic world (that is
``ood-perception synth``); it only exercises the training machinery.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ood_perception.data import DatasetConfig, Frame, SemanticKittiWriter
from ood_perception.geometry import Calibration, intrinsics_from_fov

#: Label space of the toy data (raw ids as in SemanticKITTI, anomaly = 150).
TOY_LABELS: dict = {
    "labels": {0: "unlabeled", 10: "car", 40: "road", 50: "building", 150: "anomaly"},
    "color_map": {0: [0, 0, 0], 10: [245, 150, 100], 40: [255, 0, 255], 50: [0, 200, 255], 150: [0, 255, 0]},
    "learning_map": {0: 0, 10: 1, 40: 2, 50: 3, 150: 0},
    "learning_map_inv": {0: 0, 1: 10, 2: 40, 3: 50},
    "ood_ids": [150],
    "splits": {"train": ["00"], "val": ["01"], "test": ["01"]},
}

_COLOUR = {10: (40, 60, 200), 40: (90, 90, 90), 50: (180, 70, 50), 150: (40, 200, 40)}
_DEPTH = {10: 8.0, 40: 12.0, 50: 30.0, 150: 6.0}
# Optical frame (x right, y down, z forward) from LiDAR body frame (x forward, y left, z up).
_OPTICAL_FROM_BODY = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def toy_frame(seq: str, i: int, rng: np.random.Generator, size: tuple[int, int] = (32, 64), anomaly: bool = True) -> Frame:
    """One toy frame of ``size = (H, W)``."""
    h, w = size
    calib = Calibration(intrinsics_from_fov(w, h, 90.0), w, h, _OPTICAL_FROM_BODY)
    lab = np.full((h, w), 50, np.uint16)
    horizon = int(h * rng.uniform(0.4, 0.6))
    lab[horizon:] = 40
    for _ in range(int(rng.integers(1, 3))):
        cw, ch = int(w * rng.uniform(0.12, 0.25)), int(h * rng.uniform(0.15, 0.3))
        x0, y0 = int(rng.integers(0, w - cw)), int(rng.integers(max(horizon - ch // 2, 0), h - ch))
        lab[y0:y0 + ch, x0:x0 + cw] = 10
    if anomaly:
        aw, ah = int(w * rng.uniform(0.1, 0.2)), int(h * rng.uniform(0.15, 0.25))
        x0, y0 = int(rng.integers(0, w - aw)), int(rng.integers(horizon, h - ah))
        lab[y0:y0 + ah, x0:x0 + aw] = 150
    img = np.zeros((h, w, 3), np.float64)
    depth = np.zeros((h, w))
    for raw, col in _COLOUR.items():
        m = lab == raw
        img[m] = col
        depth[m] = _DEPTH[raw]
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    # LiDAR: every 2nd pixel row/col back-projected at its class depth (plus noise)
    vv, uu = np.mgrid[0:h:2, 0:w:2]
    uu, vv = uu.ravel() + 0.5, vv.ravel() + 0.5
    d = depth[vv.astype(int), uu.astype(int)] * rng.uniform(0.95, 1.05, uu.size)
    rays = np.linalg.solve(calib.K, np.stack([uu, vv, np.ones_like(uu)]))
    cam = np.vstack([rays * d, np.ones(uu.size)])
    pts = (np.linalg.inv(calib.T_cam_lidar) @ cam)[:3].T
    inten = rng.uniform(0, 1, (uu.size, 1))
    points = np.hstack([pts, inten]).astype(np.float32)
    point_labels = lab[vv.astype(int), uu.astype(int)].astype(np.uint32)
    return Frame(seq, f"{i:06d}", img, points, point_labels, lab, calib, None, i * 0.1)


def make_toy_dataset(root: str | os.PathLike[str], frames: dict[str, int] | None = None, size: tuple[int, int] = (32, 64),
                     seed: int = 0) -> Path:
    """Write a toy dataset (default sequence 00 with 12 frames, 01 with 6) and return its root."""
    root = Path(root)
    frames = frames or {"00": 12, "01": 6}
    cfg = DatasetConfig.from_dict(TOY_LABELS)
    writer = SemanticKittiWriter(root, cfg)
    writer.write_config()
    rng = np.random.default_rng(seed)
    for seq, n in frames.items():
        calib = None
        for i in range(n):
            f = toy_frame(seq, i, rng, size)
            calib = f.calib
            writer.write_frame(f)
        writer.write_sequence_meta(seq, calib)
    return root
