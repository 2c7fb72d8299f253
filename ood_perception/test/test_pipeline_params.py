"""Parameter values as ROS users write them (issue 14 item 5): lossless coercion or one line
naming the parameter, unknown names and sections warned about with a did-you-mean; the same in
the node's mapping (FrameSettings), replay's params reader and the runner."""

from __future__ import annotations

import math

import pytest

from ood_perception.pipeline.frame_handler import FrameSettings, coerce_fusion_params
from ood_perception.pipeline.params import coerce_value, params_file_warnings, unknown_names


@pytest.mark.parametrize(("name", "value", "default", "expected"), [
    ("slop", 1, 0.05, 1.0),  # YAML writes 1 for 1.0
    ("threshold", math.inf, math.nan, math.inf),  # a double stays a double (range is validate's job)
    ("qos_depth", 5.0, 5, 5),  # an integral double for an int
    ("lidar_to_camera.xyz", [0, 0, 1], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
    ("lidar_to_camera.matrix", None, None, None),
    ("lidar_to_camera.matrix", (1, 0.5), None, [1.0, 0.5]),
    ("publish_points", False, True, False),
    ("backend", "torch", "onnxruntime", "torch"),
])
def test_lossless_coercions(name, value, default, expected):
    got = coerce_value(name, value, default)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("name", "value", "default", "message"), [
    ("stale_timeout", "fast", 0.5, "parameter stale_timeout must be a number (double), got 'fast' (str)"),
    ("qos_depth", 5.5, 5, "parameter qos_depth must be an integer, got 5.5 (float)"),
    ("qos_depth", True, 5, "parameter qos_depth must be an integer, got True (bool)"),
    ("slop", True, 0.05, "parameter slop must be a number (double), got True (bool)"),
    ("publish_points", 1, True, "parameter publish_points must be a boolean (true/false), got 1 (int)"),
    ("backend", 3, "onnxruntime", "parameter backend must be a string, got 3 (int)"),
    ("lidar_to_camera.xyz", "0 0 1", [0.0] * 3, "parameter lidar_to_camera.xyz must be a list of numbers, got '0 0 1' (str)"),
    ("lidar_to_camera.xyz", [0, "a", 1], [0.0] * 3, "parameter lidar_to_camera.xyz must be a list of numbers, got [0, 'a', 1]"),
])
def test_type_mismatches_are_refused_with_one_line_naming_the_parameter(name, value, default, message):
    with pytest.raises(ValueError) as exc:
        coerce_value(name, value, default)
    assert str(exc.value) == message and "\n" not in str(exc.value)


def test_the_node_mapping_coerces_and_refuses():
    s = FrameSettings.from_params({"slop": 1, "sync_queue_size": 3.0, "lidar_to_camera.xyz": [0, 0, 0]})
    assert s.sync["slop"] == 1.0 and type(s.sync["slop"]) is float and s.sync["queue_size"] == 3
    with pytest.raises(ValueError, match=r"^parameter stale_timeout must be a number \(double\), got 'fast' \(str\)$"):
        FrameSettings.from_params({"stale_timeout": "fast"})
    with pytest.raises(ValueError, match=r"^parameter qos_depth must be an integer, got 5.5 \(float\)$"):
        FrameSettings.from_params({"qos_depth": 5.5})
    assert coerce_fusion_params({"unknown": "x", "raise_k": 2.0}) == {"unknown": "x", "raise_k": 2}


def test_unknown_names_with_did_you_mean():
    known = ["stale_timeout", "slop", "qos_depth"]
    assert unknown_names(["stale_timout", "slop", "use_sim_time", "qos_overrides./x.reliability", "zzz"], known,
                         "fusion_segmentation") == [
        "fusion_segmentation: unknown parameter 'stale_timout' (ignored); did you mean 'stale_timeout'?",
        "fusion_segmentation: unknown parameter 'zzz' (ignored)",
    ]


def test_params_file_warnings_sections_and_names():
    data = {
        "/**": {"ros__parameters": {"use_sim_time": True, "slopp": 0.1}},
        "fusion_segmentaton": {"ros__parameters": {"slop": 0.1}},
        "/ns/fusion_segmentation": {"ros__parameters": {"slop": 0.1, "lidar_to_camera": {"xyz": [0, 0, 0], "rpyy": [0, 0, 0]}}},
        "action_recognition": {"ros__parameters": {"anything": 1}},
    }
    tables = {"fusion_segmentation": ["slop", "lidar_to_camera.xyz", "lidar_to_camera.rpy"], "action_recognition": ["clip_length"]}
    assert params_file_warnings(data, tables, "v.yaml") == [
        "v.yaml: /**: unknown parameter 'slopp' (ignored); did you mean 'slop'?",
        "v.yaml: section 'fusion_segmentaton' matches no node of this package (fusion_segmentation, action_recognition): "
        "ignored; did you mean 'fusion_segmentation'?",
        "v.yaml: /ns/fusion_segmentation: unknown parameter 'lidar_to_camera.rpyy' (ignored); did you mean 'lidar_to_camera.rpy'?",
        "v.yaml: action_recognition: unknown parameter 'anything' (ignored)",
    ]
    # sections only (the runner: the nodes report names themselves)
    assert len(params_file_warnings(data, dict.fromkeys(tables), "v.yaml", check_names=False)) == 1


def test_replay_params_warn_and_refuse_like_the_node(tmp_path):
    from ood_perception.replay.params import node_parameters, settings_from_params

    f = tmp_path / "p.yaml"
    f.write_text("fusion_segmentation:\n  ros__parameters:\n    slop: 1\n    stale_timout: 0.3\n"
                 "fusion_segmentaton:\n  ros__parameters:\n    slop: 0.2\n")
    warnings: list[str] = []
    params = node_parameters(f, warn=warnings.append)
    assert warnings == [
        f"{f}: fusion_segmentation: unknown parameter 'stale_timout' (ignored); did you mean 'stale_timeout'?",
        f"{f}: section 'fusion_segmentaton' matches no node of this package (fusion_segmentation, "
        "fusion_segmentation_node, action_recognition): ignored; did you mean 'fusion_segmentation'?",
    ]
    assert settings_from_params(params).sync["slop"] == 1.0
    with pytest.raises(ValueError, match=r"^parameter qos_depth must be an integer, got 5.5 \(float\)$"):
        settings_from_params({"qos_depth": 5.5})
    with pytest.raises(ValueError, match=r"^parameter stale_timeout must be a number \(double\), got 'fast' \(str\)$"):
        settings_from_params({"stale_timeout": "fast"})


def test_runner_warns_about_sections_that_match_no_node(tmp_path):
    from ood_perception.ros.runner import nodes_in_params

    f = tmp_path / "p.yaml"
    f.write_text("fusion_segmentation:\n  ros__parameters: {slop: 0.1}\naction_recogniton:\n  ros__parameters: {a: 1}\n")
    lines: list[str] = []
    assert nodes_in_params([f], warn=lines.append) == ["fusion_segmentation"]
    assert lines == [f"{f}: section 'action_recogniton' matches no node of this package (fusion_segmentation, "
                     "action_recognition): ignored; did you mean 'action_recognition'?"]
