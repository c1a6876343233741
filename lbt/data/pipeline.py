"""Fixed-size global microbatches in the deterministic order, per-process slices, prefetching.

Each process loads only its contiguous slice of every global microbatch of M examples; the
trainer assembles the global array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np

from lbt.data.order import example_indices, process_slice


class TrainStream:
    """Microbatches of the run, addressed by global position (= examples seen)."""

    def __init__(self, source, seed: int, microbatch: int, process_index: int = 0, process_count: int = 1):
        self.source = source
        self.seed = seed
        self.microbatch = microbatch
        self.lo, self.hi = process_slice(microbatch, process_index, process_count)

    def local_microbatch(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's slice of the global microbatch that starts at ``position``."""
        start = position + self.lo
        count = self.hi - self.lo
        idx = example_indices(self.seed, len(self.source), start, count)
        positions = np.arange(start, start + count, dtype=np.int64)
        return self.source.get(idx, positions, True)

    def iterate(self, start: int, prefetch: int = 8) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        """Yield ``(position, local_microbatch)`` from ``start`` on, loading ahead in a thread."""
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def work() -> None:
            pos = start
            try:
                while not stop.is_set():
                    item = (pos, self.local_microbatch(pos))
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    pos += self.microbatch
            except BaseException as e:  # surface loader errors in the consumer
                q.put(e)

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


def eval_batches(source, microbatch: int, process_index: int = 0, process_count: int = 1):
    """Yield ``(images, labels, mask)`` local slices covering the split exactly once.

    The last batch is padded (by repeating example 0) and masked, never dropped. A source with
    ``get_with_mask`` (tfds, ``dataset.on_corrupt='skip'``) also masks out skipped corrupt examples.
    """
    n = len(source)
    lo, hi = process_slice(microbatch, process_index, process_count)
    get_with_mask = getattr(source, "get_with_mask", None)
    for start in range(0, n, microbatch):
        pos = np.arange(start + lo, start + hi)
        mask = pos < n
        idx = np.where(mask, pos, 0)
        if get_with_mask is not None:
            images, labels, ok = get_with_mask(idx, pos, False)
            mask = mask & ok
        else:
            images, labels = source.get(idx, pos, False)
        yield images, labels, mask.astype(np.float32)
