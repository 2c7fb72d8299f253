"""SemanticKITTI layout: a reader (real SemanticKITTI and our synthetic sets) and a writer.

Layout under a dataset root::

    dataset.yaml                      # label space (optional for real SemanticKITTI)
    sequences/XX/velodyne/NNNNNN.bin  # float32 [N, 4]: x, y, z, remission
    sequences/XX/labels/NNNNNN.label  # uint32 [N]: semantic = v & 0xFFFF, instance = v >> 16
    sequences/XX/image_2/NNNNNN.png   # colour camera (KITTI's left colour camera)
    sequences/XX/image_2_label/NNNNNN.png     # uint16 PNG of raw semantic ids (ours, optional)
    sequences/XX/image_2_instance/NNNNNN.png  # uint16 PNG of instance ids (ours, optional)
    sequences/XX/calib.txt            # P0..P3, Tr (velodyne -> camera 0)
    sequences/XX/poses.txt            # camera-0 pose per frame in the first camera-0 frame, 3x4
    sequences/XX/times.txt            # seconds per frame (optional)

``calib.txt`` is read with :func:`ood_perception.geometry.load_kitti_calib`, so a LiDAR point
``p`` lands on pixel ``P2 @ Tr @ [p, 1]``. ``Frame.pose`` is the LiDAR pose in the first LiDAR
frame: ``inv(Tr) @ poses[i] @ Tr`` (the semantic-kitti-api convention).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from ood_perception.data.config import DatasetConfig, _seq_name, atomic_write_bytes
from ood_perception.data.frame import Frame
from ood_perception.geometry import Calibration, load_kitti_calib

#: Image size assumed for sequences without images (KITTI odometry sequences 00-02, 13-21).
KITTI_IMAGE_SIZE = (1241, 376)


def _find_sequences_dir(root: Path) -> Path:
    for cand in (root / "sequences", root / "dataset" / "sequences"):
        if cand.is_dir():
            return cand
    if root.name == "sequences" and root.is_dir():
        return root
    raise FileNotFoundError(f"no 'sequences/' directory under {root} (expected the SemanticKITTI layout)")


def read_poses(path: Path) -> np.ndarray:
    """``poses.txt`` (12 numbers per line, row-major 3x4) -> ``[F, 4, 4]`` float64."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        vals = line.split()
        if len(vals) != 12:
            raise ValueError(f"{path}:{lineno}: expected 12 numbers, got {len(vals)}")
        m = np.eye(4)
        m[:3] = np.array([float(v) for v in vals]).reshape(3, 4)
        rows.append(m)
    return np.stack(rows) if rows else np.zeros((0, 4, 4))


def read_points(path: Path) -> np.ndarray:
    """A velodyne ``.bin`` -> float32 ``[N, 4]``."""
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise ValueError(f"{path}: size {raw.size * 4} bytes is not a multiple of 16 (float32 x, y, z, remission)")
    return raw.reshape(-1, 4)


def read_label_png(path: Path) -> np.ndarray:
    """A 16-bit (or 8-bit) single-channel label PNG -> uint16 ``[H, W]``."""

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: cannot read the label image")
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: label image must be single-channel 8/16-bit, got {img.dtype} {img.shape}")
    return img.astype(np.uint16, copy=False)


def read_rgb(path: Path) -> np.ndarray:
    """A colour image file -> uint8 RGB ``[H, W, 3]``."""

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: cannot read the image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class SemanticKittiReader(Sequence[Frame]):
    """Frames of a SemanticKITTI-layout dataset, indexable and iterable.

    Args:
        root: the dataset root (holding ``sequences/``; ``dataset/sequences`` also accepted).
        sequences: names or numbers of sequences to read (``[8]`` == ``["08"]``), a split name of
            ``dataset.yaml`` (``"train"``, ``"val"``, ``"test"``), or None for all present.
        config: label space; default ``root/dataset.yaml`` or, absent, the official SemanticKITTI map.
        require_images: raise when ``image_2`` is missing (default); with False, frames without
            images get ``image=None`` and a calibration at KITTI's 1241x376.
        camera: projection matrix of ``calib.txt`` to use (``P2``: the left colour camera).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        sequences: Iterable[str | int] | str | None = None,
        *,
        config: DatasetConfig | None = None,
        require_images: bool = True,
        camera: str = "P2",
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        self.seq_dir = _find_sequences_dir(self.root)
        if config is None:
            for cand in (self.root / "dataset.yaml", self.seq_dir.parent / "dataset.yaml"):
                if cand.is_file():
                    config = DatasetConfig.from_yaml(cand)
                    break
            else:
                config = DatasetConfig.semantic_kitti()
        self.config = config
        self.require_images = require_images
        self.camera = camera
        if isinstance(sequences, str) and sequences in self.config.splits:
            names = list(self.config.splits[sequences])
        elif sequences is None:
            names = sorted(p.name for p in self.seq_dir.iterdir() if (p / "velodyne").is_dir())
        else:
            names = [_seq_name(s) for s in ([sequences] if isinstance(sequences, (str, int)) else sequences)]
        self.sequences = names
        self.index: list[tuple[str, str]] = []
        for name in names:
            velo = self.seq_dir / name / "velodyne"
            if not velo.is_dir():
                raise FileNotFoundError(f"sequence {name!r}: {velo} not found")
            self.index.extend((name, p.stem) for p in sorted(velo.glob("*.bin")))
        self._calib: dict[str, Calibration | None] = {}
        self._poses: dict[str, np.ndarray | None] = {}
        self._times: dict[str, np.ndarray | None] = {}
        self._frame_pos: dict[tuple[str, str], int] = {}
        for name in names:
            for i, p in enumerate(sorted((self.seq_dir / name / "velodyne").glob("*.bin"))):
                self._frame_pos[(name, p.stem)] = i

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Frame:  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("SemanticKittiReader does not support slicing; index frames one by one")
        n = len(self.index)
        if not -n <= i < n:
            raise IndexError(f"frame index {i} out of range for {n} frames")
        return self.read(*self.index[i])

    def __iter__(self) -> Iterator[Frame]:
        for seq, fid in self.index:
            yield self.read(seq, fid)

    # -- per-sequence metadata -------------------------------------------------------------
    def _sequence_calib(self, seq: str, width: int, height: int) -> Calibration:
        cached = self._calib.get(seq)
        if cached is not None and (cached.width, cached.height) == (width, height):
            return cached
        calib = load_kitti_calib(self.seq_dir / seq / "calib.txt", width, height, camera=self.camera)
        self._calib[seq] = calib
        return calib

    def _sequence_poses(self, seq: str, width: int, height: int) -> np.ndarray | None:
        if seq not in self._poses:
            path = self.seq_dir / seq / "poses.txt"
            if not path.is_file():
                self._poses[seq] = None
            else:
                cam_poses = read_poses(path)
                # P0 = K0 [I | 0] in KITTI, so its T_cam_lidar is Tr (velodyne -> camera 0).
                tr = load_kitti_calib(self.seq_dir / seq / "calib.txt", width, height, camera="P0").T_cam_lidar
                tr_inv = np.linalg.inv(tr)
                self._poses[seq] = np.einsum("ij,fjk,kl->fil", tr_inv, cam_poses, tr)
        return self._poses[seq]

    def _sequence_times(self, seq: str) -> np.ndarray | None:
        if seq not in self._times:
            path = self.seq_dir / seq / "times.txt"
            self._times[seq] = np.loadtxt(path, dtype=np.float64, ndmin=1) if path.is_file() else None
        return self._times[seq]

    # -- frames ----------------------------------------------------------------------------
    def read(self, sequence: str | int, frame_id: str | int) -> Frame:
        """Read one frame by sequence name and frame id (``"000042"`` or ``42``)."""
        seq = _seq_name(sequence)
        fid = f"{int(frame_id):06d}" if str(frame_id).isdigit() else str(frame_id)
        base = self.seq_dir / seq
        velo = base / "velodyne" / f"{fid}.bin"
        if not velo.is_file():
            raise FileNotFoundError(f"LiDAR scan not found: {velo}")
        points = read_points(velo)
        labels = None
        label_path = base / "labels" / f"{fid}.label"
        if label_path.is_file():
            labels = np.fromfile(label_path, dtype=np.uint32)
            if labels.shape[0] != points.shape[0]:
                raise ValueError(f"{label_path}: {labels.shape[0]} labels for {points.shape[0]} points in {velo}")
        img_path = base / "image_2" / f"{fid}.png"
        image = None
        if img_path.is_file():
            image = read_rgb(img_path)
            height, width = image.shape[:2]
        elif self.require_images:
            raise FileNotFoundError(f"camera image not found: {img_path} (pass require_images=False for LiDAR only)")
        else:
            width, height = KITTI_IMAGE_SIZE
        pixel_labels = None
        pl_path = base / "image_2_label" / f"{fid}.png"
        if pl_path.is_file():
            pixel_labels = read_label_png(pl_path)
        pixel_instances = None
        pi_path = base / "image_2_instance" / f"{fid}.png"
        if pi_path.is_file():
            pixel_instances = read_label_png(pi_path)
        calib = self._sequence_calib(seq, width, height)
        pos = self._frame_pos.get((seq, fid), int(fid) if fid.isdigit() else -1)
        poses = self._sequence_poses(seq, width, height)
        pose = poses[pos].copy() if poses is not None and 0 <= pos < len(poses) else None
        times = self._sequence_times(seq)
        stamp = float(times[pos]) if times is not None and 0 <= pos < len(times) else None
        return Frame(
            sequence=seq,
            frame_id=fid,
            image=image,
            points=points,
            point_labels=labels,
            pixel_labels=pixel_labels,
            calib=calib,
            pose=pose,
            stamp=stamp,
            pixel_instances=pixel_instances,
        )


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """PNG bytes via ``cv2.imencode`` with fixed parameters (same array -> same bytes).

    3-channel input is taken as RGB. 16-bit single-channel arrays stay 16-bit.
    """

    arr = np.ascontiguousarray(image)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise ValueError(f"PNG encoding failed for an array {arr.dtype} {arr.shape}")
    return buf.tobytes()


def _format_rows(mats: Iterable[np.ndarray]) -> bytes:
    lines = [" ".join(f"{v:.12e}" for v in np.asarray(m)[:3].ravel()) for m in mats]
    return ("\n".join(lines) + "\n").encode() if lines else b""


class SemanticKittiWriter:
    """Writes frames in the SemanticKITTI layout (every file atomically, deterministic bytes).

    Args:
        root: dataset root; ``sequences/`` is created below it.
        config: label space, written as ``root/dataset.yaml`` by :meth:`write_config`.
        png_compression: zlib level of the PNGs (1: fast; the same level gives the same bytes).
    """

    def __init__(self, root: str | os.PathLike[str], config: DatasetConfig, png_compression: int = 1) -> None:
        self.root = Path(root)
        self.config = config
        self.png_compression = int(png_compression)

    def sequence_dir(self, sequence: str | int) -> Path:
        """``root/sequences/XX``."""
        return self.root / "sequences" / _seq_name(sequence)

    def write_config(self) -> Path:
        """Write ``dataset.yaml`` at the root."""
        path = self.root / "dataset.yaml"
        self.config.write_yaml(path)
        return path

    def write_frame(self, frame: Frame) -> None:
        """Write the scan, labels, image and pixel labels of one frame (whichever are present)."""
        base = self.sequence_dir(frame.sequence)
        fid = frame.frame_id
        atomic_write_bytes(base / "velodyne" / f"{fid}.bin", np.ascontiguousarray(frame.points, np.float32).tobytes())
        if frame.point_labels is not None:
            atomic_write_bytes(
                base / "labels" / f"{fid}.label", np.ascontiguousarray(frame.point_labels, np.uint32).tobytes()
            )
        if frame.image is not None:
            atomic_write_bytes(base / "image_2" / f"{fid}.png", encode_png(frame.image, self.png_compression))
        if frame.pixel_labels is not None:
            atomic_write_bytes(
                base / "image_2_label" / f"{fid}.png",
                encode_png(frame.pixel_labels.astype(np.uint16), self.png_compression),
            )
        if frame.pixel_instances is not None:
            atomic_write_bytes(
                base / "image_2_instance" / f"{fid}.png",
                encode_png(frame.pixel_instances.astype(np.uint16), self.png_compression),
            )

    def write_sequence_meta(
        self,
        sequence: str | int,
        calib: Calibration,
        poses: Sequence[np.ndarray] | np.ndarray | None = None,
        stamps: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Write ``calib.txt`` (P0..P3 = K [I|0], Tr = T_cam_lidar), ``poses.txt`` and ``times.txt``.

        ``poses`` are LiDAR poses in the first LiDAR frame (``Frame.pose``); they are stored as
        camera poses in the first camera frame (``Tr @ pose @ inv(Tr)``), as KITTI does.
        """
        base = self.sequence_dir(sequence)
        p = np.hstack([calib.K, np.zeros((3, 1))])
        lines = [f"P{i}: " + " ".join(f"{v:.12e}" for v in p.ravel()) for i in range(4)]
        lines.append("Tr: " + " ".join(f"{v:.12e}" for v in calib.T_cam_lidar[:3].ravel()))
        atomic_write_bytes(base / "calib.txt", ("\n".join(lines) + "\n").encode())
        if poses is not None:
            tr = calib.T_cam_lidar
            tr_inv = np.linalg.inv(tr)
            atomic_write_bytes(base / "poses.txt", _format_rows(tr @ np.asarray(m) @ tr_inv for m in poses))
        if stamps is not None:
            text = "".join(f"{float(t):.6e}\n" for t in stamps)
            atomic_write_bytes(base / "times.txt", text.encode())

    def write_sequence(self, frames: Iterable[Frame]) -> int:
        """Write all frames of one sequence and its calib/poses/times (taken from the frames)."""
        count, calib, poses, stamps, seq = 0, None, [], [], None
        for frame in frames:
            if seq is None:
                seq, calib = frame.sequence, frame.calib
            elif frame.sequence != seq:
                raise ValueError(f"write_sequence got frames of sequences {seq!r} and {frame.sequence!r}")
            self.write_frame(frame)
            poses.append(frame.pose)
            stamps.append(frame.stamp)
            count += 1
        if seq is not None and calib is not None:
            self.write_sequence_meta(
                seq,
                calib,
                poses if all(p is not None for p in poses) else None,
                stamps if all(s is not None for s in stamps) else None,
            )
        return count
