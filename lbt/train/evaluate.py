"""Evaluation: over the whole test split exactly once, and when to do it."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from lbt.data.pipeline import eval_batches
from lbt.parallel.mesh import global_batch_array, host_values
from lbt.train.checkpoint import next_multiple


def eval_interval(config: Any, N: int) -> int:
    """Examples between evals from ``train.eval_every_epochs`` (0 = only at the end)."""
    every = config.train.eval_every_epochs
    return int(round(every * N)) if every > 0 else 0


class EvalSchedule:
    """Evaluate at the first step boundary past each multiple of the interval (in examples);
    the final eval at the end of training is the loop's, not this schedule's."""

    def __init__(self, every: int, examples_seen: int):
        self.every = every
        self.next_at = next_multiple(examples_seen, every)

    def due(self, examples_seen: int, total: int) -> bool:
        return self.next_at is not None and total > examples_seen >= self.next_at

    def done(self, examples_seen: int) -> None:
        self.next_at = next_multiple(examples_seen, self.every)


def evaluate(programs: Any, state: Any, source: Any, mesh: Mesh, microbatch: int, raw: bool = False) -> dict:
    """Accuracy and mean loss over the whole split (last batch padded and masked).

    The sums accumulate on the device (``programs.evaluate``) and are read once, at the end."""
    totals = programs.zeros_eval()
    batches = eval_batches(source, microbatch, jax.process_index(), jax.process_count(), raw=raw)
    for images, labels, mask in batches:
        totals = programs.evaluate(
            state,
            global_batch_array(mesh, images, microbatch),
            global_batch_array(mesh, labels, microbatch),
            global_batch_array(mesh, mask, microbatch),
            totals,
        )
    totals = {k: float(v) for k, v in host_values(totals).items()}
    n = totals["count"]
    accuracy = totals["correct"] / n
    if not 0.0 <= accuracy <= 1.0:  # e.g. labels of the wrong shape broadcasting in the comparison
        raise AssertionError(f"accuracy {accuracy} outside [0, 1] ({totals['correct']} correct of {n}): a bug")
    return {"accuracy": accuracy, "loss": totals["loss"] / n, "count": int(n)}
