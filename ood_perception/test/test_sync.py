"""The approximate-time synchroniser: pairing within slop, latest-only, drops, clock jumps, staleness."""

from __future__ import annotations

import threading
import time

import pytest

from ood_perception.pipeline.sync import ApproximateSync


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(**kw):
    clock = FakeClock()
    return ApproximateSync(clock=clock, **kw), clock


def test_pairs_nearest_within_slop_and_only_within_slop():
    s, clock = make(slop=0.02, stale_timeout=10.0)
    for stamp in (1.000, 1.033, 1.066):
        assert s.add("camera", stamp, f"cam{stamp}") == "queued"
    assert s.add("lidar", 1.040, "lid") == "paired"
    frame = s.take()
    assert frame.camera.msg == "cam1.033" and frame.lidar.msg == "lid" and frame.stamp == 1.033
    assert s.take() is None
    # 30 ms away with slop 20 ms: no pair
    assert s.add("lidar", 1.096 + 0.03, "far") == "queued"
    assert s.take() is None
    # camera 1.000 was consumed-away as older than the used one: counted as unpaired drop
    assert s.counters.dropped_unpaired >= 1 and s.counters.paired == 1


def test_latest_only_overwrites_unconsumed_pair_and_counts_drop():
    s, _ = make(slop=0.01, stale_timeout=10.0)
    for k in range(5):
        s.add("camera", 1.0 + k * 0.1, k)
        assert s.add("lidar", 1.0 + k * 0.1 + 0.001, k) == "paired"
    frame = s.take()
    assert frame.camera.msg == 4 and s.counters.dropped_overwritten == 4 and s.counters.paired == 5


def test_zero_duplicate_and_backward_stamps():
    s, _ = make(slop=0.01, stale_timeout=10.0)
    assert s.add("camera", 0.0, "zero") == "rejected_zero"
    assert s.add("camera", 2.0, "a") == "queued"
    assert s.add("camera", 2.0, "b") == "duplicate"
    assert s.add("lidar", 2.0, "l") == "paired"
    assert s.take().camera.msg == "b"  # the later of two equal stamps wins
    # slightly backward (older than the emitted pair, but not a clock jump): rejected
    assert s.add("camera", 1.5, "old") == "rejected_old"
    c = s.counters
    assert (c.rejected_zero_stamp, c.duplicate_stamp, c.rejected_old_stamp, c.clock_resets) == (1, 1, 1, 0)


def test_clock_jump_backwards_resets_and_pairs_again():
    s, _ = make(slop=0.01, stale_timeout=10.0, clock_jump=1.0)
    s.add("camera", 50.0, "c50")
    s.add("lidar", 50.0, "l50")
    assert s.take() is not None
    s.add("lidar", 50.1, "stale-queued")
    assert s.add("camera", 3.0, "c3") == "reset"  # bag loop: 47 s back
    assert s.counters.clock_resets == 1
    assert s.add("lidar", 3.001, "l3") == "paired"
    frame = s.take()
    assert (frame.camera.msg, frame.lidar.msg) == ("c3", "l3")


def test_single_stream_output_when_other_is_stale():
    s, clock = make(slop=0.01, stale_timeout=0.5)
    # start-up grace: the lidar has never arrived, but the grace period has not passed
    assert s.add("camera", 1.0, "c1") == "queued"
    clock.t += 0.6
    assert s.add("camera", 1.6, "c2") == "single"
    frame = s.take()
    assert frame.camera.msg == "c2" and frame.lidar is None
    s.add("lidar", 1.7, "l1")
    # camera arrived 0 s ago: lidar alone is not emitted, camera is not stale
    assert s.take() is None or s.take() is None
    clock.t += 1.0
    assert s.add("lidar", 2.7, "l2") == "single"
    assert s.take().camera is None and s.counters.single == 2
    assert s.age("camera") == pytest.approx(1.0)


def test_wait_blocks_the_worker_not_the_producer():
    s = ApproximateSync(slop=0.01, stale_timeout=0)
    got = []

    def worker():
        got.append(s.wait(timeout=5.0))

    th = threading.Thread(target=worker)
    th.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    s.add("camera", 1.0, "c")
    s.add("lidar", 1.0, "l")
    assert time.perf_counter() - t0 < 0.05
    th.join(2.0)
    assert got and got[0].camera.msg == "c"
    s.close()
    assert s.wait(timeout=1.0) is None


@pytest.mark.parametrize("kw", [{"slop": 0}, {"slop": -1}, {"clock_jump": 0}, {"queue_size": 0}])
def test_bad_parameters(kw):
    with pytest.raises(ValueError):
        ApproximateSync(**kw)
    with pytest.raises(ValueError, match="unknown stream"):
        ApproximateSync().add("radar", 1.0, None)
