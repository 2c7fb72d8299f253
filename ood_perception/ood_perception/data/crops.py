"""Object crops for "is this object one of my classes?": synthetic-world instances and real photos.

A crop is the square box around one object (its 2D box grown by ``context`` on each side, clipped
to the image), resized to ``size x size`` RGB, as a detector or the fusion node's alert region
would hand it to a recogniser.

* :func:`world_crops` reads a SemanticKITTI-layout dataset written by ``ood-perception synth``
  (``image_2``, ``image_2_label``, ``image_2_instance``) and cuts out

  - *thing* objects by pixel instance id (car, bicycle, truck, person, bicyclist; moving-* ids are
    merged by ``dataset.yaml``'s learning map) and every anomaly object (raw ids in ``ood_ids``),
  - *stuff* objects without instance ids (``component_classes``: pole, traffic-sign, trunk) as
    8-connected components of their semantic mask;

  objects smaller than ``min_pixels`` visible pixels or ``min_side`` box pixels are skipped.
  Labels: ID class index ``0..C-1`` in ``class_names`` order, or :data:`OOD_LABEL` for anomalies
  (``kind`` says ``near`` / ``far`` from ``dataset.yaml``'s ``ood_near_ids`` / ``ood_far_ids``).
* :func:`real_crops` cuts random square crops from real photographs: by default the colour sample
  images that scikit-image's wheel ships in ``skimage/data`` (astronaut, chelsea, coffee,
  motorcycle, rocket ...; public-domain / CC0 per skimage/data/README.txt), located with
  ``importlib`` without importing scikit-image (``pip install --no-deps scikit-image`` is
  enough), or any directory of images. They are far-OOD for a model trained on the synthetic world.
* :data:`SEMANTIC_GROUPS`: SemanticKITTI's label categories (vehicle, human, object, nature, ...),
  the semantic grouping MoFE's class partition starts from.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ood_perception.data.semantickitti import SemanticKittiReader
from ood_perception.geometry.crops import crop_resize, square_box

#: Label of OOD crops.
OOD_LABEL = -1

#: Default in-distribution object classes (SemanticKITTI names) of world crops.
DEFAULT_CLASSES: tuple[str, ...] = ("car", "bicycle", "truck", "person", "bicyclist", "trunk", "pole",
                                    "traffic-sign")
#: Classes without instance ids in the world, cut as connected components of their semantic mask.
DEFAULT_COMPONENT_CLASSES: tuple[str, ...] = ("trunk", "pole", "traffic-sign")

#: SemanticKITTI's label categories (semantic-kitti-api ``semantic-kitti.yaml`` / the paper's
#: Table of classes), by class name; ``sky`` (the synthetic world's extra class) is its own group.
SEMANTIC_GROUPS: dict[str, str] = {
    "car": "vehicle", "bicycle": "vehicle", "bus": "vehicle", "motorcycle": "vehicle", "on-rails": "vehicle",
    "truck": "vehicle", "other-vehicle": "vehicle",
    "person": "human", "bicyclist": "human", "motorcyclist": "human",
    "road": "ground", "parking": "ground", "sidewalk": "ground", "other-ground": "ground",
    "building": "structure", "fence": "structure", "other-structure": "structure",
    "vegetation": "nature", "trunk": "nature", "terrain": "nature",
    "pole": "object", "traffic-sign": "object", "other-object": "object",
    "sky": "sky",
}

#: Colour photographs in scikit-image's ``skimage/data`` used by :func:`real_crops` by default.
SKIMAGE_PHOTOS: tuple[str, ...] = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                                   "motorcycle_right.png", "rocket.jpg", "brick.png", "grass.png",
                                   "gravel.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
                                   "color.png", "logo.png")


@dataclass
class CropSet:
    """Crops with their labels and provenance (all arrays have one row per crop).

    Attributes:
        images: uint8 ``[N, S, S, 3]`` RGB.
        labels: int64 ``[N]``: ID class index into ``class_names``, or :data:`OOD_LABEL`.
        names: ``[N]`` object type name (class name, anomaly name or ``real:<file>``).
        kinds: ``[N]`` ``"id"``, ``"near"``, ``"far"`` (synthetic anomalies) or ``"real"``.
        sources: ``[N]`` where the crop comes from (``seq/frame/instance`` or ``file#k``).
        class_names: the ID classes.
    """

    images: np.ndarray
    labels: np.ndarray
    names: np.ndarray
    kinds: np.ndarray
    sources: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, keep: np.ndarray) -> CropSet:
        """The crops selected by a boolean mask or index array."""
        return CropSet(self.images[keep], self.labels[keep], self.names[keep], self.kinds[keep],
                       self.sources[keep], self.class_names)

    @property
    def is_ood(self) -> np.ndarray:
        """bool ``[N]``: True for OOD crops."""
        return self.labels == OOD_LABEL

    def restrict(self, class_names: tuple[str, ...]) -> CropSet:
        """Only OOD crops and ID crops of ``class_names`` (a subset of this set's classes), with
        labels renumbered to that list."""
        unknown = [c for c in class_names if c not in self.class_names]
        if unknown:
            raise ValueError(f"classes {unknown} are not among {self.class_names}")
        remap = np.full(len(self.class_names), OOD_LABEL - 1, np.int64)
        for i, c in enumerate(class_names):
            remap[self.class_names.index(c)] = i
        new = np.where(self.labels == OOD_LABEL, OOD_LABEL, remap[np.maximum(self.labels, 0)])
        keep = new != OOD_LABEL - 1
        out = self.subset(keep)
        out.labels, out.class_names = new[keep], tuple(class_names)
        return out

    @staticmethod
    def concat(sets: list[CropSet]) -> CropSet:
        """Concatenate crop sets with the same ``class_names`` and crop size."""
        if not sets:
            raise ValueError("nothing to concatenate")
        names = {s.class_names for s in sets}
        if len(names) != 1:
            raise ValueError(f"crop sets have different class lists: {sorted(names)}")
        return CropSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in
                         ("images", "labels", "names", "kinds", "sources")), class_names=sets[0].class_names)


def world_crops(
    root: str | os.PathLike[str],
    split: str | None = None,
    *,
    size: int = 96,
    min_pixels: int = 150,
    min_side: int = 12,
    context: float = 0.15,
    class_names: tuple[str, ...] = DEFAULT_CLASSES,
    component_classes: tuple[str, ...] = DEFAULT_COMPONENT_CLASSES,
    frame_stride: int = 1,
) -> CropSet:
    """Crops of ID objects and anomaly objects of a synthetic-world dataset (see the module doc).

    Args:
        root: dataset root (``dataset.yaml`` + ``sequences/``) written by ``ood-perception synth``.
        split: ``"train"``, ``"val"``, ``"test"`` (from ``dataset.yaml``) or None for all sequences.
        size: crop side in pixels after resizing.
        min_pixels: least visible pixels of an object.
        min_side: least side (pixels) of the object's box.
        context: margin around the box, as a share of its longer side, on each side.
        class_names: the ID classes (names of ``dataset.yaml``'s labels).
        component_classes: ID classes without instance ids, cut as connected components.
        frame_stride: use every n-th frame of a sequence (consecutive frames repeat objects).
    """
    if size < 8 or min_pixels < 1 or min_side < 1 or context < 0 or frame_stride < 1:
        raise ValueError("size >= 8, min_pixels >= 1, min_side >= 1, context >= 0, frame_stride >= 1 needed")
    reader = SemanticKittiReader(root, split)
    cfg = reader.config
    name_of_lid = {lid: cfg.labels.get(raw, str(raw)) for lid, raw in cfg.learning_map_inv.items() if lid}
    unknown = [c for c in class_names if c not in name_of_lid.values()]
    if unknown:
        raise ValueError(f"classes {unknown} are not in {root}'s dataset.yaml; known: {sorted(name_of_lid.values())}")
    class_of_lid = {lid: class_names.index(n) for lid, n in name_of_lid.items() if n in class_names}
    ood_ids = set(cfg.ood_ids)
    near = set(cfg.extra.get("ood_near_ids", []))
    comp_lids = {lid for lid, n in name_of_lid.items() if n in component_classes}
    images, labels, names, kinds, sources = [], [], [], [], []

    def add(img: np.ndarray, mask_rows: np.ndarray, mask_cols: np.ndarray, label: int, name: str, kind: str,
            source: str) -> None:
        if mask_rows.size < min_pixels:
            return
        x0, x1, y0, y1 = int(mask_cols.min()), int(mask_cols.max()) + 1, int(mask_rows.min()), int(mask_rows.max()) + 1
        if max(x1 - x0, y1 - y0) < min_side:
            return
        box = square_box(x0, y0, x1, y1, img.shape[1], img.shape[0], context)
        images.append(crop_resize(img, box, size))
        labels.append(label)
        names.append(name)
        kinds.append(kind)
        sources.append(source)

    for i, (seq, fid) in enumerate(reader.index):
        if reader._frame_pos.get((seq, fid), i) % frame_stride:
            continue
        frame = reader.read(seq, fid)
        if frame.image is None or frame.pixel_labels is None:
            continue
        sem = frame.pixel_labels.astype(np.int64)
        inst = (frame.pixel_instances.astype(np.int64) if frame.pixel_instances is not None
                else np.zeros_like(sem))
        lid = _map_lids(sem, cfg.learning_map)
        # things: one object per (raw semantic, instance) pair with instance > 0
        key = np.where(inst > 0, sem * 65536 + inst, -1)
        flat = key.ravel()
        order = np.argsort(flat, kind="stable")
        uniq, starts = np.unique(flat[order], return_index=True)
        bounds = list(starts[1:]) + [flat.size]
        for k, s0, s1 in zip(uniq, starts, bounds, strict=True):
            if k < 0:
                continue
            raw, iid = int(k >> 16), int(k & 0xFFFF)
            pix = order[s0:s1]
            rows, cols = np.divmod(pix, sem.shape[1])
            src = f"{seq}/{fid}/{iid}"
            if raw in ood_ids:
                add(frame.image, rows, cols, OOD_LABEL, cfg.labels.get(raw, str(raw)),
                    "near" if raw in near else "far", src)
            else:
                cls = class_of_lid.get(cfg.learning_map.get(raw, 0))
                if cls is not None:
                    add(frame.image, rows, cols, cls, class_names[cls], "id", src)
        # stuff objects: connected components of their semantic mask (pixels without an instance)
        for clid in sorted(comp_lids):
            mask = ((lid == clid) & (inst == 0)).astype(np.uint8)
            if not mask.any():
                continue
            n, comp = cv2.connectedComponents(mask, connectivity=8)
            cls = class_of_lid[clid]
            for c in range(1, n):
                rows, cols = np.nonzero(comp == c)
                add(frame.image, rows, cols, cls, class_names[cls], "id", f"{seq}/{fid}/{class_names[cls]}#{c}")
    return _cropset(images, labels, names, kinds, sources, class_names, size)


def _map_lids(sem: np.ndarray, learning_map: dict[int, int]) -> np.ndarray:
    lut = np.zeros(max(max(learning_map) + 1, int(sem.max()) + 1), np.int64)
    for raw, lid in learning_map.items():
        lut[raw] = lid
    return lut[sem]


def _cropset(images: list, labels: list, names: list, kinds: list, sources: list,
             class_names: tuple[str, ...], size: int) -> CropSet:
    return CropSet(
        images=np.stack(images).astype(np.uint8) if images else np.zeros((0, size, size, 3), np.uint8),
        labels=np.asarray(labels, np.int64), names=np.asarray(names, dtype=object),
        kinds=np.asarray(kinds, dtype=object), sources=np.asarray(sources, dtype=object),
        class_names=tuple(class_names))


def skimage_data_dir() -> Path | None:
    """``skimage/data`` of an installed scikit-image (found without importing it), or None."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    return path if path.is_dir() else None


def real_crops(
    directory: str | os.PathLike[str] | None = None,
    *,
    per_image: int = 8,
    size: int = 96,
    min_frac: float = 0.25,
    max_frac: float = 0.7,
    seed: int = 0,
    class_names: tuple[str, ...] = DEFAULT_CLASSES,
) -> CropSet:
    """Random square crops of real photographs, labelled OOD (kind ``"real"``).

    Args:
        directory: a folder of ``.png``/``.jpg`` images; default: scikit-image's sample photos
            (:data:`SKIMAGE_PHOTOS` in ``skimage/data``).
        per_image: crops per image; sides uniform in ``[min_frac, max_frac]`` x the shorter side.
        seed: seed of the crop positions and sizes.
        class_names: carried into the :class:`CropSet` (to concatenate with world crops).
    """
    if per_image < 1 or not 0 < min_frac <= max_frac <= 1:
        raise ValueError("per_image >= 1 and 0 < min_frac <= max_frac <= 1 needed")
    if directory is None:
        data = skimage_data_dir()
        if data is None:
            raise FileNotFoundError("no real images: `pip install --no-deps scikit-image` ships sample photos, "
                                    "or pass a directory of images")
        files = [data / f for f in SKIMAGE_PHOTOS if (data / f).is_file()]
    else:
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"image directory not found: {d}")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no .png/.jpg images in {directory or 'skimage/data'}")
    rng = np.random.default_rng(seed)
    images, names, sources = [], [], []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {f}")
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        short = min(h, w)
        for k in range(per_image):
            side = max(8, int(short * rng.uniform(min_frac, max_frac)))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            images.append(crop_resize(img, (x0, y0, x0 + side, y0 + side), size))
            names.append(f"real:{f.stem}")
            sources.append(f"{f.name}#{k}")
    n = len(images)
    return _cropset(images, [OOD_LABEL] * n, names, ["real"] * n, sources, class_names, size)
