"""Triangle meshes of the world's objects, built from a few primitives, with per-triangle attributes.

Every object is a list of :class:`Part` s in its own frame (x forward, y left, z up, origin on the
ground at its centre). :class:`MeshBuilder` places parts in the world and concatenates them into one
triangle soup whose per-triangle arrays (semantic id, instance id, colour, LiDAR reflectance,
texture) are looked up by the ray caster's primitive ids.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ood_perception.geometry import transform_from_xyz_rpy
from ood_perception.world import labels as L

# Procedural textures (see render.shade_albedo).
TEX_PLAIN, TEX_GRAIN, TEX_WINDOWS, TEX_STRIPES, TEX_CHECKER, TEX_BLOTCH, TEX_FOLIAGE = range(7)
PATTERNED = (TEX_STRIPES, TEX_CHECKER, TEX_BLOTCH)

# Colours (linear RGB 0..1) and LiDAR reflectances of known materials.
ROAD_RGB, LANE_RGB, SIDEWALK_RGB = (0.30, 0.30, 0.32), (0.85, 0.85, 0.80), (0.58, 0.56, 0.53)
TERRAIN_RGB, VEG_RGB, TRUNK_RGB, POLE_RGB = (0.36, 0.42, 0.20), (0.18, 0.36, 0.14), (0.33, 0.24, 0.15), (0.52, 0.53, 0.55)
GLASS_RGB, TYRE_RGB, SKIN_RGB = (0.10, 0.12, 0.15), (0.07, 0.07, 0.07), (0.80, 0.62, 0.50)
CAR_PAINTS = np.array([
    (0.85, 0.85, 0.85), (0.08, 0.08, 0.09), (0.55, 0.56, 0.58), (0.65, 0.08, 0.06), (0.10, 0.20, 0.50),
    (0.12, 0.30, 0.15), (0.80, 0.65, 0.10), (0.35, 0.33, 0.30), (0.90, 0.90, 0.88), (0.30, 0.10, 0.05),
])
BUILDING_RGB = np.array([
    (0.75, 0.70, 0.60), (0.55, 0.52, 0.50), (0.60, 0.30, 0.22), (0.82, 0.80, 0.76), (0.45, 0.50, 0.55),
    (0.70, 0.60, 0.45), (0.40, 0.38, 0.36),
])
CLOTHES_RGB = np.array([
    (0.10, 0.10, 0.12), (0.20, 0.25, 0.45), (0.55, 0.10, 0.10), (0.80, 0.80, 0.78), (0.30, 0.35, 0.20),
    (0.60, 0.50, 0.30), (0.45, 0.45, 0.48), (0.85, 0.55, 0.10),
])
SIGN_RGB = np.array([(0.75, 0.08, 0.08), (0.10, 0.25, 0.65), (0.85, 0.75, 0.10), (0.90, 0.90, 0.90)])
REFLECTANCE = {
    L.ROAD: 0.12, L.LANE_MARKING: 0.6, L.SIDEWALK: 0.25, L.BUILDING: 0.3, L.FENCE: 0.35, L.VEGETATION: 0.5,
    L.TRUNK: 0.3, L.TERRAIN: 0.4, L.POLE: 0.45, L.TRAFFIC_SIGN: 0.9, L.CAR: 0.35, L.TRUCK: 0.35,
    L.PERSON: 0.3, L.BICYCLE: 0.4, L.BICYCLIST: 0.3,
}
#: (colour, texture, reflectance) of known materials an anomaly may copy (the "mimic" knob).
MIMIC_MATERIALS = (
    [(tuple(c), TEX_PLAIN, 0.35) for c in CAR_PAINTS]
    + [(ROAD_RGB, TEX_GRAIN, 0.12), (SIDEWALK_RGB, TEX_GRAIN, 0.25), (TERRAIN_RGB, TEX_GRAIN, 0.4),
       (VEG_RGB, TEX_FOLIAGE, 0.5), (TRUNK_RGB, TEX_GRAIN, 0.3)]
    + [(tuple(c), TEX_GRAIN, 0.3) for c in BUILDING_RGB]
    + [(tuple(c), TEX_PLAIN, 0.3) for c in CLOTHES_RGB]
)


@dataclass
class Part:
    """A triangle mesh with one material: vertices ``[n, 3]``, triangles ``[m, 3]``."""

    vertices: np.ndarray
    triangles: np.ndarray
    sem: int
    color: tuple[float, float, float]
    refl: float
    tex: int = TEX_PLAIN

    def transformed(self, m: np.ndarray) -> Part:
        """The part moved by the 4x4 transform ``m``."""
        v = self.vertices @ m[:3, :3].T + m[:3, 3]
        return Part(v, self.triangles, self.sem, self.color, self.refl, self.tex)


def pose(x: float = 0.0, y: float = 0.0, z: float = 0.0, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """4x4 transform from a position and roll/pitch/yaw (radians)."""
    return transform_from_xyz_rpy([x, y, z], [roll, pitch, yaw])


# -- primitives (vertices, triangles) ------------------------------------------------------
_BOX_V = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=np.float64)
_BOX_T = np.array([
    [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],
], dtype=np.int32)


def box(sx: float, sy: float, sz: float, cx: float = 0.0, cy: float = 0.0, cz: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box of size ``(sx, sy, sz)``; centre ``(cx, cy, cz)`` (cz default: bottom on z=0)."""
    cz = sz / 2 if cz is None else cz
    return _BOX_V * [sx, sy, sz] + [cx, cy, cz], _BOX_T


@functools.cache
def _unit(kind: str, res: int) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d  # lazy: open3d is heavy to import and only this path needs it

    if kind == "cylinder":
        m = o3d.geometry.TriangleMesh.create_cylinder(radius=1.0, height=1.0, resolution=res, split=1)
    elif kind == "sphere":
        m = o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=res)
    elif kind == "cone":
        m = o3d.geometry.TriangleMesh.create_cone(radius=1.0, height=1.0, resolution=res, split=1)
    else:
        raise ValueError(f"unknown primitive {kind!r}")
    v = np.asarray(m.vertices, dtype=np.float64).copy()
    v.setflags(write=False)
    t = np.asarray(m.triangles, dtype=np.int32).copy()
    t.setflags(write=False)
    return v, t


@functools.lru_cache(maxsize=64)
def _torus(ratio_q: int, res: int) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d  # lazy: open3d is heavy to import and only this path needs it

    m = o3d.geometry.TriangleMesh.create_torus(torus_radius=1.0, tube_radius=ratio_q / 100.0,
                                               radial_resolution=res, tubular_resolution=max(4, res // 2))
    return np.asarray(m.vertices, dtype=np.float64).copy(), np.asarray(m.triangles, dtype=np.int32).copy()


def cylinder(r: float, h: float, center=(0.0, 0.0, 0.0), axis: str = "z", res: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Cylinder of radius ``r`` and length ``h`` along ``axis`` centred at ``center``."""
    v, t = _unit("cylinder", res)
    v = v * [r, r, h]
    if axis == "y":
        v = v[:, [0, 2, 1]]
    elif axis == "x":
        v = v[:, [2, 1, 0]]
    return v + center, t


def ellipsoid(rx: float, ry: float, rz: float, center=(0.0, 0.0, 0.0), res: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoid with radii ``(rx, ry, rz)``."""
    v, t = _unit("sphere", res)
    return v * [rx, ry, rz] + center, t


def cone(r: float, h: float, center=(0.0, 0.0, 0.0), res: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Cone with base radius ``r`` on z = center.z and apex at height ``h``."""
    v, t = _unit("cone", res)
    return v * [r, r, h] + center, t


def torus(big_r: float, small_r: float, center=(0.0, 0.0, 0.0), axis: str = "z", res: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Torus (ring radius ``big_r``, tube radius ``small_r``) around ``axis``."""
    q = int(np.clip(round(100 * small_r / big_r), 2, 90))
    v, t = _torus(q, res)
    v = v * big_r
    if axis == "y":
        v = v[:, [0, 2, 1]]
    elif axis == "x":
        v = v[:, [2, 1, 0]]
    return v + center, t


def _p(geom: tuple[np.ndarray, np.ndarray], sem: int, color, refl: float, tex: int = TEX_PLAIN) -> Part:
    return Part(geom[0], geom[1], sem, tuple(float(c) for c in color), float(refl), tex)


# -- known objects ---------------------------------------------------------------------------
def car_parts(rng: np.random.Generator, sem: int = L.CAR, color=None, length: float | None = None) -> list[Part]:
    """A passenger car (~4.3 x 1.8 x 1.5 m): body, cabin with windows, four wheels."""
    ln = length or rng.uniform(3.8, 4.9)
    w, h = rng.uniform(1.65, 1.9), rng.uniform(1.35, 1.65)
    color = CAR_PAINTS[rng.integers(len(CAR_PAINTS))] if color is None else color
    r = REFLECTANCE[L.CAR]
    body_h = 0.45 * h
    parts = [
        _p(box(ln, w, body_h, cz=0.3 + body_h / 2), sem, color, r),
        _p(box(0.55 * ln, 0.86 * w, h - 0.3 - body_h, cx=-0.08 * ln, cz=0.3 + body_h + (h - 0.3 - body_h) / 2),
           sem, GLASS_RGB, 0.1),
        _p(box(0.5 * ln, 0.88 * w, 0.06, cx=-0.08 * ln, cz=h - 0.03), sem, color, r),
    ]
    for x in (0.32 * ln, -0.32 * ln):
        for y in (0.42 * w, -0.42 * w):
            parts.append(_p(cylinder(0.32, 0.22, (x, y, 0.32), axis="y", res=8), sem, TYRE_RGB, 0.08))
    return parts


def truck_parts(rng: np.random.Generator, sem: int = L.TRUCK) -> list[Part]:
    """A box truck (~7-9 m): cab, cargo box, six wheels."""
    ln, w, h = rng.uniform(6.5, 9.0), rng.uniform(2.3, 2.5), rng.uniform(3.0, 3.6)
    cab = CAR_PAINTS[rng.integers(len(CAR_PAINTS))]
    cargo = BUILDING_RGB[rng.integers(len(BUILDING_RGB))] if rng.random() < 0.5 else (0.85, 0.85, 0.85)
    r = REFLECTANCE[L.TRUCK]
    parts = [
        _p(box(1.8, w, h * 0.75, cx=ln / 2 - 0.9, cz=0.45 + h * 0.375), sem, cab, r),
        _p(box(0.1, w * 0.85, h * 0.3, cx=ln / 2 + 0.02, cz=0.45 + h * 0.55), sem, GLASS_RGB, 0.1),
        _p(box(ln - 2.0, w, h - 0.5, cx=-1.0, cz=0.5 + (h - 0.5) / 2), sem, cargo, r, TEX_PLAIN),
    ]
    for x in (ln / 2 - 1.2, -ln / 2 + 1.6, -ln / 2 + 2.7):
        for y in (0.4 * w, -0.4 * w):
            parts.append(_p(cylinder(0.45, 0.3, (x, y, 0.45), axis="y", res=8), sem, TYRE_RGB, 0.08))
    return parts


def person_parts(rng: np.random.Generator, sem: int = L.PERSON, phase: float = 0.0, height: float | None = None,
                 z0: float = 0.0) -> list[Part]:
    """A pedestrian (1.5-1.95 m) with legs swinging by ``phase`` (radians)."""
    h = height or rng.uniform(1.5, 1.95)
    top, bottom = CLOTHES_RGB[rng.integers(len(CLOTHES_RGB))], CLOTHES_RGB[rng.integers(len(CLOTHES_RGB))]
    r = REFLECTANCE[L.PERSON]
    leg = 0.47 * h
    parts = []
    for side, sgn in ((0.1, 1.0), (-0.1, -1.0)):
        a = 0.35 * math.sin(phase) * sgn
        v, t = cylinder(0.07, leg, (0, 0, -leg / 2), res=6)
        m = pose(0, side, z0 + leg, pitch=a)
        parts.append(_p((v, t), sem, bottom, r).transformed(m))
    parts.append(_p(box(0.24, 0.4, 0.33 * h, cz=z0 + leg + 0.165 * h), sem, top, r))
    for side, sgn in ((0.25, -1.0), (-0.25, 1.0)):
        v, t = cylinder(0.05, 0.3 * h, (0, 0, -0.15 * h), res=6)
        parts.append(_p((v, t), sem, top, r).transformed(pose(0, side, z0 + leg + 0.31 * h, pitch=0.3 * math.sin(phase) * sgn)))
    parts.append(_p(ellipsoid(0.1, 0.09, 0.12, (0, 0, z0 + h - 0.11), res=5), sem, SKIN_RGB, r))
    return parts


def bicycle_parts(rng: np.random.Generator, sem: int = L.BICYCLE, color=None) -> list[Part]:
    """A bicycle (1.75 m long): two wheels, frame, handlebar, saddle."""
    color = CAR_PAINTS[rng.integers(len(CAR_PAINTS))] if color is None else color
    r = REFLECTANCE[L.BICYCLE]
    parts = [
        _p(torus(0.33, 0.035, (0.55, 0, 0.35), axis="y", res=12), sem, TYRE_RGB, 0.1),
        _p(torus(0.33, 0.035, (-0.55, 0, 0.35), axis="y", res=12), sem, TYRE_RGB, 0.1),
        _p(box(1.0, 0.05, 0.05, cz=0.7), sem, color, r),
        _p(box(0.05, 0.05, 0.45, cx=0.45, cz=0.6), sem, color, r),
        _p(box(0.05, 0.05, 0.45, cx=-0.25, cz=0.6), sem, color, r),
        _p(box(0.06, 0.55, 0.04, cx=0.5, cz=0.95), sem, TYRE_RGB, r),
        _p(box(0.22, 0.1, 0.05, cx=-0.3, cz=0.88), sem, TYRE_RGB, r),
    ]
    return parts


def cyclist_parts(rng: np.random.Generator, sem: int = L.BICYCLIST, phase: float = 0.0) -> list[Part]:
    """A rider on a bicycle (all labelled bicyclist, as SemanticKITTI does for ridden bikes)."""
    parts = bicycle_parts(rng, sem)
    parts += person_parts(rng, sem, phase, height=rng.uniform(1.55, 1.85), z0=0.12)
    # lean the rider forward over the handlebar
    return [p if i < 7 else p.transformed(pose(-0.15, 0, 0, pitch=0.25)) for i, p in enumerate(parts)]


def tree_parts(rng: np.random.Generator, trunk_sem: int = L.TRUNK, veg_sem: int = L.VEGETATION) -> list[Part]:
    """A tree: trunk and one to three crown blobs."""
    h = rng.uniform(3.0, 8.0)
    tr = rng.uniform(0.12, 0.3)
    parts = [_p(cylinder(tr, h * 0.6, (0, 0, h * 0.3), res=8), trunk_sem, TRUNK_RGB, REFLECTANCE[L.TRUNK], TEX_GRAIN)]
    green = np.clip(np.array(VEG_RGB) * rng.uniform(0.7, 1.4, 3), 0, 1)
    for _ in range(int(rng.integers(1, 4))):
        rad = rng.uniform(1.0, 2.2) * h / 6
        c = (rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), h * 0.6 + rad * rng.uniform(0.4, 0.9))
        parts.append(_p(ellipsoid(rad, rad * rng.uniform(0.8, 1.2), rad * rng.uniform(0.7, 1.1), c, res=5),
                        veg_sem, green, REFLECTANCE[L.VEGETATION], TEX_FOLIAGE))
    return parts


def bush_parts(rng: np.random.Generator) -> list[Part]:
    """A low bush or hedge blob."""
    rx, ry, rz = rng.uniform(0.5, 1.6), rng.uniform(0.4, 1.0), rng.uniform(0.4, 0.9)
    green = np.clip(np.array(VEG_RGB) * rng.uniform(0.7, 1.4, 3), 0, 1)
    return [_p(ellipsoid(rx, ry, rz, (0, 0, rz * 0.7), res=5), L.VEGETATION, green, REFLECTANCE[L.VEGETATION], TEX_FOLIAGE)]


def pole_parts(rng: np.random.Generator, kind: str = "sign") -> list[Part]:
    """A sign post (``sign``), a bare pole (``pole``) or a street light (``lamp``, 6-8 m with an arm)."""
    rp = REFLECTANCE[L.POLE]
    if kind == "lamp":
        h = rng.uniform(6.0, 8.0)
        return [
            _p(cylinder(0.1, h, (0, 0, h / 2), res=8), L.POLE, POLE_RGB, rp),
            _p(box(0.08, 1.6, 0.08, cy=0.8, cz=h - 0.1), L.POLE, POLE_RGB, rp),
            _p(box(0.3, 0.5, 0.12, cy=1.5, cz=h - 0.2), L.POLE, (0.9, 0.9, 0.8), rp),
        ]
    h = rng.uniform(2.6, 3.5) if kind == "sign" else rng.uniform(3.0, 5.0)
    parts = [_p(cylinder(0.045, h, (0, 0, h / 2), res=6), L.POLE, POLE_RGB, rp)]
    if kind == "sign":
        col = SIGN_RGB[rng.integers(len(SIGN_RGB))]
        rs = REFLECTANCE[L.TRAFFIC_SIGN]
        if rng.random() < 0.5:
            parts.append(_p(cylinder(0.33, 0.04, (0.06, 0, h - 0.3), axis="x", res=12), L.TRAFFIC_SIGN, col, rs))
        else:
            parts.append(_p(box(0.04, 0.6, 0.6, cx=0.06, cz=h - 0.35), L.TRAFFIC_SIGN, col, rs))
    return parts


# -- anomalies -------------------------------------------------------------------------------
#: Nominal size (length, width, height) in metres of each anomaly type before ``size_scale``.
ANOMALY_SIZE: dict[str, tuple[float, float, float]] = {
    "trailer": (3.2, 1.9, 1.7), "overturned-car": (4.3, 1.8, 1.5), "stroller": (0.9, 0.6, 1.05),
    "shopping-cart": (1.0, 0.6, 1.0), "animal": (1.4, 0.45, 1.4), "debris": (1.2, 0.9, 0.6),
    "box": (0.9, 0.7, 0.7), "tire": (0.8, 0.8, 0.3), "barrel": (0.6, 0.6, 0.9), "odd-shape": (1.2, 1.0, 1.2),
}


def anomaly_parts(name: str, rng: np.random.Generator, scale: float, color, refl: float, tex: int) -> list[Part]:
    """Parts of one anomaly of type ``name`` (raw id from :data:`labels.ANOMALY_BY_NAME`), on the ground."""
    sem = L.ANOMALY_BY_NAME[name].raw_id
    s = scale
    dark = (0.06, 0.06, 0.06)
    if name == "trailer":
        ln, w, h = 3.2 * s * rng.uniform(0.8, 1.2), 1.9 * min(s, 1.2), 1.2 * s * rng.uniform(0.8, 1.3)
        parts = [
            _p(box(ln, w, h, cz=0.55 + h / 2), sem, color, refl, tex),
            _p(box(1.2, 0.08, 0.08, cx=ln / 2 + 0.6, cz=0.5), sem, dark, 0.3),
            _p(cylinder(0.3, 0.2, (0, w / 2 + 0.05, 0.3), axis="y", res=8), sem, dark, 0.08),
            _p(cylinder(0.3, 0.2, (0, -w / 2 - 0.05, 0.3), axis="y", res=8), sem, dark, 0.08),
        ]
    elif name == "overturned-car":
        parts = car_parts(rng, sem, color, length=4.3 * min(max(s, 0.8), 1.15))
        parts = [Part(p.vertices, p.triangles, sem, p.color if p.color in (GLASS_RGB, TYRE_RGB) else color, refl, tex) for p in parts]
        if rng.random() < 0.5:  # upside down
            m = pose(0, 0, 1.65, roll=math.pi)
        else:  # on its side
            m = pose(0, 0, 0.95, roll=math.pi / 2)
        parts = [p.transformed(m) for p in parts]
    elif name == "stroller":
        parts = [
            _p(ellipsoid(0.4 * s, 0.28 * s, 0.22 * s, (0, 0, 0.6 * s), res=6), sem, color, refl, tex),
            _p(box(0.05, 0.5 * s, 0.05, cx=-0.45 * s, cz=1.0 * s), sem, dark, 0.3),
            _p(box(0.05, 0.05, 0.6 * s, cx=-0.35 * s, cy=0.2 * s, cz=0.7 * s), sem, dark, 0.3),
            _p(box(0.05, 0.05, 0.6 * s, cx=-0.35 * s, cy=-0.2 * s, cz=0.7 * s), sem, dark, 0.3),
        ]
        for x in (0.3 * s, -0.3 * s):
            for y in (0.22 * s, -0.22 * s):
                parts.append(_p(cylinder(0.1 * s, 0.04, (x, y, 0.1 * s), axis="y", res=8), sem, dark, 0.1))
    elif name == "shopping-cart":
        parts = [
            _p(box(0.9 * s, 0.55 * s, 0.45 * s, cz=0.7 * s), sem, color, refl, TEX_CHECKER if tex == TEX_PLAIN else tex),
            _p(box(0.05, 0.55 * s, 0.05, cx=-0.5 * s, cz=1.0 * s), sem, color, refl),
            _p(box(0.8 * s, 0.5 * s, 0.04, cz=0.2 * s), sem, color, refl),
        ]
        for x in (0.35 * s, -0.35 * s):
            for y in (0.22 * s, -0.22 * s):
                parts.append(_p(cylinder(0.06, 0.04, (x, y, 0.06), axis="y", res=6), sem, dark, 0.1))
                parts.append(_p(box(0.03, 0.03, 0.5 * s, cx=x, cy=y, cz=0.37 * s), sem, color, refl))
    elif name == "animal":
        ln, hh = 1.3 * s * rng.uniform(0.6, 1.2), 0.8 * s
        leg = 0.55 * hh
        parts = [_p(ellipsoid(ln / 2, 0.2 * s, 0.22 * s, (0, 0, leg + 0.18 * s), res=6), sem, color, refl, tex)]
        for x in (0.35 * ln, -0.35 * ln):
            for y in (0.1 * s, -0.1 * s):
                parts.append(_p(cylinder(0.05 * s, leg + 0.1, (x, y, (leg + 0.1) / 2), res=6), sem, color, refl, tex))
        neck = pose(ln / 2, 0, leg + 0.25 * s, pitch=-0.6)
        parts.append(_p(cylinder(0.07 * s, 0.5 * s, (0, 0, 0.25 * s), res=6), sem, color, refl, tex).transformed(neck))
        parts.append(_p(ellipsoid(0.17 * s, 0.09 * s, 0.1 * s, (ln / 2 + 0.35 * s, 0, leg + 0.6 * s), res=5), sem, color, refl, tex))
    elif name == "debris":
        v, t = ellipsoid(0.6 * s, 0.45 * s, 0.3 * s, (0, 0, 0.2 * s), res=4)
        v = v * rng.uniform(0.65, 1.35, size=(v.shape[0], 1))
        v[:, 2] = np.maximum(v[:, 2], 0.0)
        parts = [_p((v, t), sem, color, refl, tex)]
        for _ in range(int(rng.integers(0, 3))):
            c = (rng.uniform(-1, 1) * s, rng.uniform(-0.8, 0.8) * s, 0.05)
            parts.append(_p(box(rng.uniform(0.2, 0.6) * s, rng.uniform(0.1, 0.4) * s, 0.1 * s, *c[:2]), sem, color, refl, tex))
    elif name == "box":
        sx, sy, sz = (0.9 * s * rng.uniform(0.6, 1.3), 0.7 * s * rng.uniform(0.6, 1.3), 0.7 * s * rng.uniform(0.6, 1.3))
        parts = [_p(box(sx, sy, sz), sem, color, refl, tex)]
        if rng.random() < 0.4:  # a second box stacked or beside
            parts.append(_p(box(sx * 0.7, sy * 0.7, sz * 0.7, rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), sz + sz * 0.35),
                            sem, color, refl, tex))
    elif name == "tire":
        rr = 0.38 * s
        if rng.random() < 0.6:
            parts = [_p(torus(rr, 0.13 * s, (0, 0, 0.13 * s), res=14), sem, dark, 0.08, TEX_PLAIN)]
        else:
            parts = [_p(torus(rr, 0.13 * s, (0, 0, rr + 0.13 * s), axis="y", res=14), sem, dark, 0.08, TEX_PLAIN)]
    elif name == "barrel":
        r, h = 0.3 * s, 0.9 * s
        if rng.random() < 0.6:
            parts = [_p(cylinder(r, h, (0, 0, h / 2), res=12), sem, color, refl, tex)]
        else:
            parts = [_p(cylinder(r, h, (0, 0, r), axis="y", res=12), sem, color, refl, tex)]
    elif name == "odd-shape":
        parts = []
        for _ in range(int(rng.integers(2, 5))):
            k = rng.integers(4)
            c = (rng.uniform(-0.4, 0.4) * s, rng.uniform(-0.3, 0.3) * s, rng.uniform(0.2, 0.7) * s)
            if k == 0:
                g = cone(rng.uniform(0.2, 0.5) * s, rng.uniform(0.4, 1.2) * s, (c[0], c[1], 0.0))
            elif k == 1:
                g = torus(rng.uniform(0.25, 0.5) * s, rng.uniform(0.05, 0.15) * s, c, axis=("x", "y", "z")[rng.integers(3)])
            elif k == 2:
                g = ellipsoid(*(rng.uniform(0.15, 0.45, 3) * s), c, res=6)
            else:
                g = box(*(rng.uniform(0.2, 0.8, 3) * s), c[0], c[1], c[2])
            parts.append(_p(g, sem, color, refl, tex))
    else:
        raise ValueError(f"unknown anomaly type {name!r} (known: {sorted(ANOMALY_SIZE)})")
    return parts


# -- scene assembly --------------------------------------------------------------------------
@dataclass
class SceneMesh:
    """A triangle soup with per-triangle attributes (indexed by the ray caster's primitive ids)."""

    vertices: np.ndarray  # float32 [n, 3]
    triangles: np.ndarray  # uint32 [m, 3]
    sem: np.ndarray  # uint16 [m]
    inst: np.ndarray  # uint16 [m]
    color: np.ndarray  # float32 [m, 3]
    refl: np.ndarray  # float32 [m]
    tex: np.ndarray  # uint8 [m]
    anchor: np.ndarray  # float32 [m, 3] texture origin (objects carry their texture along)

    @property
    def num_triangles(self) -> int:
        return int(self.triangles.shape[0])


class MeshBuilder:
    """Accumulates placed parts; :meth:`build` concatenates them into a :class:`SceneMesh`."""

    def __init__(self) -> None:
        self._v: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self._attrs: list[tuple[int, int, int, tuple, float, int, tuple]] = []
        self._n = 0

    def add(self, parts: list[Part], m: np.ndarray | None = None, inst: int = 0) -> None:
        """Add parts moved by the 4x4 transform ``m`` with instance id ``inst``."""
        anchor = (0.0, 0.0, 0.0) if m is None else tuple(float(x) for x in m[:3, 3])
        for p in parts:
            v = p.vertices if m is None else p.vertices @ m[:3, :3].T + m[:3, 3]
            self._v.append(v)
            self._t.append(p.triangles + self._n)
            self._attrs.append((p.triangles.shape[0], p.sem, inst, p.color, p.refl, p.tex, anchor))
            self._n += v.shape[0]

    def build(self) -> SceneMesh:
        """The concatenated mesh (an empty builder gives an empty mesh)."""
        if not self._v:
            z3 = np.zeros((0, 3), np.float32)
            return SceneMesh(z3, np.zeros((0, 3), np.uint32), np.zeros(0, np.uint16), np.zeros(0, np.uint16),
                             z3, np.zeros(0, np.float32), np.zeros(0, np.uint8), z3)
        counts = np.array([a[0] for a in self._attrs])
        rep = lambda vals, dtype: np.repeat(np.asarray(vals, dtype=dtype), counts, axis=0)  # noqa: E731
        return SceneMesh(
            vertices=np.concatenate(self._v).astype(np.float32),
            triangles=np.concatenate(self._t).astype(np.uint32),
            sem=rep([a[1] for a in self._attrs], np.uint16),
            inst=rep([a[2] for a in self._attrs], np.uint16),
            color=rep([a[3] for a in self._attrs], np.float32),
            refl=rep([a[4] for a in self._attrs], np.float32),
            tex=rep([a[5] for a in self._attrs], np.uint8),
            anchor=rep([a[6] for a in self._attrs], np.float32),
        )
