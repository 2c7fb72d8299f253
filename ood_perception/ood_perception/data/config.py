"""Label spaces of datasets: ``dataset.yaml`` (SemanticKITTI style) as a :class:`DatasetConfig`.

Raw label ids are the dataset's own; networks use *train ids* ``0..K-1`` (learning id - 1) with
255 as ignore (unlabelled and, in training, anomalies). When a SemanticKITTI root has no
``dataset.yaml``, :data:`SEMANTIC_KITTI` (the label map of the official ``semantic-kitti.yaml``
of the semantic-kitti-api) is used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ood_perception.atomic import atomic_write_bytes

#: Train id of ignored pixels/points (unlabelled, and OOD during training).
IGNORE_ID = 255

#: The label map of the official ``semantic-kitti.yaml`` (semantic-kitti-api, config/); colours BGR.
SEMANTIC_KITTI: dict[str, Any] = {
    "labels": {
        0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle",
        16: "on-rails", 18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist",
        32: "motorcyclist", 40: "road", 44: "parking", 48: "sidewalk", 49: "other-ground",
        50: "building", 51: "fence", 52: "other-structure", 60: "lane-marking", 70: "vegetation",
        71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign", 99: "other-object",
        252: "moving-car", 253: "moving-bicyclist", 254: "moving-person", 255: "moving-motorcyclist",
        256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck", 259: "moving-other-vehicle",
    },
    "color_map": {
        0: [0, 0, 0], 1: [0, 0, 255], 10: [245, 150, 100], 11: [245, 230, 100], 13: [250, 80, 100],
        15: [150, 60, 30], 16: [255, 0, 0], 18: [180, 30, 80], 20: [255, 0, 0], 30: [30, 30, 255],
        31: [200, 40, 255], 32: [90, 30, 150], 40: [255, 0, 255], 44: [255, 150, 255],
        48: [75, 0, 75], 49: [75, 0, 175], 50: [0, 200, 255], 51: [50, 120, 255],
        52: [0, 150, 255], 60: [170, 255, 150], 70: [0, 175, 0], 71: [0, 60, 135],
        72: [80, 240, 150], 80: [150, 240, 255], 81: [0, 0, 255], 99: [255, 255, 50],
        252: [245, 150, 100], 256: [255, 0, 0], 253: [200, 40, 255], 254: [30, 30, 255],
        255: [90, 30, 150], 257: [250, 80, 100], 258: [180, 30, 80], 259: [255, 0, 0],
    },
    "learning_map": {
        0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8,
        40: 9, 44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17,
        80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
    },
    "learning_map_inv": {
        0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48,
        12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
    },
    "ood_ids": [],
    "splits": {
        "train": ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"],
        "val": ["08"],
        "test": [f"{i:02d}" for i in range(11, 22)],
    },
}


def _int_keys(name: str, mapping: Any) -> dict[int, Any]:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"dataset config: '{name}' must be a mapping, got {type(mapping).__name__}")
    out: dict[int, Any] = {}
    for key, value in mapping.items():
        try:
            k = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"dataset config: '{name}' has a non-integer id {key!r}") from None
        if not 0 <= k <= 0xFFFF:
            raise ValueError(f"dataset config: '{name}' id {k} is outside 0..65535")
        out[k] = value
    return out


@dataclass
class DatasetConfig:
    """A dataset's label space (the content of ``dataset.yaml``).

    Attributes:
        labels: raw id -> name.
        color_map: raw id -> colour, **BGR** as in ``semantic-kitti.yaml``.
        learning_map: raw id -> learning id (0 = ignore, 1..K = the K in-distribution classes).
        learning_map_inv: learning id -> representative raw id.
        ood_ids: raw ids of anomalies (out-of-distribution objects).
        splits: optional ``{"train": [...], "val": [...], "test": [...]}`` of sequence names.
        extra: any other top-level keys of the yaml, kept verbatim (e.g. generator metadata).
    """

    labels: dict[int, str]
    color_map: dict[int, list[int]]
    learning_map: dict[int, int]
    learning_map_inv: dict[int, int]
    ood_ids: list[int] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = {k: str(v) for k, v in _int_keys("labels", self.labels).items()}
        self.color_map = {k: [int(c) for c in v] for k, v in _int_keys("color_map", self.color_map).items()}
        self.learning_map = {k: int(v) for k, v in _int_keys("learning_map", self.learning_map).items()}
        self.learning_map_inv = {k: int(v) for k, v in _int_keys("learning_map_inv", self.learning_map_inv).items()}
        self.ood_ids = sorted(int(i) for i in (self.ood_ids or []))
        self.splits = {str(k): [_seq_name(s) for s in v] for k, v in (self.splits or {}).items()}
        for raw, colour in self.color_map.items():
            if len(colour) != 3:
                raise ValueError(f"dataset config: color_map[{raw}] must have 3 values, got {colour}")
        learning_ids = sorted(i for i in self.learning_map_inv if i != 0)
        if learning_ids != list(range(1, len(learning_ids) + 1)):
            raise ValueError(f"dataset config: learning_map_inv must cover 1..K without gaps, got {learning_ids}")
        if not learning_ids:
            raise ValueError("dataset config: learning_map_inv defines no classes (needs ids 1..K)")
        bad = sorted({v for v in self.learning_map.values() if v != 0 and v not in self.learning_map_inv})
        if bad:
            raise ValueError(f"dataset config: learning_map uses learning ids {bad} missing from learning_map_inv")
        for raw in self.ood_ids:
            if self.learning_map.get(raw, 0) != 0:
                raise ValueError(f"dataset config: ood id {raw} must map to learning id 0 (ignore)")
        lut = np.full(0x10000, IGNORE_ID, dtype=np.uint8)
        for raw, lid in self.learning_map.items():
            lut[raw] = IGNORE_ID if lid == 0 else lid - 1
        lut[self.ood_ids] = IGNORE_ID
        self._train_lut = lut
        ood = np.zeros(0x10000, dtype=bool)
        ood[self.ood_ids] = True
        self._ood_lut = ood

    # -- derived ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """K, the number of in-distribution classes."""
        return sum(1 for i in self.learning_map_inv if i != 0)

    @property
    def class_names(self) -> list[str]:
        """Names of train ids 0..K-1 (the names of ``learning_map_inv[1..K]``)."""
        return [self.labels.get(self.learning_map_inv[i], f"class{i}") for i in range(1, self.num_classes + 1)]

    @property
    def colors(self) -> np.ndarray:
        """``[K, 3]`` uint8 RGB colour of each train id (from ``color_map``, which is BGR)."""
        out = np.zeros((self.num_classes, 3), dtype=np.uint8)
        for i in range(1, self.num_classes + 1):
            bgr = self.color_map.get(self.learning_map_inv[i], [0, 0, 0])
            out[i - 1] = bgr[::-1]
        return out

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        """Raw labels (uint16/uint32/int, instance bits allowed) -> uint8 train ids, 255 = ignore.

        Unknown raw ids, unlabelled ids and OOD ids all give 255.
        """
        sem = np.asarray(raw).astype(np.int64, copy=False) & 0xFFFF
        return self._train_lut[sem]

    @property
    def excluded_ids(self) -> list[int]:
        """Raw ids of anomaly types left out of evaluation by :meth:`excluding` (empty otherwise)."""
        return list(getattr(self, "_excluded_ids", []))

    def excluding(self, type_names: Iterable[str] | None) -> DatasetConfig:
        """This label space with the anomaly types ``type_names`` (names in ``labels``; e.g. a model's
        ``model.json`` ``outlier_types``, the types it saw in training) taken out of ``ood_ids``: their
        pixels and points become ignored (neither in-distribution nor anomalies) and
        :attr:`excluded_ids` lists them, so evaluations use only the other types. Names that are not
        anomaly classes of this dataset cannot occur in it and are skipped."""
        names = {str(n) for n in (type_names or [])}
        ids = sorted(i for i in self.ood_ids if self.labels.get(i) in names)
        if not ids:
            return self
        out = dataclasses.replace(self, ood_ids=[i for i in self.ood_ids if i not in ids])
        out._excluded_ids = sorted(set(self.excluded_ids) | set(ids))
        return out

    def ood_mask(self, raw: np.ndarray) -> np.ndarray:
        """Boolean mask of entries whose raw semantic id is in ``ood_ids``."""
        sem = np.asarray(raw).astype(np.int64, copy=False) & 0xFFFF
        return self._ood_lut[sem]

    def raw_colors_bgr(self) -> np.ndarray:
        """``[65536, 3]`` uint8 BGR lookup table of raw ids (unknown ids black)."""
        lut = np.zeros((0x10000, 3), dtype=np.uint8)
        for raw, bgr in self.color_map.items():
            lut[raw] = bgr
        return lut

    # -- io --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetConfig:
        """Build from a parsed ``dataset.yaml``; missing required keys give a clear error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"dataset config must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("labels", "learning_map", "learning_map_inv") if k not in data]
        if missing:
            raise ValueError(f"dataset config: missing keys {missing}")
        known = {"labels", "color_map", "learning_map", "learning_map_inv", "ood_ids", "splits"}
        splits = data.get("splits") or {}
        if "valid" in splits and "val" not in splits:  # semantic-kitti.yaml spells it 'valid'
            splits = {("val" if k == "valid" else k): v for k, v in splits.items()}
        return cls(
            labels=data["labels"],
            color_map=data.get("color_map") or {},
            learning_map=data["learning_map"],
            learning_map_inv=data["learning_map_inv"],
            ood_ids=list(data.get("ood_ids") or []),
            splits=splits,
            extra={k: v for k, v in data.items() if k not in known and k != "split"},
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DatasetConfig:
        """Read a ``dataset.yaml`` (or the official ``semantic-kitti.yaml``)."""

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"dataset config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(data, Mapping) and "split" in data and "splits" not in data:
            data = dict(data)
            data["splits"] = data["split"]
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def semantic_kitti(cls) -> DatasetConfig:
        """The official SemanticKITTI label map (19 classes, no OOD ids)."""
        return cls.from_dict(SEMANTIC_KITTI)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict in ``dataset.yaml`` layout (keys sorted, deterministic)."""
        out: dict[str, Any] = {
            "labels": dict(sorted(self.labels.items())),
            "color_map": {k: list(v) for k, v in sorted(self.color_map.items())},
            "learning_map": dict(sorted(self.learning_map.items())),
            "learning_map_inv": dict(sorted(self.learning_map_inv.items())),
            "ood_ids": list(self.ood_ids),
        }
        if self.splits:
            out["splits"] = {k: list(v) for k, v in self.splits.items()}
        out.update(self.extra)
        return out

    def write_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write ``dataset.yaml`` atomically (same content -> same bytes)."""

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        atomic_write_bytes(Path(path), text.encode())


def _seq_name(seq: Any) -> str:
    """Sequence names are zero-padded to two digits when numeric (``8`` -> ``"08"``)."""
    text = str(seq)
    return f"{int(text):02d}" if text.isdigit() else text


def require_classes(source: str | os.PathLike[str], found: Iterable[str], expected: Iterable[str]) -> None:
    """Refuse data whose class names are not the model's (ValueError, one line naming both): its
    train ids would mean other classes. The one check the trainer's readers of a dataset share."""
    found, expected = list(found), list(expected)
    if found != expected:
        raise ValueError(f"{source}: classes {found} differ from the checkpoint's {expected} (data of another label space)")
