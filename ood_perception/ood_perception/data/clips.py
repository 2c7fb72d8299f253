"""Clip datasets for video + optical-flow recognition, with optical flow cached on disk.

Two readers share one interface (``len``, ``[i] -> ClipSample``, ``class_names``):

* :class:`SyntheticClipDataset` reads what :func:`ood_perception.world.clips.write_clip_dataset`
  wrote (``dataset.yaml`` with ``kind: clips`` and ``clips/<split>/*.npz``);
* :class:`VideoFolderDataset` reads a class-per-folder video dataset (``ROOT/<class>/*.avi|mp4``,
  decoded with ``cv2.VideoCapture``, ``clip_len`` frames sampled uniformly, resized to ``size``).

Optical flow is OpenCV's Farneback (``cv2.calcOpticalFlowFarneback``) between consecutive grey
frames, giving float ``[T-1, 2, H, W]`` (dx, dy in pixels). :class:`FlowCache` computes it once per
clip and stores it as float16 ``.npy`` under a directory named by a hash of the flow parameters, so
changed parameters never reuse stale flow; files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from ood_perception.atomic import atomic_path
from ood_perception.geometry.video import FlowParams, compute_flow, normalise_flow, normalise_frames

__all__ = ["FlowParams", "compute_flow", "normalise_flow", "normalise_frames"]  # re-exported for clip datasets' users

VIDEO_EXTENSIONS: tuple[str, ...] = (".avi", ".mp4", ".mov", ".mkv", ".webm")


class FlowCache:
    """Flow computed once per clip and kept on disk as float16 ``<dir>/<params-key>/<clip_id>.npy``."""

    def __init__(self, directory: str | os.PathLike, params: FlowParams = FlowParams()) -> None:
        self.params = params
        self.dir = Path(directory) / params.key()
        self.computed = 0  # flows computed (not read from the cache) by this object

    def path(self, clip_id: str) -> Path:
        """Cache file of one clip (``clip_id`` may contain ``/``)."""
        return self.dir / (clip_id + ".npy")

    def get(self, clip_id: str, frames: np.ndarray | None = None, loader=None) -> np.ndarray:
        """Cached flow of ``clip_id``, computed from ``frames`` (or ``loader()``) on a miss."""
        p = self.path(clip_id)
        if p.is_file():
            return np.load(p).astype(np.float32)
        if frames is None:
            if loader is None:
                raise ValueError(f"flow of {clip_id!r} is not cached and no frames were given")
            frames = loader()
        flow = compute_flow(frames, self.params).astype(np.float16)  # what the cache holds, so hits == misses
        self.computed += 1
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.save(fh, flow)
        return flow.astype(np.float32)


@dataclass
class ClipSample:
    """One clip: frames uint8 ``[T, H, W, 3]`` RGB, flow float32 ``[T-1, 2, H, W]``, train id (-1 = OOD)."""

    frames: np.ndarray
    flow: np.ndarray
    label: int
    name: str
    clip_id: str


class SyntheticClipDataset:
    """One split of a synthetic clip dataset written by :mod:`ood_perception.world.clips`.

    Args:
        root: dataset directory (holds ``dataset.yaml``).
        split: ``train``, ``test``, ``near_ood`` or ``far_ood``.
        cache_dir: where flow is cached (default ``root/flow_cache``).
        flow_params: Farneback parameters.
    """

    def __init__(self, root: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None,
                 flow_params: FlowParams = FlowParams()) -> None:

        self.root = Path(root)
        meta_path = self.root / "dataset.yaml"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: not a synthetic clip dataset")
        self.meta = yaml.safe_load(meta_path.read_text())
        if self.meta.get("kind") != "clips":
            raise ValueError(f"{meta_path}: kind is {self.meta.get('kind')!r}, expected 'clips'")
        if split not in self.meta.get("splits", {}):
            raise ValueError(f"{meta_path}: no split {split!r}; splits: {', '.join(self.meta.get('splits', {}))}")
        self.split = split
        self.class_names: list[str] = list(self.meta["classes"])
        self.files = sorted((self.root / "clips" / split).glob("*.npz"))
        if len(self.files) != int(self.meta["splits"][split]):
            raise ValueError(f"{self.root}: split {split} lists {self.meta['splits'][split]} clips, found {len(self.files)}")
        self.cache = FlowCache(cache_dir if cache_dir is not None else self.root / "flow_cache", flow_params)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> tuple[np.ndarray, int, str]:
        with np.load(self.files[i]) as z:
            return z["frames"], int(z["label"]), str(z["motion"])

    def __getitem__(self, i: int) -> ClipSample:
        frames, label, motion = self._load(i)
        clip_id = f"{self.split}/{self.files[i].stem}"
        return ClipSample(frames, self.cache.get(clip_id, frames), label, motion, clip_id)


def read_video_clip(path: str | os.PathLike, clip_len: int, size: int) -> np.ndarray:
    """Decode ``clip_len`` frames sampled uniformly over a video, resized to ``size`` x ``size`` RGB."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path}")
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1])
    finally:
        cap.release()
    if len(frames) < 2:
        raise ValueError(f"video {path} has {len(frames)} decodable frames, need >= 2")
    idx = np.linspace(0, len(frames) - 1, clip_len).round().astype(int)
    return np.ascontiguousarray(np.stack([frames[i] for i in idx]))


class VideoFolderDataset:
    """A class-per-folder video dataset: ``root/<class_name>/*.avi|mp4|...``.

    Args:
        root: dataset directory; each sub-folder is a class (sorted names give the train ids),
            unless ``class_names`` is given (then other folders are skipped; pass ``ood=True`` to
            read every folder as OOD with label -1).
        clip_len, size: frames sampled per video and frame side after resizing.
        cache_dir: flow cache (default ``root/.flow_cache``; the frames are cached there too, as the
            decoded clip is the expensive part of a video).
    """

    def __init__(self, root: str | os.PathLike, clip_len: int = 16, size: int = 64,
                 class_names: Sequence[str] | None = None, ood: bool = False,
                 cache_dir: str | os.PathLike | None = None, flow_params: FlowParams = FlowParams()) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video dataset {self.root} is not a directory")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.class_names = list(class_names) if class_names is not None else folders
        self.items: list[tuple[Path, int, str]] = []
        for name in folders if ood else self.class_names:
            label = -1 if ood else self.class_names.index(name)
            for f in sorted((self.root / name).iterdir()) if (self.root / name).is_dir() else []:
                if f.suffix.lower() in VIDEO_EXTENSIONS:
                    self.items.append((f, label, name))
        if not self.items:
            raise ValueError(f"{self.root}: no videos ({', '.join(VIDEO_EXTENSIONS)}) under class folders")
        self.clip_len, self.size = clip_len, size
        cache_root = Path(cache_dir) if cache_dir is not None else self.root / ".flow_cache"
        self.cache = FlowCache(cache_root, flow_params)
        self.frame_dir = cache_root / f"frames-{clip_len}x{size}"

    def __len__(self) -> int:
        return len(self.items)

    def _clip_id(self, path: Path) -> str:
        st = path.stat()
        tag = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]
        return f"{path.parent.name}/{path.stem}-{tag}-{self.clip_len}x{self.size}"

    def __getitem__(self, i: int) -> ClipSample:
        path, label, name = self.items[i]
        clip_id = self._clip_id(path)
        fpath = self.frame_dir / (clip_id + ".npy")
        if fpath.is_file():
            frames = np.load(fpath)
        else:
            frames = read_video_clip(path, self.clip_len, self.size)
            with atomic_path(fpath) as tmp, open(tmp, "wb") as fh:
                np.save(fh, frames)
        return ClipSample(frames, self.cache.get(clip_id, frames), label, name, clip_id)


def stack_dataset(dataset, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole dataset as arrays: video ``[N, 3, T, H, W]``, flow ``[N, 2, T-1, H, W]``, labels ``[N]``."""
    it = range(len(dataset))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"clips {getattr(dataset, 'split', '')}".strip(), unit="clip")
    vids, flows, labels = [], [], []
    for i in it:
        s = dataset[i]
        vids.append(normalise_frames(s.frames))
        flows.append(normalise_flow(s.flow))
        labels.append(s.label)
    return np.stack(vids), np.stack(flows), np.asarray(labels, np.int64)


def video_stream_clips(path: str | os.PathLike, clip_len: int = 16, size: int = 64, stride: int = 8,
                       max_frames: int | None = None) -> np.ndarray:
    """Clips of consecutive frames of a video file, cut as the recognition node cuts a live stream
    (``pipeline.recognition.ClipBuffer``: every frame converted to RGB and resized to ``size`` x
    ``size`` with ``cv2.INTER_AREA``; the first clip when ``clip_len`` frames are in, then one every
    ``stride`` frames). Unlike :func:`read_video_clip` (one clip sampled over a whole video, the
    training convention of video datasets) it keeps the video's own frame rate, so a node-level
    evaluation on real footage (e.g. the far-OOD rows of the distillation table) sees what the node
    sees. Returns uint8 ``[N, clip_len, size, size, 3]`` (``N`` = 0 for a video shorter than a clip).

    Raises:
        ValueError: the file cannot be opened as a video, or bad clip parameters.
    """
    if clip_len < 2 or stride < 1 or size < 8:
        raise ValueError(f"need clip_len >= 2, stride >= 1, size >= 8; got {clip_len}, {stride}, {size}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open the video {path}")
    frames: list[np.ndarray] = []
    clips: list[np.ndarray] = []
    n = 0
    try:
        while max_frames is None or n < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            frames = [*frames[-(clip_len - 1):], cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)]
            n += 1
            if n >= clip_len and (n - clip_len) % stride == 0:
                clips.append(np.stack(frames))
    finally:
        cap.release()
    return np.stack(clips) if clips else np.zeros((0, clip_len, size, size, 3), np.uint8)


def stack_video_streams(paths: Sequence[str | os.PathLike], clip_len: int = 16, size: int = 64, stride: int = 8,
                        max_frames: int | None = None, flow_params: FlowParams = FlowParams()
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`video_stream_clips` of every video as network arrays (video ``[N, 3, T, H, W]``, flow
    ``[N, 2, T-1, H, W]``, labels ``[N]`` all -1: OOD), normalised as :func:`stack_dataset` does."""
    clips = [c for p in paths for c in video_stream_clips(p, clip_len, size, stride, max_frames)]
    if not clips:
        return (np.zeros((0, 3, clip_len, size, size), np.float32), np.zeros((0, 2, clip_len - 1, size, size), np.float32),
                np.zeros(0, np.int64))
    video = np.stack([normalise_frames(c) for c in clips])
    flow = np.stack([normalise_flow(compute_flow(c, flow_params)) for c in clips])
    return video, flow, np.full(len(clips), -1, np.int64)
