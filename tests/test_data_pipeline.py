"""The prefetching train stream and eval batches on small in-memory sources (no tfds needed)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lbt.data.pipeline import TrainStream, eval_batches
from lbt.data.sources import ArraySource
from lbt.data.types import Source


class _FailingSource(ArraySource):
    """An ArraySource whose ``get`` raises from call ``fail_at`` on."""

    def __init__(self, n: int, fail_at: int):
        super().__init__(np.zeros((n, 2, 2, 1), np.float32), np.arange(n, dtype=np.int32) % 3, 3)
        self.calls, self.fail_at = 0, fail_at

    def get(self, indices, positions=None, train=True):
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError("broken record")
        return super().get(indices, positions, train)


def _input_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lbt-input"]


def _wait_gone(threads: list[threading.Thread], timeout_s: float) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.02)
    return [t for t in threads if t.is_alive()]


def test_loader_thread_ends_when_consumer_closes_after_an_error():
    """The loader fails while the queue is full and nobody reads: it must still end.

    prefetch=1: call 1 is read by the consumer, call 2 fills the queue, call 3 raises with the queue
    full; then the consumer closes the generator without reading again."""
    before = set(_input_threads())
    src = _FailingSource(40, fail_at=2)
    it = TrainStream(src, seed=0, microbatch=4).iterate(0, prefetch=1)
    pos, _ = next(it)
    assert pos == 0
    deadline = time.monotonic() + 5
    while src.calls <= src.fail_at and time.monotonic() < deadline:  # let the loader reach the error
        time.sleep(0.01)
    assert src.calls > src.fail_at
    time.sleep(0.2)  # the loader now holds the error with the queue full
    it.close()
    mine = [t for t in _input_threads() if t not in before]
    assert not _wait_gone(mine, 2.0), "the lbt-input loader thread is still blocked after close()"


def test_loader_error_surfaces_in_consumer():
    it = TrainStream(_FailingSource(40, fail_at=2), seed=0, microbatch=4).iterate(0, prefetch=2)
    with pytest.raises(RuntimeError, match="broken record"):
        for _ in it:
            pass


def test_loader_thread_ends_on_close_without_error():
    before = set(_input_threads())
    it = TrainStream(ArraySource(np.zeros((10, 1, 1, 1), np.float32), np.zeros(10, np.int32), 1), 0, 2).iterate(0, 1)
    next(it)
    it.close()
    assert not _wait_gone([t for t in _input_threads() if t not in before], 2.0)


def test_array_source_is_a_source_with_a_true_mask():
    src = ArraySource(np.arange(12, dtype=np.float32).reshape(3, 2, 2, 1), np.array([0, 1, 2], np.int32), 3)
    assert isinstance(src, Source) and src.corrupt_count == 0
    x, y, ok = src.get_with_mask(np.array([2, 0]), np.array([5, 6]), False)
    np.testing.assert_array_equal(y, [2, 0])
    np.testing.assert_array_equal(x, src.images[[2, 0]])
    assert ok.dtype == bool and ok.tolist() == [True, True]
    masks = np.concatenate([m for _, _, m in eval_batches(src, 2)])
    assert masks.tolist() == [1.0, 1.0, 1.0, 0.0]
