"""Fault injection hooks for testing fault handling end to end (off unless the env var is set).

* ``LBT_FAULT_NAN_AT_EXAMPLES=p``: the microbatch that contains global position p gets NaN
  images, so the loss and gradients of that step are non-finite (the real failure path).
* ``LBT_FAULT_PAUSE_AT_STEP=n``: after optimizer step n is logged, the process flushes its
  metrics and sleeps (up to ``LBT_FAULT_PAUSE_S``, default 120 s), so a test can kill it there.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np


def _int_env(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


class Faults:
    def __init__(self) -> None:
        self.nan_at = _int_env("LBT_FAULT_NAN_AT_EXAMPLES")
        self.pause_at = _int_env("LBT_FAULT_PAUSE_AT_STEP")
        self.pause_s = float(os.environ.get("LBT_FAULT_PAUSE_S", "120"))

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
