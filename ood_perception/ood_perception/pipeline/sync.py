"""Approximate-time pairing of camera and LiDAR messages, latest-only, never blocking the producer.

Why our own: ``message_filters`` is not installable here, and its rclpy
``ApproximateTimeSynchronizer`` runs the user callback under its lock (slow inference blocks every
input), overwrites equal stamps silently, has no drop counter, drops zero stamps without saying so
and never recovers when the clock jumps back (bag loops, simulator restarts).

Model: each stream keeps its few most recent messages. When a message arrives, it is paired with
the other stream's message of nearest stamp if that is within ``slop`` seconds; the pair replaces
whatever pair is waiting for the worker (latest-only; an overwritten pair is counted as a drop).
The worker blocks in :meth:`ApproximateSync.wait` instead of the subscription callbacks, so
callbacks only take a short lock. When the other stream is stale (nothing received for
``stale_timeout`` seconds of arrival time), a message goes out alone so the pipeline can run
degraded on one modality. A stream never seen is stale once ``stale_timeout`` has passed since the
first message of any stream (the start-up grace counts from the first message, not from
construction, so a node that waited for discovery or a bag that starts late behaves like replay of
the same messages; arrival times come from the injected clock: the node's ROS clock, which is sim
time under ``use_sim_time``, or the bag time in replay). A stamp more than ``clock_jump`` seconds behind the newest one seen
resets all state (counted in ``clock_resets``).

Streams that both publish but never pair (stamps further apart than ``slop``: a LiDAR driver
stamping at the end of the sweep, a clock offset between sensor hosts) are not silent either:
once no pair has formed for ``stale_timeout`` seconds although neither stream is stale, each
camera message goes out alone when the next one arrives (it had a camera period to find a
partner), with :attr:`SyncedFrame.unpaired` saying why and the measured stamp offset (``"no camera/lidar pair within slop 0.050 s for 0.62 s although both publish:
lidar stamps 0.700 s behind the camera's (at equal arrival time)"``); :meth:`ApproximateSync.pairing_problem`
gives the same reason for diagnostics.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: Stream names.
STREAMS: tuple[str, ...] = ("camera", "lidar")


@dataclass
class Stamped:
    """One message with its sensor stamp [s] and arrival time [s, monotonic clock]."""

    stamp: float
    msg: Any
    arrival: float


@dataclass
class SyncedFrame:
    """What the worker processes: both messages or, when the other stream is stale, one of them."""

    camera: Stamped | None
    lidar: Stamped | None
    unpaired: str | None = None  # both streams publish but do not pair: why (the camera goes out alone)

    @property
    def stamp(self) -> float:
        """The frame's stamp: the camera's when present (outputs carry the camera stamp)."""
        return self.camera.stamp if self.camera is not None else self.lidar.stamp  # type: ignore[union-attr]


@dataclass
class SyncCounters:
    """Counters reported on /diagnostics."""

    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    paired: int = 0
    single: int = 0
    dropped_overwritten: int = 0
    dropped_unpaired: int = 0
    rejected_zero_stamp: int = 0
    rejected_old_stamp: int = 0
    duplicate_stamp: int = 0
    clock_resets: int = 0
    unpaired_single: int = 0


class ApproximateSync:
    """Pairs camera and LiDAR messages whose stamps differ by at most ``slop`` seconds.

    Args:
        slop: largest stamp difference of a pair [s]; must be > 0.
        stale_timeout: a stream with no arrival for this long [s] is stale; the other stream's
            messages then go out alone. ``<= 0`` disables single-stream output.
        clock_jump: a stamp this far [s] behind the newest seen on its stream resets everything.
        queue_size: messages kept per stream while waiting for a partner (>= 1).
        clock: time source for arrival times (monotonic by default; the fusion node passes its ROS
            clock, replay the bag time, tests a fake).
    """

    def __init__(
        self,
        slop: float = 0.05,
        stale_timeout: float = 0.5,
        clock_jump: float = 1.0,
        queue_size: int = 5,
        clock: Any = time.monotonic,
    ) -> None:
        if not slop > 0:
            raise ValueError(f"slop must be > 0 s, got {slop}")
        if not clock_jump > 0:
            raise ValueError(f"clock_jump must be > 0 s, got {clock_jump}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.slop = float(slop)
        self.stale_timeout = float(stale_timeout)
        self.clock_jump = float(clock_jump)
        self.queue_size = int(queue_size)
        self._clock = clock
        self._cond = threading.Condition()
        self._queues: dict[str, deque[Stamped]] = {s: deque() for s in STREAMS}
        self._newest: dict[str, float | None] = dict.fromkeys(STREAMS)
        self._last_arrival: dict[str, float | None] = dict.fromkeys(STREAMS)
        self._last_emitted: float | None = None
        self._ready: SyncedFrame | None = None
        self._closed = False
        self._start: float | None = None  # arrival of the first message: the start-up grace begins
        self._last_pair: float | None = None  # arrival time of the last paired frame (or of a reset)
        # stamp minus arrival time of each stream's last message: their difference is the stamp
        # offset between the streams at equal arrival (what keeps them from pairing)
        self._lag: dict[str, float | None] = dict.fromkeys(STREAMS)
        self.counters = SyncCounters()

    # -- producer side (subscription callbacks) ------------------------------------------------

    def add(self, stream: str, stamp: float, msg: Any, arrival: float | None = None) -> str:
        """Offer a message; returns what happened: ``paired``, ``single``, ``unpaired`` (a camera
        message sent alone because the streams publish but do not pair), ``queued``,
        ``duplicate`` (replaced an equal stamp), ``rejected_zero``, ``rejected_old`` or ``reset``
        (clock jump: state cleared, message kept). Never blocks on the worker."""
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r} (expected one of {STREAMS})")
        now = self._clock() if arrival is None else float(arrival)
        with self._cond:
            c = self.counters
            c.received[stream] += 1
            if self._start is None:
                self._start = now
            if not stamp > 0:
                c.rejected_zero_stamp += 1
                return "rejected_zero"
            outcome = "queued"
            self._lag[stream] = stamp - now
            newest = self._newest[stream]
            if newest is not None and stamp < newest - self.clock_jump:
                self._reset_locked()
                self._last_pair = now  # pairing gets a fresh grace after a jump
                c.clock_resets += 1
                outcome = "reset"
            elif self._last_emitted is not None and stamp < self._last_emitted - self.slop:
                c.rejected_old_stamp += 1
                self._last_arrival[stream] = now
                return "rejected_old"
            self._last_arrival[stream] = now
            self._newest[stream] = stamp if self._newest[stream] is None else max(self._newest[stream], stamp)
            q = self._queues[stream]
            item = Stamped(stamp, msg, now)
            for i, old in enumerate(q):
                if old.stamp == stamp:
                    q[i] = item
                    c.duplicate_stamp += 1
                    outcome = "duplicate" if outcome == "queued" else outcome
                    break
            else:
                q.append(item)
                while len(q) > self.queue_size:
                    q.popleft()
                    c.dropped_unpaired += 1
            other = "lidar" if stream == "camera" else "camera"
            partner = self._nearest(other, stamp)
            if partner is not None:
                frame = SyncedFrame(**{stream: item, other: partner})
                self._remove(stream, item)
                self._remove(other, partner)
                self._emit(frame, paired=True)
                return "paired" if outcome in ("queued", "duplicate") else outcome
            if self._stale_locked(other, now):
                self._remove(stream, item)
                self._emit(SyncedFrame(**{stream: item, other: None}), paired=False)
                return "single" if outcome in ("queued", "duplicate") else outcome
            if stream == "camera":
                # Not pairing although both publish: the previous camera message, which had a whole
                # camera period for its partner to arrive, goes out alone (this one keeps its chance).
                why = self._unpaired_locked(now)
                older = [q for q in self._queues["camera"] if q.stamp < stamp]
                if why is not None and older:
                    prev = max(older, key=lambda q: q.stamp)
                    self._remove(stream, prev)
                    self._emit(SyncedFrame(camera=prev, lidar=None, unpaired=why), paired=False)
                    c.unpaired_single += 1
                    return "unpaired" if outcome in ("queued", "duplicate") else outcome
            return outcome

    def _nearest(self, stream: str, stamp: float) -> Stamped | None:
        best = None
        for cand in self._queues[stream]:
            d = abs(cand.stamp - stamp)
            if d <= self.slop and (best is None or d < abs(best.stamp - stamp)):
                best = cand
        return best

    def _remove(self, stream: str, item: Stamped) -> None:
        q = self._queues[stream]
        # Everything at or before the used message can no longer form a newer pair.
        while q and q[0].stamp <= item.stamp:
            gone = q.popleft()
            if gone is not item:
                self.counters.dropped_unpaired += 1

    def _emit(self, frame: SyncedFrame, paired: bool) -> None:
        if self._ready is not None:
            self.counters.dropped_overwritten += 1
        self._ready = frame
        self._last_emitted = frame.stamp if self._last_emitted is None else max(self._last_emitted, frame.stamp)
        if paired:
            self._last_pair = frame.camera.arrival if frame.camera is not None else None
            self.counters.paired += 1
        else:
            self.counters.single += 1
        self._cond.notify_all()

    def _stale_locked(self, stream: str, now: float) -> bool:
        if self.stale_timeout <= 0:
            return False
        last = self._last_arrival[stream]
        if last is None:  # never seen: stale once the start-up grace of one timeout has passed
            return self._start is not None and now - self._start > self.stale_timeout
        return now - last > self.stale_timeout

    def _unpaired_locked(self, now: float) -> str | None:
        """Why no pair forms although both streams publish (None while pairing is fine, a stream is
        stale or never seen, or the start-up grace / ``stale_timeout`` since the last pair lasts)."""
        cam_lag, lidar_lag = self._lag["camera"], self._lag["lidar"]
        if self.stale_timeout <= 0 or cam_lag is None or lidar_lag is None:
            return None
        if any(self._last_arrival[s] is None or self._stale_locked(s, now) for s in STREAMS):
            return None
        since = self._last_pair if self._last_pair is not None else self._start
        if since is None or now - since <= self.stale_timeout:
            return None
        offset = lidar_lag - cam_lag
        side = "behind" if offset < 0 else "ahead of"
        return (f"no camera/lidar pair within slop {self.slop:.3f} s for {now - since:.2f} s although both publish: "
                f"lidar stamps {abs(offset):.3f} s {side} the camera's (at equal arrival time)")

    def pairing_problem(self, now: float | None = None) -> str | None:
        """The :attr:`SyncedFrame.unpaired` reason now (None when the streams pair, or while one is
        stale: that is reported as staleness)."""
        now = self._clock() if now is None else now
        with self._cond:
            return self._unpaired_locked(now)

    def _reset_locked(self) -> None:
        for q in self._queues.values():
            q.clear()
        self._newest = dict.fromkeys(STREAMS)
        self._last_emitted = None
        self._ready = None

    # -- consumer side (worker) ------------------------------------------------------------------

    def take(self) -> SyncedFrame | None:
        """The waiting frame (and clear it), or None; never blocks."""
        with self._cond:
            frame, self._ready = self._ready, None
            return frame

    def wait(self, timeout: float | None = None) -> SyncedFrame | None:
        """Block until a frame is ready (or ``timeout`` seconds, or :meth:`close`); returns it or None."""
        with self._cond:
            if self._ready is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._ready = self._ready, None
            return frame

    def close(self) -> None:
        """Wake any waiting worker for shutdown."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget all queued messages (e.g. after a time jump signalled by the clock)."""
        with self._cond:
            self._reset_locked()
            self._last_pair = self._clock()
            self.counters.clock_resets += 1

    def age(self, stream: str, now: float | None = None) -> float | None:
        """Seconds since the last message of ``stream`` arrived (None if never)."""
        with self._cond:
            last = self._last_arrival[stream]
        if last is None:
            return None
        return (self._clock() if now is None else now) - last
