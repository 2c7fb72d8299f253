"""Vehicle launch: the fusion segmentation node (and optionally action recognition) with the
params files in config/.

    ros2 launch ood_perception vehicle.launch.py [config:=...] [model:=DIR] [backend:=onnxruntime]
        [device:=cpu] [recognition:=false] [rviz:=false]

The nodes start straight to active (``autostart``), as ``ood-perception run`` does; the
launch-free equivalent is ``ood-perception run --params config/vehicle.yaml``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from ood_perception.ros.transport import apply_transport_profile


def _text(name):
    # A launch argument as a string parameter: launch_ros parses bare substitutions in a parameter
    # dict as YAML, so model:='' would become None (refused) and device:=0 an integer.
    return ParameterValue(LaunchConfiguration(name), value_type=str)


def generate_launch_description():
    share = get_package_share_directory("ood_perception")
    config = LaunchConfiguration("config")
    overrides = {
        "model_dir": _text("model"),
        "backend": _text("backend"),
        "device": _text("device"),
        "autostart": True,
    }
    # The shipped DDS transport profile (config/fastdds_large_data.xml, or cyclonedds.xml under
    # RMW_IMPLEMENTATION=rmw_cyclonedds_cpp) for every process this launch starts; variables you
    # exported yourself win. Drivers started from this launch (or an including one) inherit it.
    transport = [SetEnvironmentVariable(k, v) for k, v in apply_transport_profile({**os.environ}).variables.items()]
    return LaunchDescription([
        *transport,
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "vehicle.yaml"),
                              description="params file of fusion_segmentation"),
        DeclareLaunchArgument("recognition_config", default_value=os.path.join(share, "config", "recognition.yaml"),
                              description="params file of action_recognition"),
        DeclareLaunchArgument("model", default_value="", description="model directory ('' = packaged default)"),
        DeclareLaunchArgument("backend", default_value="onnxruntime", description="onnxruntime | torch | tensorrt"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        DeclareLaunchArgument("recognition", default_value="false", description="also start action_recognition"),
        DeclareLaunchArgument("recognition_model", default_value="", description="recognition model directory"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with config/ood_perception.rviz"),
        Node(package="ood_perception", executable="fusion_segmentation_node", name="fusion_segmentation",
             parameters=[config, overrides], output="screen"),
        Node(package="ood_perception", executable="action_recognition_node", name="action_recognition",
             parameters=[LaunchConfiguration("recognition_config"),
                         {"model_dir": _text("recognition_model"),
                          "backend": _text("backend"), "device": _text("device"),
                          "autostart": True}],
             condition=IfCondition(LaunchConfiguration("recognition")), output="screen"),
        Node(package="rviz2", executable="rviz2", name="rviz2",
             arguments=["-d", os.path.join(share, "config", "ood_perception.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
