"""Fixed-size global microbatches in the deterministic order, per-process slices, prefetching.

Each process loads only its contiguous slice of every global microbatch of M examples; the
trainer assembles the global array with ``jax.make_array_from_process_local_data``. With
``raw=True`` the images travel in the source's wire dtype (uint8 for image data, a quarter of
float32's bytes) and the programs normalise them on the device (:attr:`Source.input_lut`).
:func:`prefetch_to_devices` keeps a few microbatches transferred ahead of use, so transfers
overlap compute.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from lbt.data.order import example_indices, process_slice
from lbt.data.types import Source

PUT_POLL_S = 0.1
"""How often a loader blocked on a full queue checks whether the consumer has gone."""
JOIN_TIMEOUT_S = 1.0
"""How long closing the stream waits for the loader thread to end."""

T = TypeVar("T")
U = TypeVar("U")


class TrainStream:
    """Microbatches of the run, addressed by global position (= examples seen)."""

    def __init__(
        self,
        source: Source,
        seed: int,
        microbatch: int,
        process_index: int = 0,
        process_count: int = 1,
        *,
        raw: bool = False,
    ):
        self.source = source
        self.seed = seed
        self.microbatch = microbatch
        self.raw = raw  # images in the source's wire dtype (normalised on the device)
        self.lo, self.hi = process_slice(microbatch, process_index, process_count)

    def local_microbatch(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's slice of the global microbatch that starts at ``position``."""
        start = position + self.lo
        count = self.hi - self.lo
        idx = example_indices(self.seed, len(self.source), start, count)
        positions = np.arange(start, start + count, dtype=np.int64)
        if self.raw:
            images, labels, _ = self.source.get_raw(idx, positions, True)
            return images, labels
        return self.source.get(idx, positions, True)

    def iterate(self, start: int, prefetch: int = 8) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        """Yield ``(position, local_microbatch)`` from ``start`` on, loading ahead in a thread.

        The loader thread (named ``lbt-input``) never blocks once the generator is closed: every
        put, including that of a loader error, gives up when ``stop`` is set."""
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def work() -> None:
            pos = start
            try:
                while not stop.is_set():
                    if not _put(q, (pos, self.local_microbatch(pos)), stop):
                        return
                    pos += self.microbatch
            except BaseException as e:  # surface loader errors in the consumer
                _put(q, e, stop)

        thread = threading.Thread(target=work, daemon=True, name="lbt-input")
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=JOIN_TIMEOUT_S)  # it ends within one poll unless mid-load


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` into ``q``, polling ``stop``; False if it was set before the item fit."""
    while not stop.is_set():
        try:
            q.put(item, timeout=PUT_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def prefetch_to_devices(items: Iterator[T], put: Callable[[T], U], depth: int) -> Iterator[U]:
    """``put`` (a host-to-device transfer; asynchronous in JAX) applied ``depth`` items ahead of
    use. Closing this generator closes ``items``."""
    buffer: collections.deque[U] = collections.deque()
    try:
        for item in items:
            buffer.append(put(item))
            if len(buffer) > depth:
                yield buffer.popleft()
        while buffer:
            yield buffer.popleft()
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def eval_batches(
    source: Source, microbatch: int, process_index: int = 0, process_count: int = 1, *, raw: bool = False
):
    """Yield ``(images, labels, mask)`` local slices covering the split exactly once.

    The last batch is padded (by repeating example 0) and masked, never dropped. Corrupt examples
    a source replaced (tfds, ``dataset.on_corrupt='skip'``) are masked out too. ``raw``: images in
    the source's wire dtype.
    """
    n = len(source)
    lo, hi = process_slice(microbatch, process_index, process_count)
    for start in range(0, n, microbatch):
        pos = np.arange(start + lo, start + hi)
        mask = pos < n
        idx = np.where(mask, pos, 0)
        images, labels, ok = (source.get_raw if raw else source.get_with_mask)(idx, pos, False)
        yield images, labels, (mask & ok).astype(np.float32)
