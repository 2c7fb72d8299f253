"""The approximate-time synchroniser: pairing within slop, latest-only, drops, clock jumps, staleness."""

from __future__ import annotations

import threading

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


def _drive(s, clock, offset, seconds=2.0, rate=10.0, t0=100.0):
    """Camera and LiDAR at ``rate`` Hz, arriving together; LiDAR stamps ``offset`` s after the
    camera's. Returns [(arrival time, outcome of the camera message)]."""
    out = []
    for k in range(int(seconds * rate)):
        clock.t = 100.0 + k / rate
        t = t0 + k / rate
        out.append((clock.t, s.add("camera", t, f"c{k}")))
        s.add("lidar", t + offset, f"l{k}")
    return out


@pytest.mark.parametrize(("offset", "side"), [(-0.7, "behind"), (-10.0, "behind"), (0.7, "ahead of")])
def test_streams_that_publish_but_never_pair_are_reported_within_the_stale_timeout(offset, side):
    """Issue 14 item 2: LiDAR stamps 0.7 s or 10 s off the camera's gave no frame at all for
    seconds. Now the camera messages go out alone (each when the next arrives), with the reason
    and the measured offset, from the first camera message past ``stale_timeout`` after the start."""
    s, clock = make(slop=0.05, stale_timeout=0.5)
    outcomes = _drive(s, clock, offset)
    first = next(t for t, o in outcomes if o == "unpaired")
    assert first - 100.0 == pytest.approx(0.6)  # the first camera message after 0.5 s
    assert all(o == "unpaired" for t, o in outcomes if t > first)
    frame = s.take()
    assert frame.lidar is None and frame.camera.msg == "c18"  # the previous one: c19 may still pair
    assert frame.unpaired == (f"no camera/lidar pair within slop 0.050 s for 1.90 s although both publish: "
                              f"lidar stamps {abs(offset):.3f} s {side} the camera's (at equal arrival time)")
    assert s.pairing_problem() == frame.unpaired
    assert s.counters.paired == 0 and s.counters.unpaired_single == 14


def test_pairing_recovers_and_a_stale_stream_is_not_a_pairing_problem():
    s, clock = make(slop=0.05, stale_timeout=0.5)
    _drive(s, clock, -0.7)
    assert s.pairing_problem() is not None
    _drive(s, clock, 0.01, t0=110.0)  # the LiDAR's clock fixed: pairs again
    frame = s.take()
    assert frame.lidar is not None and frame.unpaired is None and s.pairing_problem() is None
    # a LiDAR that stops is stale, not unpaired
    clock.t += 0.1
    s.add("camera", 112.0, "c")
    clock.t += 0.6
    assert s.add("camera", 112.6, "c2") == "single"
    assert s.take().unpaired is None and s.pairing_problem() is None


def test_wait_blocks_the_worker_not_the_producer():
    """Producers never wait for the worker: neither while it waits for a frame nor while it is busy
    with one (the subscription callbacks must not stall behind inference). Every wait below is on
    a condition with a generous timeout; no duration is asserted."""
    s = ApproximateSync(slop=0.01, stale_timeout=0, clock=FakeClock())
    waiting, busy, release = threading.Event(), threading.Event(), threading.Event()
    got = []

    def worker():
        waiting.set()
        got.append(s.wait(timeout=30.0))  # blocks until the producer's pair arrives
        busy.set()
        release.wait(30.0)  # "inference" on the frame: holds no lock of the synchroniser
        got.append(s.wait(timeout=30.0))

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    assert waiting.wait(10.0)

    def produce(k: int) -> threading.Thread:
        t = threading.Thread(target=lambda: (s.add("camera", 1.0 + k, f"c{k}"), s.add("lidar", 1.0 + k, f"l{k}")),
                             daemon=True)
        t.start()
        return t

    p = produce(0)
    p.join(10.0)
    assert not p.is_alive(), "add() blocked while the worker was waiting"
    assert busy.wait(10.0) and got[0].camera.msg == "c0"
    # the worker is busy with frame 0: three more pairs go in without waiting; the newest is kept
    for k in (1, 2, 3):
        p = produce(k)
        p.join(10.0)
        assert not p.is_alive(), "add() blocked while the worker was busy"
    assert s.counters.dropped_overwritten == 2 and th.is_alive()
    release.set()
    th.join(10.0)
    assert not th.is_alive() and got[1].camera.msg == "c3" and got[1].lidar.msg == "l3"
    s.close()
    assert s.wait(timeout=30.0) is None  # closed: returns None at once instead of waiting


def test_wait_times_out_on_the_condition_not_a_sleep():
    """wait(timeout) with nothing to deliver returns None; close() releases a blocked waiter."""
    s = ApproximateSync(slop=0.01, stale_timeout=0, clock=FakeClock())
    assert s.wait(timeout=0.0) is None
    out = []
    th = threading.Thread(target=lambda: out.append(s.wait(timeout=60.0)), daemon=True)
    th.start()
    s.close()
    th.join(10.0)
    assert not th.is_alive() and out == [None]


@pytest.mark.parametrize("kw", [{"slop": 0}, {"slop": -1}, {"clock_jump": 0}, {"queue_size": 0}])
def test_bad_parameters(kw):
    with pytest.raises(ValueError):
        ApproximateSync(**kw)
    with pytest.raises(ValueError, match="unknown stream"):
        ApproximateSync().add("radar", 1.0, None)
