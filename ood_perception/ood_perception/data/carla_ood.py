"""CARLA-OOD (and any similar camera + LiDAR set) read through a configurable schema.

The public CARLA-OOD release does not document its layout, so every path, file format, the label
map and the OOD ids come from a *schema* (a dict or a YAML file). Paths are relative to the root
and may use ``{sequence}`` and ``{frame}``. Keys (defaults in brackets)::

    sequences: "*"                    # glob of sequence directories, or a list of names ["*"]
    frames: "{sequence}/lidar/*.bin"  # glob listing one file per frame; frame id = file stem (required)
    points: "{sequence}/lidar/{frame}.bin"   # required
    points_format: bin                # bin (float32, `points_columns` per point) | npy [bin]
    points_columns: 4                 # float32 values per point in .bin files [4]
    lidar_y_flip: false               # negate y (raw CARLA is left-handed; the ROS bridge already flips)
    point_labels: "{sequence}/lidar_label/{frame}.npy"   # optional; .npy or raw uint32 binary
    image: "{sequence}/rgb/{frame}.png"                  # optional (RGB/BGR(A) image file)
    pixel_labels: "{sequence}/seg/{frame}.png"           # optional
    pixel_label_channel: null         # null: single-channel id image; 0/1/2: take this RGB channel
                                      # (CARLA's semantic camera stores the tag in red: 0)
    calib:                            # either a KITTI calib.txt ...
      file: "{sequence}/calib.txt"
      camera: P2
    # ... or inline: K (3x3) or fov (deg, CARLA's fx = w / (2 tan(fov/2))), and
    #     T_cam_lidar (4x4, LiDAR -> camera optical) or camera_xyz_rpy (camera pose in the LiDAR
    #     frame, x forward / y left / z up, radians); width/height default to the image's size.
    poses: "{sequence}/poses.txt"     # optional: 12 numbers per line, LiDAR pose (no Tr applied)
    dataset: dataset.yaml             # label space file (relative to root), or inline keys:
    labels / color_map / learning_map / learning_map_inv / ood_ids / splits
    ood_ids: [..]                     # overrides the label space's ood_ids when given
    sample_period: 0.05               # seconds between frames -> Frame.stamp [0.05: CARLA 20 Hz]
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ood_perception.data.config import DatasetConfig
from ood_perception.data.frame import Frame
from ood_perception.data.semantickitti import read_label_png, read_poses, read_rgb
from ood_perception.geometry import Calibration, intrinsics_from_fov, load_kitti_calib, transform_from_xyz_rpy

#: Optical frame (x right, y down, z forward) from a body frame (x forward, y left, z up).
_OPTICAL_FROM_BODY = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

_KNOWN_KEYS = {
    "sequences", "frames", "points", "points_format", "points_columns", "lidar_y_flip", "point_labels",
    "image", "pixel_labels", "pixel_label_channel", "calib", "poses", "dataset", "labels", "color_map",
    "learning_map", "learning_map_inv", "ood_ids", "splits", "sample_period",
}


def load_schema(schema: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A schema dict, or the dict parsed from a YAML file; unknown keys are an error."""
    if not isinstance(schema, Mapping):
        import yaml

        path = Path(schema)
        if not path.is_file():
            raise FileNotFoundError(f"CARLA-OOD schema not found: {path}")
        schema = yaml.safe_load(path.read_text()) or {}
        if not isinstance(schema, Mapping):
            raise ValueError(f"{path}: the schema must be a mapping")
    unknown = sorted(set(schema) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"CARLA-OOD schema: unknown keys {unknown} (known: {sorted(_KNOWN_KEYS)})")
    for key in ("frames", "points"):
        if key not in schema:
            raise ValueError(f"CARLA-OOD schema: missing required key '{key}'")
    return dict(schema)


class CarlaOodReader(Sequence[Frame]):
    """Frames of a CARLA-OOD-style dataset described by a schema (see the module docstring).

    Args:
        root: dataset root directory.
        schema: the schema as a dict or a YAML path.
    """

    def __init__(self, root: str | os.PathLike[str], schema: Mapping[str, Any] | str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.schema = load_schema(schema)
        self.config = self._load_config()
        fmt = self.schema.get("points_format", "bin")
        if fmt not in ("bin", "npy"):
            raise ValueError(f"CARLA-OOD schema: points_format must be 'bin' or 'npy', got {fmt!r}")
        self.points_format = fmt
        self.points_columns = int(self.schema.get("points_columns", 4))
        if self.points_columns < 3:
            raise ValueError(f"CARLA-OOD schema: points_columns must be >= 3, got {self.points_columns}")
        seqs = self.schema.get("sequences", "*")
        if isinstance(seqs, str):
            names = sorted(p.name for p in self.root.glob(seqs) if p.is_dir())
        else:
            names = [str(s) for s in seqs]
        self.sequences = names
        self.index: list[tuple[str, str]] = []
        for name in names:
            pattern = self._path("frames", name, "*").relative_to(self.root)
            files = sorted(self.root.glob(str(pattern)))
            self.index.extend((name, p.stem) for p in files)
        if not self.index:
            raise FileNotFoundError(
                f"no frames under {self.root} match frames={self.schema['frames']!r} (sequences: {names})"
            )
        self._poses: dict[str, np.ndarray | None] = {}
        self._pos = {key: i for i, key in enumerate(self.index)}
        self._seq_start = {}
        for i, (seq, _) in enumerate(self.index):
            self._seq_start.setdefault(seq, i)

    def _load_config(self) -> DatasetConfig:
        cfg_path = self.schema.get("dataset")
        if cfg_path is not None:
            config = DatasetConfig.from_yaml(self.root / cfg_path)
        elif "labels" in self.schema:
            config = DatasetConfig.from_dict(self.schema)
        else:
            raise ValueError("CARLA-OOD schema: give the label space as 'dataset: FILE' or inline 'labels', ...")
        if "ood_ids" in self.schema:
            d = config.to_dict()
            d["ood_ids"] = list(self.schema["ood_ids"])
            config = DatasetConfig.from_dict(d)
        return config

    def _path(self, key: str, sequence: str, frame: str) -> Path:
        template = self.schema[key]
        if isinstance(template, Mapping):
            template = template.get("file")
        try:
            return self.root / str(template).format(sequence=sequence, frame=frame)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"CARLA-OOD schema: bad placeholder in {key}={template!r}: {exc}") from None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Frame:  # type: ignore[override]
        n = len(self.index)
        if not isinstance(i, int) or not -n <= i < n:
            raise IndexError(f"frame index {i!r} out of range for {n} frames")
        return self.read(*self.index[i])

    def __iter__(self) -> Iterator[Frame]:
        for seq, fid in self.index:
            yield self.read(seq, fid)

    # -- pieces ----------------------------------------------------------------------------
    def _read_points(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise FileNotFoundError(f"LiDAR file not found: {path}")
        if self.points_format == "npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.fromfile(path, dtype=np.float32)
            if arr.size % self.points_columns:
                raise ValueError(f"{path}: {arr.size} floats is not a multiple of points_columns={self.points_columns}")
            arr = arr.reshape(-1, self.points_columns)
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise ValueError(f"{path}: points must be [N, >=3], got {arr.shape}")
        out = np.zeros((arr.shape[0], 4), dtype=np.float32)
        out[:, :3] = arr[:, :3]
        if arr.shape[1] > 3:
            out[:, 3] = arr[:, 3]
        if self.schema.get("lidar_y_flip", False):
            out[:, 1] = -out[:, 1]
        return out

    @staticmethod
    def _read_labels(path: Path, n: int) -> np.ndarray:
        arr = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.fromfile(path, dtype=np.uint32)
        arr = np.asarray(arr).reshape(-1)
        if arr.shape[0] != n:
            raise ValueError(f"{path}: {arr.shape[0]} labels for {n} points")
        if np.issubdtype(arr.dtype, np.floating) or (arr.size and arr.min() < 0):
            raise ValueError(f"{path}: point labels must be non-negative integers, got {arr.dtype}")
        return arr.astype(np.uint32)

    def _read_pixel_labels(self, path: Path) -> np.ndarray:
        channel = self.schema.get("pixel_label_channel")
        if channel is None:
            return read_label_png(path)
        if int(channel) not in (0, 1, 2):
            raise ValueError(f"CARLA-OOD schema: pixel_label_channel must be 0, 1 or 2, got {channel}")
        rgb = read_rgb(path)
        return rgb[:, :, int(channel)].astype(np.uint16)

    def _calibration(self, sequence: str, width: int, height: int) -> Calibration:
        spec = self.schema.get("calib")
        if spec is None:
            raise ValueError("CARLA-OOD schema: missing 'calib' (a KITTI calib.txt or inline K/fov + extrinsics)")
        if not isinstance(spec, Mapping):
            spec = {"file": spec}
        if "file" in spec:
            path = self._path("calib", sequence, "")
            return load_kitti_calib(path, width, height, camera=str(spec.get("camera", "P2")))
        width = int(spec.get("width", width))
        height = int(spec.get("height", height))
        if "K" in spec:
            k = np.asarray(spec["K"], dtype=np.float64).reshape(3, 3)
        elif "fov" in spec:
            k = intrinsics_from_fov(width, height, float(spec["fov"]))
        else:
            raise ValueError("CARLA-OOD schema: calib needs 'K' or 'fov'")
        if "T_cam_lidar" in spec:
            t = np.asarray(spec["T_cam_lidar"], dtype=np.float64).reshape(4, 4)
        elif "camera_xyz_rpy" in spec:
            vals = [float(v) for v in spec["camera_xyz_rpy"]]
            if len(vals) != 6:
                raise ValueError(f"CARLA-OOD schema: camera_xyz_rpy needs 6 numbers, got {len(vals)}")
            t = _OPTICAL_FROM_BODY @ np.linalg.inv(transform_from_xyz_rpy(vals[:3], vals[3:]))
        else:
            raise ValueError("CARLA-OOD schema: calib needs 'T_cam_lidar' or 'camera_xyz_rpy'")
        return Calibration(k, width, height, t)

    def read(self, sequence: str, frame_id: str) -> Frame:
        """Read one frame."""
        points = self._read_points(self._path("points", sequence, frame_id))
        labels = None
        if "point_labels" in self.schema:
            p = self._path("point_labels", sequence, frame_id)
            if p.is_file():
                labels = self._read_labels(p, points.shape[0])
        image = None
        width = height = 0
        if "image" in self.schema:
            p = self._path("image", sequence, frame_id)
            if not p.is_file():
                raise FileNotFoundError(f"camera image not found: {p}")
            image = read_rgb(p)
            height, width = image.shape[:2]
        pixel_labels = None
        if "pixel_labels" in self.schema:
            p = self._path("pixel_labels", sequence, frame_id)
            if p.is_file():
                pixel_labels = self._read_pixel_labels(p)
                if not width:
                    height, width = pixel_labels.shape
        calib = self._calibration(sequence, width or 1, height or 1)
        pos = self._pos.get((sequence, frame_id), 0) - self._seq_start.get(sequence, 0)
        pose = None
        if "poses" in self.schema:
            if sequence not in self._poses:
                p = self._path("poses", sequence, frame_id)
                self._poses[sequence] = read_poses(p) if p.is_file() else None
            poses = self._poses[sequence]
            if poses is not None and pos < len(poses):
                pose = poses[pos].copy()
        period = float(self.schema.get("sample_period", 0.05))
        if not math.isfinite(period) or period <= 0:
            raise ValueError(f"CARLA-OOD schema: sample_period must be positive, got {period}")
        return Frame(
            sequence=sequence,
            frame_id=frame_id,
            image=image,
            points=points,
            point_labels=labels,
            pixel_labels=pixel_labels,
            calib=calib,
            pose=pose,
            stamp=pos * period,
        )
