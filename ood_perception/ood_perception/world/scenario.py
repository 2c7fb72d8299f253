"""Scenario planning: street layouts, traffic, weather and anomaly episodes for whole datasets.

Planning is cheap (no meshes, no ray casting), deterministic in the seed, and done once for a
dataset so that sequences can be rendered in any order or in parallel. The plan fixes, per
sequence: the split, the weather, the street (lanes, sidewalks, buildings, trees, poles, parked
vehicles), moving agents, the ego trajectory, and *anomaly episodes*: a group of anomalies placed
ahead of the ego for a few consecutive frames (fixed in the world while shown, removed before the
ego reaches them). Anomaly types are drawn from a shuffled cycle over the whole dataset, so every
type appears once enough anomalies are placed; weathers are assigned per split by largest
remainder of ``weather_mix``, so every weather with a positive weight appears in a split of at
least five sequences.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

from ood_perception.world import labels as L
from ood_perception.world.config import WEATHERS, WorldConfig, lidar_directions
from ood_perception.world.meshes import (
    ANOMALY_SIZE,
    BUILDING_RGB,
    MIMIC_MATERIALS,
    PATTERNED,
    TEX_GRAIN,
    TEX_PLAIN,
    MeshBuilder,
    anomaly_parts,
    pose,
)

LANE_WIDTH = 3.4
PARKING_WIDTH = 2.2
SIDEWALK_HEIGHT = 0.15
#: Nominal footprints (length, width) of static/dynamic items, for overlap checks.
FOOTPRINT = {"car": (4.9, 1.9), "truck": (9.0, 2.5), "bicycle": (1.8, 0.6), "person": (0.6, 0.6),
             "cyclist": (1.8, 0.7), "tree": (0.8, 0.8), "bush": (2.6, 1.8), "sign": (0.4, 0.6), "pole": (0.3, 0.3),
             "lamp": (0.4, 0.4)}


@dataclass
class Item:
    """A static object of the street (its mesh is generated from ``seed``)."""

    kind: str  # car, truck, bicycle, tree, bush, sign, pole, lamp, building, fence
    x: float
    y: float
    yaw: float
    seed: int
    inst: int = 0
    size: tuple[float, float, float] = (0.0, 0.0, 0.0)  # buildings/fences: length, depth, height
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    windows: bool = False

    def footprint(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """Axis-aligned (xmin, xmax, ymin, ymax) of the item on the ground."""
        ln, wd = (self.size[0], self.size[1]) if self.kind in ("building", "fence") else FOOTPRINT[self.kind]
        c, s = abs(math.cos(self.yaw)), abs(math.sin(self.yaw))
        hx, hy = (ln * c + wd * s) / 2 + margin, (ln * s + wd * c) / 2 + margin
        return self.x - hx, self.x + hx, self.y - hy, self.y + hy


@dataclass
class Agent:
    """A moving road user: position ``(x0 + vx * t, y)``."""

    kind: str  # car, truck, person, cyclist
    x0: float
    y: float
    vx: float
    seed: int
    inst: int

    def x(self, t: float) -> float:
        return self.x0 + self.vx * t

    def yaw(self) -> float:
        return 0.0 if self.vx >= 0 else math.pi


@dataclass
class Anomaly:
    """One anomaly placed in the world."""

    name: str
    raw_id: int
    inst: int
    x: float
    y: float
    yaw: float
    scale: float
    color: tuple[float, float, float]
    refl: float
    tex: int
    seed: int
    mimic: bool

    def footprint(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        ln, wd, _ = ANOMALY_SIZE[self.name]
        r = 0.5 * math.hypot(ln, wd) * max(self.scale, 1.0) + margin
        return self.x - r, self.x + r, self.y - r, self.y + r


@dataclass
class Episode:
    """Anomalies shown during frames ``start <= i < stop``."""

    start: int
    stop: int
    anomalies: list[Anomaly]
    est_share: tuple[float, float] = (0.0, 0.0)  # planner's LiDAR point-share estimate at start/end


@dataclass
class Street:
    """Cross-section of the street (y = 0 on the centre line, traffic on the right, +x ahead)."""

    lanes: int
    parking_left: bool
    parking_right: bool
    sidewalk: float
    verge: float
    x_min: float
    x_max: float

    @property
    def half_left(self) -> float:
        return self.lanes / 2 * LANE_WIDTH + (PARKING_WIDTH if self.parking_left else 0.3)

    @property
    def half_right(self) -> float:
        return self.lanes / 2 * LANE_WIDTH + (PARKING_WIDTH if self.parking_right else 0.3)

    def lane_center(self, i: int) -> float:
        """Centre of lane ``i`` (0 = rightmost, lanes/2.. are oncoming)."""
        return -self.lanes / 2 * LANE_WIDTH + (i + 0.5) * LANE_WIDTH


@dataclass
class SequencePlan:
    """Everything needed to render one sequence."""

    name: str
    index: int
    split: str
    seed: int
    frames: int
    dt: float
    weather: str
    weather_params: dict[str, float]
    street: Street
    items: list[Item]
    agents: list[Agent]
    episodes: list[Episode]
    ego_lane: int
    speed: float
    x_start: float
    weave: tuple[float, float] = (0.15, 9.0)  # lateral amplitude [m], period [s]

    def time(self, i: int) -> float:
        return i * self.dt

    def ego_xy_yaw(self, i: int) -> tuple[float, float, float]:
        """Ego (LiDAR) position on the ground and heading at frame ``i``."""
        t = self.time(i)
        amp, per = self.weave
        x = self.x_start + self.speed * t
        w = 2 * math.pi / per
        y = self.street.lane_center(self.ego_lane) + amp * math.sin(w * t)
        yaw = math.atan2(amp * w * math.cos(w * t), self.speed)
        return x, y, yaw

    def episode_at(self, i: int) -> Episode | None:
        for ep in self.episodes:
            if ep.start <= i < ep.stop:
                return ep
        return None

    def anomalies_at(self, i: int) -> list[Anomaly]:
        ep = self.episode_at(i)
        return ep.anomalies if ep else []

    def has_anomaly(self, i: int) -> bool:
        return self.episode_at(i) is not None


@dataclass
class DatasetPlan:
    """Plans of all sequences of a dataset and its splits."""

    seed: int
    config: WorldConfig
    sequences: list[SequencePlan]
    splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return sum(s.frames for s in self.sequences)


def split_names(n: int, split: str = "auto") -> list[str]:
    """Split of each of ``n`` sequences: ``auto`` gives ~70/10/20% train/val/test (>= 1 val and test from 3)."""
    if split != "auto":
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be auto, train, val or test, got {split!r}")
        return [split] * n
    if n == 1:
        return ["test"]
    if n == 2:
        return ["train", "test"]
    n_test = max(1, round(0.2 * n))
    n_val = max(1, round(0.1 * n))
    return ["train"] * (n - n_test - n_val) + ["val"] * n_val + ["test"] * n_test


def _stratified(weights: dict[str, float], k: int, rng: np.random.Generator) -> list[str]:
    names = [w for w in WEATHERS if weights.get(w, 0) > 0]
    p = np.array([weights[w] for w in names], dtype=np.float64)
    p /= p.sum()
    exact = p * k
    counts = np.floor(exact).astype(int)
    rest = k - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    out = [n for n, c in zip(names, counts, strict=True) for _ in range(c)]
    rng.shuffle(out)
    return out


def weather_params(name: str, rng: np.random.Generator) -> dict[str, float]:
    """Randomised parameters of a weather (documented in docs/world.md)."""
    if name == "day":
        return {"sun_elev": rng.uniform(30, 65), "sun_az": rng.uniform(0, 360), "visibility": rng.uniform(400, 1500)}
    if name == "dusk":
        return {"sun_elev": rng.uniform(2, 10), "sun_az": rng.uniform(0, 360), "visibility": rng.uniform(200, 600)}
    if name == "night":
        return {"sun_elev": -20.0, "sun_az": 0.0, "visibility": rng.uniform(300, 800)}
    if name == "fog":
        return {"sun_elev": rng.uniform(20, 50), "sun_az": rng.uniform(0, 360), "visibility": rng.uniform(25, 70)}
    if name == "rain":
        return {"sun_elev": rng.uniform(20, 50), "sun_az": rng.uniform(0, 360), "visibility": rng.uniform(100, 250)}
    raise ValueError(f"unknown weather {name!r} (known: {', '.join(WEATHERS)})")


class _TypeCycle:
    """Draws anomaly types from a shuffled cycle so every type appears before any repeats."""

    def __init__(self, names: list[str], rng: np.random.Generator) -> None:
        self.names, self.rng, self.queue = list(names), rng, []

    def next(self) -> str:
        if not self.queue:
            self.queue = [self.names[i] for i in self.rng.permutation(len(self.names))]
        return self.queue.pop()

    def push_back(self, name: str) -> None:
        self.queue.append(name)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _layout(street: Street, rng: np.random.Generator, inst: list[int]) -> list[Item]:
    """Static items along both sides of the street."""
    items: list[Item] = []

    def seed() -> int:
        return int(rng.integers(2**31))

    def next_inst() -> int:
        inst[0] += 1
        return inst[0]

    for side in (1, -1):
        half = street.half_left if side > 0 else street.half_right
        parking = street.parking_left if side > 0 else street.parking_right
        curb = side * half
        walk_mid = side * (half + street.sidewalk / 2)
        outer = half + street.sidewalk + street.verge  # where buildings start
        # buildings with gaps (fences or nothing in the gaps)
        x = street.x_min
        while x < street.x_max:
            ln = rng.uniform(8, 30)
            depth, height = rng.uniform(8, 16), rng.uniform(4, 20)
            setback = rng.uniform(0.0, 3.0)
            col = tuple(float(c) for c in np.clip(_building_color(rng), 0, 1))
            items.append(Item("building", x + ln / 2, side * (outer + setback + depth / 2), 0.0, seed(),
                              size=(ln, depth, height), color=col, windows=bool(rng.random() < 0.75)))
            x += ln
            gap = rng.uniform(0, 9) if rng.random() < 0.6 else 0.0
            if gap > 2 and rng.random() < 0.6:
                fh = rng.uniform(1.0, 2.0)
                items.append(Item("fence", x + gap / 2, side * (outer + 0.3), 0.0, seed(), size=(gap, 0.08, fh),
                                  color=(0.45, 0.42, 0.38) if rng.random() < 0.5 else (0.25, 0.3, 0.25)))
            x += gap
        # trees, bushes on the verge (or at the sidewalk's outer edge)
        x = street.x_min + rng.uniform(0, 6)
        while x < street.x_max:
            if street.verge > 1.2:
                y = side * (half + street.sidewalk + street.verge / 2)
            else:
                y = side * (half + street.sidewalk - 0.6)
            items.append(Item("tree", x, y, 0.0, seed()))
            if street.verge > 2.5 and rng.random() < 0.5:
                items.append(Item("bush", x + rng.uniform(2, 4), side * (half + street.sidewalk + street.verge / 2), rng.uniform(0, 3), seed()))
            x += rng.uniform(6, 18)
        # poles, signs, street lights at the curb
        x = street.x_min + rng.uniform(0, 10)
        while x < street.x_max:
            kind = ("sign", "lamp", "pole")[int(rng.choice(3, p=[0.5, 0.35, 0.15]))]
            items.append(Item(kind, x, curb + side * 0.5, 0.0 if side < 0 else math.pi, seed()))
            x += rng.uniform(12, 35)
        # parked vehicles in the parking strip, parked bicycles on the sidewalk
        if parking:
            x = street.x_min + rng.uniform(0, 8)
            while x < street.x_max:
                if rng.random() < 0.6:
                    kind = "truck" if rng.random() < 0.1 else "car"
                    ln = FOOTPRINT[kind][0]
                    items.append(Item(kind, x + ln / 2, side * (half - PARKING_WIDTH / 2), 0.0 if rng.random() < 0.8 else math.pi,
                                      seed(), inst=next_inst()))
                    x += ln + rng.uniform(0.8, 2.5)
                else:
                    x += rng.uniform(5, 20)
        x = street.x_min + rng.uniform(0, 30)
        while x < street.x_max:
            items.append(Item("bicycle", x, walk_mid + side * street.sidewalk * 0.3, rng.uniform(-0.3, 0.3) + math.pi / 2 * (rng.random() < 0.3),
                              seed(), inst=next_inst()))
            x += rng.uniform(25, 80)
    # keep items off each other: drop later items overlapping earlier ones (buildings/fences excepted)
    kept: list[Item] = []
    for it in items:
        if it.kind not in ("building", "fence") and any(
            k.kind not in ("building", "fence") and _overlaps(it.footprint(0.2), k.footprint(0.2)) for k in kept
        ):
            continue
        kept.append(it)
    return kept


def _building_color(rng: np.random.Generator) -> np.ndarray:

    return BUILDING_RGB[rng.integers(len(BUILDING_RGB))] * rng.uniform(0.85, 1.15, 3)


def _agents(street: Street, speed: float, x_start: float, duration: float, rng: np.random.Generator,
            inst: list[int]) -> tuple[list[Agent], int]:
    agents: list[Agent] = []

    def add(kind: str, x0: float, y: float, vx: float) -> None:
        inst[0] += 1
        agents.append(Agent(kind, x0, y, vx, int(rng.integers(2**31)), inst[0]))

    half = street.lanes // 2
    span = (street.x_min, street.x_max)
    # oncoming traffic in the left lanes, spread so that cars keep coming over the whole drive
    for lane in range(half, street.lanes):
        x = span[0] + rng.uniform(0, 40)
        while x < span[1] + 13 * duration:
            add("truck" if rng.random() < 0.12 else "car", x, street.lane_center(lane) + rng.uniform(-0.2, 0.2), -rng.uniform(7, 13))
            x += rng.uniform(25, 80)
    # same-direction traffic in the other right lanes (never in the ego lane near the anomalies)
    ego_lane = int(rng.integers(half))
    for lane in range(half):
        if lane == ego_lane:
            continue
        x = x_start + rng.uniform(-30, 10)
        while x < span[1]:
            add("car", x, street.lane_center(lane), speed * rng.uniform(0.6, 1.3))
            x += rng.uniform(20, 60)
    # pedestrians and cyclists on the sidewalks
    for side in (1, -1):
        half_w = street.half_left if side > 0 else street.half_right
        for _ in range(int(rng.integers(2, 9))):
            x0 = rng.uniform(x_start - 10, span[1])
            y = side * (half_w + street.sidewalk * rng.uniform(0.35, 0.65))
            add("person", x0, y, rng.choice([-1, 1]) * rng.uniform(0.8, 1.7))
        for _ in range(int(rng.integers(0, 3))):
            x0 = rng.uniform(x_start, span[1])
            add("cyclist", x0, side * (half_w + 0.35 * street.sidewalk), rng.choice([-1, 1]) * rng.uniform(3, 6))
    return agents, ego_lane


def _anomaly_material(rng: np.random.Generator, mimic_prob: float, textured_prob: float) -> tuple[tuple, float, int, bool]:
    if rng.random() < mimic_prob:
        color, tex, refl = MIMIC_MATERIALS[int(rng.integers(len(MIMIC_MATERIALS)))]
        jitter = np.clip(np.asarray(color) * rng.uniform(0.9, 1.1, 3), 0, 1)
        return tuple(float(c) for c in jitter), float(refl * rng.uniform(0.8, 1.2)), int(tex), True
    h, s, v = rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.2, 0.95)
    color = tuple(float(c) for c in colorsys.hsv_to_rgb(h, s, v))
    if rng.random() < textured_prob:
        tex = int(PATTERNED[int(rng.integers(len(PATTERNED)))])
    else:
        tex = int(rng.choice([TEX_PLAIN, TEX_GRAIN]))
    return color, float(rng.uniform(0.05, 0.9)), tex, False


def anomaly_pose(an: Anomaly, street: Street) -> np.ndarray:
    """4x4 world pose of an anomaly (on the road surface, or on the sidewalk's top)."""

    half = street.half_left if an.y > 0 else street.half_right
    z = SIDEWALK_HEIGHT if half <= abs(an.y) < half + street.sidewalk else 0.0
    return pose(an.x, an.y, z, yaw=an.yaw)


class _ShareProbe:
    """Counts LiDAR returns on a group of anomalies alone (no occluders) by casting the real LiDAR rays."""

    def __init__(self, cfg: WorldConfig) -> None:

        self.cfg = cfg
        self.dirs = lidar_directions(cfg).astype(np.float32)
        self.n_total = 0.93 * self.dirs.shape[0]
        self.grid = self.dirs.reshape(cfg.lidar.beams, cfg.lidar.azimuth_steps, 3)
        self.az = np.arctan2(self.grid[0, :, 1], self.grid[0, :, 0])  # per azimuth column

    def shares(self, group: list[Anomaly], street: Street, poses: list[tuple[float, float, float]]) -> list[float]:
        import open3d as o3d  # lazy: open3d is heavy to import and only this path needs it


        b = MeshBuilder()
        for an in group:
            b.add(anomaly_parts(an.name, np.random.default_rng(an.seed), an.scale, an.color, an.refl, an.tex),
                  anomaly_pose(an, street), 1)
        mesh = b.build()
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
        out = []
        lid = self.cfg.lidar
        corners = np.array([(fp[i], fp[j]) for an in group for fp in [an.footprint(0.5)] for i in (0, 1) for j in (2, 3)])
        for x, y, yaw in poses:
            c, s_ = math.cos(yaw), math.sin(yaw)
            ang = np.arctan2(corners[:, 1] - y, corners[:, 0] - x) - yaw
            ang = np.angle(np.exp(1j * ang))
            if ang.max() - ang.min() > math.pi:  # the group is behind or around the sensor: cast everything
                d = self.dirs
            else:
                cols = np.flatnonzero((self.az >= ang.min()) & (self.az <= ang.max()))
                d = self.grid[:, cols].reshape(-1, 3)
            dirs = np.stack([c * d[:, 0] - s_ * d[:, 1], s_ * d[:, 0] + c * d[:, 1], d[:, 2]], 1)
            rays = np.empty((len(d), 6), np.float32)
            rays[:, :3] = (x, y, lid.height)
            rays[:, 3:] = dirs
            t = scene.cast_rays(o3d.core.Tensor(rays), nthreads=int(self.cfg.threads))["t_hit"].numpy()
            out.append(float(np.count_nonzero((t >= lid.min_range) & (t <= lid.max_range))) / self.n_total)
        return out


def _expected_points(an: Anomaly, dx: float, dy: float, lidar_h: float, dtheta: float) -> float:
    """Rough LiDAR returns on an anomaly at offset (dx, dy) from the sensor (for the planner only)."""
    ln, wd, h = (v * an.scale for v in ANOMALY_SIZE[an.name])
    d2 = dx * dx + dy * dy + (lidar_h - h / 2) ** 2
    elev = math.atan2(max(lidar_h - h, 0.05), math.sqrt(dx * dx + dy * dy))
    area = 0.5 * (ln + wd) * h * 0.7 + ln * wd * math.sin(elev) * 0.7
    return area / d2 / dtheta


def _plan_episode_group(seq: SequencePlan, start: int, stop: int, cfg: WorldConfig, types: _TypeCycle,
                        rng: np.random.Generator, next_inst: list[int], probe: _ShareProbe) -> Episode:
    a = cfg.anomalies
    lid = cfg.lidar
    dtheta = (2 * math.pi / lid.azimuth_steps) * math.radians(lid.fov_up_deg - lid.fov_down_deg) / (lid.beams - 1)
    n_total = 0.9 * lid.beams * lid.azimuth_steps
    xs, ys, _ = seq.ego_xy_yaw(start)
    xe, ye, _ = seq.ego_xy_yaw(stop - 1)
    travel = xe - xs
    street = seq.street
    blockers = np.array([it.footprint(0.3) for it in seq.items if it.kind != "building"]).reshape(-1, 4)

    def blocked(fp: tuple[float, float, float, float]) -> bool:
        return bool(np.any((blockers[:, 0] < fp[1]) & (fp[0] < blockers[:, 1]) & (blockers[:, 2] < fp[3]) & (fp[2] < blockers[:, 3])))

    best, best_err = None, math.inf
    for _attempt in range(30):
        # later attempts use bigger groups: small types alone rarely give enough returns
        count = int(rng.integers(a.group[0], a.group[1] + 1)) if _attempt < 8 else a.group[1] + (_attempt >= 16)
        names = [types.next() for _ in range(count)]
        group: list[Anomaly] = []
        for name in names:
            for _try in range(20):
                d_lo = a.distance[0]
                d_hi = max(d_lo + 0.5, a.distance[1] - travel)
                d_end = rng.uniform(d_lo, d_hi) if len(group) == 0 else rng.uniform(d_lo, min(d_hi, d_lo + 14))
                # where: ego lane, the next lane, the right road edge, right sidewalk, a verge;
                # sidewalks/verges only on sides without parked cars (they would hide the anomaly)
                slot = int(rng.choice(5, p=[0.35, 0.2, 0.15, 0.15, 0.15]))
                verge_sides = [sd for sd, parked in ((1, street.parking_left), (-1, street.parking_right)) if not parked]
                if (slot == 3 and street.parking_right) or (slot == 4 and not verge_sides):
                    slot = 2
                if slot == 0:
                    y = street.lane_center(seq.ego_lane) + rng.uniform(-0.9, 0.9)
                elif slot == 1:
                    lane = seq.ego_lane + 1 if seq.ego_lane + 1 < street.lanes else seq.ego_lane - 1
                    y = street.lane_center(lane) + rng.uniform(-0.9, 0.9)
                elif slot == 2:
                    y = -street.half_right + rng.uniform(0.5, 1.5)
                elif slot == 3:
                    y = -(street.half_right + rng.uniform(0.5, street.sidewalk - 0.4))
                else:
                    side = verge_sides[int(rng.integers(len(verge_sides)))]
                    half = street.half_left if side > 0 else street.half_right
                    y = side * (half + street.sidewalk + rng.uniform(0.3, max(0.6, street.verge)))
                mat = _anomaly_material(rng, a.mimic_prob, a.textured_prob)
                an = Anomaly(name, L.ANOMALY_BY_NAME[name].raw_id, 0, xe + d_end, y, rng.uniform(0, 2 * math.pi),
                             float(rng.uniform(*a.size_scale)), mat[0], mat[1], mat[2], int(rng.integers(2**31)), mat[3])
                fp = an.footprint(0.3)
                if blocked(fp) or any(_overlaps(fp, g.footprint(0.3)) for g in group):
                    continue
                group.append(an)
                break
        if not group:
            continue
        s0 = s1 = 0.0
        for _refine in range(4):
            est0 = sum(_expected_points(g, g.x - xs, g.y - ys, lid.height, dtheta) for g in group) / n_total
            est1 = sum(_expected_points(g, g.x - xe, g.y - ye, lid.height, dtheta) for g in group) / n_total
            if est0 < 0.5 * a.point_share[0] and max(g.x - xe for g in group) <= a.distance[0] + 0.5:
                s0 = s1 = est0  # too small even at the nearest distance: skip the ray-cast probe
                break
            if _refine == 0 and (est0 < 0.7 * a.point_share[0] or est1 > 1.5 * a.point_share[1]):
                s0, s1 = est0, est1  # first move by the rough estimate, probe afterwards
            else:
                s0, s1 = probe.shares(group, street, [seq.ego_xy_yaw(start), seq.ego_xy_yaw(stop - 1)])
            # returns scale ~ 1 / distance^2: move the group nearer (farther) to reach the target
            if s0 < a.point_share[0]:
                f = math.sqrt(max(s0, 1e-6) / a.point_share[0]) * 0.97
            elif s1 > a.point_share[1]:
                f = math.sqrt(s1 / a.point_share[1]) * 1.03
            else:
                break
            moved = [max(a.distance[0], min(a.distance[1], (g.x - xe) * f)) for g in group]
            if all(abs(xe + m - g.x) < 0.05 for m, g in zip(moved, group, strict=True)):
                break
            for m, g in zip(moved, group, strict=True):
                g.x = xe + m
            if any(blocked(g.footprint(0.3)) for g in group) or any(
                _overlaps(g.footprint(0.3), h.footprint(0.3)) for k, g in enumerate(group) for h in group[k + 1:]
            ):
                s0 = s1 = 0.0
                break
        err = max(0.0, a.point_share[0] - min(s0, s1)) / a.point_share[0] + max(0.0, max(s0, s1) - a.point_share[1]) / a.point_share[1]
        if err < best_err:
            if best is not None:  # give the types of the discarded group back (keeps the cycle balanced)
                for g in reversed(best[0]):
                    types.push_back(g.name)
            best, best_err = (group, (s0, s1)), err
        else:
            for g in reversed(group):
                types.push_back(g.name)
        if err == 0.0:
            break
    if best is None:
        return Episode(start, stop, [])
    group, shares = best
    if shares[0] < a.point_share[0]:
        # too few returns early in the episode: start it once the group is near enough, or drop it
        frames = list(range(start, stop))
        per = probe.shares(group, street, [seq.ego_xy_yaw(i) for i in frames])
        ok = [i for i, sh in zip(frames, per, strict=True) if sh >= a.point_share[0]]
        if not ok:
            for g in reversed(group):
                types.push_back(g.name)
            return Episode(start, stop, [])
        start = ok[0]
        shares = (per[frames.index(start)], per[-1])
    for g in group:
        next_inst[0] += 1
        g.inst = next_inst[0]
    return Episode(start, stop, group, shares)


def _episodes(seq: SequencePlan, rate: float, cfg: WorldConfig, types: _TypeCycle, rng: np.random.Generator,
              probe: _ShareProbe) -> list[Episode]:
    n = seq.frames
    target = int(round(rate * n))
    if target <= 0:
        return []
    lo, hi = cfg.anomalies.episode_frames
    lengths: list[int] = []
    while sum(lengths) < target:
        lengths.append(int(rng.integers(lo, hi + 1)))
    lengths[-1] -= sum(lengths) - target
    lengths = [x for x in lengths if x > 0]
    gaps = rng.multinomial(n - target, np.full(len(lengths) + 1, 1.0 / (len(lengths) + 1)))
    gaps = [int(g) for g in gaps]
    episodes, i, inst, carry = [], gaps[0], [1000], 0
    for k, ln in enumerate(lengths):
        # frames lost by an earlier trimmed/dropped episode are taken from the gap after this one
        take = min(carry, gaps[k + 1])
        gaps[k + 1] -= take
        carry -= take
        ln += take
        ep = _plan_episode_group(seq, i, i + ln, cfg, types, rng, inst, probe)
        shown = ep.stop - ep.start if ep.anomalies else 0
        carry += ln - shown
        if ep.anomalies:
            episodes.append(ep)
        i += ln + gaps[k + 1]
    # fill the remaining deficit into the longest free stretches
    deficit = target - sum(e.stop - e.start for e in episodes)
    for _ in range(12):
        if deficit <= 0:
            break
        busy = np.zeros(n, dtype=bool)
        for e in episodes:
            busy[e.start:e.stop] = True
        free = np.flatnonzero(~busy)
        if free.size == 0:
            break
        runs = np.split(free, np.flatnonzero(np.diff(free) > 1) + 1)
        run = max(runs, key=len)
        ln = int(min(deficit, len(run), hi))
        ep = _plan_episode_group(seq, int(run[0]), int(run[0]) + ln, cfg, types, rng, inst, probe)
        if ep.anomalies:
            episodes.append(ep)
            deficit -= ep.stop - ep.start
    episodes.sort(key=lambda e: e.start)
    return episodes


def plan_dataset(config: WorldConfig | None = None, sequences: int = 1, frames: int = 50, seed: int = 0,
                 split: str = "auto", weathers: list[str] | None = None) -> DatasetPlan:
    """Plan a dataset of ``sequences`` x ``frames`` frames.

    Args:
        config: knobs (default :class:`WorldConfig`).
        split: ``auto`` (train/val/test by :func:`split_names`) or one split for all sequences.
        weathers: restrict the weather mix to these names (their ``weather_mix`` weights, or
            equal weights for names the mix does not weigh).
    """
    cfg = config or WorldConfig()
    if sequences < 1 or frames < 1:
        raise ValueError(f"need at least one sequence and one frame, got {sequences} x {frames}")
    mix = dict(cfg.weather_mix)
    if weathers:
        bad = [w for w in weathers if w not in WEATHERS]
        if bad:
            raise ValueError(f"unknown weather {bad} (known: {', '.join(WEATHERS)})")
        mix = {w: (cfg.weather_mix.get(w, 0) or 1.0) for w in weathers}
    type_names = list(cfg.anomalies.types or [a.name for a in L.ANOMALY_TYPES])
    bad = [t for t in type_names if t not in L.ANOMALY_BY_NAME]
    if bad:
        raise ValueError(f"unknown anomaly types {bad} (known: {', '.join(L.ANOMALY_BY_NAME)})")
    root = np.random.SeedSequence(int(seed))
    master = np.random.default_rng(root.spawn(1)[0])
    splits = split_names(sequences, split)
    weather_by_seq: list[str] = [""] * sequences
    for sp in ("train", "val", "test"):
        idx = [i for i, s in enumerate(splits) if s == sp]
        for i, w in zip(idx, _stratified(mix, len(idx), master), strict=True):
            weather_by_seq[i] = w
    types = _TypeCycle(type_names, master)
    probe = _ShareProbe(cfg)
    dt = 1.0 / cfg.frame_rate
    plans: list[SequencePlan] = []
    for i in range(sequences):
        rng = np.random.default_rng([int(seed), i, 7])
        lanes = int(rng.choice([2, 4], p=[0.6, 0.4]))
        speed = float(rng.uniform(*cfg.speed))
        duration = frames * dt
        x_start = 0.0
        street = Street(lanes, bool(rng.random() < 0.7), bool(rng.random() < 0.7), float(rng.uniform(2.0, 4.0)),
                        float(rng.uniform(0.0, 4.0)), x_start - 70.0, x_start + speed * duration + 110.0)
        inst = [0]
        items = _layout(street, rng, inst)
        agents, ego_lane = _agents(street, speed, x_start, duration, rng, inst)
        w = weather_by_seq[i]
        plan = SequencePlan(f"{i:02d}", i, splits[i], int(rng.integers(2**31)), frames, dt, w, weather_params(w, rng), street,
                            items, agents, [], ego_lane, speed, x_start, (float(rng.uniform(0.0, 0.3)), float(rng.uniform(6, 12))))
        rate = cfg.anomalies.train_rate if splits[i] == "train" else cfg.anomalies.rate
        plan.episodes = _episodes(plan, rate, cfg, types, rng, probe) if rate > 0 else []
        plans.append(plan)
    split_map = {sp: [p.name for p in plans if p.split == sp] for sp in ("train", "val", "test")}
    return DatasetPlan(int(seed), cfg, plans, {k: v for k, v in split_map.items() if v})
