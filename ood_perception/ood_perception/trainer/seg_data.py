"""Segmentation data for training and evaluation: readers -> preprocessed, cached samples.

A dataset root is either SemanticKITTI-layout (``sequences/XX/...``, the synthetic world's
output) or any layout described by a CARLA-OOD schema (:class:`ood_perception.data.CarlaOodReader`).
Each frame is turned once into network-ready arrays by
:func:`ood_perception.geometry.inputs.prepare_inputs` at the training input size and cached as an
``.npz`` (keyed by root, sequences, input size, label space and the source files' sizes/mtimes),
so later epochs and later runs only read small files.

Targets are pixel train ids (255 = ignore, which includes OOD) from the pixel labels when the
dataset has them, else the visible LiDAR points' labels splatted at their pixels (sparse).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ood_perception.data import (
    IGNORE_ID,
    CarlaOodReader,
    DatasetConfig,
    Frame,
    SemanticKittiReader,
    prepare_inputs,
    resize_labels,
)
from ood_perception.data.config import atomic_write_bytes

#: Bump when the cached arrays change meaning.
CACHE_VERSION = 3  # 3: anomaly_ids per sample (outlier_types of a trained model)


def open_reader(root: str | os.PathLike[str], split: str | Sequence[str] | None = None,
                schema: str | os.PathLike[str] | dict[str, Any] | None = None) -> Any:
    """A frame reader for ``root``: CARLA-OOD schema when given, else SemanticKITTI layout.

    ``split`` is a split name of the dataset's ``dataset.yaml`` (``train``/``val``/``test``), a
    list of sequence names, or None (all sequences).
    """

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset not found: {root}")
    if schema is not None:
        from ood_perception.data.carla_ood import load_schema

        schema_d = load_schema(schema)
        reader = CarlaOodReader(root, schema_d)
        if split is not None:
            names = reader.config.splits.get(split) if isinstance(split, str) else list(split)
            if names is None:
                raise ValueError(f"{root}: split {split!r} not in the schema's splits {sorted(reader.config.splits)}")
            reader = CarlaOodReader(root, {**schema_d, "sequences": list(names)})
        return reader
    if not (root / "sequences").is_dir() and not (root / "dataset" / "sequences").is_dir():
        raise ValueError(f"{root}: no sequences/ directory (SemanticKITTI layout); pass --schema for CARLA-OOD data")
    cfg_path = root / "dataset.yaml"
    if isinstance(split, str) and cfg_path.is_file():
        cfg = DatasetConfig.from_yaml(cfg_path)
        if split not in cfg.splits:
            raise ValueError(f"{cfg_path}: no split {split!r} (has {sorted(cfg.splits)})")
    return SemanticKittiReader(root, sequences=split)


@dataclass
class Sample:
    """One preprocessed frame (numpy, CPU).

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB at the input size (normalised when batched).
        lidar: float32 ``[6, H, W]``.
        target: uint8 ``[H, W]`` train ids, 255 = ignore.
        pixel_ood: bool ``[H, W]`` (all False without pixel labels).
        has_pixel_labels: whether ``target``/``pixel_ood`` come from dense pixel labels.
        flat_index: int64 ``[N]`` pixel of each point, -1 out of view.
        point_target: uint8 ``[N]`` train ids of points (255 without labels).
        point_ood: bool ``[N]``.
        name: ``"seq/frame"``.
    """

    image: np.ndarray
    lidar: np.ndarray
    target: np.ndarray
    pixel_ood: np.ndarray
    has_pixel_labels: bool
    flat_index: np.ndarray
    point_target: np.ndarray
    point_ood: np.ndarray
    name: str


def anomaly_ids_in(frame: Frame, config: DatasetConfig) -> np.ndarray:
    """The raw anomaly ids (``config.ood_ids``) labelled in the frame's pixels or points."""
    found: set[int] = set()
    ood = set(config.ood_ids)
    for raw in (frame.pixel_labels, frame.point_labels):
        if raw is not None:
            sem = np.unique(np.asarray(raw).astype(np.int64, copy=False) & 0xFFFF)
            found.update(int(v) for v in sem if int(v) in ood)
    return np.array(sorted(found), np.int64)


def preprocess_frame(frame: Frame, config: DatasetConfig, input_size: Sequence[int]) -> Sample:
    """Frame -> :class:`Sample` at ``input_size = (H, W)``; errors name the frame."""


    name = f"{frame.sequence}/{frame.frame_id}"
    if frame.image is None:
        raise ValueError(f"frame {name} has no camera image; fused segmentation needs camera and LiDAR")
    h, w = int(input_size[0]), int(input_size[1])
    _, lidar, flat = prepare_inputs(frame.image, frame.points, frame.calib, (h, w))
    image = cv2.resize(frame.image, (w, h), interpolation=cv2.INTER_AREA) if frame.image.shape[:2] != (h, w) else frame.image
    n = frame.points.shape[0]
    if frame.point_labels is not None:
        point_target = config.to_train_ids(frame.point_labels).astype(np.uint8)
        point_ood = config.ood_mask(frame.point_labels)
    else:
        point_target = np.full(n, IGNORE_ID, np.uint8)
        point_ood = np.zeros(n, bool)
    if frame.pixel_labels is not None:
        raw = resize_labels(frame.pixel_labels, (h, w))
        target = config.to_train_ids(raw).astype(np.uint8)
        pixel_ood = config.ood_mask(raw)
        dense = True
    else:  # sparse targets from the points, nearest point wins (written far to near)
        target = np.full(h * w, IGNORE_ID, np.uint8)
        sel = np.flatnonzero(flat >= 0)
        depth = np.linalg.norm(frame.points[sel, :3], axis=1)
        order = sel[np.argsort(-depth, kind="stable")]
        target[flat[order]] = point_target[order]
        target = target.reshape(h, w)
        pixel_ood = np.zeros((h, w), bool)
        dense = False
    return Sample(np.ascontiguousarray(image), lidar, target, pixel_ood, dense, flat.astype(np.int64),
                  point_target, point_ood, name)


def check_labels(frame: Frame, config: DatasetConfig, max_unknown: float = 0.5) -> None:
    """Raise when most of a frame's labels are raw ids unknown to the label space (mislabelled
    data or a wrong ``dataset.yaml``/schema)."""
    known = np.zeros(0x10000, bool)
    known[list(config.labels)] = True
    for kind, raw in (("pixel", frame.pixel_labels), ("point", frame.point_labels)):
        if raw is None or raw.size == 0:
            continue
        sem = np.asarray(raw).astype(np.int64) & 0xFFFF
        unknown = ~known[sem]
        if unknown.mean() > max_unknown:
            ids = np.unique(sem[unknown])[:10].tolist()
            raise ValueError(f"frame {frame.sequence}/{frame.frame_id}: {unknown.mean():.0%} of {kind} labels have raw ids "
                             f"{ids} unknown to the label space (wrong dataset.yaml / schema?)")


class SegmentationData:
    """Preprocessed samples of one split, cached as npz files.

    Args:
        root: dataset root; split: see :func:`open_reader`; input_size: ``(H, W)``.
        cache_dir: where the npz cache lives (default ``$XDG_CACHE_HOME/ood_perception/seg``).
        schema: CARLA-OOD schema (path or dict) for non-SemanticKITTI layouts.
        show_progress: tqdm while building the cache.
        exclude_types: anomaly type names left out (``DatasetConfig.excluding``): for evaluating a
            model that saw them in training (its ``outlier_types``).
    """

    def __init__(self, root: str | os.PathLike[str], split: str | Sequence[str] | None, input_size: Sequence[int],
                 cache_dir: str | os.PathLike[str] | None = None, schema: Any = None, show_progress: bool = True,
                 exclude_types: Sequence[str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.reader = open_reader(self.root, split, schema)
        self.config: DatasetConfig = self.reader.config.excluding(exclude_types)
        n = len(self.reader)
        if n == 0:
            raise ValueError(f"{self.root}: no frames in split {split!r}")
        base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ood_perception" / "seg"
        self.cache_dir = base / self._key(split, schema)
        self.names: list[str] = []
        self._build(show_progress)

    def _key(self, split: Any, schema: Any) -> str:
        index = list(getattr(self.reader, "index", []))
        stats = []
        for seq, fid in index[:: max(1, len(index) // 64)]:  # a sample of source files' size/mtime
            p = self.root / "sequences" / seq / "velodyne" / f"{fid}.bin"
            if p.is_file():
                st = p.stat()
                stats.append((seq, fid, st.st_size, st.st_mtime_ns))
        blob = json.dumps({"v": CACHE_VERSION, "root": str(self.root), "split": split, "size": self.input_size,
                           "n": len(self.reader), "labels": self.config.to_dict(), "schema": str(schema),
                           "files": stats}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def _build(self, show_progress: bool) -> None:

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        labelled = 0
        for i in tqdm(range(len(self.reader)), desc=f"cache {self.root.name}", disable=not show_progress, leave=False):
            path = self.cache_dir / f"{i:06d}.npz"
            if not path.is_file():
                frame = self.reader[i]
                check_labels(frame, self.config)
                s = preprocess_frame(frame, self.config, self.input_size)
                buf = io.BytesIO()
                np.savez(buf, image=s.image, lidar=s.lidar, target=s.target, pixel_ood=s.pixel_ood,
                         has_pixel_labels=np.array(s.has_pixel_labels), flat_index=s.flat_index,
                         point_target=s.point_target, point_ood=s.point_ood, name=np.array(s.name),
                         anomaly_ids=anomaly_ids_in(frame, self.reader.config))
                atomic_write_bytes(path, buf.getvalue())
                labelled += int((s.target != IGNORE_ID).sum())
                self.names.append(s.name)
            else:
                labelled += 1  # cached frames were checked when written
                self.names.append("")
        if labelled == 0:
            raise ValueError(f"{self.root}: no pixel or point carries an in-distribution label (check the label map "
                             "learning_map / ood_ids of dataset.yaml or the schema)")

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> Sample:
        with np.load(self.cache_dir / f"{i:06d}.npz") as z:
            return Sample(z["image"], z["lidar"], z["target"], z["pixel_ood"], bool(z["has_pixel_labels"]),
                          z["flat_index"], z["point_target"], z["point_ood"], str(z["name"]))

    def anomaly_types_seen(self) -> list[str]:
        """Names of the anomaly types labelled in any frame of this split (pixels or points, excluded
        types included): what a model trained on it saw, for ``model.json`` ``outlier_types``."""
        ids: set[int] = set()
        for i in range(len(self)):
            with np.load(self.cache_dir / f"{i:06d}.npz") as z:
                ids.update(int(v) for v in z["anomaly_ids"])
        labels = self.reader.config.labels
        return sorted(labels.get(i, str(i)) for i in ids)

    def lidar_stats(self, max_frames: int = 64) -> tuple[list[float], list[float]]:
        """Mean/std of x, y, z, range, intensity over valid pixels of up to ``max_frames`` frames
        (valid channel: mean 0, std 1) for the model's LiDAR normalisation."""
        idx = np.linspace(0, len(self) - 1, min(len(self), max_frames)).astype(int)
        vals = []
        for i in idx:
            lid = self[int(i)].lidar
            vals.append(lid[:5, lid[5] > 0].T)
        v = np.concatenate(vals) if vals else np.zeros((0, 5))
        if v.shape[0] < 2:
            raise ValueError(f"{self.root}: the LiDAR hits no pixel of the camera in the sampled frames (calibration?)")
        mean = v.mean(0).tolist() + [0.0]
        std = np.maximum(v.std(0), 1e-3).tolist() + [1.0]
        return [float(x) for x in mean], [float(x) for x in std]


def collate(samples: Sequence[Sample], mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """Stack samples into torch tensors: ``image`` normalised ``[B,3,H,W]``, ``lidar``, ``target``
    (int64, 255 ignore), ``pixel_ood``; per-point arrays stay lists (lengths differ)."""
    import torch  # lazy: torch is heavy to import and only this path needs it

    img = np.stack([s.image for s in samples]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    sd = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return {
        "image": torch.from_numpy((img - m) / sd),
        "lidar": torch.from_numpy(np.stack([s.lidar for s in samples])),
        "target": torch.from_numpy(np.stack([s.target for s in samples]).astype(np.int64)),
        "pixel_ood": torch.from_numpy(np.stack([s.pixel_ood for s in samples])),
        "samples": list(samples),
    }
