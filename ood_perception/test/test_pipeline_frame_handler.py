"""The node/replay shared frame logic: parameter mapping, headers, stale reasons, calibration notes,
start-up grace on the message clock (pipeline/frame_handler.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_pipeline import CALIB, H, RednessBackend, W

from ood_perception.geometry import Calibration
from ood_perception.pipeline import AlertConfig, ApproximateSync, FusionConfig
from ood_perception.pipeline.frame_handler import (
    CameraInput,
    FrameHeader,
    FrameSettings,
    FusionFrameProcessor,
    LidarInput,
    extrinsics_from_params,
    fusion_config_kwargs,
    sync_kwargs,
)


class Clock:
    def __init__(self, t: float = 50.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def cam(stamp_ns: int, frame: str = "cam_optical", red: bool = False) -> CameraInput:
    img = np.full((H, W, 3), 40, np.uint8)
    if red:
        img[20:60, 30:90] = (250, 10, 10)
    return CameraInput(FrameHeader(stamp_ns, frame), img)


def lid(stamp_ns: int, n: int = 200) -> LidarInput:
    rng = np.random.default_rng(stamp_ns % 1000)
    pts = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-1, 1, n), rng.uniform(4, 9, n), np.zeros(n)]).astype(np.float32)
    return LidarInput(FrameHeader(stamp_ns, "lidar"), pts)


def test_defaults_agree_with_the_objects_they_configure():
    s = FrameSettings.from_params({})
    assert s.fusion == FusionConfig()
    sync = ApproximateSync(**s.sync)
    ref = ApproximateSync()
    assert (sync.slop, sync.stale_timeout, sync.clock_jump, sync.queue_size) == (
        ref.slop, ref.stale_timeout, ref.clock_jump, ref.queue_size)
    # default extrinsics: camera at the LiDAR looking forward -> LiDAR x (forward) is camera z,
    # LiDAR y (left) is camera -x, LiDAR z (up) is camera -y
    T = s.T_cam_lidar
    np.testing.assert_allclose(T[:3, :3] @ [1, 0, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3] @ [0, 1, 0], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3] @ [0, 0, 1], [0, -1, 0], atol=1e-12)


def test_mapping_of_given_values_and_partial_dicts():
    s = FrameSettings.from_params({"threshold": 0.7, "raise_k": 2, "slop": 0.1, "sync_queue_size": 3,
                                   "negate_lidar_y": True, "publish_points": False, "unknown": 1})
    assert s.fusion.threshold == 0.7 and s.fusion.alert == AlertConfig(2, 5, 5, 1.0)
    assert s.sync == {"slop": 0.1, "stale_timeout": 0.5, "clock_jump": 1.0, "queue_size": 3}
    assert s.negate_lidar_y and not s.publish_points
    assert fusion_config_kwargs({"threshold": math.nan}) == {"threshold": None}
    assert sync_kwargs({"stale_timeout": 2}) == {"stale_timeout": 2.0}
    T = np.arange(16.0).reshape(4, 4)
    T[3] = [0, 0, 0, 1]
    np.testing.assert_array_equal(extrinsics_from_params({"lidar_to_camera.matrix": T.ravel().tolist()}), T)
    # xyz/rpy are the camera pose in the LiDAR frame: a camera 1 m up sees the LiDAR origin 1 m below (camera +y)
    T_up = extrinsics_from_params({"lidar_to_camera.xyz": [0, 0, 1.0]})
    np.testing.assert_allclose(T_up @ [0, 0, 0, 1], [0, 1, 0, 1], atol=1e-12)


@pytest.mark.parametrize(("values", "match"), [
    ({"slop": 0}, "slop"), ({"raise_k": 6, "raise_n": 5}, "raise_k"), ({"threshold": math.inf}, "threshold"),
    ({"reliability": "sometimes"}, "reliability"), ({"lidar_to_camera.xyz": [0, 0]}, "xyz"),
    ({"lidar_to_camera.matrix": [1.0] * 16}, "matrix"), ({"frame_score_percentile": 101}, "percentile"),
])
def test_bad_values_are_named(values, match):
    with pytest.raises(ValueError, match=match):
        FrameSettings.from_params(values)


def test_headers_notes_and_stale_reasons():
    clock = Clock()
    proc = FusionFrameProcessor.build(RednessBackend(), FrameSettings.from_params({"stale_timeout": 0.5, "raise_k": 1}),
                                      clock=clock)
    # LiDAR before any CameraInfo: counted, not projected
    proc.add_camera(cam(1_000_000_000))
    proc.add_lidar(lid(1_010_000_000))
    out = proc.process(proc.take())
    assert [n.reason for n in out.notes] == ["missing_camera_info"]
    assert out.result.modalities == ["camera"] and len(out.result.points) == 0
    assert "no CameraInfo" in out.result.decision.description
    assert out.header == FrameHeader(1_000_000_000, "cam_optical")  # the camera's header
    assert out.points_header == FrameHeader(1_010_000_000, "lidar")  # (empty) scored points, LiDAR header
    # CameraInfo of another size: rescaled, noted
    proc.set_camera_info(Calibration(CALIB.K * np.array([[2], [2], [1]]), 2 * W, 2 * H))
    clock.t += 0.1
    proc.add_camera(cam(1_100_000_000, red=True))
    proc.add_lidar(lid(1_100_000_000))
    out = proc.process(proc.take())
    # (lid() puts no point in view under the default extrinsics: noted, scored camera-only)
    assert [n.reason for n in out.notes] == ["camera_info_size_mismatch", "lidar_not_in_view"]
    assert (out.calib.width, out.calib.height) == (W, H) and out.points is not None
    np.testing.assert_allclose(out.calib.T_cam_lidar, proc.settings.T_cam_lidar)
    assert out.points_header == FrameHeader(1_100_000_000, "lidar") and out.result.mask is not None
    # camera goes silent: after stale_timeout of the clock a LiDAR goes out alone, in the camera frame
    clock.t += 0.8
    proc.add_lidar(lid(1_900_000_000))
    out = proc.process(proc.take())
    assert out.camera is None and out.header == FrameHeader(1_900_000_000, "cam_optical")
    assert "camera stale for 0.80 s" in out.result.decision.description
    np.testing.assert_allclose(out.T_cam_lidar, proc.settings.T_cam_lidar)


def test_points_header_follows_publish_points():
    proc = FusionFrameProcessor.build(RednessBackend(), FrameSettings.from_params({"publish_points": False}), clock=Clock())
    proc.set_camera_info(CALIB)
    proc.add_camera(cam(2_000_000_000))
    proc.add_lidar(lid(2_000_000_000))
    out = proc.process(proc.take())
    assert out.publish_mask and out.points_header is None


def test_startup_grace_counts_from_the_first_message():
    """A processor created long before its first message still pairs that message (the live node
    waited for discovery; replay starts at the bag's first message): no 'never received' frame."""
    clock = Clock(10.0)
    proc = FusionFrameProcessor.build(RednessBackend(), FrameSettings.from_params({"stale_timeout": 0.5}), clock=clock)
    clock.t = 100.0  # e.g. 90 s of DDS discovery / sim clock before data flows
    proc.add_camera(cam(5_000_000_000))
    assert proc.take() is None  # waiting for its partner, not sent alone
    clock.t += 0.02
    proc.add_lidar(lid(5_010_000_000))
    frame = proc.take()
    assert frame.camera is not None and frame.lidar is not None
    clock.t += 0.6  # now the LiDAR has been silent past the timeout
    proc.add_camera(cam(5_600_000_000))
    frame = proc.take()
    assert frame.lidar is None and "lidar stale for 0.60 s" in proc.process(frame).result.decision.description


def test_stamp_conversion_matches_the_node_conversion():
    from ood_perception.codec.conversions import stamp_to_sec

    for ns in (1_100_000_000, 1_700_000_123_456_789_0 // 10, 3):
        h = FrameHeader(ns, "x")
        stamp = type("T", (), {"sec": h.sec, "nanosec": h.nanosec})()
        assert h.stamp == stamp_to_sec(stamp)


# -- issue 14 item 3: a LiDAR that contributes nothing is not reported as fused -----------------

IDENTITY = np.eye(4).ravel().tolist()


def _unusable_lidar_run(points, calib=CALIB, backend=None, camera=True):
    """One camera (red square) + LiDAR frame through the processor; returns the outputs."""
    clock = Clock()
    settings = FrameSettings.from_params({"lidar_to_camera.matrix": IDENTITY, "raise_k": 1, "raise_n": 1,
                                          "min_region_pixels": 20})
    proc = FusionFrameProcessor.build(backend or RednessBackend(), settings, clock=clock)
    proc.set_camera_info(calib)
    if camera:
        proc.add_camera(cam(3_000_000_000, red=True))
    else:  # the camera never comes: a LiDAR goes out alone after the start-up grace
        proc.add_lidar(LidarInput(FrameHeader(2_400_000_000, "lidar"), np.asarray(points, np.float32)))
        clock.t += 0.6
    proc.add_lidar(LidarInput(FrameHeader(3_000_000_000, "lidar"), np.asarray(points, np.float32)))
    return proc.process(proc.take())


def _camera_only_mask():
    from ood_perception.pipeline import FusionFrame, FusionPipeline

    p = FusionPipeline(RednessBackend(), FusionConfig(min_region_pixels=20, alert=AlertConfig(1, 1)))
    return p.process(FusionFrame(stamp=3.0, image=cam(3_000_000_000, red=True).image, calib=CALIB)).mask


def test_good_cloud_is_fused():
    out = _unusable_lidar_run(lid(3_000_000_000).points)
    assert out.result.modalities == ["camera", "lidar"] and out.result.level == 2  # ALERT, not degraded
    assert not [n for n in out.notes if n.reason == "lidar_not_in_view"] and out.result.in_view.sum() == 200


@pytest.mark.parametrize(("name", "points", "calib", "reason", "note"), [
    ("empty cloud (or all NaN: decoding drops non-finite points)", np.zeros((0, 4)), CALIB,
     "lidar unusable: no finite point in the cloud", None),
    ("cloud behind the camera", lid(3_000_000_000).points * [1, 1, -1, 1], CALIB,
     "lidar unusable: 0 of 200 points in the camera's view", "lidar_not_in_view"),
    ("CameraInfo fx = fy = 1e30", lid(3_000_000_000).points,
     Calibration(np.array([[1e30, 0, W / 2], [0, 1e30, H / 2], [0, 0, 1]]), W, H),
     "lidar unusable: 0 of 200 points in the camera's view", "lidar_not_in_view"),
])
def test_unusable_cloud_makes_the_frame_camera_only_and_degraded(name, points, calib, reason, note):
    out = _unusable_lidar_run(points, calib)
    r = out.result
    assert r.modalities == ["camera"], name
    # DEGRADED (the red square is a confirmed anomaly: it stands, with its region kept)
    assert r.level == 3 and r.decision.alert_standing and r.regions
    assert reason in r.decision.description
    # the camera-only head's output, pixel for pixel (not the fused head on an empty LiDAR tensor)
    np.testing.assert_array_equal(r.mask, _camera_only_mask())
    assert len(r.points) == 0
    assert [n.reason for n in out.notes if n.reason == "lidar_not_in_view"] == ([note] if note else [])


def test_unusable_cloud_without_a_camera_head_or_without_a_camera_is_not_scored():
    behind = lid(3_000_000_000).points * [1, 1, -1, 1]
    r = _unusable_lidar_run(behind, backend=RednessBackend(unimodal=False)).result
    assert r.level == 3 and r.mask is None and r.modalities == []
    assert "lidar unusable: 0 of 200" in r.decision.description and "no camera-only head" in r.decision.description
    r = _unusable_lidar_run(behind, camera=False).result
    assert r.level == 3 and r.mask is None and r.modalities == []
    assert "camera never received" in r.decision.description and "no usable modality" in r.decision.description


def test_min_lidar_points_in_view_parameter():
    from ood_perception.pipeline import FusionFrame, FusionPipeline

    pts = lid(3_000_000_000).points
    img = cam(3_000_000_000).image
    for need, mods in ((200, ["camera", "lidar"]), (201, ["camera"])):
        p = FusionPipeline(RednessBackend(), FrameSettings.from_params({"min_lidar_points_in_view": need}).fusion)
        r = p.process(FusionFrame(stamp=3.0, image=img, points=pts, calib=CALIB))
        assert r.modalities == mods, need


# -- issue 14 item 2: streams that publish but never pair ----------------------------------------

@pytest.mark.parametrize(("offset", "side"), [(-0.7, "behind"), (-10.0, "behind")])
def test_unpairable_streams_give_degraded_camera_frames_with_the_offset(offset, side):
    """LiDAR stamps 0.7 s / 10 s behind the camera's: DEGRADED camera-only frames (never silence)
    within the stale timeout, the reason and the measured offset in the description."""
    clock = Clock(0.0)
    settings = FrameSettings.from_params({"lidar_to_camera.matrix": IDENTITY, "stale_timeout": 0.5})
    proc = FusionFrameProcessor.build(RednessBackend(), settings, clock=clock)
    proc.set_camera_info(CALIB)
    results, notes = [], []
    for k in range(20):  # 10 Hz, 2 s
        clock.t = k / 10
        t_ns = 20_000_000_000 + k * 100_000_000
        notes += proc.add_camera(cam(t_ns))
        notes += proc.add_lidar(lid(t_ns + int(offset * 1e9)))
        frame = proc.take()
        if frame is not None:
            results.append((clock.t, proc.process(frame)))
    assert results and results[0][0] == pytest.approx(0.6)  # first frame after the 0.5 s timeout
    assert len(results) == 14
    for _, out in results:
        r = out.result
        assert out.camera is not None and out.lidar is None and r.modalities == ["camera"]
        assert r.level == 3 and r.mask is not None  # DEGRADED, scored by the camera-only head
        assert f"lidar stamps {abs(offset):.3f} s {side} the camera's" in r.decision.description
        assert "no camera/lidar pair within slop 0.050 s" in r.decision.description
    assert "unpaired_streams" in {n.reason for n in notes}
    assert proc.sync.pairing_problem() is not None


# -- issue 14 item 7: per-head sessions built at activation, not on the first frame --------------

class RecordingBackend(RednessBackend):
    """Records which outputs each call asked for (as runtime.Backend.infer takes them)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.asked = []

    def infer(self, inputs, outputs=None):
        self.asked.append(tuple(outputs) if outputs is not None else None)
        out = super().infer(inputs)
        return {k: v for k, v in out.items() if outputs is None or k in outputs}


def test_warm_up_runs_every_head_once():
    from ood_perception.pipeline import FusionPipeline

    b = RecordingBackend()
    assert FusionPipeline(b).warm_up() == ["", "camera_", "lidar_"]
    assert b.asked == [("score_map", "class_map"), ("camera_score_map", "camera_class_map"),
                       ("lidar_score_map", "lidar_class_map")]
    b = RecordingBackend(unimodal=False)
    assert FusionPipeline(b).warm_up() == [""] and b.asked == [("score_map", "class_map")]


def test_warm_up_builds_the_onnx_pruned_sessions_before_the_first_frame():
    pytest.importorskip("onnxruntime")
    from ood_perception import runtime
    from ood_perception.pipeline import FusionFrame, FusionPipeline

    backend = runtime.load(None, backend="onnxruntime", device="cpu")  # the packaged default model
    try:
        p = FusionPipeline(backend)
        assert not backend._subsets
        p.warm_up()
        built = set(backend._subsets)
        # the object bank's term (default weight 1, the default model has a bank) needs the embedding
        # wherever there is a camera image
        assert built == {("class_map", "embedding", "score_map"), ("camera_class_map", "camera_score_map", "embedding"),
                         ("lidar_class_map", "lidar_score_map")}
        h, w = p.input_hw
        calib = Calibration(np.array([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1.0]]), w, h)
        pts = np.array([[0.0, 0.0, 5.0, 0.5]], np.float32)
        r = p.process(FusionFrame(stamp=1.0, image=np.zeros((h, w, 3), np.uint8), points=pts, calib=calib))
        assert r.modalities == ["camera", "lidar"] and set(backend._subsets) == built  # nothing new built
    finally:
        backend.close()


def test_output_factor_and_block_max():
    from ood_perception.pipeline.frame_handler import block_max, output_factor

    assert output_factor(3000, 4000, 8_388_608) == 2 and output_factor(2160, 3840, 8_388_608) == 1
    assert output_factor(3000, 4000, 0) == 1 and output_factor(5, 5, 4) == 3  # ceil(5/3)^2 = 4
    a = np.zeros((5, 7), np.uint8)
    a[4, 6] = 255  # in the partial corner block
    a[0, 1] = 255
    np.testing.assert_array_equal(block_max(a, 2), [[255, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 255]])
    s = np.full((3, 3), np.nan, np.float32)
    s[0, 0], s[1, 1], s[2, 2] = 0.2, 0.9, 0.4
    out = block_max(s, 2)
    assert out.dtype == np.float32 and out[0, 0] == np.float32(0.9) and np.isnan(out[0, 1]) and out[1, 1] == np.float32(0.4)


def test_large_images_publish_downscaled_outputs_with_every_anomaly_kept():
    """Issue 14 item 7: a 4000x3000 frame produced ~60 MB of outputs. Here a 128x96 image with
    max_output_pixels=3072 (64x48 fits): outputs 2x smaller, block maxima of the camera-resolution maps,
    the alert (regions in camera pixels) unchanged."""
    proc = FusionFrameProcessor.build(RednessBackend(), FrameSettings.from_params(
        {"max_output_pixels": 3072, "raise_k": 1, "min_region_pixels": 20}), clock=Clock())
    proc.set_camera_info(CALIB)
    proc.add_camera(cam(4_000_000_000, red=True))
    proc.add_lidar(lid(4_000_000_000))
    out = proc.process(proc.take())
    r = out.result
    assert out.output_factor == 2 and r.mask.shape == (H, W) and out.mask.shape == (H // 2, W // 2)
    np.testing.assert_array_equal(out.mask, r.mask.reshape(H // 2, 2, W // 2, 2).max(axis=(1, 3)))
    np.testing.assert_array_equal(out.score, r.score.reshape(H // 2, 2, W // 2, 2).max(axis=(1, 3)))
    assert r.regions and r.regions[0].num_pixels == int((r.mask > 0).sum())  # regions in camera pixels
    full = FusionFrameProcessor.build(RednessBackend(), FrameSettings.from_params({}), clock=Clock())
    full.set_camera_info(CALIB)
    full.add_camera(cam(4_000_000_000, red=True))
    full.add_lidar(lid(4_000_000_000))
    o = full.process(full.take())
    assert o.output_factor == 1 and o.mask is o.result.mask
    with pytest.raises(ValueError, match="max_output_pixels"):
        FrameSettings.from_params({"max_output_pixels": -1})
