"""CARLA launch: the fusion segmentation node next to the carla-ros-bridge (sim time).

    ros2 launch ood_perception carla.launch.py [config:=...] [model:=DIR] [backend:=onnxruntime]
        [device:=cpu] [role_name:=ego_vehicle] [camera:=rgb_front] [lidar:=lidar] [rviz:=false]

Remaps our relative inputs to the bridge's topics (``/carla/<role>/<camera>/image`` bgra8,
``.../camera_info``, ``/carla/<role>/<lidar>``, whose y the bridge has already negated into ROS
coordinates) and sets ``use_sim_time``. Launch-free equivalent: see config/carla.yaml.
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
    role, camera, lidar = (LaunchConfiguration(n) for n in ("role_name", "camera", "lidar"))

    # The shipped DDS transport profile (config/fastdds_large_data.xml, or cyclonedds.xml under
    # RMW_IMPLEMENTATION=rmw_cyclonedds_cpp) for every process this launch starts; variables you
    # exported yourself win. Drivers started from this launch (or an including one) inherit it.
    transport = [SetEnvironmentVariable(k, v) for k, v in apply_transport_profile({**os.environ}).variables.items()]
    return LaunchDescription([
        *transport,
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "carla.yaml")),
        DeclareLaunchArgument("model", default_value="", description="model directory ('' = packaged default)"),
        DeclareLaunchArgument("backend", default_value="onnxruntime", description="onnxruntime | torch | tensorrt"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        DeclareLaunchArgument("role_name", default_value="ego_vehicle"),
        DeclareLaunchArgument("camera", default_value="rgb_front"),
        DeclareLaunchArgument("lidar", default_value="lidar"),
        DeclareLaunchArgument("rviz", default_value="false"),
        Node(
            package="ood_perception", executable="fusion_segmentation_node", name="fusion_segmentation",
            parameters=[LaunchConfiguration("config"),
                        {"model_dir": _text("model"), "backend": _text("backend"),
                         "device": _text("device"), "use_sim_time": True, "autostart": True}],
            remappings=[
                ("camera/image", ["/carla/", role, "/", camera, "/image"]),
                ("camera/camera_info", ["/carla/", role, "/", camera, "/camera_info"]),
                ("lidar/points", ["/carla/", role, "/", lidar]),
            ],
            output="screen",
        ),
        Node(package="rviz2", executable="rviz2", name="rviz2",
             arguments=["-d", os.path.join(share, "config", "ood_perception.rviz")],
             parameters=[{"use_sim_time": True}], condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
