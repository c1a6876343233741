"""The order of examples: a pure function of (seed, epoch) and the global position.

The example at global position p (= examples seen before it) is ``perm(seed, p // N)[p % N]``.
Each epoch is a fresh permutation, so resuming at examples_seen = p needs no iterator state,
and the stream is identical for any process count (docs/design.md, semantics 5).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of ``range(n)`` used in ``epoch`` (read-only array)."""
    rng = np.random.Generator(np.random.Philox(key=np.array([seed, epoch], dtype=np.uint64)))
    perm = rng.permutation(n)
    perm.setflags(write=False)
    return perm


def example_indices(seed: int, n: int, start: int, count: int) -> np.ndarray:
    """Dataset indices of the examples at global positions ``start .. start+count-1``."""
    positions = np.arange(start, start + count, dtype=np.int64)
    epochs = positions // n
    out = np.empty(count, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = epoch_permutation(seed, int(e), n)[positions[sel] % n]
    return out


def process_slice(microbatch: int, process_index: int, process_count: int) -> tuple[int, int]:
    """The contiguous [lo, hi) slice of a global microbatch that one process loads."""
    per = microbatch // process_count
    return process_index * per, (process_index + 1) * per
