"""ROS 2 layer: message <-> numpy conversions, QoS, diagnostics, the fusion and recognition nodes,
and an in-process runner for ``ood-perception run``.

Only this package imports rclpy; the frame logic lives in :mod:`ood_perception.pipeline`.
Submodules are imported explicitly (``from ood_perception.codec import conversions``) so that
importing the package does not pull rclpy in.
"""
