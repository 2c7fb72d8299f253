"""The lifecycle both nodes share: a managed node whose callbacks hand work to one worker thread.

:class:`WorkerLifecycleNode` owns what the fusion and recognition nodes did the same way
(``autostart``; the worker thread started on activate and stopped, with the input subscriptions,
on deactivate / shutdown / destroy; lifecycle publishers, the diagnostics timer and publisher and
a backend the node loaded itself released on cleanup / shutdown). A subclass creates its
publishers in ``on_configure``, loads its model and subscribes in ``on_activate`` (then calls
:meth:`_start_worker`), implements ``_work`` and may override :meth:`_wake_worker` (a worker that
waits on a condition) and :meth:`_forget` (its own model references).
"""

from __future__ import annotations

import threading
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn


class WorkerLifecycleNode(LifecycleNode):
    """A ``rclpy`` lifecycle node with one worker thread (see the module docstring).

    Attributes set here: ``backend`` (a backend the node loaded; closed on release unless it is
    ``_injected_backend``), ``_subs``, ``_pubs`` (lifecycle publishers by name), ``_diag_pub``,
    ``_diag_timer``, ``_worker``, ``_stop`` (set when the worker must end), ``_state``.
    """

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.backend: Any = None
        self._injected_backend: Any = None
        self._subs: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._diag_pub: Any = None
        self._diag_timer: Any = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._state = "unconfigured"

    def autostart(self) -> bool:
        """Configure and activate; True when the node is active."""
        return self.trigger_configure() == TransitionCallbackReturn.SUCCESS and (
            self.trigger_activate() == TransitionCallbackReturn.SUCCESS
        )

    def _work(self) -> None:
        """The worker loop (runs until ``_stop`` is set)."""
        raise NotImplementedError

    def _start_worker(self) -> None:
        """Start the worker thread (end of a successful ``on_activate``)."""
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name=f"{self.get_name()}_worker", daemon=True)
        self._worker.start()

    def _wake_worker(self) -> None:
        """Wake a worker blocked waiting for input so that it sees ``_stop`` (override)."""

    def _stop_worker(self) -> None:
        """Stop and join the worker, then drop the input subscriptions."""
        self._stop.set()
        self._wake_worker()
        if self._worker is not None:
            self._worker.join(timeout=10.0)
            self._worker = None
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []

    def _forget(self) -> None:
        """Drop the subclass's own model objects (override; called by :meth:`_release`)."""

    def _release(self) -> None:
        """Destroy publishers and the diagnostics timer, close a backend the node loaded itself."""
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
            self._diag_pub = None
        if self.backend is not None and self.backend is not self._injected_backend:
            close = getattr(self.backend, "close", None)
            if close:
                close()
        self.backend = None
        self._forget()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        self._state = "finalized"
        return super().on_shutdown(state)

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._stop_worker()
        super().destroy_node()
