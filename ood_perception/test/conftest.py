"""Shared test fixtures.

ROS tests get their own DDS domain (derived from the process id) and localhost-only discovery,
so parallel test runs and other graphs on the machine never cross-talk.
"""

from __future__ import annotations

import atexit
import gc
import os

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# A pytest-xdist worker (`make test` runs two) inherits the domain the controller set before spawning
# it, so it takes its own or the workers' graphs cross-talk (seen: the demo's live node fed another
# test's frames); a plain run keeps a domain given from outside.
if os.environ.get("PYTEST_XDIST_WORKER") or "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)

# Each pytest-xdist worker gets its share of the cores for OpenMP/BLAS threads (torch, numpy and the
# processes a test starts inherit it; torch reads it at import, so it is set before any import of
# torch). Without it every worker's torch spins up one thread per core: two workers on two cores
# oversubscribe, and OpenMP's busy-waiting threads burnt ~18 s of the suite's ~170 s of CPU (measured
# with `make test`: 101.8 s -> 92.2 s of wall time). A value given from outside is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

# As the command line does (ood_perception.cli._skip_the_final_collection): the test process's heap
# is frozen after every other exit handler ran, so its shutdown skips the cyclic garbage collection
# over torch, torch._dynamo and everything the tests left (2-3 s per pytest-xdist worker, paid at the
# end of `make test` when nothing else runs).
atexit.register(gc.freeze)

# The product runs with the shipped DDS transport profile (ood-perception run, the node entry
# points and the launch files apply it before rclpy starts), so the tests do too: set here, at
# collection, before any test creates a DDS participant (Fast DDS reads it once per process).
# What this hides: (1) nothing here runs with Fast DDS's defaults, whose loss of large samples
# bench/transport.py measures instead; (2) nodes sharing one rclpy context (most node tests) talk
# intra-process and never touch a transport at all -- test_transport_dds.py therefore publishes
# from a separate process.
from ood_perception.ros.transport import apply_transport_profile  # noqa: E402

apply_transport_profile(log=None)


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


#: Condition waits are 3x longer in a pytest-xdist worker: `make test` runs two test processes on
#: two cores, and a node that processes a burst in 10 s alone took longer with the other busy.
#: A wait returns as soon as its condition holds: it costs time only when a test fails (or in a
#: drain wait whose condition need not hold, test_transport_dds.py).
WAIT_SCALE = 3.0 if os.environ.get("PYTEST_XDIST_WORKER") else 1.0


def spin_until(executor, predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Spin ``executor`` until ``predicate()`` is true or ``timeout`` seconds (x :data:`WAIT_SCALE`) pass."""
    import time

    deadline = time.monotonic() + timeout * WAIT_SCALE
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step)
    return predicate()

