"""ood_perception: multimodal out-of-distribution perception for vehicles (ROS 2).

Rooms (lowest floor first; see ../shared/DESIGN.md for what may import what):
``metrics``, ``scoring``, ``geometry``, ``models``, ``synthesis``, ``losses``, ``distill``,
``world``, ``data``, ``trainer``, ``runtime``, ``pipeline``, ``ros``, ``replay``, ``carla``,
``cli``. Importing the package imports none of them, so ``import ood_perception`` is cheap and
needs neither torch nor rclpy.
"""

__version__ = "0.1.0"
