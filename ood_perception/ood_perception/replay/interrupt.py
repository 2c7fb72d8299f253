"""Stopping a replay cleanly on Ctrl-C or SIGTERM, keeping the results up to the stop.

While :func:`stop_requests` is active, the first SIGINT or SIGTERM only sets
:attr:`StopRequest.signal`; the replay loop checks it between messages, finishes the frames whose
model is already running, and returns what it has (the output bag is completed, metrics.json says
``"interrupted": true``), as it does for a bag that is cut short. A second signal is not waited
for: it raises ``KeyboardInterrupt`` (or :class:`~ood_perception.atomic.Terminated` for SIGTERM)
at once, and the partial outputs are removed as on any other failure.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ood_perception.atomic import Terminated

#: The signals that request a stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """Set by the handler: the name of the first stop signal received (None: keep going)."""

    signal: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set the yielded :class:`StopRequest` (a second one raises).

    Only the main thread can receive signals; elsewhere (a worker thread) the request is never set
    and signals keep their current handlers. Neither is it set in a child process (a pool worker of
    ``replay --workers``): there the parent handles Ctrl-C and ends the pool, whose workers unwind
    (:func:`~ood_perception.atomic.install_worker_signal_handlers`). Previous handlers are
    restored on exit.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread() or multiprocessing.parent_process() is not None:
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signal is not None:  # the second time: stop now
            if signum == signal.SIGTERM:
                raise Terminated()
            raise KeyboardInterrupt()
        request.signal = signal.Signals(signum).name

    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in old.items():
            signal.signal(s, h)
