"""Knobs of the synthetic world: sensors, anomalies (difficulty), weather mix, sequence timing.

Every field has a documented default; ``WorldConfig.from_dict`` / ``from_yaml`` accept a nested
mapping with the same names (``camera: {width: 640}``), unknown keys are an error. The defaults
are deliberately *hard* (docs/world.md): anomalies often copy the colours/textures of known
classes, many are small, and a third of sequences are at night or in fog.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

WEATHERS: tuple[str, ...] = ("day", "dusk", "night", "fog", "rain")


@dataclass
class CameraConfig:
    """Pinhole camera rigidly mounted next to the LiDAR.

    ``xyz``/``rpy``: the camera body pose (x forward, y left, z up) in the LiDAR frame; the default
    is KITTI-like (camera 0.27 m ahead of and 0.08 m below the Velodyne). ``K`` overrides ``fov_deg``.
    """

    width: int = 512
    height: int = 256
    fov_deg: float = 90.0
    K: list[list[float]] | None = None
    xyz: tuple[float, float, float] = (0.27, 0.0, -0.08)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    noise: float = 1.0  # multiplier of the per-weather pixel noise


@dataclass
class LidarConfig:
    """Rotating LiDAR (defaults: Velodyne HDL-64E as in KITTI: 64 beams, +2..-24.8 deg, 1.73 m high)."""

    beams: int = 64
    azimuth_steps: int = 1024
    fov_up_deg: float = 2.0
    fov_down_deg: float = -24.8
    min_range: float = 1.0
    max_range: float = 100.0
    height: float = 1.73
    range_noise: float = 0.02  # metres, 1 sigma (x weather factor)
    dropout: float = 0.01  # share of returns lost at random (x weather factor)


@dataclass
class AnomalyConfig:
    """Where, how often and how hard anomalies are.

    rate: share of frames with anomalies in val/test sequences; train_rate the same for train.
    size_scale: uniform scale range applied to each type's nominal size.
    mimic_prob: probability that an anomaly takes the colour (and texture) of a known class.
    textured_prob: probability of a patterned texture (stripes/checker/blotches) otherwise.
    distance: metres ahead of the ego (min, max) while an anomaly is shown.
    group: number of anomalies per episode (min, max).
    point_share: share of LiDAR returns on the anomalies (cast without occluders) that the
        planner keeps at the first and last frame of every episode; occlusion only lowers it, so
        the default leaves a margin to the 0.5-10% the issue asks of anomaly frames.
    episode_frames: frames an anomaly group stays in place (min, max).
    types: anomaly type names to use (default: all of ``labels.ANOMALY_TYPES``).
    """

    rate: float = 0.5
    train_rate: float = 0.0
    size_scale: tuple[float, float] = (0.6, 1.3)
    mimic_prob: float = 0.5
    textured_prob: float = 0.4
    distance: tuple[float, float] = (7.0, 32.0)
    group: tuple[int, int] = (1, 3)
    point_share: tuple[float, float] = (0.009, 0.07)
    episode_frames: tuple[int, int] = (3, 8)
    types: list[str] | None = None


@dataclass
class WorldConfig:
    """Everything the generator needs besides the seed and the number of sequences/frames."""

    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    anomalies: AnomalyConfig = field(default_factory=AnomalyConfig)
    weather_mix: dict[str, float] = field(
        default_factory=lambda: {"day": 0.3, "dusk": 0.15, "night": 0.2, "fog": 0.2, "rain": 0.15}
    )
    frame_rate: float = 10.0  # Hz of the rendered frames (camera and LiDAR together)
    speed: tuple[float, float] = (5.0, 11.0)  # ego speed range, m/s
    threads: int = 2  # Open3D ray-casting threads (0: all cores)
    png_compression: int = 1

    def __post_init__(self) -> None:
        for name in self.weather_mix:
            if name not in WEATHERS:
                raise ValueError(f"weather_mix: unknown weather {name!r} (known: {', '.join(WEATHERS)})")
        if not self.weather_mix or sum(self.weather_mix.values()) <= 0 or min(self.weather_mix.values()) < 0:
            raise ValueError(f"weather_mix needs non-negative weights with a positive sum, got {self.weather_mix}")
        a = self.anomalies
        if not 0 <= a.rate <= 1 or not 0 <= a.train_rate <= 1:
            raise ValueError(f"anomaly rates must be in [0, 1], got rate={a.rate}, train_rate={a.train_rate}")
        if not 0 < a.distance[0] < a.distance[1]:
            raise ValueError(f"anomalies.distance must be 0 < min < max, got {a.distance}")
        if not 1 <= a.group[0] <= a.group[1]:
            raise ValueError(f"anomalies.group must be 1 <= min <= max, got {a.group}")
        if not 1 <= a.episode_frames[0] <= a.episode_frames[1]:
            raise ValueError(f"anomalies.episode_frames must be 1 <= min <= max, got {a.episode_frames}")
        if self.camera.width <= 0 or self.camera.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.camera.width}x{self.camera.height}")
        if self.lidar.beams < 2 or self.lidar.azimuth_steps < 8:
            raise ValueError(f"lidar needs >= 2 beams and >= 8 azimuth steps, got {self.lidar.beams}x{self.lidar.azimuth_steps}")
        if self.frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {self.frame_rate}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WorldConfig:
        """Nested mapping -> config; unknown keys raise ``ValueError`` naming them."""
        data = dict(data or {})
        kwargs: dict[str, Any] = {}
        sub = {"camera": CameraConfig, "lidar": LidarConfig, "anomalies": AnomalyConfig}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"world config: unknown keys {unknown} (known: {sorted(names)})")
        for key, value in data.items():
            if key in sub:
                fields = {f.name for f in dataclasses.fields(sub[key])}
                bad = sorted(set(value or {}) - fields)
                if bad:
                    raise ValueError(f"world config: unknown keys {bad} in '{key}' (known: {sorted(fields)})")
                kwargs[key] = sub[key](**{k: (tuple(v) if isinstance(v, list) and k not in ("K", "types") else v)
                                          for k, v in (value or {}).items()})
            else:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> WorldConfig:
        """Read a YAML file with the layout of :meth:`to_dict`."""

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"world config not found: {path}")
        try:
            return cls.from_dict(yaml.safe_load(path.read_text()) or {})
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. for ``dataset.yaml``'s generator record."""

        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, list):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return plain(dataclasses.asdict(self))


def lidar_directions(cfg: WorldConfig) -> np.ndarray:
    """Unit ray directions ``[beams * azimuth_steps, 3]`` in the LiDAR frame, beam-major, top beam first."""
    lid = cfg.lidar
    elev = np.radians(np.linspace(lid.fov_up_deg, lid.fov_down_deg, lid.beams))
    az = np.pi - 2 * np.pi * (np.arange(lid.azimuth_steps) + 0.5) / lid.azimuth_steps
    ce, se = np.cos(elev)[:, None], np.sin(elev)[:, None]
    d = np.stack([ce * np.cos(az)[None], ce * np.sin(az)[None], np.broadcast_to(se, (lid.beams, lid.azimuth_steps))], -1)
    return d.reshape(-1, 3)
