"""Ray-cast rendering of a planned sequence: camera (colour, semantic, instance) and LiDAR.

The static street is one Open3D ``RaycastingScene`` built once per sequence; moving agents and the
anomalies of the current episode go into a small second scene rebuilt per frame. Every camera and
LiDAR ray is cast into both and the nearer hit wins, so both sensors see exactly the same geometry
(labels come from the hit triangle; the camera's pixel centres are ``(u + 0.5, v + 0.5)``, which is
the pixel ``geometry.project_points`` assigns). Weather changes both sensors: light, haze/fog
extinction, pixel noise and rain streaks for the camera; attenuation, range noise, dropouts and
spurious near returns (label 0) for the LiDAR.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from ood_perception.data.frame import Frame
from ood_perception.geometry import Calibration, intrinsics_from_fov, transform_from_xyz_rpy
from ood_perception.world import labels as L
from ood_perception.world import meshes as M
from ood_perception.world.config import CameraConfig, WorldConfig, lidar_directions
from ood_perception.world.scenario import LANE_WIDTH, SIDEWALK_HEIGHT, SequencePlan, anomaly_pose

#: Optical frame (x right, y down, z forward) from a body frame (x forward, y left, z up).
OPTICAL_FROM_BODY = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)

#: Per weather: ambient RGB, sun RGB, exposure, pixel noise sigma (0..1 units), LiDAR noise/dropout factors.
LIGHT = {
    "day": dict(ambient=(0.42, 0.45, 0.50), sun=(0.95, 0.92, 0.85), exposure=1.0, noise=0.008, fog=(0.75, 0.8, 0.88),
                lidar_noise=1.0, lidar_drop=1.0, spurious=0.0),
    "dusk": dict(ambient=(0.22, 0.2, 0.26), sun=(1.0, 0.55, 0.3), exposure=1.35, noise=0.016, fog=(0.8, 0.55, 0.45),
                 lidar_noise=1.0, lidar_drop=1.0, spurious=0.0),
    "night": dict(ambient=(0.025, 0.03, 0.045), sun=(0.0, 0.0, 0.0), exposure=1.6, noise=0.03, fog=(0.04, 0.045, 0.07),
                  lidar_noise=1.0, lidar_drop=1.2, spurious=0.0),
    "fog": dict(ambient=(0.62, 0.63, 0.65), sun=(0.2, 0.2, 0.2), exposure=1.0, noise=0.012, fog=(0.74, 0.75, 0.77),
                lidar_noise=1.5, lidar_drop=3.0, spurious=0.012),
    "rain": dict(ambient=(0.36, 0.38, 0.42), sun=(0.12, 0.12, 0.13), exposure=1.15, noise=0.02, fog=(0.5, 0.52, 0.56),
                 lidar_noise=2.0, lidar_drop=4.0, spurious=0.004),
}


def camera_calibration(cam: CameraConfig) -> Calibration:
    """The camera's :class:`Calibration` (LiDAR -> optical frame) from its config."""
    k = np.asarray(cam.K, dtype=np.float64) if cam.K is not None else intrinsics_from_fov(cam.width, cam.height, cam.fov_deg)
    t_lidar_cam = transform_from_xyz_rpy(cam.xyz, cam.rpy)  # camera body pose in the LiDAR frame
    return Calibration(k, cam.width, cam.height, OPTICAL_FROM_BODY @ np.linalg.inv(t_lidar_cam))


def _rotate(v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``v @ r.T`` for ``[N, 3]`` vectors without BLAS (thin products are slower through BLAS threads)."""
    r = np.asarray(r, dtype=v.dtype)
    return v[:, 0:1] * r[:, 0] + v[:, 1:2] * r[:, 1] + v[:, 2:3] * r[:, 2]


def _dot(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise dot product of ``[N, 3]`` vectors with one 3-vector."""
    return v[:, 0] * w[0] + v[:, 1] * w[1] + v[:, 2] * w[2]


def _hash01(p: np.ndarray, cell: float, salt: int = 0) -> np.ndarray:
    """Deterministic value noise in [0, 1) of 3-D points quantised to ``cell`` metres."""
    q = np.floor(p / cell).astype(np.int64)
    h = (q[:, 0] * 73856093) ^ (q[:, 1] * 19349663) ^ (q[:, 2] * 83492791) ^ (salt * 2654435761)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def shade_albedo(color: np.ndarray, tex: np.ndarray, p_local: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Albedo of hits: base colour times a procedural texture evaluated at the object-local point."""
    f = np.ones(len(tex), dtype=np.float32)
    out = color.copy()
    # group hits by texture once (a stable sort) instead of one full-length mask per texture kind
    order = np.argsort(tex, kind="stable")
    kinds, starts = np.unique(tex[order], return_index=True)
    ends = np.append(starts[1:], len(tex))
    for kind, a, b in zip(kinds.tolist(), starts.tolist(), ends.tolist(), strict=True):
        m = order[a:b]  # hit indices of this texture kind
        p = p_local[m]
        if kind == M.TEX_PLAIN:
            f[m] = 0.96 + 0.08 * _hash01(p, 0.5)
        elif kind == M.TEX_GRAIN:
            f[m] = 0.8 + 0.25 * _hash01(p, 0.05, 1) + 0.15 * _hash01(p, 0.8, 2)
        elif kind == M.TEX_FOLIAGE:
            f[m] = 0.55 + 0.7 * _hash01(p, 0.12, 3) * (0.6 + 0.4 * _hash01(p, 0.5, 4))
        elif kind == M.TEX_WINDOWS:
            along = np.where(np.abs(normal[m, 0]) > 0.7, p[:, 1], p[:, 0])
            win = (np.mod(p[:, 2], 3.0) > 1.0) & (np.mod(p[:, 2], 3.0) < 2.3) & (np.mod(along, 2.6) > 0.7) & (np.mod(along, 2.6) < 1.9)
            win &= p[:, 2] > 0.8
            f[m] = 0.9 + 0.15 * _hash01(p, 0.7, 5)
            sub = m[win]
            out[sub] = np.array([0.12, 0.15, 0.2], np.float32) + 0.15 * _hash01(p[win], 3.0, 6)[:, None]
        elif kind == M.TEX_STRIPES:
            s = np.floor((p[:, 0] + p[:, 1] + p[:, 2]) / 0.18).astype(np.int64) % 2
            f[m] = np.where(s == 0, 1.25, 0.45)
        elif kind == M.TEX_CHECKER:
            s = (np.floor(p / 0.15).astype(np.int64).sum(1)) % 2
            f[m] = np.where(s == 0, 1.2, 0.5)
        elif kind == M.TEX_BLOTCH:
            f[m] = 0.4 + 1.0 * (_hash01(p, 0.3, 7) > 0.5) * 0.6 + 0.3 * _hash01(p, 0.08, 8)
    return np.clip(out * f[:, None], 0.0, 1.0)


_RAY_CACHE: dict[bytes, np.ndarray] = {}


def camera_unit_rays(calib: Calibration) -> np.ndarray:
    """Unit ray directions ``[height * width, 3]`` (float32, row-major pixels) of the camera's pixel centres
    ``(u + 0.5, v + 0.5)`` in the LiDAR frame; cached per process for a given calibration (read-only)."""
    key = np.ascontiguousarray(calib.K, np.float64).tobytes() + np.ascontiguousarray(calib.T_cam_lidar, np.float64).tobytes() \
        + np.array([calib.width, calib.height], np.int64).tobytes()
    d = _RAY_CACHE.get(key)
    if d is None:
        u, v = np.meshgrid(np.arange(calib.width) + 0.5, np.arange(calib.height) + 0.5)
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
        rays_opt = pix @ np.linalg.inv(calib.K).T
        d = _rotate(rays_opt, np.linalg.inv(calib.T_cam_lidar)[:3, :3])
        d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
        d.flags.writeable = False
        _RAY_CACHE.clear()  # one camera per process in practice: keep only the latest
        _RAY_CACHE[key] = d
    return d


#: Display gamma (1/1.3) as a 12-bit lookup table: cheaper than a power per pixel.
_GAMMA_LUT = np.clip(np.rint((np.arange(4096) / 4095.0) ** (1 / 1.3) * 255.0), 0, 255).astype(np.uint8)


class SequenceRenderer:
    """Renders the frames of one :class:`SequencePlan`.

    Args:
        plan: the sequence's plan.
        config: world knobs (sensors, threads).
    """

    def __init__(self, plan: SequencePlan, config: WorldConfig) -> None:
        import open3d as o3d  # lazy: open3d is heavy to import and only this path needs it

        self._o3d = o3d
        self.plan = plan
        self.config = config
        self.calib = camera_calibration(config.camera)
        self.light = LIGHT[plan.weather]
        self.static_mesh = self._build_static()
        self.static_scene = self._scene(self.static_mesh)
        self._lidar_dirs = lidar_directions(config).astype(np.float32)
        #: Unit camera ray directions in the LiDAR frame (static): cast unit rays, so t_hit is the distance.
        self._cam_unit_lidar = camera_unit_rays(self.calib)
        self._cam_origin_lidar = np.linalg.inv(self.calib.T_cam_lidar)[:3, 3]
        self._fog_rgb = np.asarray(self.light["fog"], np.float32)
        self._agent_cache: dict[int, list[M.Part]] = {}
        self._lamps = [it for it in plan.items if it.kind == "lamp"]
        self._t0_inv = np.linalg.inv(self.lidar_pose_world(0))
        #: Seconds spent per stage over all frames rendered so far (dynamic scene, LiDAR, camera).
        self.timings: dict[str, float] = {"dynamic": 0.0, "lidar": 0.0, "camera": 0.0}

    # -- scenes ----------------------------------------------------------------------------
    def _scene(self, mesh: M.SceneMesh):
        o3d = self._o3d
        scene = o3d.t.geometry.RaycastingScene()
        if mesh.num_triangles:
            scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
        return scene

    def _build_static(self) -> M.SceneMesh:
        plan, st = self.plan, self.plan.street
        b = M.MeshBuilder()
        x0, x1 = st.x_min - 60, st.x_max + 60
        xc, xl = (x0 + x1) / 2, x1 - x0
        rng = np.random.default_rng([plan.seed, 1])
        b.add([M.Part(*M.box(xl, 400, 0.1, xc, 0, -0.07), L.TERRAIN, M.TERRAIN_RGB, M.REFLECTANCE[L.TERRAIN], M.TEX_GRAIN)])
        road_w = st.half_left + st.half_right
        b.add([M.Part(*M.box(xl, road_w, 0.1, xc, (st.half_left - st.half_right) / 2, -0.05), L.ROAD, M.ROAD_RGB,
                      M.REFLECTANCE[L.ROAD], M.TEX_GRAIN)])
        lane_parts = []
        edge = st.lanes / 2 * LANE_WIDTH

        def line(y: float, dashed: bool) -> None:
            if not dashed:
                lane_parts.append(M.Part(*M.box(xl, 0.15, 0.012, xc, y, 0.0), L.LANE_MARKING, M.LANE_RGB,
                                         M.REFLECTANCE[L.LANE_MARKING], M.TEX_GRAIN))
                return
            for xs in np.arange(x0, x1, 9.0):
                lane_parts.append(M.Part(*M.box(3.0, 0.13, 0.012, xs + 1.5, y, 0.0), L.LANE_MARKING, M.LANE_RGB,
                                         M.REFLECTANCE[L.LANE_MARKING], M.TEX_GRAIN))

        line(-edge, False)
        line(edge, False)
        line(0.0, st.lanes == 2)
        if st.lanes == 4:
            line(-LANE_WIDTH, True)
            line(LANE_WIDTH, True)
        b.add(lane_parts)
        for side, half in ((1, st.half_left), (-1, st.half_right)):
            yc = side * (half + st.sidewalk / 2)
            b.add([M.Part(*M.box(xl, st.sidewalk, SIDEWALK_HEIGHT + 0.1, xc, yc, (SIDEWALK_HEIGHT - 0.1) / 2), L.SIDEWALK,
                          M.SIDEWALK_RGB, M.REFLECTANCE[L.SIDEWALK], M.TEX_GRAIN)])
        for it in plan.items:
            irng = np.random.default_rng(it.seed)
            m = M.pose(it.x, it.y, 0.0, yaw=it.yaw)
            if it.kind == "building":
                ln, dp, h = it.size
                b.add([M.Part(*M.box(ln, dp, h), L.BUILDING, it.color, M.REFLECTANCE[L.BUILDING],
                              M.TEX_WINDOWS if it.windows else M.TEX_GRAIN)], M.pose(it.x, it.y, -0.02))
            elif it.kind == "fence":
                ln, dp, h = it.size
                b.add([M.Part(*M.box(ln, dp, h), L.FENCE, it.color, M.REFLECTANCE[L.FENCE], M.TEX_GRAIN)], m)
            elif it.kind == "car":
                b.add(M.car_parts(irng), m, it.inst)
            elif it.kind == "truck":
                b.add(M.truck_parts(irng), m, it.inst)
            elif it.kind == "bicycle":
                b.add(M.bicycle_parts(irng), M.pose(it.x, it.y, SIDEWALK_HEIGHT, yaw=it.yaw), it.inst)
            elif it.kind == "tree":
                z = SIDEWALK_HEIGHT if abs(it.y) < (st.half_left if it.y > 0 else st.half_right) + st.sidewalk else 0.0
                b.add(M.tree_parts(irng), M.pose(it.x, it.y, z), 0)
            elif it.kind == "bush":
                b.add(M.bush_parts(irng), m, 0)
            elif it.kind in ("sign", "pole", "lamp"):
                b.add(M.pole_parts(irng, it.kind), M.pose(it.x, it.y, SIDEWALK_HEIGHT, yaw=it.yaw), 0)
        del rng
        return b.build()

    def _dynamic_mesh(self, i: int) -> M.SceneMesh:
        plan = self.plan
        t = plan.time(i)
        ex, _, _ = plan.ego_xy_yaw(i)
        reach = self.config.lidar.max_range + 10
        b = M.MeshBuilder()
        anomalies = plan.anomalies_at(i)
        blocks = [a.footprint(0.5) for a in anomalies]
        for an in anomalies:
            parts = M.anomaly_parts(an.name, np.random.default_rng(an.seed), an.scale, an.color, an.refl, an.tex)
            b.add(parts, anomaly_pose(an, plan.street), an.inst)
        for ag in plan.agents:
            x = ag.x(t)
            if abs(x - ex) > reach:
                continue
            ln, wd = {"car": (4.9, 1.9), "truck": (9.0, 2.5), "person": (0.6, 0.6), "cyclist": (1.8, 0.7)}[ag.kind]
            fp = (x - ln / 2, x + ln / 2, ag.y - wd / 2, ag.y + wd / 2)
            if any(fp[0] < q[1] and q[0] < fp[1] and fp[2] < q[3] and q[2] < fp[3] for q in blocks):
                continue  # never drive through an anomaly
            on_walk = ag.kind in ("person", "cyclist")
            m = M.pose(x, ag.y, SIDEWALK_HEIGHT if on_walk else 0.0, yaw=ag.yaw())
            if ag.kind == "person":
                parts = M.person_parts(np.random.default_rng(ag.seed), L.MOVING_PERSON, phase=2 * math.pi * x / 1.5)
            else:
                parts = self._agent_cache.get(ag.inst)
                if parts is None:
                    arng = np.random.default_rng(ag.seed)
                    if ag.kind == "car":
                        parts = M.car_parts(arng, L.MOVING_CAR)
                    elif ag.kind == "truck":
                        parts = M.truck_parts(arng, L.TRUCK)
                    else:
                        parts = M.cyclist_parts(arng, L.MOVING_BICYCLIST)
                    self._agent_cache[ag.inst] = parts
            b.add(parts, m, ag.inst)
        return b.build()

    # -- casting -----------------------------------------------------------------------------
    def _cast(self, origin: np.ndarray, dirs: np.ndarray, dyn_scene, dyn: M.SceneMesh,
              keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Cast ``dirs`` from ``origin`` into the static and dynamic scenes; the nearer hit wins.

        Returns ``t`` (ray parameter, inf on a miss), ``hit`` and ``h`` (indices of hit rays) over all
        rays, and ``normal`` plus the mesh attributes named in ``keys`` for the hit rays only (in ``h``
        order): per-triangle attributes are gathered once, for hits, not for every ray.
        """
        o3d = self._o3d
        rays = np.empty((dirs.shape[0], 6), dtype=np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = dirs
        rt = o3d.core.Tensor.from_numpy(rays)
        nth = int(self.config.threads)
        res = self.static_scene.cast_rays(rt, nthreads=nth)
        t = res["t_hit"].numpy()
        prim = res["primitive_ids"].numpy()
        nrm = res["primitive_normals"].numpy()
        use = None
        if dyn.num_triangles:
            rd = dyn_scene.cast_rays(rt, nthreads=nth)
            td = rd["t_hit"].numpy()
            use = td < t  # false where td is inf (no dynamic hit)
            if use.any():
                t = np.where(use, td, t)
            else:
                use = None
        hit = np.isfinite(t)
        h = np.flatnonzero(hit)
        out = {"t": t, "hit": hit, "h": h}
        sm = self.static_mesh
        if use is None:
            idx = prim[h]
            out["normal"] = nrm[h]
            for key in keys:
                out[key] = getattr(sm, key)[idx]
            return out
        uh = use[h]
        hd = h[uh]  # the few hit rays whose nearer hit is a moving object or anomaly
        ps = np.where(uh, 0, prim[h])  # static primitive per hit ray (a placeholder where the dynamic hit wins)
        pd = rd["primitive_ids"].numpy()[hd]
        normal = nrm[h]
        normal[uh] = rd["primitive_normals"].numpy()[hd]
        out["normal"] = normal
        for key in keys:
            v = getattr(sm, key)[ps]
            v[uh] = getattr(dyn, key)[pd]
            out[key] = v
        return out

    def lidar_pose_world(self, i: int) -> np.ndarray:
        """4x4 LiDAR pose in the world at frame ``i``."""
        x, y, yaw = self.plan.ego_xy_yaw(i)
        return M.pose(x, y, self.config.lidar.height, yaw=yaw)

    # -- sensors -----------------------------------------------------------------------------
    def _sun(self) -> np.ndarray:
        wp = self.plan.weather_params
        e, a = math.radians(wp["sun_elev"]), math.radians(wp["sun_az"])
        return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])

    def render_camera(self, i: int, dyn_scene, dyn: M.SceneMesh, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour image (uint8 RGB), semantic ids and instance ids (uint16) at frame ``i``."""
        cam = self.config.camera
        tw = self.lidar_pose_world(i)
        r = tw[:3, :3]
        origin = (tw[:3, :3] @ self._cam_origin_lidar + tw[:3, 3]).astype(np.float32)
        unit = _rotate(self._cam_unit_lidar, r)
        c = self._cast(origin, unit, dyn_scene, dyn, ("sem", "inst", "color", "tex", "anchor"))
        dist, h = c["t"], c["h"]
        n = len(dist)
        lt = self.light
        rgb = np.empty((n, 3), dtype=np.float32)
        uh = unit[h]
        dh = dist[h]
        p = origin + uh * dh[:, None]
        nrm = c["normal"]
        flip = np.einsum("ij,ij->i", nrm, uh) > 0
        nrm[flip] *= -1
        albedo = shade_albedo(c["color"], c["tex"], p - c["anchor"], nrm)
        light = np.asarray(lt["ambient"], np.float32) * (np.float32(0.75) + np.float32(0.25) * nrm[:, 2:3])
        sun = self._sun()
        if sun[2] > 0 and max(lt["sun"]) > 0:
            ndl = np.clip(_dot(nrm, sun), 0, None)
            lit = ndl > 0
            if self.plan.weather in ("day", "dusk") and lit.any():
                sh = np.zeros((int(lit.sum()), 6), np.float32)
                li = np.flatnonzero(lit)
                sh[:, :3] = nrm[li]
                sh[:, :3] *= np.float32(0.03)
                sh[:, :3] += p[li]
                sh[:, 3:] = sun
                st = self._o3d.core.Tensor(sh)
                occ = self.static_scene.test_occlusions(st, nthreads=int(self.config.threads)).numpy()
                if dyn.num_triangles:
                    occ |= dyn_scene.test_occlusions(st, nthreads=int(self.config.threads)).numpy()
                ndl[li[occ]] = 0.0
            light += ndl[:, None].astype(np.float32) * np.asarray(lt["sun"], np.float32)
        if self.plan.weather == "night":
            fwd = r[:, 0]
            cosang = _dot(uh, fwd)
            cone_w = np.clip((cosang - 0.82) / 0.12, 0, 1) * (uh[:, 2] < 0.05)
            head = np.clip(-np.einsum("ij,ij->i", nrm, uh), 0, 1) * cone_w / (1 + (dh / 18.0) ** 2)
            light += 1.6 * head[:, None].astype(np.float32) * np.array([1.0, 0.95, 0.85], np.float32)
            ex = tw[0, 3]
            for lamp in self._lamps:
                if abs(lamp.x - ex) > 70:
                    continue
                side = np.array([-math.sin(lamp.yaw), math.cos(lamp.yaw), 0.0])
                lp = np.array([lamp.x, lamp.y, 6.8]) + 1.5 * side
                v = lp - p
                dd = np.linalg.norm(v, axis=1)
                ndl = np.clip(np.sum(nrm * v, 1) / dd, 0, 1)
                light += (0.7 * ndl / (1 + (dd / 7.0) ** 2))[:, None].astype(np.float32) * np.array([1.0, 0.78, 0.5], np.float32)
        col = albedo * light
        if self.plan.weather == "rain":
            wet = np.isin(c["sem"], [L.ROAD, L.LANE_MARKING, L.SIDEWALK])
            col[wet] = col[wet] * 0.7 + 0.18 * np.asarray(lt["fog"], np.float32)
        # haze / fog (Koschmieder: extinction = 3.912 / visibility); the sky (no hit) is the fog colour
        beta = np.float32(3.912 / self.plan.weather_params["visibility"])
        f = np.exp(-beta * dh)[:, None]
        fog = self._fog_rgb
        rgb[:] = fog
        rgb[h] = (col - fog) * f + fog
        img = rgb.reshape(cam.height, cam.width, 3)
        img *= np.float32(lt["exposure"])
        if self.plan.weather == "rain":
            img = self._rain_streaks(img, rng)
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= np.float32(lt["noise"] * cam.noise)
        img += noise
        np.clip(img, 0.0, 1.0, out=img)
        img *= np.float32(4095.0)
        img += np.float32(0.5)
        image = _GAMMA_LUT[img.astype(np.int32)]
        sem = np.full(n, L.SKY, np.uint16)  # no hit: the sky (a known class, see labels.py)
        sem[h] = c["sem"]
        inst = np.zeros(n, np.uint16)
        inst[h] = c["inst"]
        return image, sem.reshape(cam.height, cam.width), inst.reshape(cam.height, cam.width)

    def _rain_streaks(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:

        hgt, wid = img.shape[:2]
        layer = np.zeros((hgt, wid), np.float32)
        count = int(0.004 * hgt * wid)
        xs, ys = rng.integers(0, wid, count), rng.integers(0, hgt, count)
        lens = rng.integers(max(3, hgt // 40), max(6, hgt // 12), count)
        slant = rng.uniform(-0.25, 0.1)
        for x, y, ln in zip(xs.tolist(), ys.tolist(), lens.tolist(), strict=True):
            cv2.line(layer, (x, y), (int(x + slant * ln), y + ln), 1.0, 1)
        return img * (1 - 0.25 * layer[..., None]) + 0.25 * layer[..., None] * 0.8

    def render_lidar(self, i: int, dyn_scene, dyn: M.SceneMesh, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Points ``[N, 4]`` (x, y, z, intensity in the LiDAR frame) and raw labels ``[N]`` uint32."""
        lid = self.config.lidar
        lt = self.light
        tw = self.lidar_pose_world(i)
        dirs_w = _rotate(self._lidar_dirs, tw[:3, :3])
        c = self._cast(tw[:3, 3], dirs_w, dyn_scene, dyn, ("sem", "inst", "refl"))
        t, h = c["t"], c["h"]
        n = len(t)
        valid = c["hit"] & (t >= lid.min_range) & (t <= lid.max_range)
        beta = 3.912 / self.plan.weather_params["visibility"]
        th = t[h]
        cosi = np.abs(np.einsum("ij,ij->i", c["normal"], dirs_w[h]))
        clean = np.zeros(n, np.float32)  # no return where nothing is hit
        clean[h] = c["refl"] * (0.25 + 0.75 * cosi) * np.exp(np.float32(-2 * beta) * np.where(valid[h], th, 0.0))
        # weak returns are lost more often; plus random dropouts
        drop = rng.random(n) < lid.dropout * lt["lidar_drop"]
        drop |= (clean < 0.02) & (rng.random(n) < 0.6)
        valid &= ~drop
        rng_noise = rng.normal(0.0, lid.range_noise * lt["lidar_noise"], n)
        rng_m = t + rng_noise
        inten = np.clip(clean + rng.normal(0, 0.01, n), 0.0, 1.0)
        sem = np.zeros(n, np.uint32)
        sem[h] = c["sem"]
        inst = np.zeros(n, np.uint32)
        inst[h] = c["inst"]
        if lt["spurious"] > 0:  # backscatter from fog droplets / rain drops: near returns, unlabelled
            sp = rng.random(n) < lt["spurious"]
            far = min(0.35 * self.plan.weather_params["visibility"], 20.0)
            r_sp = rng.uniform(lid.min_range + 0.2, max(lid.min_range + 0.5, far), n)
            sp &= ~valid | (r_sp < t)
            rng_m = np.where(sp, r_sp, rng_m)
            inten = np.where(sp, rng.uniform(0.0, 0.06, n), inten)
            sem = np.where(sp, 0, sem)
            inst = np.where(sp, 0, inst)
            valid |= sp
        keep = np.flatnonzero(valid)
        pts = np.empty((keep.size, 4), dtype=np.float32)
        pts[:, :3] = self._lidar_dirs[keep] * rng_m[keep, None]
        pts[:, 3] = inten[keep]
        labels = (sem[keep] | (inst[keep] << 16)).astype(np.uint32)
        return pts, labels

    def render(self, i: int) -> Frame:
        """Render frame ``i`` of the sequence as a :class:`Frame`."""
        if not 0 <= i < self.plan.frames:
            raise IndexError(f"frame {i} out of range for a {self.plan.frames}-frame sequence")
        t0 = time.perf_counter()
        dyn = self._dynamic_mesh(i)
        dyn_scene = self._scene(dyn) if dyn.num_triangles else None
        rng = np.random.default_rng([self.plan.seed, i, 11])
        t1 = time.perf_counter()
        points, labels = self.render_lidar(i, dyn_scene, dyn, rng)
        t2 = time.perf_counter()
        image, sem, inst = self.render_camera(i, dyn_scene, dyn, rng)
        t3 = time.perf_counter()
        self.timings["dynamic"] += t1 - t0
        self.timings["lidar"] += t2 - t1
        self.timings["camera"] += t3 - t2
        pose = self._t0_inv @ self.lidar_pose_world(i)
        return Frame(sequence=self.plan.name, frame_id=f"{i:06d}", image=image, points=points, point_labels=labels,
                     pixel_labels=sem, calib=self.calib, pose=pose, stamp=round(self.plan.time(i), 9), pixel_instances=inst)
