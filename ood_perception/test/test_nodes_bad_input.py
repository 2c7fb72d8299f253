"""Bad-input matrix against one running fusion node over DDS.

Every case is sent to the same node; after each, the node must still be alive (no exception out
of a callback: the executor would re-raise it here), and at the end /diagnostics must count each
reason and a good frame must still be served. Camera-only, LiDAR-only and missing-CameraInfo
streams must give DEGRADED alerts naming the missing piece, never CLEAR.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ros
pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")

from test_nodes import Harness, conv_stamp, diag_values, make_node  # noqa: E402
from test_pipeline import scene  # noqa: E402

from conftest import spin_until  # noqa: E402
from ood_perception.ros import conversions as conv  # noqa: E402


class Counted:
    """A publisher that counts what it sent, so the test can wait until the node has taken it."""

    def __init__(self, pub):
        self.pub, self.sent = pub, 0

    def publish(self, msg):
        self.pub.publish(msg)
        self.sent += 1

    def get_subscription_count(self):
        return self.pub.get_subscription_count()


def _received(node) -> int:
    """Messages the node's input callbacks have been called with (each ticks its rate meter first)."""
    return sum(node.rates[k].total for k in ("camera", "camera_info", "lidar"))


def _sent(h) -> int:
    return h.pub_img.sent + h.pub_info.sent + h.pub_pts.sent


def _settle(h, node, timeout=10.0):
    """Spin until every message published so far has reached the node's callbacks (a callback that
    raised would raise here, out of the executor)."""
    assert spin_until(h.ex, lambda: _received(node) >= _sent(h), timeout, step=0.01), (_received(node), _sent(h))


def _stale(h, node, stream, timeout=10.0):
    """Spin until ``stream`` has been silent beyond the node's stale_timeout (on the node's clock)."""
    limit = float(node.params["stale_timeout"])
    assert spin_until(h.ex, lambda: (node.sync.age(stream) or 0.0) > limit, timeout, step=0.02), stream


def test_bad_input_matrix(rclpy_context):
    from ood_perception_msgs.msg import OodAlert

    node = make_node(rclpy_context, stale_timeout=0.3, max_points=100_000, raise_k=1, raise_n=1, clear_frames=1)
    h = Harness(rclpy_context, node)
    h.pub_img, h.pub_info, h.pub_pts = Counted(h.pub_img), Counted(h.pub_info), Counted(h.pub_pts)
    img, pts = scene(red=False, hot_points=False)
    t = [200.0]

    def nxt():
        t[0] += 0.1
        return t[0]

    cases = {}

    def case(name):
        def deco(fn):
            cases[name] = fn
            return fn
        return deco

    try:
        # --- missing CameraInfo (nothing sent yet): camera+lidar -> camera-only, DEGRADED, reason named
        s = nxt()
        h.pub_img.publish(h.image(img, s))
        h.pub_pts.publish(h.cloud(pts, s))
        a = h.wait_alert(s)
        assert list(a.modalities) == ["camera"] and a.level == OodAlert.DEGRADED and "CameraInfo" in a.description

        # --- images
        @case("encoding yuv422")
        def _():
            m = h.image(img, nxt())
            m.encoding = "yuv422"
            h.pub_img.publish(m)

        @case("encoding 16SC1")
        def _():
            m = h.image(img, nxt())
            m.encoding = "16SC1"
            h.pub_img.publish(m)

        @case("32FC1 as camera")
        def _():
            m = conv.numpy_to_image(np.zeros((96, 128), np.float32), "32FC1")
            m.header.stamp = conv_stamp(nxt())
            h.pub_img.publish(m)

        @case("step mismatch")
        def _():
            m = h.image(img, nxt())
            m.step = 100
            h.pub_img.publish(m)

        @case("truncated image")
        def _():
            m = h.image(img, nxt())
            m.data = m.data[: len(m.data) // 2]
            h.pub_img.publish(m)

        @case("zero-size image")
        def _():
            m = h.image(img, nxt())
            m.width = 0
            h.pub_img.publish(m)

        # --- clouds
        def cloud_case(mutate):
            m = h.cloud(pts, nxt())
            mutate(m)
            h.pub_pts.publish(m)

        case("missing z")(lambda: cloud_case(lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "z"])))
        case("truncated cloud")(lambda: cloud_case(lambda m: setattr(m, "data", m.data[:-7])))
        case("field past point_step")(lambda: cloud_case(lambda m: setattr(m, "point_step", 10)))
        case("unknown datatype")(lambda: cloud_case(lambda m: setattr(m.fields[3], "datatype", 99)))
        case("huge cloud")(lambda: cloud_case(lambda m: setattr(m, "width", 50_000_000)))

        @case("empty cloud")
        def _():
            m = h.cloud(np.zeros((0, 4), np.float32), nxt())
            h.pub_pts.publish(m)

        @case("NaN/Inf cloud")
        def _():
            bad = pts.copy()
            bad[::2, 0] = np.nan
            bad[1::2, 2] = np.inf
            h.pub_pts.publish(h.cloud(bad, nxt()))

        # --- stamps
        @case("zero stamp")
        def _():
            h.pub_img.publish(h.image(img, 0.0))

        @case("duplicate stamp")
        def _():
            s = nxt()
            h.pub_img.publish(h.image(img, s))
            h.pub_img.publish(h.image(img, s))

        # --- CameraInfo
        @case("CameraInfo zero K")
        def _():
            m = h.info()
            m.k = [0.0] * 9
            h.pub_info.publish(m)

        @case("CameraInfo zero size")
        def _():
            m = h.info()
            m.width = 0
            h.pub_info.publish(m)

        for _name, fn in cases.items():
            fn()
            _settle(h, node)  # raises here if a callback raised

        # --- good frames are still served (paired, with CameraInfo now)
        def good_frame():
            s = nxt()
            h.send_frame(s, red=False)
            return s

        ok = False
        for _ in range(20):
            s = good_frame()
            a = h.wait_alert(s, 5.0)
            if list(a.modalities) == ["camera", "lidar"]:
                ok = a.level == OodAlert.CLEAR
                break
        assert ok, "good frames not served after the bad-input matrix"

        # --- backward stamp (older than the last processed frame, not a clock jump)
        h.pub_img.publish(h.image(img, t[0] - 0.5))
        # --- clock jump (bag loop): far back in time, then frames continue from there
        t[0] = 50.0
        s = good_frame()
        h.wait_alert(s, 5.0)  # served after the jump (reset counted below)

        # --- camera-only stream: LiDAR silent beyond stale_timeout -> DEGRADED with ["camera"]
        _settle(h, node)
        _stale(h, node, "lidar")
        s = nxt()
        red, _ = scene(red=False, hot_points=False)
        h.pub_info.publish(h.info())
        h.pub_img.publish(h.image(red, s))
        a = h.wait_alert(s)
        assert list(a.modalities) == ["camera"] and a.level == OodAlert.DEGRADED and "lidar stale" in a.description
        # --- LiDAR-only stream
        _stale(h, node, "camera")
        s = nxt()
        h.pub_pts.publish(h.cloud(pts, s))
        a = h.wait_alert(s)
        assert list(a.modalities) == ["lidar"] and a.level == OodAlert.DEGRADED and "camera stale" in a.description

        # --- bad parameter values are refused with a reason, the node keeps running
        from rclpy.parameter import Parameter

        for name, value in [("slop", -1.0), ("raise_k", 99), ("reliability", "sometimes"), ("qos_depth", 0),
                            ("lidar_to_camera.matrix", [1.0, 2.0]), ("frame_score_percentile", 250.0)]:
            res = node.set_parameters([Parameter(name, value=value)])[0]
            assert not res.successful and name in res.reason

        # --- /diagnostics counts every reason: wait for a report made after everything above
        _settle(h, node)
        mark = node.get_clock().now().nanoseconds

        def fresh():
            if not h.got["diag"]:
                return False
            st = h.got["diag"][-1].header.stamp
            return st.sec * 1_000_000_000 + st.nanosec >= mark

        assert spin_until(h.ex, fresh, 10.0), "no /diagnostics after the last input"
        d = diag_values(h)
        for key in ("bad.bad_image", "bad.bad_cloud", "bad.zero_stamp", "bad.duplicate_stamp", "bad.bad_camera_info",
                    "bad.nonfinite_points", "bad.empty_cloud", "bad.missing_camera_info", "bad.old_stamp"):
            assert int(d.get(key, 0)) >= 1, (key, d)
        assert int(d["bad.bad_image"]) >= 6 and int(d["bad.bad_cloud"]) >= 5 and int(d["bad.bad_camera_info"]) >= 2
        assert int(d["clock_resets"]) >= 1 and int(d["single_modality"]) >= 2
        assert not any("callback_error" in k or "processing_error" in k for k in d), d
        assert len(cases) + 6 + 5 >= 20  # cases + stamps/streams/CameraInfo + parameter cases
    finally:
        h.close()


def test_bad_parameters_fail_configure_not_the_process(rclpy_context):
    from rclpy.lifecycle import TransitionCallbackReturn

    node = make_node(rclpy_context, name="bad_params", autostart=False, slop=0.0)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node._state == "unconfigured"
    finally:
        node.destroy_node()
    node = make_node(rclpy_context, name="bad_model", autostart=False, model_dir="/nonexistent/model")
    node._injected_backend = None
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
        assert "nonexistent" in node.diagnostics_values()["model_error"]
    finally:
        node.destroy_node()
