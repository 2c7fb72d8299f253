"""Small thread-safe statistics for diagnostics: message rates and latency percentiles."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np


class RateMeter:
    """Messages per second over a sliding window of arrival times."""

    def __init__(self, window_s: float = 5.0, clock: Any = time.monotonic) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.total = 0

    def tick(self, now: float | None = None) -> None:
        """Record one event."""
        now = self._clock() if now is None else now
        with self._lock:
            self._times.append(now)
            self.total += 1
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events per second in the window (0 with fewer than two events)."""
        now = self._clock() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


class LatencyStats:
    """The last ``size`` latencies [s] and their percentiles."""

    def __init__(self, size: int = 500) -> None:
        self._values: deque[float] = deque(maxlen=int(size))
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        """Record one latency."""
        with self._lock:
            self._values.append(float(seconds))
            self.count += 1

    def percentiles(self, qs: tuple[float, ...] = (50.0, 95.0)) -> list[float]:
        """Percentiles of the window (NaN when empty)."""
        with self._lock:
            vals = np.asarray(self._values, dtype=np.float64)
        if vals.size == 0:
            return [float("nan")] * len(qs)
        return [float(v) for v in np.percentile(vals, qs)]
