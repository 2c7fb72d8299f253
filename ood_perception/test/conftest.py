"""Shared test fixtures.

ROS tests get their own DDS domain (derived from the process id) and localhost-only discovery,
so parallel test runs and other graphs on the machine never cross-talk.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context, shut down after the test."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy is installed by `make setup`")
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        if ctx.ok():
            rclpy.shutdown(context=ctx)


def spin_until(executor, predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step)
    return predicate()
