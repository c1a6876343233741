"""Fault injection for testing fault handling end to end (off unless asked for).

The :class:`Trainer` takes a :class:`Faults`; nothing in the loop reads the environment. The CLI
builds one from these variables (:meth:`Faults.from_env`), so subprocess tests can inject faults:

* ``LBT_FAULT_NAN_AT_EXAMPLES=p``: the microbatch that contains global position p gets NaN
  images, so the loss and gradients of that step are non-finite (the real failure path).
* ``LBT_FAULT_PAUSE_AT_STEP=n``: after optimizer step n is logged, the process flushes its
  metrics and sleeps (up to ``LBT_FAULT_PAUSE_S``, default 120 s), so a test can kill it there.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

import numpy as np


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


@dataclasses.dataclass(frozen=True)
class Faults:
    """Injected faults: NaN images at one position, a pause after one step."""

    nan_at: int | None = None
    pause_at: int | None = None
    pause_s: float = 120.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        return cls(
            nan_at=_int_or_none(environ.get("LBT_FAULT_NAN_AT_EXAMPLES")),
            pause_at=_int_or_none(environ.get("LBT_FAULT_PAUSE_AT_STEP")),
            pause_s=float(environ.get("LBT_FAULT_PAUSE_S", "120")),
        )

    def corrupt(self, position: int, microbatch: int, images: np.ndarray) -> np.ndarray:
        if self.nan_at is not None and position <= self.nan_at < position + microbatch:
            return images * np.float32("nan")
        return images

    def maybe_pause(self, step: int, stop: Callable[[], bool] = lambda: False) -> None:
        """Sleep at step ``pause_at`` until ``pause_s`` passes or ``stop()`` (e.g. SIGTERM) is true."""
        if self.pause_at is not None and step == self.pause_at:
            end = time.time() + self.pause_s
            while time.time() < end and not stop():
                time.sleep(0.02)
