"""Object decisions (pipeline/objects.py), the ground plane (geometry/ground.py), scene shift, and
calibration to a false-alert budget (pipeline/calibration.py), on hand-made frames.

The test backend labels each pixel from the image colour (green = car, blue = building, anything
else = road) and scores it by redness, so the expected evidence of every object is known by
construction: a box of LiDAR points standing on the road, seen as road/building -> an unknown
object on the drivable area (region score 1); painted green -> a known object (score 0).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from ood_perception.geometry import Calibration
from ood_perception.geometry.ground import GroundPlane, fit_ground_plane
from ood_perception.pipeline import (
    ALERT,
    CLEAR,
    DEGRADED,
    AlertConfig,
    FusionConfig,
    FusionFrame,
    FusionPipeline,
)
from ood_perception.pipeline.calibration import (
    CalibrationFrame,
    CalibrationSettings,
    alert_frames,
    budget_alert_counts,
    calibrate_decisions,
    evidence_scores,
)
from ood_perception.pipeline.frame_handler import FrameSettings, extrinsics_from_params
from ood_perception.pipeline.objects import (
    ClassSets,
    ObjectConfig,
    ObjectEvidence,
    ObjectTracker,
    object_candidates,
    region_score,
)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
H, W = 96, 128
CLASSES = ["car", "road", "building"]
CALIB = Calibration(np.array([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]]), W, H, extrinsics_from_params({}))
GROUND_Z = -1.73


class ColourBackend:
    """score = redness; class = car where green dominates, building where blue dominates, else road."""

    def __init__(self, decision: dict | None = None) -> None:
        self.spec = SimpleNamespace(image_hw=(H, W), mean=MEAN, std=STD, threshold=0.5,
                                    output_names=["class_map", "score_map", "camera_class_map", "camera_score_map"], class_names=CLASSES,
                                    decision=decision or {})

    def infer(self, inputs):
        img = inputs["image"] * np.asarray(STD, np.float32).reshape(1, 3, 1, 1) + np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
        r, g, b = img[:, 0], img[:, 1], img[:, 2]
        cls = np.where(g > r + 0.2, 0, np.where(b > r + 0.2, 2, 1)).astype(np.int64)
        score = (r - 0.5 * (g + b)).astype(np.float32)
        return {"score_map": score, "class_map": cls, "camera_score_map": score, "camera_class_map": cls}


def ground_points() -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(4.0, 20.0, 0.25), np.arange(-4.0, 4.0, 0.25))
    return np.column_stack([xs.ravel(), ys.ravel(), np.full(xs.size, GROUND_Z), np.zeros(xs.size)])


def box_points(x: float = 10.0, height: float = 1.5) -> np.ndarray:
    ys, zs = np.meshgrid(np.arange(-0.5, 0.51, 0.1), np.arange(GROUND_Z + 0.3, GROUND_Z + height, 0.1))
    return np.column_stack([np.full(ys.size, x), ys.ravel(), zs.ravel(), np.zeros(ys.size)])


def box_pixels(x: float = 10.0, height: float = 1.5) -> tuple[slice, slice]:
    """Image rows/cols the box covers (camera at the LiDAR origin, optical axis = LiDAR x)."""
    u0, u1 = W / 2 - 100 * 0.6 / x, W / 2 + 100 * 0.6 / x
    v0, v1 = H / 2 - 100 * (GROUND_Z + height + 0.1) / x, H / 2 - 100 * (GROUND_Z + 0.2) / x
    return slice(int(v0), int(np.ceil(v1))), slice(int(u0), int(np.ceil(u1)))


def frames(n: int, box: bool, colour: tuple[int, int, int] = (120, 120, 120), red_patch: bool = False):
    """``n`` frames 0.1 s apart of a stopped vehicle: grey road image, ground points, optionally a
    box on the road painted ``colour``, optionally a red (high-score) patch on the road surface."""
    img = np.full((H, W, 3), 120, np.uint8)
    pts = [ground_points()]
    if box:
        rows, cols = box_pixels()
        img[rows, cols] = colour
        pts.append(box_points())
    if red_patch:
        img[80:92, 30:60] = (230, 20, 20)  # ground right in front: a flat, ground-level false positive
    cloud = np.concatenate(pts).astype(np.float32)
    return [FusionFrame(stamp=0.1 * i, image=img, points=cloud, calib=CALIB) for i in range(n)]


def pipeline(**kw) -> FusionPipeline:
    cfg = dict(decision="objects", region_threshold=0.9, alert=AlertConfig(raise_k=2, raise_n=3, clear_frames=1, cooldown_s=0.0),
               # the colour backend scores no pixel: unknown share alone; scores not weighed by points (hand-computed 1s)
               objects=ObjectConfig(track_window=3, w_ood=0.0, support_points=0.0))
    cfg.update(kw)
    return FusionPipeline(ColourBackend(), FusionConfig(**cfg))


# ---------------------------------------------------------------------------------------- ground


def test_ground_plane_recovers_a_tilted_ground_under_objects():
    rng = np.random.default_rng(0)
    xy = rng.uniform([-20, -20], [20, 20], (3000, 2))
    z = -1.7 + 0.05 * xy[:, 0] + rng.normal(0, 0.02, len(xy))  # ~2.9 degree slope
    wall = np.column_stack([rng.uniform(5, 6, 800), rng.uniform(-5, 5, 800), rng.uniform(-1.7, 3, 800)])
    pts = np.concatenate([np.column_stack([xy, z]), wall])
    plane = fit_ground_plane(pts)
    assert plane.fitted and plane.normal[2] > 0.99
    assert np.allclose(plane.height(np.column_stack([xy, z])), 0.0, atol=0.1)  # noise sigma 0.02
    assert plane.height(np.array([[0.0, 0.0, 0.3]]))[0] == pytest.approx(2.0, abs=0.05)
    assert fit_ground_plane(pts) == plane  # seeded


def test_ground_plane_falls_back_without_enough_points():
    plane = fit_ground_plane(np.zeros((3, 3)), fallback_z=-1.5)
    assert not plane.fitted and plane.height(np.array([[0.0, 0.0, 0.0]]))[0] == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------- objects


def test_unknown_object_on_the_road_alerts_after_persistence():
    p = pipeline()
    results = [p.process(f) for f in frames(5, box=True)]
    r0 = results[0]
    assert len(r0.objects) == 1
    ob = r0.objects[0]
    assert ob.unknown == 1.0 and ob.drivable == 1.0 and ob.score == 1.0
    assert ob.centroid[0] == pytest.approx(10.0, abs=0.05) and ob.num_points == box_points().shape[0]
    # track score over a 3-frame window: 1/3, 2/3, 1, 1, 1; region_threshold 0.9 -> evidence from frame 2;
    # raise_k = 2 of 3 -> ALERT at frame 3
    assert [round(r.objects[0].track_score, 4) for r in results] == [0.3333, 0.6667, 1.0, 1.0, 1.0]
    assert [r.objects[0].track_id for r in results] == [1] * 5
    assert [r.level for r in results] == [CLEAR, CLEAR, 1, ALERT, ALERT]
    assert results[3].frame_score == 1.0 and results[0].frame_score == pytest.approx(1 / 3)
    reg = results[3].regions[0]
    assert reg.has_3d and reg.has_2d and reg.num_points == ob.num_points and reg.score == 1.0
    rows, cols = box_pixels()
    assert abs(reg.x_min - cols.start) <= 2 and abs(reg.y_min - rows.start) <= 2


def test_a_sliver_of_an_object_the_camera_saw_little_of_is_not_judged():
    """Clusters are formed with the points the model did not see (outside the view, or hidden in it:
    NaN score), so ``visible`` is the share of the whole object seen; below ``min_visible`` it is no
    candidate. Hand-counted: a 11 x 12 point box, 3 of its 11 columns seen -> 36/132."""
    box = box_points()[:, :3].astype(np.float64)  # 11 columns (y) x 12 rows (z)
    ground = GroundPlane((0.0, 0.0, 1.0), -GROUND_Z)
    classes = ClassSets.from_names(CLASSES, ObjectConfig())
    seen = box[:, 1] > 0.25  # y 0.3, 0.4, 0.5: 3 columns
    n_seen = int(seen.sum())
    assert n_seen == 36 and len(box) == 132

    def cands(xyz, scores, unseen, **kw):
        cfg = ObjectConfig(min_points=10, **kw)
        return object_candidates(xyz, scores, np.zeros(len(xyz), np.int64), ground, classes, cfg, 0.5, unseen)

    ones = np.ones(n_seen)
    # the rest of the box outside the camera's view
    assert cands(box[seen], ones, box[~seen], min_visible=0.5) == []
    [ob] = cands(box[seen], ones, box[~seen], min_visible=0.25)
    assert ob.visible == pytest.approx(36 / 132) and len(ob.index) == 36
    assert ob.size[1] == pytest.approx(0.2)  # evidence and size from the seen points only
    # the rest in view but hidden (no score): the same
    scores = np.where(seen, 1.0, np.nan)
    assert cands(box, scores, None, min_visible=0.5) == []
    [ob] = cands(box, scores, None, min_visible=0.25)
    assert ob.visible == pytest.approx(36 / 132) and sorted(ob.index.tolist()) == np.flatnonzero(seen).tolist()
    # min_visible 0 judges the sliver (the earlier rule); an unseen point far away joins nothing
    [ob] = cands(box[seen], ones, np.array([[10.0, 30.0, 0.0]]), min_visible=0.0)
    assert ob.visible == 1.0
    [ob] = cands(box, np.ones(len(box)), np.array([[10.0, 30.0, 0.0]]), min_visible=0.5)
    assert ob.visible == 1.0 and len(ob.index) == 132
    with pytest.raises(ValueError, match="min_visible"):
        ObjectConfig(min_visible=1.5)


def test_low_band_finds_flat_objects_on_the_road_but_not_the_sidewalk():
    """low_height: points from low_height up to min_height join the candidates unless the model labels
    them a ground class that is not drivable. A tyre lying flat (0.08-0.2 m high) on the road is a
    candidate only with the low band; a raised sidewalk's edge (same heights, labelled sidewalk) is not."""
    ground = GroundPlane((0.0, 0.0, 1.0), -GROUND_Z)
    names = ["car", "road", "sidewalk"]
    xs, ys, zs = np.meshgrid(np.arange(10.0, 10.8, 0.1), np.arange(-0.4, 0.41, 0.1), [0.08, 0.14, 0.2])
    tyre = np.column_stack([xs.ravel(), ys.ravel(), zs.ravel() + GROUND_Z])  # 3 layers
    n = len(tyre)
    cfg = ObjectConfig(min_points=10, low_height=0.0)
    classes = ClassSets.from_names(names, cfg)

    def cands(labels, **kw):
        c = dataclasses.replace(cfg, **kw)
        return object_candidates(tyre, np.ones(len(tyre)), np.full(len(tyre), labels), ground, classes, c, 0.5)

    assert cands(1) == []  # road-labelled, below min_height 0.25: no candidate (the earlier rule)
    [ob] = cands(1, low_height=0.06)
    assert ob.num_points == n and ob.unknown == 1.0
    assert len(cands(1, low_height=0.1)[0].index) == n * 2 // 3  # the 0.08 m layer is below the band
    assert cands(2, low_height=0.06) == []  # labelled sidewalk: the kerb, not an object
    assert len(cands(0, low_height=0.06)[0].index) == n  # labelled car: joins
    for bad in ({"low_height": 0.3}, {"low_height": -0.1}, {"support_points": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ObjectConfig(**bad)


def test_support_points_weigh_the_evidence_of_few_points():
    """support_points s: region score x n / (n + s); hand-computed."""
    def ev(n):
        return ObjectEvidence(index=np.arange(n), centroid=(0, 0, 0), size=(1, 1, 1), top=1.0, unknown=1.0, conflict=0.0,
                              ood=0.5, drivable=1.0, context_points=10, mean_score=0.0, max_score=0.0, extra=0.6)
    cfg = ObjectConfig(location_floor=0.0, extra_alone_points=0.0, support_points=0.0)
    assert region_score(ev(10), cfg) == pytest.approx(0.7)
    on = dataclasses.replace(cfg, support_points=10.0)
    assert region_score(ev(10), on) == pytest.approx(0.35)
    assert region_score(ev(990), on) == pytest.approx(0.7 * 0.99)


def test_flat_ground_level_false_positive_does_not_alert():
    p = pipeline()
    results = [p.process(f) for f in frames(6, box=False, red_patch=True)]
    assert all(int((r.mask > 0).sum()) > 200 for r in results)  # the pixels are flagged ...
    assert all(r.level == CLEAR and not r.regions and not r.objects and r.frame_score == 0.0 for r in results)


def test_known_object_does_not_alert_and_pixel_decisions_would():
    p = pipeline()
    results = [p.process(f) for f in frames(5, box=True, colour=(40, 200, 40))]
    assert all(r.objects and r.objects[0].unknown == 0.0 for r in results)
    assert all(r.level == CLEAR for r in results)
    # the same red patch decided on pixels alerts (the old rule)
    px = pipeline(decision="pixels", min_region_pixels=20)
    assert [r.level for r in (px.process(f) for f in frames(3, box=False, red_patch=True))][-1] == ALERT


def test_auto_decides_on_pixels_for_camera_only_frames_and_models_without_a_drivable_class():
    p = pipeline(decision="auto")
    f = frames(1, box=False, red_patch=True)[0]
    r = p.process(FusionFrame(stamp=0.0, image=f.image))
    assert not r.objects and r.regions  # mask components
    assert p.uses_objects(True)
    nodrive = ColourBackend()
    nodrive.spec.class_names = ["car", "grass", "building"]
    assert not FusionPipeline(nodrive, FusionConfig()).uses_objects(True)
    with pytest.raises(ValueError, match="drivable"):
        FusionPipeline(nodrive, FusionConfig(decision="objects"))


def test_the_bank_term_alone_decides_for_well_seen_objects():
    """extra_alone_points a: evidence = max(mean, ramp(extra) * n / (n + a)), ramp from extra_alone_from to 1."""
    def ev(n, extra, unknown=0.05, ood=0.1, drivable=1.0):
        return ObjectEvidence(index=np.arange(n), centroid=(0, 0, 0), size=(3, 4, 2), top=2.0, unknown=unknown,
                              conflict=0.0, ood=ood, drivable=drivable, context_points=10, mean_score=0.0,
                              max_score=0.0, extra=extra)
    off = ObjectConfig(location_floor=0.0, extra_alone_points=0.0, support_points=0.0)
    on = dataclasses.replace(off, extra_alone_points=100, extra_alone_from=0.98)
    trailer = ev(1200, 1.0)  # many points, unlike every training object, labelled truck
    assert region_score(trailer, off) == pytest.approx((0.05 + 0.1 + 1.0) / 3)
    assert region_score(trailer, on) == pytest.approx(1200 / 1300)
    assert region_score(ev(1200, 0.99), on) == pytest.approx(0.5 * 1200 / 1300)  # half-way up the ramp
    assert region_score(ev(1200, 0.97), on) == region_score(ev(1200, 0.97), off)  # below the ramp: the mean
    sliver = ev(25, 1.0)  # few points: the bank's path weighs 25 / 125, the mean decides
    assert region_score(sliver, on) == region_score(sliver, off) == pytest.approx((0.05 + 0.1 + 1.0) / 3)
    assert region_score(ev(1200, 1.0, drivable=0.5), on) == pytest.approx(0.5 * 1200 / 1300)  # location still weighs
    assert region_score(trailer, dataclasses.replace(on, w_extra=0.0)) == pytest.approx((0.05 + 0.1) / 2)  # no bank term
    assert region_score(ev(300, 1.0), dataclasses.replace(on, extra_alone_from=0.0)) == pytest.approx(0.75)
    for bad in ({"extra_alone_points": -1}, {"extra_alone_from": 1.0}, {"extra_alone_from": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ObjectConfig(**bad)


def test_region_score_weights_and_plug_in_term():
    ev = ObjectEvidence(index=np.arange(3), centroid=(0, 0, 0), size=(1, 1, 1), top=1.0, unknown=0.5, conflict=1.0,
                        ood=0.0, drivable=0.8, context_points=10, mean_score=0.0, max_score=0.0, extra=1.0)
    plain = ObjectConfig(location_floor=0.0, support_points=0.0)  # the location as a factor: drivable x evidence
    assert region_score(ev, plain) == pytest.approx(0.8 * (0.5 + 0.0 + 1.0) / 3)  # default terms: unknown, ood, extra
    assert region_score(ev, dataclasses.replace(plain, w_extra=0)) == pytest.approx(0.8 * (0.5 + 0.0) / 2)
    assert region_score(ev, dataclasses.replace(plain, w_ood=0, w_extra=0)) == pytest.approx(0.8 * 0.5)
    assert region_score(ev, dataclasses.replace(plain, w_unknown=1, w_conflict=1, w_ood=0, w_extra=2)) == \
        pytest.approx(0.8 * (0.5 + 1 + 2) / 4)
    # the location as a gate instead of a factor: the evidence itself at or above the gate, else 0
    assert region_score(ev, ObjectConfig(drivable_gate=0.8, support_points=0.0)) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert region_score(ev, ObjectConfig(drivable_gate=0.81, support_points=0.0)) == 0.0
    with pytest.raises(ValueError, match="drivable_gate"):
        ObjectConfig(drivable_gate=2.0)
    # a location floor: weighed by f + (1 - f) * drivable; off the drivable area the evidence keeps f of it
    assert region_score(ev, ObjectConfig(location_floor=0.5, support_points=0.0)) == pytest.approx(0.9 * (0.5 + 0.0 + 1.0) / 3)
    off = dataclasses.replace(ev, drivable=0.0)
    assert region_score(off, plain) == 0.0
    assert region_score(off, ObjectConfig(location_floor=0.5, support_points=0.0)) == pytest.approx(0.5 * (0.5 + 0.0 + 1.0) / 3)
    with pytest.raises(ValueError, match="location_floor"):
        ObjectConfig(location_floor=-0.1)
    assert region_score(off, ObjectConfig(location_floor=0.5, drivable_gate=0.5)) == 0.0  # a gate decides alone
    calls = []

    def term(crop, region, pts):
        calls.append((None if crop is None else crop.shape, pts.shape))
        return 0.0  # "looks like a known object"

    p = FusionPipeline(ColourBackend(), FusionConfig(decision="objects", region_threshold=0.9,
                                                     objects=ObjectConfig(track_window=1, w_unknown=1.0, w_ood=0.0,
                                                                          w_extra=1.0, support_points=0.0)),
                       region_term=term)
    r = p.process(frames(1, box=True)[0])
    assert calls and calls[0][1] == (box_points().shape[0], 3) and calls[0][0][2] == 3
    assert r.objects[0].score == pytest.approx(0.5)
    # no plug-in term and a model without an object bank: the term is off, and the pipeline says so
    p = FusionPipeline(ColourBackend(), FusionConfig(objects=ObjectConfig(w_extra=1.0)))
    assert p.objects.w_extra == 0 and p.object_bank is None
    assert any("object.w_extra 1 has no effect: the model has no object bank" in w for w in p.decision_warnings)
    with pytest.raises(ValueError, match="only evidence weight"):
        FusionPipeline(ColourBackend(), FusionConfig(objects=ObjectConfig(w_unknown=0, w_ood=0, w_extra=1.0)))


def test_tracker_follows_an_object_passing_a_moving_vehicle():
    t = ObjectTracker(ObjectConfig(track_window=2, track_gate=1.5))
    ids = []
    for i in range(6):  # static object, vehicle at 9.5 m/s: the object moves -0.95 m per frame in the LiDAR frame
        ob = ObjectEvidence(np.arange(1), (20.0 - 0.95 * i, 1.0, 0.0), (1, 1, 1), 1.0, 1, 0, 0, 1, 9, 0, 0, score=1.0)
        far = ObjectEvidence(np.arange(1), (5.0, -8.0 + 3.0 * i, 0.0), (1, 1, 1), 1.0, 1, 0, 0, 1, 9, 0, 0, score=1.0)
        t.update(0.1 * i, [ob, far])
        ids.append((ob.track_id, far.track_id))
    assert len({a for a, _ in ids}) == 1  # one track for the passing object
    assert len({b for _, b in ids}) == 6  # 3 m jumps are beyond the gate: a new track each frame


# ---------------------------------------------------------------------------------------- scene shift


def test_scene_shift_is_degraded_without_regions_and_keeps_a_standing_alert():
    p = pipeline(scene_shift_fraction=0.6)
    for f in frames(4, box=True):
        r = p.process(f)
    assert r.level == ALERT
    red = np.full((H, W, 3), (230, 20, 20), np.uint8)
    r = p.process(FusionFrame(stamp=1.0, image=red, points=f.points, calib=CALIB))
    assert r.scene_shift and r.level == DEGRADED and not r.regions and not r.objects
    assert "outside the model's domain" in r.decision.description and r.decision.alert_standing
    assert np.isnan(r.frame_score) and r.anomalous_fraction == 1.0
    p2 = pipeline(scene_shift_fraction=0.6)
    r2 = p2.process(FusionFrame(stamp=0.0, image=red))  # camera-only: the same rule
    assert r2.scene_shift and r2.level == DEGRADED and not r2.decision.alert_standing


# ---------------------------------------------------------------------------------------- spec + params


def test_calibrated_values_come_from_the_model_unless_parameters_override():
    dec = {"pixel_threshold": 0.3, "region_threshold": 0.7, "track_window": 4, "scene_shift_fraction": 0.4,
           "alert": {"raise_k": 2, "raise_n": 3, "clear_frames": 5, "cooldown_s": 1.0}}
    p = FusionPipeline(ColourBackend(dec), FusionConfig())
    assert (p.threshold, p.region_threshold, p.objects.track_window, p.scene_shift_fraction) == (0.3, 0.7, 4, 0.4)
    assert (p.alert_config.raise_k, p.alert_config.raise_n) == (2, 3)
    assert set(p.decision_source.values()) == {"model.json"}
    s = FrameSettings.from_params({"region_threshold": 0.2, "object.track_window": 2, "threshold": 0.9,
                                   "scene_shift_fraction": 0.8, "raise_k": 4, "raise_n": 6})
    p = FusionPipeline(ColourBackend(dec), s.fusion)
    assert (p.threshold, p.region_threshold, p.objects.track_window, p.scene_shift_fraction) == (0.9, 0.2, 2, 0.8)
    assert (p.alert_config.raise_k, p.alert_config.raise_n) == (4, 6) and p.decision_source["persistence"] == "parameter"
    p = FusionPipeline(ColourBackend(), FrameSettings.from_params({}).fusion)  # nothing calibrated: defaults
    assert (p.threshold, p.region_threshold, p.objects.track_window, p.scene_shift_fraction) == (0.5, 0.5, 3, 0.5)
    assert (p.alert_config.raise_k, p.alert_config.raise_n) == (3, 5) and p.decision_source["persistence"] == "default"
    # one of the two set alone: the other at its default (3 of 5), keeping k <= n
    assert FrameSettings.from_params({"raise_k": 2}).fusion.alert.raise_n == 5
    assert (FrameSettings.from_params({"raise_n": 2}).fusion.alert.raise_k, FrameSettings.from_params({"raise_k": 7}).fusion.alert.raise_n) == (2, 7)
    with pytest.raises(ValueError, match="must be >= 0"):
        FrameSettings.from_params({"raise_k": -1})


def test_object_parameters_map_and_refuse_in_one_line():
    s = FrameSettings.from_params({"object.min_points": 20, "object.known_classes": "car, truck ,", "decision": "pixels",
                                   "object.min_visible": 0.7})
    assert s.fusion.objects.min_points == 20 and s.fusion.objects.known_classes == ("car", "truck")
    assert s.fusion.objects.min_visible == 0.7 and FrameSettings.from_params({}).fusion.objects.min_visible == 0.0
    assert s.fusion.decision == "pixels"
    with pytest.raises(ValueError, match="object"):
        FrameSettings.from_params({"object.min_height": 5.0})
    with pytest.raises(ValueError, match="min_visible"):
        FrameSettings.from_params({"object.min_visible": -0.1})
    with pytest.raises(ValueError, match="decision"):
        FrameSettings.from_params({"decision": "vibes"})


def test_model_spec_round_trips_the_decision_block(tmp_path):
    from ood_perception.models.spec import ModelSpec, load_spec, write_spec

    data = {"format_version": 1, "kind": "segmentation", "files": {"onnx": {"path": "m.onnx", "sha256": "ab"}},
            "inputs": [{"name": n, "dtype": "float32", "shape": ["batch", 3, 8, 8]} for n in ("image", "lidar")],
            "outputs": [{"name": n, "dtype": "float32", "shape": ["batch", 8, 8]} for n in
                        ("class_map", "score_map", "camera_class_map", "camera_score_map", "lidar_class_map",
                         "lidar_score_map")],
            "class_names": ["road"], "score": {"name": "maxlogit"}}
    spec = ModelSpec.from_dict(data)
    assert spec.decision == {} and "decision" not in spec.to_dict()
    spec.decision = {"region_threshold": 0.42, "validation": {"frames": 3}}
    write_spec(tmp_path / "model.json", spec)
    assert load_spec(tmp_path).decision == spec.decision


# ---------------------------------------------------------------------------------------- calibration


def _drive(name: str, scores: np.ndarray, anomaly_pixels: np.ndarray | None = None) -> list[CalibrationFrame]:
    """One candidate per frame at a fixed place (one track), with the given region scores."""
    apx = np.zeros(len(scores), int) if anomaly_pixels is None else anomaly_pixels
    return [CalibrationFrame(name, 0.1 * i, np.array([[10.0, 0.0, 0.0]]), np.array([s]), np.array([0.0, 1.0]), int(a))
            for i, (s, a) in enumerate(zip(scores, apx, strict=True))]


def test_calibration_hand_computed_threshold_for_a_one_frame_rule():
    # window 1, ALERT on the first anomalous frame, cleared on the next clean one: ALERT frames = frames >= tau
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.95, 0.4, 0.1, 0.2, 0.3, 0.1])
    settings = CalibrationSettings(budget=0.1, windows=(1,), default_window=1, pixel_fpr=0.5,
                                   alert=AlertConfig(raise_k=1, raise_n=1, clear_frames=1, cooldown_s=0.0))
    out = calibrate_decisions(_drive("a", scores), settings)
    # a 10% budget on 10 frames allows one ALERT frame: tau = 0.95 (only the 0.95 frame)
    assert out["region_threshold"] == pytest.approx(0.95) and out["track_window"] == 1
    assert out["validation"]["anomaly_free_alert_share"] == pytest.approx(0.1)
    assert out["pixel_threshold"] == pytest.approx(0.5)  # median of the pixel sample {0, 1} per frame
    assert out["scene_shift_fraction"] == pytest.approx(0.75)  # 1.5 x 0.5, within [0.25, 0.95]
    tight = calibrate_decisions(_drive("a", scores), CalibrationSettings(**{**vars(settings), "budget": 0.0}))
    assert tight["region_threshold"] > 0.95  # no ALERT frame at all


def test_calibration_meets_the_budget_on_a_synthetic_score_distribution():
    rng = np.random.default_rng(7)
    clean = [_drive(f"c{i}", rng.beta(1, 6, 100)) for i in range(8)]  # mostly low, a tail up to ~0.9
    anomalous = []
    for i in range(4):
        s = rng.beta(1, 6, 100)
        on = np.zeros(100, bool)
        on[30:60] = True
        s[on] = rng.beta(6, 2, on.sum())  # an anomaly in view for 3 s, scoring high
        anomalous.append(_drive(f"a{i}", s, np.where(on, 500, 0)))
    frames_ = [f for d in clean + anomalous for f in d]
    settings = CalibrationSettings(budget=0.01, windows=(1, 2, 3, 5))
    out = calibrate_decisions(frames_, settings)
    v = out["validation"]
    assert v["anomaly_free_alert_share"] <= 0.01 and v["anomaly_free_frames"] == 800 + 4 * 70
    assert v["positive_alert_share"] > 0.5 and out["track_window"] in (1, 2, 3, 5)
    # the same rule on fresh drives from the same distribution stays near the budget
    fresh = [_drive(f"f{i}", rng.beta(1, 6, 100)) for i in range(20)]
    objects = ObjectConfig(track_window=out["track_window"])
    chosen = AlertConfig(**out["alert"])  # the persistence calibrate chose (2 of 3 or 3 of 5)
    assert (chosen.raise_k, chosen.raise_n) in settings.persistence
    alerts = np.concatenate(alert_frames(fresh, evidence_scores(fresh, objects), out["region_threshold"], chosen))
    assert alerts.mean() <= 0.02
    with pytest.raises(ValueError, match="anomaly-free"):
        calibrate_decisions(_drive("x", np.ones(5), np.full(5, 300)))


@pytest.mark.parametrize("alert", [AlertConfig(raise_k=3, raise_n=5, clear_frames=5, cooldown_s=1.0),
                                   AlertConfig(raise_k=1, raise_n=1, clear_frames=1, cooldown_s=0.0),
                                   AlertConfig(raise_k=2, raise_n=3, clear_frames=2, cooldown_s=0.35)])
def test_budget_alert_counts_equal_one_state_machine_run_per_threshold(alert):
    """Calibration's threshold scan runs each drive's state machine once per distinct evidence value;
    the counts equal running it once per threshold (the plain scan), ties and thresholds between,
    below and above the evidence values included."""
    rng = np.random.default_rng(11)
    drives = [_drive(f"d{i}", np.round(rng.beta(1, 3, n), 2)) for i, n in enumerate((40, 25, 60, 1))]
    drives = [sorted(d, key=lambda f: f.stamp) for d in drives]
    evidence = evidence_scores(drives, ObjectConfig(track_window=2))
    selected = rng.random(sum(len(d) for d in drives)) < 0.7
    e_all = np.concatenate(evidence)
    thresholds = np.r_[np.unique(e_all), np.unique(e_all) + 0.005, -1.0, 0.0, 2.0]
    plain = [int(np.concatenate(alert_frames(drives, evidence, float(t), alert))[selected].sum()) for t in thresholds]
    assert budget_alert_counts(drives, evidence, selected, thresholds, alert).tolist() == plain
    assert max(plain) > 0 and min(plain) == 0


# ---------------------------------------------------------------------------------------- the command


def test_calibrate_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    from ood_perception.cli import main

    assert main(["calibrate", "default", "--data", str(tmp_path)]) == 1
    assert "no dataset.yaml" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path), "--data", str(tmp_path)]) == 1
    assert "model.json" in capsys.readouterr().err


def test_calibrate_command_writes_the_decision_block_and_keeps_the_model_loadable(tmp_path, capsys):
    import json
    import shutil

    from ood_perception import runtime
    from ood_perception.cli import main
    from ood_perception.world.config import WorldConfig
    from ood_perception.world.synth import generate_dataset

    data = tmp_path / "val"
    cfg = WorldConfig()
    cfg.anomalies.rate = 0.0
    generate_dataset(data, sequences=1, frames=4, seed=8190, config=cfg, split="val", progress=False)
    model = tmp_path / "model"
    shutil.copytree(runtime.default_model_dir(), model)
    before = json.loads((model / "model.json").read_text())
    assert main(["calibrate", str(model), "--data", str(data), "--windows", "1,2"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "region_threshold" in out and "wrote" in out
    # 4 anomaly-free frames cannot resolve a 1% budget: said, with how many would
    assert "cannot resolve a budget of 1.00%" in captured.err and ">= 100 anomaly-free" in captured.err
    assert "test split" not in captured.err
    after = json.loads((model / "model.json").read_text())
    dec = after["decision"]
    assert dec["validation"]["frames"] == 4 and dec["validation"]["budget_set"] == "frames of anomaly-free drives"
    assert dec["track_window"] in (1, 2) and dec["validation"]["anomaly_free_alert_share"] <= 0.01
    assert {k: v for k, v in after.items() if k != "decision"} == {k: v for k, v in before.items() if k != "decision"}
    backend = runtime.load(model)  # sha256 of the model files still verified
    p = FusionPipeline(backend, FusionConfig())
    assert p.region_threshold == dec["region_threshold"] and p.decision_source["region_threshold"] == "model.json"
    # a budget the frames can resolve but that allows fewer false frames than one alert episode: said
    assert main(["calibrate", str(model), "--data", str(data), "--windows", "1", "--budget", "0.5", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "less than one false alert episode" in err and ">= 40 anomaly-free" in err and "cannot resolve" not in err


def test_calibrate_on_a_test_split_warns_that_it_is_no_longer_held_out(tmp_path, capsys):
    from ood_perception.cli import main
    from ood_perception.world.config import WorldConfig
    from ood_perception.world.synth import generate_dataset

    data = tmp_path / "test"
    generate_dataset(data, sequences=1, frames=2, seed=8191, config=WorldConfig(), split="test", progress=False)
    assert main(["calibrate", "default", "--data", str(data), "--windows", "1", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "is a test split" in err and "--split val" in err


def test_ground_in_boxes_equals_the_dense_box_test():
    """The x-slab search counts exactly the ground points the dense [K, G] test finds (edges inclusive)."""
    from ood_perception.pipeline.objects import _ground_in_boxes

    rng = np.random.default_rng(0)
    for trial in range(100):
        G, K = int(rng.integers(0, 2000)), int(rng.integers(0, 40))
        g = rng.uniform(-30, 30, (G, 2)).round(int(rng.integers(0, 3)))  # rounding puts points on box edges
        w = (rng.random(G) < 0.5).astype(np.float64)
        lo = rng.uniform(-30, 30, (K, 2)).round(1)
        hi = lo + rng.uniform(0, 8, (K, 2)).round(1)
        near = np.all((g[None] >= lo[:, None]) & (g[None] <= hi[:, None]), axis=2)
        count, total = _ground_in_boxes(g, w, lo, hi)
        assert (count == near.sum(axis=1)).all(), trial
        assert np.array_equal(total, near.astype(np.float64) @ w), trial


def test_calibrate_with_the_ood_term_scores_objects_at_the_calibrated_pixel_threshold(tmp_path, capsys):
    """object.w_ood > 0: the OOD share of an object counts its points at or above the pixel threshold,
    which calibrate itself chooses; a second run scores the objects at it, and the pipeline warns when
    it runs with other weights or another pixel threshold than the calibration's."""
    import json
    import shutil

    from ood_perception import runtime
    from ood_perception.cli import main
    from ood_perception.pipeline.objects import ObjectConfig
    from ood_perception.world.config import WorldConfig
    from ood_perception.world.synth import generate_dataset

    data = tmp_path / "val"
    generate_dataset(data, sequences=1, frames=3, seed=8192, config=WorldConfig(), split="val", progress=False)
    model = tmp_path / "model"
    shutil.copytree(runtime.default_model_dir(), model)
    params = tmp_path / "p.yaml"
    params.write_text("fusion_segmentation:\n  ros__parameters:\n    object.w_ood: 1.0\n")
    assert main(["calibrate", str(model), "--data", str(data), "--windows", "1", "--params", str(params)]) == 0
    assert "second run with the calibrated pixel threshold" in capsys.readouterr().err
    dec = json.loads((model / "model.json").read_text())["decision"]
    assert dec["ood_share_threshold"] == dec["pixel_threshold"] and dec["objects"]["w_ood"] == 1.0
    backend = runtime.load(model)
    assert FusionPipeline(backend, FusionConfig()).decision_warnings == []  # the defaults are the calibration's
    off = FusionPipeline(backend, FusionConfig(objects=ObjectConfig(track_window=0, w_ood=0.0)))
    assert len(off.decision_warnings) == 1 and "'w_ood': 0.0" in off.decision_warnings[0]
    other = FusionPipeline(backend, FusionConfig(threshold=dec["pixel_threshold"] + 0.5))
    assert any("pixel threshold" in w for w in other.decision_warnings)
    # the same weights in proportion (the score divides by their sum), pixel decisions: no warning
    double = ObjectConfig(track_window=0, w_unknown=2.0, w_ood=2.0, w_extra=2.0)
    assert FusionPipeline(backend, FusionConfig(objects=double)).decision_warnings == []
    assert FusionPipeline(backend, FusionConfig(decision="pixels", objects=ObjectConfig(w_ood=0.0))).decision_warnings == []
    # a calibration made with w_ood > 0 before ood_share_threshold was recorded: re-run calibrate
    old = dict(json.loads((model / "model.json").read_text()))
    old["decision"] = {k: v for k, v in old["decision"].items() if k != "ood_share_threshold"}
    (model / "model.json").write_text(json.dumps(old))
    assert any("re-run ood-perception calibrate" in w for w in FusionPipeline(runtime.load(model), FusionConfig()).decision_warnings)


def test_mask_source_regions_keeps_only_the_reported_objects_pixels():
    """mask_source=regions: the published mask holds the anomalous pixels inside the reported regions'
    boxes only (a flagged flat patch on the ground disappears from it); pixels: all flagged pixels."""
    full = pipeline()
    only = pipeline(mask_source="regions")
    fr = frames(5, box=True, red_patch=True)
    a = [full.process(f) for f in fr]
    b = [only.process(f) for f in fr]
    for ra, rb in zip(a, b, strict=True):
        assert ra.level == rb.level and len(ra.regions) == len(rb.regions)
        assert set(np.unique(rb.mask)) <= {0, 255} and np.all(rb.mask <= ra.mask)  # a subset of the pixels
        keep = np.zeros(ra.mask.shape, bool)
        for r in rb.regions:
            keep[r.y_min:r.y_min + r.height, r.x_min:r.x_min + r.width] = True
        np.testing.assert_array_equal(rb.mask, np.where(keep, ra.mask, 0))
    assert not b[0].regions and not b[0].mask.any() and a[0].mask[80:92, 30:60].all()  # patch flagged, not shown
    # the alerted box: its mask pixels are those the region counts (none here: the colour backend scores the
    # box's pixels as normal; the object is alerted for its unknown class)
    assert b[3].regions and int((b[3].mask > 0).sum()) == sum(r.num_pixels for r in b[3].regions)
    with pytest.raises(ValueError, match="mask_source"):
        FusionConfig(mask_source="boxes")


def test_object_settings_other_than_the_calibrations_are_warned_about():
    """The region threshold belongs to the candidate and score settings it was calibrated with (the
    default model's model.json records them): other ones are named in one warning; the sensor's
    mounting height (ground_fallback_z) and settings added since (at their earlier-rule value) are not."""
    from ood_perception import runtime

    backend = runtime.load(runtime.default_model_dir())
    assert FusionPipeline(backend, FusionConfig()).decision_warnings == []
    mounted = ObjectConfig(track_window=0, ground_fallback_z=-2.4, min_visible=0.0, drivable_gate=0.0)
    assert FusionPipeline(backend, FusionConfig(objects=mounted)).decision_warnings == []
    changed = ObjectConfig(track_window=0, drivable_gate=0.5, min_points=30, known_classes=("car", "truck"))
    [w] = FusionPipeline(backend, FusionConfig(objects=changed)).decision_warnings
    assert "object.drivable_gate 0.0 -> 0.5" in w and "object.min_points 10 -> 30" in w and "-> car,truck" in w
    assert "re-run ood-perception calibrate" in w
    # a calibration recorded before the low band and the point weighting reproduces them off: named as changed
    before = ObjectConfig(track_window=0, low_height=0.06)
    spec = backend.spec
    recorded = dict(spec.decision["objects"])
    try:
        spec.decision["objects"] = {k: v for k, v in recorded.items() if k not in ("low_height", "support_points")}
        [w] = FusionPipeline(backend, FusionConfig(objects=before)).decision_warnings
        assert "object.low_height 0.0 -> 0.06" in w and "object.support_points 0.0 -> 10.0" in w
    finally:
        spec.decision["objects"] = recorded
