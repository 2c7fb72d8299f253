"""The shipped DDS transport set-up (which variables, when, whose wins) and the loss accounting,
without a DDS graph: plan_transport on given environments, the XML files, hand-computed loss counts."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ood_perception.ros.transport import (
    CYCLONEDDS_CONFIG,
    FASTDDS_PROFILE,
    TransportLossMonitor,
    apply_transport_profile,
    config_dir,
    plan_transport,
    transport_environment,
)

CONFIG = Path(__file__).resolve().parents[1] / "config"
FD = "{http://www.eprosima.com}"


def test_config_dir_is_the_package_config():
    assert config_dir() == CONFIG
    assert (CONFIG / FASTDDS_PROFILE).is_file() and (CONFIG / CYCLONEDDS_CONFIG).is_file()


def test_setup_py_installs_the_profiles():
    setup = (CONFIG.parent / "setup.py").read_text()
    assert '"share/" + package_name + "/config", _files("config/*")' in setup


def test_fastdds_profile_has_large_segment_and_is_the_default_participant():
    root = ET.parse(CONFIG / FASTDDS_PROFILE).getroot()
    descs = {d.find(FD + "transport_id").text: d for d in root.iter(FD + "transport_descriptor")}
    shm = [d for d in descs.values() if d.find(FD + "type").text == "SHM"]
    udp = [d for d in descs.values() if d.find(FD + "type").text == "UDPv4"]
    assert len(shm) == 1 and len(udp) == 1
    # room for ten 1080p rgb8 frames (6.2 MB) in flight; the default is 512 KiB
    assert int(shm[0].find(FD + "segment_size").text) >= 10 * 1920 * 1080 * 3
    assert int(udp[0].find(FD + "receiveBufferSize").text) >= 4 * 1024 * 1024
    part = next(root.iter(FD + "participant"))
    assert part.get("is_default_profile") == "true"
    rtps = part.find(FD + "rtps")
    assert rtps.find(FD + "useBuiltinTransports").text == "false"
    assert {t.text for t in rtps.find(FD + "userTransports")} == set(descs)


def test_cyclone_config_asks_for_large_socket_buffers_without_refusing_to_start():
    root = ET.parse(CONFIG / CYCLONEDDS_CONFIG).getroot()
    ns = "{https://cdds.io/config}"
    rcv = root.find(f"{ns}Domain/{ns}Internal/{ns}SocketReceiveBufferSize")
    assert rcv is not None and rcv.get("max") == "16MB" and rcv.get("min") == "default"


def test_fastdds_profile_set_when_nothing_chosen():
    env = {"ROS_DISTRO": "kilted"}
    setup = plan_transport(env, CONFIG)
    assert setup.rmw == "rmw_fastrtps_cpp"
    assert setup.variables == {"FASTDDS_DEFAULT_PROFILES_FILE": str(CONFIG / FASTDDS_PROFILE)}
    assert "Fast DDS profile" in setup.message
    assert env == {"ROS_DISTRO": "kilted"}  # planning changes nothing


def test_humble_also_gets_the_old_variable_name():
    setup = plan_transport({"ROS_DISTRO": "humble", "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}, CONFIG)
    assert set(setup.variables) == {"FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"}


@pytest.mark.parametrize("var", ["FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
                                 "FASTDDS_BUILTIN_TRANSPORTS"])
def test_user_choice_wins(var):
    setup = plan_transport({var: "/mine.xml", "ROS_DISTRO": "kilted"}, CONFIG)
    assert setup.variables == {} and f"your {var}=/mine.xml applies" in setup.message


def test_cyclone_gets_its_uri_unless_set():
    setup = plan_transport({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}, CONFIG)
    assert setup.variables == {"CYCLONEDDS_URI": (CONFIG / CYCLONEDDS_CONFIG).as_uri()}
    mine = plan_transport({"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp", "CYCLONEDDS_URI": "file:///x.xml"}, CONFIG)
    assert mine.variables == {} and "your CYCLONEDDS_URI" in mine.message


def test_opt_out_and_other_rmws():
    off = plan_transport({"OOD_PERCEPTION_TRANSPORT": "off"}, CONFIG)
    assert off.variables == {} and "DDS defaults" in off.message
    zenoh = plan_transport({"RMW_IMPLEMENTATION": "rmw_zenoh_cpp"}, CONFIG)
    assert zenoh.variables == {} and "no shipped configuration for rmw_zenoh_cpp" in zenoh.message


def test_apply_sets_the_variables_once_and_logs(tmp_path):
    env = {"ROS_DISTRO": "kilted"}
    lines: list[str] = []
    apply_transport_profile(env, log=lines.append)
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith(FASTDDS_PROFILE)
    apply_transport_profile(env, log=lines.append)  # second call: the variable is now "yours"
    assert "Fast DDS profile" in lines[0] and "your FASTDDS_DEFAULT_PROFILES_FILE" in lines[1]
    assert transport_environment(env) == {}


# ----------------------------------------------------------------------------- loss accounting


def info(seq: int, gid: bytes = b"A") -> dict:
    return {"publication_sequence_number": seq, "publisher_gid": {"data": gid}}


def test_sequence_gaps_count_lost_frames():
    m = TransportLossMonitor(window_s=10.0)
    for k, seq in enumerate([1, 2, 3, 7, 8, 10]):  # 4, 5, 6 and 9 missing
        m.observe("camera", 100.0 + 0.1 * (seq - 1), info(seq), now=float(k))
    r = m.recent("camera", now=5.0)
    assert (r["received"], r["lost"], r["by"]) == (6, 4, "sequence")
    assert r["loss"] == pytest.approx(4 / 10)
    v = m.values(("camera",), now=5.0)
    assert v["camera_lost_total"] == 4 and v["camera_stamp_gaps_total"] == 0  # under min_deltas=5 steps
    assert "camera 40% of frames dropped before the callback" in m.summary(("camera",), now=5.0)


def test_sequence_per_publisher_and_restarts():
    m = TransportLossMonitor()
    m.observe("lidar", 1.0, info(5, b"A"), now=0.0)
    m.observe("lidar", 1.1, info(1, b"B"), now=0.1)  # a second publisher: its own baseline
    m.observe("lidar", 1.2, info(6, b"A"), now=0.2)
    m.observe("lidar", 1.3, info(2, b"B"), now=0.3)
    m.observe("lidar", 1.4, info(1, b"A"), now=0.4)  # A restarted: new baseline, nothing lost
    assert m.recent("lidar", now=0.5)["lost"] == 0


def test_stamp_gaps_when_no_sequence_numbers():
    m = TransportLossMonitor(min_deltas=5)
    stamps = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8, 0.9, 1.5]  # missing: 0.6, 0.7 and 1.0-1.4 (5)
    for k, t in enumerate(stamps):
        m.observe("camera", t, None, now=float(k) * 0.1)
    assert m.period("camera") == pytest.approx(0.1)
    r = m.recent("camera", now=1.0)
    assert (r["received"], r["lost"], r["by"]) == (9, 7, "stamps")
    assert "missing from header stamps" in m.summary(("camera",), now=1.0)
    assert m.values(("camera",), now=1.0)["camera_publisher_hz"] == pytest.approx(10.0)


def test_stamps_going_back_restart_the_baseline():
    m = TransportLossMonitor(min_deltas=3)
    for k, t in enumerate([10.0, 10.1, 10.2, 10.3, 1.0, 1.1, 1.2, 1.3, 1.4]):  # bag loop at k=4
        m.observe("camera", t, None, now=0.1 * k)
    assert m.recent("camera", now=1.0)["lost"] == 0


def test_dds_sample_lost_events_and_window():
    m = TransportLossMonitor(window_s=2.0)
    m.lost_in_transport("camera", 28, now=1.0)  # nothing arrived at all
    r = m.recent("camera", now=1.5)
    assert (r["received"], r["transport"], r["lost"], r["loss"]) == (0, 28, 28, 1.0)
    assert "camera 100% of frames lost in transport in the last 2 s (28 lost, 0 received)" in m.summary(
        ("camera",), now=1.5)
    assert m.recent("camera", now=3.5)["lost"] == 0  # out of the window
    assert m.values(("camera",), now=3.5)["camera_lost_in_transport_total"] == 28  # the total stays
    assert m.summary(("camera",), now=3.5) == ""


def test_small_losses_below_min_share_are_not_reported():
    m = TransportLossMonitor()
    for seq in list(range(1, 50)) + [51]:  # 1 lost of 51
        m.observe("camera", seq * 0.1, info(seq), now=seq * 0.01)
    assert m.recent("camera", now=1.0)["lost"] == 1
    assert m.summary(("camera",), min_loss=0.05, now=1.0) == ""
    assert "camera" in m.summary(("camera",), min_loss=0.01, now=1.0)


def test_bad_monitor_arguments():
    with pytest.raises(ValueError, match="window_s"):
        TransportLossMonitor(window_s=0)
    with pytest.raises(ValueError, match="gap_factor"):
        TransportLossMonitor(gap_factor=1.0)
    assert math.isnan(TransportLossMonitor().values(("x",))["x_publisher_hz"])


def test_callback_adapters_match_this_rclpy():
    pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")
    import inspect

    from ood_perception.ros.transport import message_lost_callbacks, with_message_info

    got: list = []
    cb = with_message_info(lambda msg, info: got.append((msg, info)))
    try:
        from rclpy.subscription import MessageInfo  # noqa: F401
    except ImportError:  # Humble: message only, info None
        cb("m")
        assert got == [("m", None)]
    else:  # rclpy passes (msg, info) to a two-parameter callback
        assert len(inspect.signature(cb).parameters) == 2
        cb("m", {"publication_sequence_number": 3})
        assert got == [("m", {"publication_sequence_number": 3})]
    counts: list[int] = []
    events = message_lost_callbacks(counts.append)
    assert events is not None and events.message_lost is not None
    events.message_lost(type("Ev", (), {"total_count": 9, "total_count_change": 4})())
    assert counts == [4]
