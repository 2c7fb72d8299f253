"""Geometry room: camera/LiDAR calibration, LiDAR -> camera projection, range images.

Pure numpy, no ROS and no torch, so training, the pipeline and the ROS nodes share one
projection. Conventions: points are ``[N, >=3]`` float arrays in the LiDAR frame; ``T_cam_lidar``
is the 4x4 transform taking LiDAR coordinates to the camera's optical frame (x right, y down,
z forward); ``K`` is the 3x3 pinhole matrix; pixel ``(u, v)`` = (column, row).
"""

from ood_perception.geometry.calibration import (
    Calibration,
    intrinsics_from_fov,
    load_kitti_calib,
    rpy_to_matrix,
    transform_from_xyz_rpy,
    write_kitti_calib,
)
from ood_perception.geometry.projection import (
    LIDAR_CHANNELS,
    ProjectedPoints,
    apply_affine,
    lidar_to_camera_tensor,
    project_points,
    region_in_camera,
    spherical_range_image,
)

__all__ = [
    "Calibration",
    "LIDAR_CHANNELS",
    "ProjectedPoints",
    "apply_affine",
    "intrinsics_from_fov",
    "lidar_to_camera_tensor",
    "load_kitti_calib",
    "project_points",
    "region_in_camera",
    "rpy_to_matrix",
    "spherical_range_image",
    "transform_from_xyz_rpy",
    "write_kitti_calib",
]
