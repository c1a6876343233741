"""Count the XLA compilations of training programs, for real.

JAX reports every backend compile as the monitoring event
``/jax/core/compile/backend_compile_duration``. The counter counts those events that happen
while a training program (``accum`` / ``apply``) is being called, so any recompilation caused by
a new shape or sharding shows up in ``summary.json``'s ``train_compilations``.
"""

from __future__ import annotations

import contextlib
import threading

from jax import monitoring

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    def __init__(self) -> None:
        self.train = 0
        self.total = 0
        self._local = threading.local()
        monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event != BACKEND_COMPILE_EVENT:
            return
        self.total += 1
        if getattr(self._local, "active", False):
            self.train += 1

    @contextlib.contextmanager
    def training(self):
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = False

    def close(self) -> None:
        try:
            monitoring.unregister_event_duration_listener(self._on_event)
        except (AssertionError, ValueError, AttributeError):
            pass
