"""Synthetic action clips for video + optical-flow recognition (issue 3 item 4, issue 8).

Short clips of one agent drawn with OpenCV (a stick figure, a bicycle, or a piece of debris) on a
random textured background. The *motion* defines the class (walking, running, waving, ...);
held-out motions are the out-of-distribution classes, split into

* **near OOD**: motions close to in-distribution ones (limping ~ walking, jogging ~ walking/running,
  hopping ~ jumping, side-stepping ~ crossing);
* **far OOD**: falling, spinning (cartwheel), crawling, and erratic debris that is not a person.

Appearance and motion carry different information, so the video and optical-flow modalities differ
in strength as in the distillation paper (flow is the weaker one): the clothing hue of an
in-distribution agent is drawn near a class-specific hue with probability ``appearance_bias``
(otherwise uniformly), which only the RGB stream can see, while camera shake and sensor noise
corrupt the flow. OOD agents take a uniformly random hue, so appearance alone never flags them.

Every clip is a pure function of ``(seed, split, index)`` (its own ``numpy`` generator), so a dataset
is byte-identical for one seed whatever order or subset of clips is rendered. The on-disk layout
(written by :func:`write_clip_dataset`, read by :mod:`ood_perception.data.clips`)::

    DIR/dataset.yaml               kind: clips, classes, near/far OOD classes, frames, size, seed, splits
    DIR/clips/<split>/<NNNNN>.npz  frames uint8 [T, H, W, 3] RGB, label (int, -1 for OOD), motion (str)
"""

from __future__ import annotations

import math
import os
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from ood_perception.atomic import atomic_path, atomic_write_text

#: In-distribution motion classes (train ids are the positions in this tuple).
ID_CLASSES: tuple[str, ...] = ("standing", "walking", "running", "crossing", "waving", "cycling", "jumping")
#: Held-out motions similar to in-distribution ones.
NEAR_OOD_CLASSES: tuple[str, ...] = ("limping", "jogging", "hopping", "sidestepping")
#: Held-out motions unlike any in-distribution one.
FAR_OOD_CLASSES: tuple[str, ...] = ("falling", "spinning", "crawling", "debris")

#: Split names written by :func:`write_clip_dataset` (``train``/``test`` are in-distribution).
SPLITS: tuple[str, ...] = ("train", "test", "near_ood", "far_ood")


@dataclass(frozen=True)
class ClipConfig:
    """Rendering parameters of the synthetic clips (all documented defaults are our choice).

    Attributes:
        frames: frames per clip (16, the usual action-recognition clip length).
        size: square frame side in pixels (64: small enough to train on two CPU cores).
        appearance_bias: probability that an in-distribution agent's clothing hue is drawn near
            its class hue (the cue only the video stream sees; 0 removes it).
        hue_sigma: spread (OpenCV hue units, 0-180) around the class hue.
        shake_px: standard deviation of the per-frame camera shake in pixels (corrupts flow).
        noise_sigma: standard deviation of the additive per-pixel sensor noise (0-255 scale).
        speed_jitter: relative spread of each class's speed and gait frequency.
    """

    frames: int = 16
    size: int = 64
    appearance_bias: float = 0.7
    hue_sigma: float = 8.0
    shake_px: float = 0.8
    noise_sigma: float = 6.0
    speed_jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"ClipConfig.frames must be >= 2 (flow needs two frames), got {self.frames}")
        if self.size < 24:
            raise ValueError(f"ClipConfig.size must be >= 24 pixels, got {self.size}")
        if not 0.0 <= self.appearance_bias <= 1.0:
            raise ValueError(f"ClipConfig.appearance_bias must be in [0, 1], got {self.appearance_bias}")


@dataclass
class Clip:
    """One rendered clip: ``frames`` uint8 ``[T, H, W, 3]`` RGB, its motion name and train id."""

    frames: np.ndarray
    motion: str
    label: int  # train id in ID_CLASSES, -1 for OOD motions
    meta: dict = field(default_factory=dict)


def all_motions() -> tuple[str, ...]:
    """Every motion the generator can render (in-distribution first)."""
    return ID_CLASSES + NEAR_OOD_CLASSES + FAR_OOD_CLASSES


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8")) & 0x7FFFFFFF


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one clip: a pure function of (seed, split, index)."""
    return np.random.default_rng([int(seed), _split_code(split), int(index)])


# ----------------------------------------------------------------------------------------------
# Body model: joint positions in body units (height 1, hip at the origin, y up), then to pixels.
# ----------------------------------------------------------------------------------------------


def _leg(hip: np.ndarray, thigh_angle: float, knee_bend: float, side: float = 1.0) -> list[np.ndarray]:
    knee = hip + 0.25 * np.array([math.sin(thigh_angle) * side, -math.cos(thigh_angle)])
    shin = thigh_angle - knee_bend
    foot = knee + 0.25 * np.array([math.sin(shin) * side, -math.cos(shin)])
    return [hip, knee, foot]


def _arm(shoulder: np.ndarray, upper_angle: float, elbow_bend: float, side: float = 1.0) -> list[np.ndarray]:
    elbow = shoulder + 0.18 * np.array([math.sin(upper_angle) * side, -math.cos(upper_angle)])
    fore = upper_angle + elbow_bend
    hand = elbow + 0.18 * np.array([math.sin(fore) * side, -math.cos(fore)])
    return [shoulder, elbow, hand]


def _figure(pose: dict) -> dict[str, list[np.ndarray]]:
    """Polylines of a stick figure in body units from pose angles."""
    hip = np.zeros(2)
    neck = np.array([0.0, 0.35])
    legs = [
        _leg(hip, pose.get("thigh_l", 0.0), pose.get("knee_l", 0.0), pose.get("side", 1.0)),
        _leg(hip, pose.get("thigh_r", 0.0), pose.get("knee_r", 0.0), pose.get("side", 1.0)),
    ]
    arms = [
        _arm(neck, pose.get("arm_l", 0.15), pose.get("elbow_l", 0.2), pose.get("side", 1.0)),
        _arm(neck, pose.get("arm_r", -0.15), pose.get("elbow_r", 0.2), pose.get("side", 1.0)),
    ]
    return {"torso": [hip, neck], "legs": legs, "arms": arms, "head": [neck + np.array([0.0, 0.1])]}


def _to_px(p: np.ndarray, center: np.ndarray, height: float, theta: float) -> tuple[int, int]:
    c, s = math.cos(theta), math.sin(theta)
    x, y = p[0] * c - p[1] * s, p[0] * s + p[1] * c
    return int(round((center[0] + x * height) * 16)), int(round((center[1] - y * height) * 16))


def _hsv_to_rgb(h: float, s: int, v: int) -> tuple[int, int, int]:
    px = np.uint8([[[int(h) % 180, s, v]]])
    r, g, b = cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0]
    return int(r), int(g), int(b)


def _draw_figure(img: np.ndarray, pose: dict, center: np.ndarray, height: float, theta: float, colors: dict) -> None:
    parts = _figure(pose)
    thick = max(1, int(round(height * 0.07)))
    shift = 4  # sub-pixel drawing (coordinates are scaled by 16)

    def line(points: Sequence[np.ndarray], color: tuple[int, int, int]) -> None:
        pts = np.array([_to_px(p, center, height, theta) for p in points], np.int32)
        cv2.polylines(img, [pts], False, color, thick, cv2.LINE_AA, shift)

    for leg in parts["legs"]:
        line(leg, colors["pants"])
    line(parts["torso"], colors["shirt"])
    for arm in parts["arms"]:
        line(arm, colors["shirt"])
    hx, hy = _to_px(parts["head"][0], center, height, theta)
    cv2.circle(img, (hx, hy), int(round(height * 0.08 * 16)), colors["skin"], -1, cv2.LINE_AA, shift)


def _draw_bicycle(img: np.ndarray, center: np.ndarray, height: float, direction: float, phase: float, color) -> None:
    r = 0.17 * height
    shift = 4
    y = center[1] + 0.4 * height
    for dx in (-0.3, 0.3):
        cx = center[0] + dx * height
        cv2.circle(img, (int(cx * 16), int(y * 16)), int(r * 16), color, 1, cv2.LINE_AA, shift)
        # a spoke, so the wheel's rotation is visible in the flow
        ex, ey = cx + r * math.cos(phase), y + r * math.sin(phase)
        cv2.line(img, (int(cx * 16), int(y * 16)), (int(ex * 16), int(ey * 16)), color, 1, cv2.LINE_AA, shift)
    pts = np.array(
        [[center[0] - 0.3 * height, y], [center[0], center[1] + 0.05 * height], [center[0] + 0.3 * height, y]],
        np.float64,
    )
    cv2.polylines(img, [(pts * 16).astype(np.int32)], False, color, 1, cv2.LINE_AA, shift)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency coloured texture with a ground band (static scene)."""
    coarse = rng.uniform(60, 200, size=(4, 4, 3)).astype(np.float32)
    bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 12, size=(size // 4, size // 4, 3)).astype(np.float32)
    bg += cv2.resize(fine, (size, size), interpolation=cv2.INTER_LINEAR)
    horizon = int(size * rng.uniform(0.55, 0.7))
    bg[horizon:] = 0.6 * bg[horizon:] + 0.4 * rng.uniform(70, 130)
    return np.clip(bg, 0, 255)


# ----------------------------------------------------------------------------------------------
# Motions: each returns per-frame (pose, center offset in body heights, body angle, extras)
# ----------------------------------------------------------------------------------------------


def _motion_track(motion: str, t: np.ndarray, rng: np.random.Generator, jitter: float) -> dict:
    """Per-frame kinematics of one motion; speeds in body heights per frame."""

    def j(x: float) -> float:
        return x * float(rng.uniform(1 - jitter, 1 + jitter))

    n = len(t)
    direction = float(rng.choice([-1.0, 1.0]))
    phase0 = float(rng.uniform(0, 2 * math.pi))
    out = {"dx": np.zeros(n), "dy": np.zeros(n), "theta": np.zeros(n), "scale": np.ones(n), "poses": []}

    def gait(freq: float, amp_leg: float, amp_arm: float, asym: float = 1.0, lean: float = 0.0) -> None:
        for k in t:
            ph = phase0 + freq * k
            out["poses"].append(
                {
                    "thigh_l": amp_leg * math.sin(ph) + lean,
                    "thigh_r": -amp_leg * asym * math.sin(ph) + lean,
                    "knee_l": -0.6 * amp_leg * max(0.0, math.sin(ph + 1.2)),
                    "knee_r": -0.6 * amp_leg * asym * max(0.0, -math.sin(ph + 1.2)),
                    "arm_l": -amp_arm * math.sin(ph),
                    "arm_r": amp_arm * math.sin(ph),
                    "elbow_l": 0.3 + 0.5 * amp_arm,
                    "elbow_r": 0.3 + 0.5 * amp_arm,
                    "side": direction,
                }
            )

    if motion == "standing":
        sway = j(0.04)
        for k in t:
            a = sway * math.sin(phase0 + 0.2 * k)
            out["poses"].append({"thigh_l": 0.08, "thigh_r": -0.08, "arm_l": 0.15 + a, "arm_r": -0.15 + a})
    elif motion == "walking":
        gait(j(0.3), 0.4, 0.3)
        out["dx"] = direction * j(0.03) * t
    elif motion == "running":
        gait(j(0.65), 0.8, 0.8, lean=0.1)
        out["dx"] = direction * j(0.075) * t
        out["dy"] = 0.04 * np.abs(np.sin(phase0 + j(0.65) * t))
        out["theta"][:] = -direction * 0.2
    elif motion == "crossing":  # walking towards/away from the camera: vertical drift and scale change
        gait(j(0.3), 0.25, 0.2)
        for p in out["poses"]:
            p["side"] = 0.3
        sgn = float(rng.choice([-1.0, 1.0]))
        out["dy"] = -sgn * j(0.02) * t
        out["scale"] = 1.0 + sgn * j(0.02) * t
    elif motion == "waving":
        freq, amp = j(0.7), j(0.6)
        for k in t:
            out["poses"].append(
                {"thigh_l": 0.08, "thigh_r": -0.08, "arm_l": 0.15, "arm_r": -2.6, "elbow_r": amp * math.sin(phase0 + freq * k)}
            )
    elif motion == "cycling":
        freq = j(0.5)
        for k in t:
            ph = phase0 + freq * k
            out["poses"].append(
                {
                    "thigh_l": 1.0 + 0.4 * math.sin(ph),
                    "thigh_r": 1.0 - 0.4 * math.sin(ph),
                    "knee_l": 1.4 + 0.4 * math.cos(ph),
                    "knee_r": 1.4 - 0.4 * math.cos(ph),
                    "arm_l": 1.1,
                    "arm_r": 1.1,
                    "elbow_l": -0.3,
                    "elbow_r": -0.3,
                    "side": direction,
                }
            )
        out["dx"] = direction * j(0.06) * t
        out["bicycle"] = phase0 + freq * t * direction
        out["theta"][:] = -direction * 0.15
    elif motion == "jumping":
        freq, amp = j(0.45), j(0.18)
        h = np.abs(np.sin(phase0 + freq * t))
        out["dy"] = amp * h
        for hk in h:
            out["poses"].append({"thigh_l": 0.3 * hk, "thigh_r": -0.3 * hk, "knee_l": -0.8 * hk, "knee_r": 0.8 * hk,
                                 "arm_l": 0.4 + 2.2 * hk, "arm_r": -0.4 - 2.2 * hk})
    elif motion == "limping":  # walking with one stiff leg and a vertical bob at the gait frequency
        freq = j(0.25)
        gait(freq, 0.4, 0.2, asym=0.25)
        out["dx"] = direction * j(0.02) * t
        out["dy"] = 0.03 * np.maximum(0.0, np.sin(phase0 + freq * t))
        out["theta"] = 0.08 * np.sin(phase0 + freq * t)
    elif motion == "jogging":  # between walking and running
        gait(j(0.48), 0.6, 0.55, lean=0.05)
        out["dx"] = direction * j(0.05) * t
        out["theta"][:] = -direction * 0.1
    elif motion == "hopping":  # jumping while moving sideways
        freq, amp = j(0.45), j(0.14)
        h = np.abs(np.sin(phase0 + freq * t))
        out["dy"] = amp * h
        out["dx"] = direction * j(0.04) * t
        for hk in h:
            out["poses"].append({"thigh_l": 0.3 * hk, "thigh_r": -0.3 * hk, "knee_l": -0.8 * hk, "knee_r": 0.8 * hk,
                                 "arm_l": 0.3, "arm_r": -0.3})
    elif motion == "sidestepping":  # crossing-like drift, but sideways with legs spreading
        freq = j(0.35)
        for k in t:
            s = abs(math.sin(phase0 + freq * k))
            out["poses"].append({"thigh_l": 0.35 * s, "thigh_r": -0.35 * s, "arm_l": 0.2, "arm_r": -0.2, "side": 0.3})
        out["dx"] = direction * j(0.025) * t
    elif motion == "falling":
        t0 = float(rng.uniform(0.1, 0.5)) * len(t)
        rate = j(0.25)
        ang = np.clip((t - t0) * rate, 0, math.pi / 2) * direction
        out["theta"] = ang
        out["dy"] = -0.35 * np.abs(np.sin(ang))
        for _ in t:
            out["poses"].append({"thigh_l": 0.2, "thigh_r": -0.1, "arm_l": 1.2, "arm_r": -1.2})
    elif motion == "spinning":  # cartwheel
        rate = j(0.45) * direction
        out["theta"] = phase0 + rate * t
        out["dy"] = np.full(n, 0.2)
        out["dx"] = direction * j(0.02) * t
        for _ in t:
            out["poses"].append({"thigh_l": 0.5, "thigh_r": -0.5, "arm_l": 2.4, "arm_r": -2.4})
    elif motion == "crawling":
        freq = j(0.35)
        out["theta"][:] = direction * math.pi / 2
        out["dy"] = np.full(n, -0.3)
        out["dx"] = direction * j(0.015) * t
        for k in t:
            s = math.sin(phase0 + freq * k)
            out["poses"].append({"thigh_l": 0.5 + 0.3 * s, "thigh_r": 0.5 - 0.3 * s, "knee_l": -1.4, "knee_r": -1.4,
                                 "arm_l": 1.6 + 0.3 * s, "arm_r": 1.6 - 0.3 * s, "side": direction})
    elif motion == "debris":  # erratic, rotating piece of junk (not a person)
        steps = rng.normal(0, 0.05, size=(n, 2))
        out["dx"] = np.cumsum(steps[:, 0])
        out["dy"] = np.cumsum(steps[:, 1])
        out["theta"] = np.cumsum(rng.normal(0, 0.4, size=n))
        out["debris"] = rng.uniform(0.1, 0.3, size=int(rng.integers(4, 8)))
        out["poses"] = [{} for _ in t]
    else:
        raise ValueError(f"unknown motion {motion!r}; known: {', '.join(all_motions())}")
    return out


def render_clip(motion: str, rng: np.random.Generator, config: ClipConfig = ClipConfig()) -> Clip:
    """Render one clip of ``motion`` with the generator ``rng`` (see :func:`clip_rng`)."""
    if motion not in all_motions():
        raise ValueError(f"unknown motion {motion!r}; known: {', '.join(all_motions())}")
    size, n = config.size, config.frames
    t = np.arange(n, dtype=np.float64)
    height = float(rng.uniform(0.35, 0.5)) * size
    track = _motion_track(motion, t, rng, config.speed_jitter)

    # appearance: class-tied hue for ID agents with probability appearance_bias, else uniform
    if motion in ID_CLASSES and rng.random() < config.appearance_bias:
        hue = ID_CLASSES.index(motion) * 180.0 / len(ID_CLASSES) + rng.normal(0, config.hue_sigma)
    else:
        hue = rng.uniform(0, 180)
    colors = {
        "shirt": _hsv_to_rgb(hue, int(rng.integers(150, 256)), int(rng.integers(150, 256))),
        "pants": _hsv_to_rgb(hue + 90 + rng.normal(0, 10), int(rng.integers(60, 200)), int(rng.integers(40, 140))),
        "skin": _hsv_to_rgb(rng.uniform(5, 20), int(rng.integers(60, 160)), int(rng.integers(120, 240))),
    }

    # start position so the whole motion stays roughly inside the frame
    path_x = track["dx"] * height
    path_y = track["dy"] * height
    span_x = float(path_x.max() - path_x.min())
    lo = 0.15 * size - path_x.min()
    hi = 0.85 * size - path_x.max()
    x0 = float(rng.uniform(lo, hi)) if hi > lo else 0.5 * size - path_x.min() - span_x / 2
    y0 = float(rng.uniform(0.55, 0.65)) * size
    bg = _background(rng, size)
    shake = np.cumsum(rng.normal(0, config.shake_px, size=(n, 2)), axis=0) * 0.5 + rng.normal(0, config.shake_px, size=(n, 2)) * 0.5

    frames = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        canvas = bg.astype(np.uint8).copy()
        center = np.array([x0 + path_x[k], y0 - path_y[k]])
        h = height * float(track["scale"][k])
        if motion == "debris":
            radii = track["debris"]
            angs = np.linspace(0, 2 * math.pi, len(radii), endpoint=False) + track["theta"][k]
            pts = np.stack([center[0] + radii * h * np.cos(angs), center[1] + radii * h * np.sin(angs)], 1)
            cv2.fillPoly(canvas, [(pts * 16).astype(np.int32)], colors["shirt"], cv2.LINE_AA, 4)
        else:
            if "bicycle" in track:
                _draw_bicycle(canvas, center, h, 1.0, float(track["bicycle"][k]), colors["pants"])
            _draw_figure(canvas, track["poses"][k], center, h, float(track["theta"][k]), colors)
        m = np.float32([[1, 0, shake[k, 0]], [0, 1, shake[k, 1]]])
        canvas = cv2.warpAffine(canvas, m, (size, size), borderMode=cv2.BORDER_REFLECT)
        noisy = canvas.astype(np.float32) + rng.normal(0, config.noise_sigma, size=canvas.shape).astype(np.float32)
        frames[k] = np.clip(noisy, 0, 255).astype(np.uint8)
    label = ID_CLASSES.index(motion) if motion in ID_CLASSES else -1
    return Clip(frames=frames, motion=motion, label=label, meta={"hue": float(hue), "height": height})


@dataclass(frozen=True)
class ClipDatasetSpec:
    """How many clips per class each split gets (defaults sized for two CPU cores)."""

    train_per_class: int = 60
    test_per_class: int = 30
    near_per_class: int = 40
    far_per_class: int = 40

    def split_motions(self) -> dict[str, list[tuple[str, int]]]:
        """(motion, count) per split."""
        return {
            "train": [(m, self.train_per_class) for m in ID_CLASSES],
            "test": [(m, self.test_per_class) for m in ID_CLASSES],
            "near_ood": [(m, self.near_per_class) for m in NEAR_OOD_CLASSES],
            "far_ood": [(m, self.far_per_class) for m in FAR_OOD_CLASSES],
        }


def iter_split(split: str, spec: ClipDatasetSpec, seed: int, config: ClipConfig = ClipConfig()) -> Iterator[Clip]:
    """Render every clip of one split in order (clip ``i`` depends only on seed, split, i)."""
    motions = spec.split_motions()
    if split not in motions:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(motions)}")
    index = 0
    for motion, count in motions[split]:
        for _ in range(count):
            yield render_clip(motion, clip_rng(seed, split, index), config)
            index += 1


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def write_clip_dataset(
    out: str | os.PathLike,
    spec: ClipDatasetSpec = ClipDatasetSpec(),
    seed: int = 0,
    config: ClipConfig = ClipConfig(),
    progress: bool = True,
) -> Path:
    """Render and write a clip dataset (layout in the module docstring); returns ``out``.

    Deterministic: the same ``seed``, ``spec`` and ``config`` give byte-identical files.
    """

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    total = sum(c for split in spec.split_motions().values() for _, c in split)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="clips", unit="clip")
    counts: dict[str, int] = {}
    for split in SPLITS:
        d = root / "clips" / split
        d.mkdir(parents=True, exist_ok=True)
        n = 0
        for i, clip in enumerate(iter_split(split, spec, seed, config)):
            _atomic_savez(d / f"{i:05d}.npz", frames=clip.frames, label=np.int64(clip.label), motion=np.str_(clip.motion))
            n += 1
            if bar is not None:
                bar.update(1)
        counts[split] = n
    if bar is not None:
        bar.close()
    meta = {
        "kind": "clips",
        "generator": "ood_perception.world.clips",
        "seed": int(seed),
        "classes": list(ID_CLASSES),
        "near_ood": list(NEAR_OOD_CLASSES),
        "far_ood": list(FAR_OOD_CLASSES),
        "frames": config.frames,
        "size": config.size,
        "config": asdict(config),
        "spec": asdict(spec),
        "splits": counts,
    }
    atomic_write_text(root / "dataset.yaml", yaml.safe_dump(meta, sort_keys=False))
    return root


def ensure_clip_dataset(data: str | os.PathLike, clips_per_class: int = 60, seed: int = 0, frames: int = 16,
                     size: int = 64) -> Path:
    """Generate the synthetic clips in ``data`` when it is missing or empty; return its path."""
    root = Path(data)
    if root.exists() and any(root.iterdir()):
        return root
    print(f"{root} is empty: generating synthetic clips (seed {seed}, {clips_per_class} train clips per class)", file=sys.stderr)
    spec = ClipDatasetSpec(train_per_class=clips_per_class, test_per_class=max(clips_per_class // 2, 2),
                           near_per_class=max(clips_per_class * 2 // 3, 2), far_per_class=max(clips_per_class * 2 // 3, 2))
    return write_clip_dataset(root, spec, seed=seed, config=ClipConfig(frames=frames, size=size))
