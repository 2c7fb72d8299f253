"""Bad-input matrix against one running action recognition node over DDS, with the real clip
recogniser (``ood_perception.pipeline.recognition.ClipRecognizer`` around a tiny RecognitionNet).

Every bad frame goes to the same node; the node must never raise out of a callback, must count each
reason on /diagnostics and must keep serving: the Recognition results it publishes must equal what
a second ClipRecognizer with the same weights computes on exactly the frames the node accepted
(independent replay of the accepted stream), including the clip buffer reset after a clock jump and
the clips the model fails on (DEGRADED alerts, no result). Bad parameter values are refused by
name, and a node without a model fails activation with a clear reason.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")
torch = pytest.importorskip("torch")

from conftest import spin_until  # noqa: E402
from ood_perception.ros import messages as rosmsg  # noqa: E402
from ood_perception.ros.common import stamp_from_sec  # noqa: E402

CLASSES = ["walk", "run", "wave"]


class FailOnBlack:
    """Wraps the recogniser's model call: a clip whose first frame is black makes the model fail."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, video, flow):
        if np.all(video[0, :, 0] == -1.0):
            raise RuntimeError("engine exploded on a black frame")
        return self.inner(video, flow)


def recognizer(model):
    from ood_perception.pipeline.recognition import ClipRecognizer

    rec = ClipRecognizer(model, clip_length=4, stride=2, threshold=0.9, class_names=CLASSES, size=32)
    rec.backend = FailOnBlack(rec.backend)
    return rec


def frame(i: int, h: int = 24, w: int = 32) -> np.ndarray:
    """A moving bright square on a grey background (some optical flow)."""
    img = np.full((h, w, 3), 90, np.uint8)
    x = (3 * i) % (w - 8)
    img[6:14, x:x + 8] = (200, 60 + 10 * (i % 5), 40)
    return img


def test_recognition_bad_input_matrix(rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from ood_perception.models.recognition import RecognitionConfig, build_recognition_model
    from ood_perception.ros.recognition_node import ActionRecognitionNode
    from ood_perception_msgs.msg import OodAlert, Recognition

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_recognition_model(RecognitionConfig(num_classes=3, embed_dim=8, width=4)).eval()
    params = {"autostart": True, "raise_k": 1, "raise_n": 1, "clear_frames": 1, "cooldown_s": 0.0, "stale_timeout": 0.4,
              "diagnostics_period": 0.2, "log_throttle_s": 60.0, "clock_jump": 1.0, "frame_queue": 200}
    pushed = []  # outcome of each frame the node's worker pushed into its recogniser: result, none or error
    node_rec = recognizer(model)
    inner_push = node_rec.push

    def counting_push(rgb, stamp):
        try:
            r = inner_push(rgb, stamp)
        except Exception:
            pushed.append("error")
            raise
        pushed.append("none" if r is None else "result")
        return r

    node_rec.push = counting_push
    node = ActionRecognitionNode(context=rclpy_context, recognizer=node_rec,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    io = rclpy.create_node("rec_bad_io", context=rclpy_context)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pub = io.create_publisher(Image, "video/image", qos)
    results, alerts = [], []
    io.create_subscription(Recognition, "recognition/result", results.append, qos)
    io.create_subscription(OodAlert, "ood/alerts", alerts.append, qos)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    ex.add_node(io)
    accepted: list[tuple[np.ndarray, float] | str] = []  # what the node must feed its recogniser; "reset" markers
    sent = [0]
    expected_bad: dict[str, int] = {}

    def send(msg, stamp: float, rgb: np.ndarray | None = None, bad: str | None = None) -> None:
        msg.header.stamp = stamp_from_sec(stamp) if stamp > 0 else stamp_from_sec(0.0)
        msg.header.frame_id = "video"
        pub.publish(msg)
        sent[0] += 1
        if bad:
            expected_bad[bad] = expected_bad.get(bad, 0) + 1
        elif rgb is not None:
            accepted.append((rgb, stamp))
        # input QoS is KEEP_LAST 5: pace the stream by waiting until the node's callback took this one
        assert spin_until(ex, lambda: node.rate.total >= sent[0], 10.0, step=0.005), (node.rate.total, sent[0])

    def good(i: int, stamp: float, encoding: str = "rgb8", size: tuple[int, int] = (24, 32)) -> None:
        rgb = frame(i, *size)
        if encoding == "rgb8":
            m = rosmsg.image_msg(rgb, "rgb8")
        elif encoding == "bgr8":
            m = rosmsg.image_msg(np.ascontiguousarray(rgb[..., ::-1]), "bgr8")
        elif encoding == "bgra8_padded":  # 8 bytes of row padding, honoured through step
            bgra = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
            rows = np.zeros((rgb.shape[0], rgb.shape[1] * 4 + 8), np.uint8)
            rows[:, : rgb.shape[1] * 4] = bgra.reshape(rgb.shape[0], -1)
            m = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="bgra8", step=rows.shape[1], data=rows.tobytes())
        elif encoding == "mono8":
            grey = rgb[..., 1].copy()
            m = rosmsg.image_msg(grey, "mono8")
            rgb = np.repeat(grey[..., None], 3, 2)
        else:
            raise ValueError(encoding)
        send(m, stamp, rgb)

    def bad_image(mutate, stamp: float) -> None:
        m = rosmsg.image_msg(frame(0), "rgb8")
        mutate(m)
        send(m, stamp, bad="bad_image")

    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 15.0)
        t = 20.0
        for i in range(5):
            good(i, t := t + 1 / 30)
        # --- images that cannot be decoded (each counted as bad_image)
        bad_image(lambda m: setattr(m, "encoding", "yuv422"), t + 0.001)
        bad_image(lambda m: setattr(m, "encoding", ""), t + 0.002)
        bad_image(lambda m: setattr(m, "encoding", "32FC1"), t + 0.003)  # not a colour image (and wrong size)
        bad_image(lambda m: setattr(m, "step", 10), t + 0.004)  # step shorter than a row
        bad_image(lambda m: setattr(m, "data", bytes(m.data)[:-50]), t + 0.005)  # truncated
        bad_image(lambda m: setattr(m, "data", b""), t + 0.006)  # no data at all
        bad_image(lambda m: setattr(m, "width", 0), t + 0.007)
        bad_image(lambda m: (setattr(m, "height", 60000), setattr(m, "width", 60000), setattr(m, "step", 180000)),
                  t + 0.008)  # huge header, tiny payload
        # --- stamps
        m = rosmsg.image_msg(frame(1), "rgb8")
        send(m, 0.0, bad="zero_stamp")
        good(5, t := t + 1 / 30)
        send(rosmsg.image_msg(frame(6), "rgb8"), t, bad="duplicate_stamp")
        send(rosmsg.image_msg(frame(7), "rgb8"), t - 0.2, bad="old_stamp")
        # --- other encodings and a resolution change are served, not rejected
        for i, enc in enumerate(["bgr8", "bgra8_padded", "mono8", "rgb8"]):
            good(8 + i, t := t + 1 / 30, enc, size=(48, 64) if enc == "rgb8" else (24, 32))
        # --- the model fails on clips starting with a black frame: DEGRADED, no result, keeps going
        send(rosmsg.image_msg(np.zeros((24, 32, 3), np.uint8), "rgb8"), t := t + 1 / 30,
             np.zeros((24, 32, 3), np.uint8))
        for i in range(12, 18):
            good(i, t := t + 1 / 30)
        # --- clock jump back (bag loop): buffer and alerts reset, then served again. The jump also
        # discards frames still queued for the worker (they belong to the old timeline), so first
        # wait until the worker has pushed every frame accepted so far.
        before = sum(1 for item in accepted if item != "reset")
        assert spin_until(ex, lambda: len(pushed) >= before, 20.0), (len(pushed), before)
        t = 5.0
        accepted.append("reset")
        for i in range(18, 24):
            good(i, t := t + 1 / 30)

        # independent replay of the accepted stream through a second recogniser with the same weights
        ref = recognizer(model)
        expected, failures = [], 0
        for item in accepted:
            if item == "reset":
                ref.buffer.reset()
                continue
            try:
                r = ref.push(*item)
            except RuntimeError:
                failures += 1
                continue
            if r is not None:
                expected.append(r)
        assert failures >= 1 and len(expected) >= 6
        # wait until the worker has pushed every accepted frame and published what each push gave (the
        # node counts a clip after publishing it, a failure after counting it), and until it all arrived:
        # one result and one alert per clip, one DEGRADED alert per failure
        frames = sum(1 for item in accepted if item != "reset")

        def done() -> bool:
            made, failed_pushes = pushed.count("result"), pushed.count("error")
            return (len(pushed) >= frames and node._clips >= made and len(results) >= made
                    and node.bad.snapshot().get("recognition_error", 0) >= failed_pushes
                    and sum("model failure" in a.description for a in alerts) >= failed_pushes
                    and sum(a.description != "video stale" for a in alerts) >= made + failed_pushes)

        assert spin_until(ex, done, 20.0), (len(pushed), frames, len(results))
        assert len(pushed) == frames and pushed.count("error") == failures and len(results) == len(expected)
        for got, exp in zip(results, expected, strict=True):
            assert (got.class_id, got.class_name, got.num_frames) == (exp.class_id, exp.class_name, exp.num_frames)
            assert got.ood_score == pytest.approx(exp.ood_score, abs=1e-5)
            assert got.confidence == pytest.approx(exp.confidence, abs=1e-5)
            assert got.clip_duration == pytest.approx(exp.clip_duration, abs=1e-5)
            assert got.is_ood == exp.is_ood and got.header.frame_id == "video"
            assert list(got.modality_names) == list(exp.modality_names)
        failed = [a for a in alerts if a.level == OodAlert.DEGRADED and "model failure" in a.description]
        assert len(failed) == failures
        v = node.diagnostics_values()
        for reason, n in expected_bad.items():
            assert v.get(f"bad.{reason}") == n, (reason, v)
        assert v["bad.recognition_error"] == failures and v["clock_resets"] == 1
        assert v["clips"] == len(expected) and v["dropped_frames"] == 0
        # stream stops: DEGRADED, never CLEAR
        n0 = len(alerts)
        assert spin_until(ex, lambda: any(a.level == OodAlert.DEGRADED and "stale" in a.description for a in alerts[n0:]), 5.0)
        assert all(a.level != OodAlert.CLEAR for a in alerts[n0:])

        # --- bad parameter values are refused by name, the running configuration is kept
        for name, value in [("clip_stride", 0), ("frame_queue", 0), ("raise_k", 7), ("reliability", "sometimes"),
                            ("stale_timeout", -1.0), ("clock_jump", 0.0), ("cooldown_s", -2.0), ("qos_depth", 0)]:
            (res,) = node.set_parameters([Parameter(name, value=value)])
            assert not res.successful and (name in res.reason or "raise_k" in res.reason), (name, res.reason)
        assert node._state == "active"
    finally:
        ex.shutdown()
        node.destroy_node()
        io.destroy_node()


def test_recognition_node_without_usable_model_fails_activation_clearly(rclpy_context, tmp_path):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from ood_perception.ros.recognition_node import ActionRecognitionNode

    node = ActionRecognitionNode("rec_nomodel", context=rclpy_context,
                                 parameter_overrides=[Parameter("model_dir", value=str(tmp_path / "nonexistent"))])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
        assert "nonexistent" in node.diagnostics_values()["model_error"]
        assert node._state == "inactive"
    finally:
        node.destroy_node()
    bad = ActionRecognitionNode("rec_badparam", context=rclpy_context,
                                parameter_overrides=[Parameter("clip_length", value=-1)])
    try:
        assert bad.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        bad.destroy_node()
