"""Is there an object like this one in the training data? The object-level kNN term of the region score.

The per-pixel score of the segmentation model and the class it predicts separate anomaly objects
from known ones only partly (issue 17: object AUROC 0.84 with the shares of unknown-class and
above-threshold points). This term looks at each LiDAR object candidate as a whole:

* **appearance**: the model's ``embedding`` output (the frozen ImageNet MobileNetV2 taps at stride
  8, ``models.segmentation.TapFusionNet``) averaged over the grid cells the candidate's points
  fall on (:func:`pool_embedding`), L2-normalised;
* **size**: its extent along x, y, z and the height of its top above the ground (metres, from
  ``pipeline.objects``), z-scored with the bank's statistics and weighted by ``geometry_weight``;

and scores the joint vector by the squared distance to its ``k``-th nearest neighbour among the
candidates found on the *training* drives that are not anomalies (Deep kNN, Sun et al., ICML 2022,
applied to objects instead of images; nothing about anomalies is learnt). The distance becomes a
share in [0, 1] (:meth:`ObjectBank.score`): the fraction of the anomaly-free *validation* drives'
candidates that lie at most as far from the bank, so 0.95 means "farther from every training object than
95% of the objects of ordinary drives". It enters the region score as ``extra`` with weight
``object.w_extra`` (``pipeline.objects.region_score``); on a frame without a camera image (no
appearance) the term and its weight are left out of that frame's region scores.

Why both parts: on validation drives the appearance alone ranks anomalies of never-seen types above
known objects at AUROC 0.73 (a trailer looks like a truck's back, an overturned car like a car);
appearance and size together at 0.89 (docs/model.md, "Object bank").

The bank is a file of the model directory (``object_bank.npz``, sha256 in ``model.json`` like the
model files), written by ``ood-perception object-bank`` (``commands/object_bank.py``).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ood_perception.atomic import atomic_write_bytes

#: ``model.json`` ``files`` role of the bank.
BANK_ROLE = "object_bank"
#: Its file name in the model directory.
BANK_FILE = "object_bank.npz"
#: Geometry features of a candidate, in this order.
GEOMETRY_FEATURES = ("size_x", "size_y", "size_z", "top")


def pool_embedding(embedding: np.ndarray, u: np.ndarray, v: np.ndarray, width: int, height: int) -> np.ndarray:
    """Mean of ``embedding`` ``[C, gh, gw]`` over the distinct grid cells hit by the pixels ``(u, v)``
    of an image ``width x height`` (the candidate's projected points); ``[C]`` float32."""
    c, gh, gw = embedding.shape
    gu = np.clip((np.asarray(u, np.int64) * gw) // max(int(width), 1), 0, gw - 1)
    gv = np.clip((np.asarray(v, np.int64) * gh) // max(int(height), 1), 0, gh - 1)
    cells = np.unique(gv * gw + gu)
    if cells.size == 0:
        return np.zeros(c, np.float32)
    return embedding.reshape(c, -1)[:, cells].mean(axis=1).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)).astype(np.float32)


@dataclass
class ObjectBank:
    """Training objects to compare candidates with (see the module docstring).

    Attributes:
        appearance: ``[N, C]`` L2-normalised pooled embeddings of the training candidates.
        geometry: ``[N, 4]`` their :data:`GEOMETRY_FEATURES` (metres, raw).
        geometry_mean, geometry_std: z-scoring of the geometry (from the bank).
        geometry_weight: weight of the z-scored geometry against the unit-norm appearance.
        k: the neighbour whose distance is the score.
        reference: sorted distances of the reference (anomaly-free validation) candidates:
            :meth:`score` is the share of them below a candidate's distance.
        info: provenance (data, counts, command).
    """

    appearance: np.ndarray
    geometry: np.ndarray
    geometry_mean: np.ndarray
    geometry_std: np.ndarray
    geometry_weight: float = 1.0
    k: int = 5
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.appearance = np.asarray(self.appearance, np.float32)
        self.geometry = np.asarray(self.geometry, np.float32).reshape(-1, len(GEOMETRY_FEATURES))
        if len(self.appearance) != len(self.geometry):
            raise ValueError(f"object bank: {len(self.appearance)} appearance rows but {len(self.geometry)} geometry rows")
        if not 1 <= int(self.k) <= len(self.appearance):
            raise ValueError(f"object bank: k must be in 1..{len(self.appearance)} (the bank size), got {self.k}")
        if not float(self.geometry_weight) >= 0:
            raise ValueError(f"object bank: geometry_weight must be >= 0, got {self.geometry_weight}")
        self.k = int(self.k)
        self.geometry_weight = float(self.geometry_weight)
        self.geometry_mean = np.asarray(self.geometry_mean, np.float32)
        self.geometry_std = np.maximum(np.asarray(self.geometry_std, np.float32), 1e-6)
        self.reference = np.sort(np.asarray(self.reference, np.float32).ravel())
        self._joint = self._vectors(self.appearance, self.geometry, normalised=True)
        self._joint_sq = (self._joint ** 2).sum(axis=1)

    @classmethod
    def fit(cls, appearance: np.ndarray, geometry: np.ndarray, geometry_weight: float = 1.0, k: int = 5,
            info: dict[str, Any] | None = None) -> ObjectBank:
        """A bank of these training candidates (pooled embeddings ``[N, C]``, geometry ``[N, 4]``);
        the geometry statistics come from them. Set :attr:`reference` with :meth:`with_reference`."""
        geometry = np.asarray(geometry, np.float32).reshape(-1, len(GEOMETRY_FEATURES))
        return cls(_normalise(np.asarray(appearance, np.float32)), geometry, geometry.mean(axis=0), geometry.std(axis=0),
                   geometry_weight, k, info=dict(info or {}))

    def _vectors(self, appearance: np.ndarray, geometry: np.ndarray, normalised: bool = False) -> np.ndarray:
        app = np.asarray(appearance, np.float32) if normalised else _normalise(np.asarray(appearance, np.float32))
        geo = (np.asarray(geometry, np.float32).reshape(-1, len(GEOMETRY_FEATURES)) - self.geometry_mean) / self.geometry_std
        return np.hstack([app, self.geometry_weight * geo]).astype(np.float32)

    def distance(self, appearance: np.ndarray, geometry: np.ndarray) -> np.ndarray:
        """Squared distance of each candidate (rows of ``appearance`` ``[M, C]``, ``geometry``
        ``[M, 4]``) to its ``k``-th nearest bank object in the joint space; ``[M]``."""
        q = self._vectors(appearance, geometry)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        if q.shape[1] != self._joint.shape[1]:
            raise ValueError(f"object bank holds {self.appearance.shape[1]}-d embeddings, got {q.shape[1] - self.geometry.shape[1]}-d")
        d2 = (q ** 2).sum(axis=1)[:, None] + self._joint_sq[None, :] - 2.0 * (q @ self._joint.T)
        return np.maximum(np.partition(d2, self.k - 1, axis=1)[:, self.k - 1], 0.0).astype(np.float32)

    def with_reference(self, appearance: np.ndarray, geometry: np.ndarray) -> ObjectBank:
        """Record the distances of these reference candidates (anomaly-free validation drives)."""
        self.reference = np.sort(self.distance(appearance, geometry))
        return self

    def score(self, appearance: np.ndarray, geometry: np.ndarray) -> np.ndarray:
        """The term in [0, 1]: share of reference candidates at most as far from the bank as each candidate."""
        if self.reference.size == 0:
            raise ValueError("object bank has no reference distances (with_reference was not called)")
        d = self.distance(appearance, geometry)
        return (np.searchsorted(self.reference, d, side="right") / self.reference.size).astype(np.float32)

    # ------------------------------------------------------------------------------------ files

    def to_bytes(self) -> bytes:
        """The ``.npz`` bytes (appearance stored as float16: half the size, scores unchanged to 1e-3)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, appearance=self.appearance.astype(np.float16), geometry=self.geometry,
                            geometry_mean=self.geometry_mean, geometry_std=self.geometry_std,
                            geometry_weight=np.float32(self.geometry_weight), k=np.int64(self.k),
                            reference=self.reference, info=np.asarray(json.dumps(self.info, sort_keys=True)))
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (a reader never sees half a file)."""
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "object bank") -> ObjectBank:
        """Parse :meth:`to_bytes` output; ValueError naming ``source`` when it is not a bank."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls(z["appearance"].astype(np.float32), z["geometry"], z["geometry_mean"], z["geometry_std"],
                           float(z["geometry_weight"]), int(z["k"]), z["reference"], json.loads(str(z["info"])))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"{source}: not a readable object bank ({type(exc).__name__}: {exc})") from exc
