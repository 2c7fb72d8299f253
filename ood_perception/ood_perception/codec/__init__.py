"""Codec room: ROS-free message <-> numpy for Image, CameraInfo, PointCloud2, TF and our messages.

Duck-typed: the functions read and fill attributes only, so they work on rclpy message objects
and on rosbags' deserialised ones alike (replay and output bags use the latter). Below
``pipeline``, ``replay`` and ``ros``; imports numpy and :mod:`ood_perception.geometry` only
(``CameraInfo`` -> :class:`~ood_perception.geometry.Calibration`).
"""
