"""Gallery images of the synthetic world, one per weather (for docs/world.md).

Each image shows the camera, the camera labels (SemanticKITTI colours, anomalies white with a red
outline), the camera with the LiDAR points drawn where calib projects them, and the LiDAR bird's-eye
view coloured by label (anomalies white and enlarged; the ego is the white dot, 40 m each way).
Run: ``python -m ood_perception.world.gallery --out docs/img``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from ood_perception.data.config import atomic_write_bytes
from ood_perception.geometry import project_points
from ood_perception.world.config import WEATHERS, WorldConfig
from ood_perception.world.labels import world_dataset_config
from ood_perception.world.render import SequenceRenderer
from ood_perception.world.scenario import plan_dataset

ANOMALY_BGR = (255, 255, 255)  # SemanticKITTI colours road magenta: anomalies are white, outlined red


def panel(frame, config, bev_size: int = 256, bev_range: float = 40.0) -> np.ndarray:
    """One BGR gallery image ``[2H, 2W]``: camera | labels over BEV | camera with LiDAR overlay."""

    lut = config.raw_colors_bgr()
    cam = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
    h, w = cam.shape[:2]
    lab = lut[frame.pixel_labels].copy()
    ood = config.ood_mask(frame.pixel_labels).astype(np.uint8)
    lab[ood > 0] = ANOMALY_BGR
    contours, _ = cv2.findContours(ood, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(lab, contours, -1, (0, 0, 255), 2)
    # bird's-eye view: x forward up the image, y left to the left
    bev = np.zeros((bev_size, bev_size, 3), np.uint8)
    pts, sem = frame.points, frame.point_labels & 0xFFFF
    scale = bev_size / (2 * bev_range)
    col = (bev_size / 2 - pts[:, 1] * scale).astype(int)
    row = (bev_size / 2 - pts[:, 0] * scale).astype(int)
    ok = (col >= 0) & (col < bev_size) & (row >= 0) & (row < bev_size)
    bev[row[ok], col[ok]] = lut[sem[ok]]
    pood = ok & config.ood_mask(sem)
    for r, c in zip(row[pood].tolist(), col[pood].tolist(), strict=True):
        cv2.circle(bev, (c, r), 2, ANOMALY_BGR, -1)
    cv2.circle(bev, (bev_size // 2, bev_size // 2), 3, (0, 0, 255), -1)
    # camera with the LiDAR points drawn where they project (coloured by label)

    over = cam.copy()
    pr = project_points(pts, frame.calib)
    vis = np.flatnonzero(pr.visible)[::3]
    over[pr.v[vis], pr.u[vis]] = lut[sem[vis]]
    over[pr.v[vis][config.ood_mask(sem[vis])], pr.u[vis][config.ood_mask(sem[vis])]] = ANOMALY_BGR
    bev_panel = np.zeros((h, w, 3), np.uint8)
    side = min(h, w)
    bev_panel[:, (w - side) // 2:(w - side) // 2 + side] = cv2.resize(bev, (side, side), interpolation=cv2.INTER_NEAREST)
    top = np.hstack([cam, lab])
    bottom = np.hstack([over, bev_panel])
    return np.vstack([top, bottom])


def main(argv: list[str] | None = None) -> int:
    """Render one anomaly frame per weather and write ``world_<weather>.png`` under ``--out``."""


    p = argparse.ArgumentParser(description="gallery images of the synthetic world, one per weather")
    p.add_argument("--out", default="docs/img")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=float, default=0.6, help="downscale of the 2x2 panel (keeps PNGs small)")
    args = p.parse_args(argv)
    config = world_dataset_config()
    out = Path(args.out)
    for k, weather in enumerate(WEATHERS):
        plan = plan_dataset(WorldConfig(), sequences=1, frames=30, seed=args.seed + k, split="test", weathers=[weather])
        seq = plan.sequences[0]
        ep = max(seq.episodes, key=lambda e: e.est_share[1])
        frame = SequenceRenderer(seq, plan.config).render(ep.stop - 1)
        img = panel(frame, config)
        img = cv2.resize(img, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        path = out / f"world_{weather}.png"
        atomic_write_bytes(path, buf.tobytes())
        names = sorted({a.name for a in ep.anomalies})
        print(f"{path}: {len(buf) // 1024} KB, anomalies {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
