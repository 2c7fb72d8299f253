"""The action recognition node over DDS with a small clip recogniser implementing the
``RecognitionPipeline.push`` contract (returns real ``RecognitionResult`` objects): results per
clip, alerts from is_ood, DEGRADED when stale."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")

from conftest import spin_until  # noqa: E402
from ood_perception.pipeline.recognition import RecognitionResult  # noqa: E402
from ood_perception.ros import messages as rosmsg  # noqa: E402
from ood_perception.ros.common import stamp_from_sec  # noqa: E402


class MeanRednessClips:
    """Clips of 4 frames; OOD score = mean redness of the clip's frames; threshold 0.3."""

    def __init__(self):
        self.buf = []

    def push(self, frame, stamp):
        if frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("bad frame")
        self.buf.append((frame.astype(np.float32) / 255.0, stamp))
        if len(self.buf) < 4:
            return None
        frames = np.stack([f for f, _ in self.buf])
        red = float((frames[..., 0] - 0.5 * (frames[..., 1] + frames[..., 2])).mean())
        dur = self.buf[-1][1] - self.buf[0][1]
        self.stamp0 = self.buf[0][1]
        self.buf = []
        return RecognitionResult(class_id=1, class_name="walking", confidence=0.9, ood_score=red, is_ood=red > 0.3,
                                 threshold=0.3, score_name="redness", modality_names=["video"], modality_scores=[red],
                                 stamp_start=self.stamp0, stamp_end=self.stamp0 + dur, num_frames=4)


def test_recognition_node_results_alerts_and_stale(rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from ood_perception.ros.recognition_node import ActionRecognitionNode
    from ood_perception_msgs.msg import OodAlert, Recognition

    params = {"autostart": True, "raise_k": 1, "raise_n": 1, "clear_frames": 1, "cooldown_s": 0.0,
              "stale_timeout": 0.3, "diagnostics_period": 0.1}
    node = ActionRecognitionNode(context=rclpy_context, recognizer=MeanRednessClips(),
                                 parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    io = rclpy.create_node("rec_io", context=rclpy_context)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pub = io.create_publisher(Image, "video/image", qos)
    results, alerts = [], []
    io.create_subscription(Recognition, "recognition/result", results.append, qos)
    io.create_subscription(OodAlert, "ood/alerts", alerts.append, qos)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    ex.add_node(io)
    try:
        assert spin_until(ex, lambda: pub.get_subscription_count() > 0, 15.0)
        grey = np.full((24, 32, 3), 120, np.uint8)
        red = grey.copy()
        red[..., 0], red[..., 1:] = 230, 20
        for i, frame in enumerate([grey] * 4 + [red] * 4 + ["bad"] + [grey] * 4):
            if isinstance(frame, str):
                m = rosmsg.image_msg(grey, "rgb8")
                m.encoding = "yuv422"
            else:
                m = rosmsg.image_msg(frame, "rgb8")
            m.header.stamp = stamp_from_sec(10.0 + i / 30)
            m.header.frame_id = "video"
            pub.publish(m)
            # input QoS is KEEP_LAST 5: pace the stream by waiting until the node's callback took this frame
            assert spin_until(ex, lambda n=i + 1: node.rate.total >= n, 10.0, step=0.005)
        clip_alerts = lambda: [a for a in alerts if a.header.frame_id == "video" and a.description != "video stale"]  # noqa: E731
        # each clip's result is published before its alert: wait for both
        assert spin_until(ex, lambda: len(results) >= 3 and len(clip_alerts()) >= 3, 10.0)
        assert [r.is_ood for r in results[:3]] == [False, True, False]
        assert results[1].ood_score == pytest.approx((230 - 20) / 255, abs=1e-3) and results[1].num_frames == 4
        assert results[0].header.frame_id == "video"
        clip_alerts = clip_alerts()
        assert [a.level for a in clip_alerts[:3]] == [OodAlert.CLEAR, OodAlert.ALERT, OodAlert.CLEAR]
        # stream stops: DEGRADED alerts, never CLEAR; bad input counted
        assert spin_until(ex, lambda: any(a.level == OodAlert.DEGRADED and "stale" in a.description for a in alerts), 5.0)
        v = node.diagnostics_values()
        assert v["bad.bad_image"] == 1 and v["clips"] == 3
    finally:
        ex.shutdown()
        node.destroy_node()
        io.destroy_node()
