"""Count the XLA compilations of training programs, for real.

JAX reports every compilation as the monitoring event ``/jax/core/compile/backend_compile_duration``
(it times ``compile_or_get_cached``, so a program loaded from the persistent compilation cache
counts too), and each load from that cache also as ``/jax/compilation_cache/cache_hits``. The
counter counts those events while a training program (``accum`` / ``final``) is being called, so
any recompilation caused by a new shape or sharding shows up in ``summary.json``'s
``train_compilations`` whether or not the cache was warm (``train_cache_hits`` says how many of
them came from the cache).
"""

from __future__ import annotations

import contextlib
import threading

from jax import monitoring

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class CompileCounter:
    """Compilations (backend compiles and persistent-cache loads) overall and of training programs."""

    def __init__(self) -> None:
        self.train = 0
        self.total = 0
        self.train_cache_hits = 0
        self._local = threading.local()
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)

    def _active(self) -> bool:
        return getattr(self._local, "active", False)

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.total += 1
            self.train += int(self._active())

    def _on_event(self, event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT and self._active():
            self.train_cache_hits += 1

    @contextlib.contextmanager
    def training(self):
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = False

    def close(self) -> None:
        for unregister, callback in (
            (monitoring.unregister_event_duration_listener, self._on_duration),
            (monitoring.unregister_event_listener, self._on_event),
        ):
            try:
                unregister(callback)
            except (AssertionError, ValueError, AttributeError):
                pass
