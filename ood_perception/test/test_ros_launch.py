"""Launch files and RViz config: every launch file is run and what it launches is checked.

``launch`` and ``launch_ros`` ship with a ROS distro only (no registry we can install from has
them), so a plain ``import`` of a launch file fails in this repo's venv and a typo in it would go
unnoticed until someone runs ``ros2 launch``. Each launch file is therefore executed against small
recording stand-ins for the parts of ``launch``/``launch_ros``/``ament_index_python`` it uses
(``LaunchDescription``, ``DeclareLaunchArgument``, ``LaunchConfiguration``, ``IfCondition``,
``Node``, ``ParameterValue``, ...), injected into ``sys.modules`` for the duration of the call.
The stand-ins keep the real constructors' keyword names (a misspelt keyword fails as it would
under ROS) and the real evaluation rules that matter here: a ``LaunchConfiguration`` must name a
declared argument, and a substitution inside a parameter dict is parsed as YAML (``launch_ros``'s
``evaluate_parameter_dict``), so ``''`` becomes None and is refused unless wrapped in
``ParameterValue(..., value_type=str)``. A launch file needing an action without a stand-in fails
with ImportError: add the stand-in here.

Checked for every ``Node`` of this package: its executable is a ``console_scripts`` entry point of
setup.py; each params file exists in config/, is ROS params-file YAML with a section for the
node's name, and every parameter there and in the launch file's overrides is one the node
declares (``FUSION_PARAMETERS`` / the recognition node's ``PARAMETERS``) with the declared type
(ROS 2 fixes a parameter's type by its default, so ``1`` for a double is refused); every remap
renames a topic the node really uses and that DESIGN.md's topic table lists, to a valid topic name.
Where ``launch_ros`` is importable, the launch description is also built with the real modules.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

PKG = Path(__file__).resolve().parents[1]
LAUNCH = sorted((PKG / "launch").glob("*.launch.py"))

#: DESIGN.md, "Contracts": the topics of the two nodes (relative names are remappable).
DESIGN_TOPICS = {
    "camera/image", "camera/camera_info", "lidar/points", "video/image", "ood/mask", "ood/score", "ood/points",
    "ood/alerts", "ood/markers", "recognition/result", "/diagnostics",
}
#: A ROS 2 topic name (absolute or relative; tokens of letters, digits and underscores).
TOPIC_NAME = re.compile(r"^/?[A-Za-z_~][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
#: Keywords ``launch_ros.actions.Node`` passes on to ``launch.actions.ExecuteProcess``.
EXECUTE_PROCESS_KWARGS = {
    "output", "condition", "emulate_tty", "respawn", "respawn_delay", "additional_env", "cwd", "env",
    "sigterm_timeout", "sigkill_timeout", "prefix", "on_exit", "log_cmd", "shell", "output_format", "cached_output",
}


# ---------------------------------------------------------------------------------- stand-ins


class _Sub:
    """A substitution: ``resolve(args)`` gives its text for the declared arguments' values."""

    def resolve(self, args: dict[str, str]) -> str:
        raise NotImplementedError


class _Recorder:
    """What one ``generate_launch_description()`` call created."""

    def __init__(self) -> None:
        self.configurations: list[str] = []
        self.share_requests: list[str] = []


def _resolve(value: Any, args: dict[str, str]) -> str:
    """Text of a string, a substitution or a list of both (``launch.utilities.perform_substitutions``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, _Sub):
        return value.resolve(args)
    if isinstance(value, (list, tuple)):
        return "".join(_resolve(v, args) for v in value)
    raise TypeError(f"not a substitution: {value!r}")


def _stand_in_modules(rec: _Recorder) -> dict[str, types.ModuleType]:
    class LaunchConfiguration(_Sub):
        def __init__(self, variable_name: Any, *, default: Any = None) -> None:
            self.name = variable_name
            self.default = default
            rec.configurations.append(variable_name)

        def resolve(self, args: dict[str, str]) -> str:
            if self.name in args:
                return args[self.name]
            if self.default is not None:
                return _resolve(self.default, args)
            raise AssertionError(f"LaunchConfiguration {self.name!r} names no declared launch argument")

    class TextSubstitution(_Sub):
        def __init__(self, *, text: str) -> None:
            self.text = text

        def resolve(self, args: dict[str, str]) -> str:
            return self.text

    class LaunchDescription:
        def __init__(self, initial_entities: list[Any] | None = None, *, deprecated_reason: str | None = None) -> None:
            self.entities = list(initial_entities or [])

    class DeclareLaunchArgument:
        def __init__(self, name: str, *, default_value: Any = None, description: str | None = None,
                     choices: list[str] | None = None) -> None:
            self.name, self.default_value, self.description, self.choices = name, default_value, description, choices

    class SetEnvironmentVariable:
        def __init__(self, name: Any, value: Any, *, condition: Any = None) -> None:
            self.name, self.value, self.condition = name, value, condition

    class IfCondition:
        def __init__(self, predicate_expression: Any) -> None:
            self.expression = predicate_expression

    class UnlessCondition(IfCondition):
        pass

    class Node:
        def __init__(self, *, executable: Any, package: Any = None, name: Any = None, namespace: Any = None,
                     exec_name: Any = None, parameters: list[Any] | None = None, remappings: list[Any] | None = None,
                     ros_arguments: list[Any] | None = None, arguments: list[Any] | None = None, **kwargs: Any) -> None:
            unknown = set(kwargs) - EXECUTE_PROCESS_KWARGS
            if unknown:
                raise TypeError(f"Node() got unexpected keyword arguments {sorted(unknown)}")
            self.executable, self.package, self.name, self.namespace = executable, package, name, namespace
            self.parameters = list(parameters or [])
            self.remappings = list(remappings or [])
            self.arguments = list(arguments or [])
            self.condition = kwargs.get("condition")

    class ParameterValue:
        def __init__(self, value: Any, *, value_type: Any = None) -> None:
            self.value, self.value_type = value, value_type

    class PackageNotFoundError(KeyError):
        pass

    def get_package_share_directory(package_name: str, print_warning: bool = True) -> str:
        rec.share_requests.append(package_name)
        if package_name != "ood_perception":
            raise PackageNotFoundError(package_name)
        return str(PKG)  # the installed share/ood_perception holds launch/ and config/ as in the source tree

    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument,
                                 SetEnvironmentVariable=SetEnvironmentVariable),
        "launch.conditions": module("launch.conditions", IfCondition=IfCondition, UnlessCondition=UnlessCondition),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration,
                                       TextSubstitution=TextSubstitution),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=Node),
        "launch_ros.parameter_descriptions": module("launch_ros.parameter_descriptions", ParameterValue=ParameterValue),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages",
                                              get_package_share_directory=get_package_share_directory,
                                              PackageNotFoundError=PackageNotFoundError),
    }


def _run_with_stand_ins(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Recorder]:
    rec = _Recorder()
    for name, mod in _stand_in_modules(rec).items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_") + "_stand_in", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate_launch_description(), rec


# ---------------------------------------------------------------------------------- what the package declares


def _console_scripts() -> dict[str, str]:
    """``console_scripts`` of setup.py: executable -> ``module:function``."""
    tree = ast.parse((PKG / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [e.value for e in value.elts]
                    return dict(tuple(s.strip() for s in e.split("=", 1)) for e in entries)
    raise AssertionError("setup.py has no console_scripts")


def _node_parameters(node_name: str) -> dict[str, Any]:
    """Name -> default of every parameter the node declares."""
    if node_name == "fusion_segmentation":
        from ood_perception.pipeline.frame_handler import FUSION_PARAMETERS, MATRIX_PARAM

        table = {name: default for name, default, _ in FUSION_PARAMETERS}
        table[MATRIX_PARAM] = [1.0] * 16  # declared apart from the table (unset = not given)
    elif node_name == "action_recognition":
        pytest.importorskip("rclpy", reason="the recognition node's parameter table lives in its rclpy module")
        from ood_perception.ros.recognition_node import PARAMETERS

        table = {name: default for name, default, _ in PARAMETERS}
    else:
        raise AssertionError(f"no parameter table known for node {node_name!r}")
    table["use_sim_time"] = False  # every rclpy node declares it
    return table


def _node_topics(entry_point: str) -> set[str]:
    """Topics the node's module subscribes or publishes to (its create_* calls)."""
    module = entry_point.split(":")[0]
    source = (PKG / (module.replace(".", "/") + ".py")).read_text()
    return set(re.findall(r"(?:create_(?:lifecycle_)?(?:subscription|publisher)|_sensor_subscription)\(\s*\w+,\s*\"([^\"]+)\"", source))


def _type_ok(value: Any, default: Any) -> bool:
    """Whether ROS 2 accepts ``value`` for a parameter declared with ``default`` (no int <-> double)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, list):
        return isinstance(value, list) and bool(value) and all(_type_ok(v, default[0]) for v in value)
    return type(value) is type(default)


def _launch_value(value: Any, args: dict[str, str], stand_ins: dict[str, Any]) -> Any:
    """A parameter-dict value as launch_ros evaluates it (substitutions are parsed as YAML)."""
    if isinstance(value, stand_ins["ParameterValue"]):
        text = _resolve(value.value, args)
        return text if value.value_type is str else yaml.safe_load(text)
    if isinstance(value, _Sub) or (isinstance(value, (list, tuple)) and any(isinstance(v, _Sub) for v in value)):
        parsed = yaml.safe_load(_resolve(value, args))
        assert type(parsed) in (bool, int, float, str), (
            f"a substitution evaluating to {_resolve(value, args)!r} is YAML {parsed!r} in launch_ros: "
            "wrap it in ParameterValue(..., value_type=str)")
        return parsed
    return value


# ---------------------------------------------------------------------------------- tests


def test_launch_files_exist_and_parse():
    assert {p.name for p in LAUNCH} >= {"vehicle.launch.py", "carla.launch.py"}
    for path in LAUNCH:
        tree = ast.parse(path.read_text(), str(path))
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
        # every launch sets the shipped DDS transport profile for the processes it starts
        text = path.read_text()
        assert "SetEnvironmentVariable" in text and "apply_transport_profile" in text
    carla = (PKG / "launch" / "carla.launch.py").read_text()
    for needle in ('"use_sim_time": True', "/camera_info", '"lidar/points"', '"camera/image"'):
        assert needle in carla


def test_rviz_config_shows_mask_points_and_regions():
    cfg = yaml.safe_load((PKG / "config" / "ood_perception.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"] if "Topic" in d}
    assert {"ood/mask", "ood/points", "ood/markers"} <= topics <= DESIGN_TOPICS


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_launch_file_nodes_params_and_remaps(path, monkeypatch):
    ld, rec = _run_with_stand_ins(path, monkeypatch)
    stand_ins = {"ParameterValue": sys.modules["launch_ros.parameter_descriptions"].ParameterValue}
    declared = [e for e in ld.entities if type(e).__name__ == "DeclareLaunchArgument"]
    names = [d.name for d in declared]
    assert len(names) == len(set(names)), f"launch argument declared twice: {names}"
    args = {d.name: _resolve(d.default_value, {}) for d in declared if d.default_value is not None}
    assert set(rec.configurations) <= set(names), f"undeclared launch arguments: {set(rec.configurations) - set(names)}"
    scripts = _console_scripts()
    nodes = [e for e in ld.entities if type(e).__name__ == "Node"]
    ours = [n for n in nodes if n.package == "ood_perception"]
    assert ours, "the launch file starts none of this package's nodes"
    for node in nodes:
        if node.condition is not None:  # IfCondition(LaunchConfiguration(...)): a declared true/false
            assert _resolve(node.condition.expression, args).lower() in ("true", "false", "1", "0")
        if node.package == "rviz2":
            (config,) = [Path(_resolve(a, args)) for a in node.arguments if str(_resolve(a, args)).endswith(".rviz")]
            assert config.is_file() and config.parent == PKG / "config", config
    for node in ours:
        exe = _resolve(node.executable, args)
        assert exe in scripts, f"{path.name}: executable {exe!r} is not a console_scripts entry point {sorted(scripts)}"
        node_name = _resolve(node.name, args)
        known = _node_parameters(node_name)
        files = [p for p in node.parameters if not isinstance(p, dict)]
        overrides = [p for p in node.parameters if isinstance(p, dict)]
        assert files, f"{path.name}: {node_name} gets no params file"
        for entry in files:
            file = Path(_resolve(entry, args))
            assert file.is_file() and file.parent == PKG / "config", f"{path.name}: params file {file} not in config/"
            doc = yaml.safe_load(file.read_text())
            assert isinstance(doc, dict) and node_name in doc, f"{file.name} has no section for {node_name}"
            params = doc[node_name]["ros__parameters"]
            unknown = set(params) - set(known)
            assert not unknown, f"{file.name}: {node_name} declares no parameters {sorted(unknown)}"
            for key, value in params.items():
                assert _type_ok(value, known[key]), f"{file.name}: {key}: {value!r} is not of the type of {known[key]!r}"
        for over in overrides:
            for key, value in over.items():
                assert key in known, f"{path.name}: {node_name} declares no parameter {key!r}"
                evaluated = _launch_value(value, args, stand_ins)
                assert _type_ok(evaluated, known[key]), f"{path.name}: {key} = {evaluated!r} is not of the type of {known[key]!r}"
        used = _node_topics(scripts[exe])
        for src, dst in node.remappings:
            src, dst = _resolve(src, args), _resolve(dst, args)
            assert src in used and src in DESIGN_TOPICS, f"{path.name}: remap of {src!r}, not a topic of {node_name}"
            assert TOPIC_NAME.match(dst), f"{path.name}: remap target {dst!r} is not a valid topic name"


def test_carla_launch_remaps_to_the_bridge_topics(monkeypatch):
    ld, _ = _run_with_stand_ins(PKG / "launch" / "carla.launch.py", monkeypatch)
    args = {e.name: e.default_value for e in ld.entities if type(e).__name__ == "DeclareLaunchArgument"}
    (node,) = [e for e in ld.entities if type(e).__name__ == "Node" and e.package == "ood_perception"]
    remaps = {_resolve(s, args): _resolve(d, args) for s, d in node.remappings}
    assert remaps == {"camera/image": "/carla/ego_vehicle/rgb_front/image",
                      "camera/camera_info": "/carla/ego_vehicle/rgb_front/camera_info",
                      "lidar/points": "/carla/ego_vehicle/lidar"}
    overrides = {k: v for p in node.parameters if isinstance(p, dict) for k, v in p.items()}
    assert overrides["use_sim_time"] is True


def test_stand_ins_catch_the_mistakes_they_exist_for(tmp_path, monkeypatch):
    """A misspelt Node keyword, an undeclared LaunchConfiguration and a bare '' substitution fail."""
    from ood_perception.pipeline.frame_handler import FUSION_PARAMETERS

    rec = _Recorder()
    mods = _stand_in_modules(rec)
    Node, LC = mods["launch_ros.actions"].Node, mods["launch.substitutions"].LaunchConfiguration
    with pytest.raises(TypeError, match="remapings"):
        Node(package="ood_perception", executable="x", remapings=[])
    with pytest.raises(AssertionError, match="no declared"):
        _resolve(["/carla/", LC("role")], {})
    stand_ins = {"ParameterValue": mods["launch_ros.parameter_descriptions"].ParameterValue}
    with pytest.raises(AssertionError, match="ParameterValue"):
        _launch_value(LC("model"), {"model": ""}, stand_ins)
    assert _launch_value(stand_ins["ParameterValue"](LC("model"), value_type=str), {"model": ""}, stand_ins) == ""
    assert _launch_value(LC("n"), {"n": "3"}, stand_ins) == 3  # YAML typing, as launch_ros does
    defaults = {n: d for n, d, _ in FUSION_PARAMETERS}
    assert not _type_ok(1, defaults["slop"]) and _type_ok(math.nan, defaults["threshold"])
    assert not _type_ok([0, 0, 0], defaults["lidar_to_camera.xyz"]) and _type_ok(True, defaults["publish_points"])


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_launch_description_builds_with_launch_ros(path):
    pytest.importorskip("launch_ros", reason="launch/launch_ros come with a ROS distro only (no registry here has them)")
    pytest.importorskip("ament_index_python")
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        ld = mod.generate_launch_description()
    except Exception as exc:  # package not installed into an ament index (pip-only environment)
        pytest.skip(f"package share directory not available: {exc}")
    assert ld.entities


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_launch_sets_the_transport_profile_for_its_processes(path, monkeypatch):
    """Run generate_launch_description against minimal stand-ins for launch/launch_ros (absent here):
    the first actions set the shipped Fast DDS profile unless the user's environment has one."""
    import sys
    import types

    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    class SetEnvironmentVariable(Action):
        pass

    fakes = {
        "launch": types.SimpleNamespace(LaunchDescription=lambda entities: list(entities)),
        "launch.actions": types.SimpleNamespace(DeclareLaunchArgument=Action, SetEnvironmentVariable=SetEnvironmentVariable),
        "launch.conditions": types.SimpleNamespace(IfCondition=Action),
        "launch.substitutions": types.SimpleNamespace(LaunchConfiguration=Action),
        "launch_ros": types.SimpleNamespace(),
        "launch_ros.actions": types.SimpleNamespace(Node=Action),
        "launch_ros.parameter_descriptions": types.SimpleNamespace(ParameterValue=Action),
        "ament_index_python": types.SimpleNamespace(),
        "ament_index_python.packages": types.SimpleNamespace(get_package_share_directory=lambda name: str(PKG)),
    }
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, name, mod)
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS",
                "OOD_PERCEPTION_TRANSPORT", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ROS_DISTRO", "kilted")
    spec = importlib.util.spec_from_file_location("launch_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    entities = mod.generate_launch_description()
    env = [e.args for e in entities if isinstance(e, SetEnvironmentVariable)]
    assert env == [("FASTDDS_DEFAULT_PROFILES_FILE", str(PKG / "config" / "fastdds_large_data.xml"))]
    assert isinstance(entities[0], SetEnvironmentVariable)  # before any process starts
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/mine.xml")  # the user's own profile wins
    assert not [e for e in mod.generate_launch_description() if isinstance(e, SetEnvironmentVariable)]
