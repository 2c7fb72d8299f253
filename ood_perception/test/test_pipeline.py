"""The fusion frame pipeline and its regions, with a small deterministic backend.

The test backend computes real scores from its inputs: camera score = redness of the pixel
(r - (g + b) / 2 after undoing the normalisation), LiDAR score = 2 * intensity where a point
landed; fused = max of the two. Expected masks, point scores and clusters are computed here
independently from the inputs.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ood_perception.geometry import Calibration, project_points
from ood_perception.pipeline import (
    ALERT,
    CLEAR,
    DEGRADED,
    AlertConfig,
    FusionConfig,
    FusionFrame,
    FusionPipeline,
)
from ood_perception.pipeline.regions import cluster_points, mask_regions, merge_regions

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
H_IN, W_IN = 24, 32


class RednessBackend:
    """Deterministic backend implementing the runtime's ``Backend`` protocol."""

    def __init__(self, unimodal: bool = True, fail: bool = False) -> None:
        outs = ["class_map", "score_map"]
        if unimodal:
            outs += ["camera_class_map", "camera_score_map", "lidar_class_map", "lidar_score_map"]
        self.spec = SimpleNamespace(image_hw=(H_IN, W_IN), mean=MEAN, std=STD, threshold=0.5, output_names=outs)
        self.fail = fail
        self.calls = 0

    def infer(self, inputs):
        self.calls += 1
        if self.fail:
            raise RuntimeError("engine exploded")
        img = inputs["image"] * np.asarray(STD, np.float32).reshape(1, 3, 1, 1) + np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
        cam = img[:, 0] - 0.5 * (img[:, 1] + img[:, 2])
        lid = 2.0 * inputs["lidar"][:, 4] * inputs["lidar"][:, 5]
        fused = np.maximum(cam, lid)
        out = {"score_map": fused, "class_map": (fused > 0).astype(np.int64)}
        out.update({"camera_score_map": cam, "camera_class_map": (cam > 0).astype(np.int64)})
        out.update({"lidar_score_map": lid, "lidar_class_map": (lid > 0).astype(np.int64)})
        return {k: v.astype(np.float32) if "score" in k else v for k, v in out.items() if k in self.spec.output_names}


H, W = 96, 128
CALIB = Calibration(np.array([[100.0, 0, W / 2], [0, 100.0, H / 2], [0, 0, 1]]), W, H)  # LiDAR frame = camera frame


def scene(red: bool, hot_points: bool, seed: int = 0):
    """Grey image (optionally a red square at rows 32:64, cols 48:80) and a wall of points at
    z = 10 m with intensity 0.1 (optionally a hot blob of intensity 1 at x = -2 m)."""
    img = np.full((H, W, 3), 120, np.uint8)
    if red:
        img[32:64, 48:80] = (230, 20, 20)
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.linspace(-5, 5, 60), np.linspace(-3, 3, 40))
    wall = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, 10.0), np.full(xs.size, 0.1)], 1)
    pts = [wall]
    if hot_points:
        blob = np.column_stack([rng.normal(-2.0, 0.1, (60, 2)) * [1, 0.5] + [0, 1.5], rng.normal(5.0, 0.1, 60), np.ones(60)])
        blob[:, 1] = rng.normal(1.5, 0.1, 60)
        blob[:, 0] = rng.normal(-2.0, 0.1, 60)
        pts.append(blob)
    return img, np.concatenate(pts).astype(np.float32)


def make_pipeline(backend=None, **alert_kw):
    alert = AlertConfig(**({"raise_k": 1, "raise_n": 1, "clear_frames": 1, "cooldown_s": 0.0} | alert_kw))
    return FusionPipeline(backend or RednessBackend(), FusionConfig(min_region_pixels=20, alert=alert))


def test_red_square_gives_mask_region_and_alert():
    p = make_pipeline()
    img, pts = scene(red=True, hot_points=False)
    r = p.process(FusionFrame(stamp=1.0, image=img, points=pts, calib=CALIB))
    assert r.level == ALERT and r.modalities == ["camera", "lidar"]
    assert r.mask.shape == (H, W) and r.mask.dtype == np.uint8 and set(np.unique(r.mask)) <= {0, 255}
    truth = np.zeros((H, W), bool)
    truth[32:64, 48:80] = True
    inter = (truth & (r.mask > 0)).sum()
    iou = inter / (truth | (r.mask > 0)).sum()
    assert iou > 0.8
    assert r.regions and r.regions[0].has_2d
    reg = r.regions[0]
    assert abs(reg.x_min - 48) <= 4 and abs(reg.y_min - 32) <= 4 and abs(reg.width - 32) <= 8
    assert r.anomalous_fraction == pytest.approx((r.mask > 0).mean())
    assert r.score.dtype == np.float32 and r.score.shape == (H, W)


def test_point_scores_are_the_model_scores_at_their_pixels_and_cluster_found():
    p = make_pipeline()
    img, pts = scene(red=False, hot_points=True)
    r = p.process(FusionFrame(stamp=1.0, image=img, points=pts, calib=CALIB))
    # independent: which points are in view at model resolution, and their pixel
    proj = project_points(pts, CALIB.scaled(W_IN, H_IN))
    assert len(r.points) == int(proj.in_view.sum())
    np.testing.assert_array_equal(r.points, pts[proj.in_view])
    np.testing.assert_array_equal(r.in_view, proj.in_view)  # what replay's metrics reuse
    # each visible point scores the model's fused score at its pixel: 2 * intensity for the blob
    # (it is in front) and the grey camera score for the wall; wall points behind the blob: NaN
    hot = r.points[:, 3] == 1.0
    occluded = np.isnan(r.point_scores)
    assert not occluded[hot].any() and occluded[~hot].sum() > 0
    np.testing.assert_allclose(r.point_scores[hot], 2.0)
    grey = (120 / 255) - 0.5 * (120 / 255 + 120 / 255)
    np.testing.assert_allclose(r.point_scores[~hot & ~occluded], max(grey, 0.2), atol=1e-6)
    assert np.all(r.point_labels[occluded] == -1)
    three_d = [g for g in r.regions if g.has_3d]
    assert len(three_d) == 1
    hot_pts = r.points[(r.point_scores >= 0.5)]
    np.testing.assert_allclose(three_d[0].centroid, hot_pts[:, :3].mean(0), atol=1e-5)
    assert three_d[0].num_points == len(hot_pts)
    assert r.level == ALERT


def test_raise_then_clear_over_frames():
    p = make_pipeline(raise_k=2, raise_n=3, clear_frames=2, cooldown_s=0.0)
    levels = []
    for i, red in enumerate([False, True, True, True, False, False, False]):
        img, pts = scene(red=red, hot_points=False)
        levels.append(p.process(FusionFrame(stamp=1.0 + 0.1 * i, image=img, points=pts, calib=CALIB)).level)
    assert levels == [CLEAR, 1, ALERT, ALERT, ALERT, CLEAR, CLEAR]


def test_camera_only_frame_is_degraded_but_scored():
    p = make_pipeline()
    img, _ = scene(red=True, hot_points=False)
    r = p.process(FusionFrame(stamp=1.0, image=img, points=None, calib=CALIB, degraded="lidar stale for 0.7 s"))
    assert r.modalities == ["camera"] and r.mask is not None and r.mask.any()
    # the confirmed anomaly stands and its regions are kept, but the level says the judgement is degraded
    assert r.level == DEGRADED and r.decision.alert_standing and r.regions
    assert r.decision.description.startswith("ALERT standing") and "lidar stale" in r.decision.description
    img, _ = scene(red=False, hot_points=False)
    p2 = make_pipeline()
    r2 = p2.process(FusionFrame(stamp=1.0, image=img, calib=CALIB, degraded="lidar stale for 0.7 s"))
    assert r2.level == DEGRADED  # nothing seen with one modality: never CLEAR


def test_lidar_only_frame_scores_only_where_the_scan_lands():
    p = make_pipeline()
    _, pts = scene(red=False, hot_points=True)
    r = p.process(FusionFrame(stamp=1.0, points=pts, calib=CALIB, degraded="camera stale"))
    assert r.modalities == ["lidar"] and r.level in (ALERT, DEGRADED)
    assert r.score.shape == (H, W) and np.isnan(r.score).any() and np.isfinite(r.score).any()
    assert not r.mask[np.isnan(r.score)].any()


def test_missing_unimodal_head_model_failure_and_no_calib():
    img, pts = scene(red=True, hot_points=False)
    r = make_pipeline(RednessBackend(unimodal=False)).process(FusionFrame(stamp=1.0, image=img, degraded="lidar stale"))
    assert r.level == DEGRADED and r.mask is None and "no camera-only head" in r.decision.description
    assert r.modalities == []  # nothing was scored
    r = make_pipeline(RednessBackend(fail=True)).process(FusionFrame(stamp=1.0, image=img, points=pts, calib=CALIB))
    assert r.level == DEGRADED and "engine exploded" in r.error and r.mask is None
    r = make_pipeline().process(FusionFrame(stamp=1.0, image=img, points=pts, calib=None))
    assert r.modalities == ["camera"] and r.level == DEGRADED and "CameraInfo" in r.decision.description
    assert r.decision.alert_standing and r.regions


def test_no_threshold_is_an_error():
    b = RednessBackend()
    b.spec.threshold = None
    with pytest.raises(ValueError, match="threshold"):
        FusionPipeline(b)
    assert FusionPipeline(b, FusionConfig(threshold=1.0)).threshold == 1.0


def test_mask_regions_against_manual_components():
    mask = np.zeros((20, 30), bool)
    mask[2:6, 3:9] = True  # 24 px
    mask[10:12, 20:22] = True  # 4 px (filtered)
    mask[15:19, 10:20] = True  # 40 px
    score = np.arange(600, dtype=np.float32).reshape(20, 30)
    regions, comp = mask_regions(mask, score, min_pixels=5)
    assert [r.num_pixels for r in regions] == [40, 24]
    assert (regions[0].x_min, regions[0].y_min, regions[0].width, regions[0].height) == (10, 15, 10, 4)
    assert regions[1].score == pytest.approx(score[2:6, 3:9].mean()) and regions[1].max_score == score[5, 8]
    assert comp[16, 12] == 1 and comp[3, 4] == 2 and comp[10, 20] == 0


def test_cluster_points_two_blobs_and_merge():
    rng = np.random.default_rng(1)
    a = rng.normal([5, 0, 0], 0.05, (40, 3))
    b = rng.normal([0, 5, 1], 0.05, (25, 3))
    xyz = np.concatenate([a, b])
    scores = np.concatenate([np.full(40, 1.0), np.full(25, 3.0)])
    regions, labels = cluster_points(xyz, scores, eps=0.5, min_points=5)
    assert [r.num_points for r in regions] == [40, 25]
    np.testing.assert_allclose(regions[0].centroid, a.mean(0), atol=1e-9)
    np.testing.assert_allclose(regions[1].size, b.max(0) - b.min(0), atol=1e-9)
    assert regions[1].score == pytest.approx(3.0) and set(labels) == {0, 1}
    two_d, _ = mask_regions(np.pad(np.ones((3, 3), bool), 2), np.ones((7, 7), np.float32))
    comp = np.concatenate([np.ones(40, np.int32), np.zeros(25, np.int32)])
    merged = merge_regions(two_d, regions, comp, labels)
    assert len(merged) == 2 and merged[0].has_2d and merged[0].has_3d and merged[0].num_points == 40
    assert not merged[1].has_2d and merged[1].has_3d


def test_pipeline_asks_a_pruning_backend_for_the_maps_it_uses():
    """A backend whose infer takes ``outputs`` is asked for the fused maps on a fused frame and the
    camera maps on a camera-only frame; the result equals that of a backend without the option."""

    class Picky(RednessBackend):
        def __init__(self):
            super().__init__()
            self.asked = []

        def infer(self, inputs, outputs=None):
            self.asked.append(outputs)
            out = super().infer(inputs)
            return out if outputs is None else {k: out[k] for k in outputs}

    img, pts = scene(red=True, hot_points=True)
    picky = Picky()
    frame = FusionFrame(stamp=1.0, image=img, points=pts, calib=CALIB)
    a = FusionPipeline(picky, FusionConfig(min_region_pixels=10)).process(frame)
    b = FusionPipeline(RednessBackend(), FusionConfig(min_region_pixels=10)).process(frame)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.point_scores, b.point_scores)
    FusionPipeline(picky, FusionConfig()).process(FusionFrame(stamp=2.0, image=img, calib=CALIB))
    assert picky.asked == [["score_map", "class_map"], ["camera_score_map", "camera_class_map"]]
