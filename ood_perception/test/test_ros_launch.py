"""Launch files and RViz config: always checked for syntax/shape; built where launch_ros imports."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import yaml

PKG = Path(__file__).resolve().parents[1]
LAUNCH = sorted((PKG / "launch").glob("*.launch.py"))


def test_launch_files_exist_and_parse():
    assert {p.name for p in LAUNCH} >= {"vehicle.launch.py", "carla.launch.py"}
    for path in LAUNCH:
        tree = ast.parse(path.read_text(), str(path))
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    carla = (PKG / "launch" / "carla.launch.py").read_text()
    for needle in ('"use_sim_time": True', "/camera_info", '"lidar/points"', '"camera/image"'):
        assert needle in carla


def test_rviz_config_shows_mask_points_and_regions():
    cfg = yaml.safe_load((PKG / "config" / "ood_perception.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"] if "Topic" in d}
    assert {"ood/mask", "ood/points", "ood/markers"} <= topics


@pytest.mark.parametrize("path", LAUNCH, ids=[p.name for p in LAUNCH])
def test_launch_description_builds(path):
    pytest.importorskip("launch_ros", reason="launch/launch_ros are not installable from PyPI here (ROS distro only)")
    pytest.importorskip("ament_index_python")
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        ld = mod.generate_launch_description()
    except Exception as exc:  # package not installed into an ament index (pip-only environment)
        pytest.skip(f"package share directory not available: {exc}")
    assert ld.entities
