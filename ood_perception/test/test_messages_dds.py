"""The message package is built into the venv and its types travel over real DDS."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ros


def test_ood_alert_roundtrip_over_dds(rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from conftest import spin_until
    from ood_perception_msgs.msg import OodAlert, OodRegion

    pub_node = rclpy.create_node("alert_pub", context=rclpy_context)
    sub_node = rclpy.create_node("alert_sub", context=rclpy_context)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got: list[OodAlert] = []
    sub_node.create_subscription(OodAlert, "ood/alerts", got.append, qos)
    pub = pub_node.create_publisher(OodAlert, "ood/alerts", qos)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(pub_node)
    ex.add_node(sub_node)

    msg = OodAlert()
    msg.header.frame_id = "camera"
    msg.header.stamp.sec = 42
    msg.header.stamp.nanosec = 7
    msg.source = "fusion_segmentation"
    msg.modalities = ["camera", "lidar"]
    msg.level = OodAlert.ALERT
    msg.score = 3.5
    msg.threshold = 2.0
    msg.anomalous_fraction = 0.01
    region = OodRegion(has_3d=True, has_2d=True, x_min=10, y_min=20, width=30, height=40)
    region.centroid.x = 12.5
    region.size.z = 1.5
    region.score = 3.0
    region.num_points = 17
    region.num_pixels = 900
    msg.regions = [region]
    msg.description = "test"

    def published_and_received() -> bool:
        pub.publish(msg)
        return bool(got)

    assert spin_until(ex, published_and_received, timeout=15.0), "no OodAlert received over DDS"
    out = got[0]
    assert out.level == OodAlert.ALERT and out.DEGRADED == 3 and out.CLEAR == 0
    assert (out.header.stamp.sec, out.header.stamp.nanosec, out.header.frame_id) == (42, 7, "camera")
    assert list(out.modalities) == ["camera", "lidar"]
    assert out.regions[0].num_points == 17 and out.regions[0].centroid.x == pytest.approx(12.5)
    assert out.regions[0].width == 30 and out.description == "test"
    ex.shutdown()
    pub_node.destroy_node()
    sub_node.destroy_node()


def test_recognition_message_fields():
    from ood_perception_msgs.msg import Recognition

    r = Recognition(class_id=3, class_name="waving", confidence=0.9, ood_score=1.2, is_ood=False)
    r.modality_names = ["video", "flow"]
    r.modality_scores = [0.5, 2.0]
    assert r.class_name == "waving" and list(r.modality_scores) == pytest.approx([0.5, 2.0])
