"""The adaptive batch (``schedule.batch.mode = "adaptive"``): B chosen from the measured noise scale.

In the spirit of AdaptDL/Pollux (Qiao et al., OSDI 2021), with lbt's guarantees:

* **The rule** (:func:`lbt.schedules.batch.adaptive_batch`, pure): B only grows, is a multiple of
  the global microbatch M, never exceeds B_max (default N/10), moves towards
  ``adapt_target`` × B_simple and changes only when the predicted gain in progress per step
  (:func:`lbt.schedules.batch.step_gain`, McCandlish et al. 2018, eq. 2.11) is at least
  ``adapt_min_gain``.
* **The LR** keeps the noise scale g = εN/(B(1 - m)) of the plan's decay_lr reference (Smith et
  al. 2018): ε(s) = ε_ref(s) · B / B0 at fixed m. Between decisions nothing else changes;
  at the reference's milestones ε decays as ε_ref does.
* **When.** A decision is taken after the monitor has read step j, for every j with
  (j + 1) % ``adapt_every_steps`` == 0, from the noise-scale EMA after exactly the steps 1..j,
  and applies from step j + 2. The loop reads step j right after dispatching step j + 1, the
  read it does anyway to bound dispatch on CPU, so the decision costs no host sync beyond the
  usual one and the device never idles for it. Only k = B / M changes: nothing recompiles and the
  step's one reduction is unchanged.
* **Resume.** The decisions (``(first step, B)`` pairs) are a function of the logged,
  checkpointed EMA, and are themselves in the checkpoint metadata (:meth:`state_dict`), so a
  killed and resumed run takes the same decisions bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from lbt.schedules import batch as batch_lib
from lbt.schedules import noise as noise_lib
from lbt.schedules.plan import Plan, PlanPoint

log = logging.getLogger("lbt")

#: The event written to metrics.jsonl when the adaptive mode grows B.
EVENT = "adaptive_batch"


class AdaptiveBatch:
    """The decisions of one adaptive run (see the module docstring)."""

    def __init__(self, plan: Plan, batch_cfg: Any, reference_batch: int, state: dict[str, Any] | None = None):
        self.plan = plan
        self.M = plan.microbatch
        self.B0 = int(reference_batch)
        self.B_max = int(plan.max_global_batch or plan.N)
        self.every = int(batch_cfg.adapt_every_steps)
        self.target = float(batch_cfg.adapt_target)
        self.min_gain = float(batch_cfg.adapt_min_gain)
        #: (first step, B) of every decision so far, in order; B0 from step 1
        self.decisions: list[tuple[int, int]] = [(1, self.B0)]
        if state:
            self.decisions = [(int(a), int(b)) for a, b in state["decisions"]]

    def state_dict(self) -> dict[str, Any]:
        return {"decisions": [list(d) for d in self.decisions]}

    def batch_for(self, step: int) -> int:
        """B of optimizer step ``step`` (1-based)."""
        B = self.B0
        for first, b in self.decisions:
            if first <= step:
                B = b
        return B

    def point(self, reference: PlanPoint, step: int) -> PlanPoint:
        """The reference point with the adaptive B and ε = ε_ref · B / B0 (g kept)."""
        B = self.batch_for(step)
        if B == reference.global_batch:
            return reference
        lr = reference.lr * B / self.B0
        m, N = reference.momentum, self.plan.N
        g_exact = noise_lib.noise_scale_exact(lr, N, B, m)
        return dataclasses.replace(
            reference, global_batch=B, lr=lr, noise_scale=noise_lib.noise_scale(lr, N, B, m), noise_scale_exact=g_exact
        )

    def needs_read(self, step: int) -> bool:
        """True after dispatching step ``step`` when step - 1 is a decision step (read it now)."""
        return step >= 2 and step % self.every == 0

    def observe(self, step: int, b_simple: float | None, examples_seen: int) -> list[dict[str, Any]]:
        """Called by the noise monitor after step ``step``'s EMA update: decide if it is a decision
        step; returns the event records to write (one when B grows)."""
        if (step + 1) % self.every != 0:
            return []
        current = self.batch_for(step + 2)
        new = batch_lib.adaptive_batch(current, b_simple, self.M, self.B_max, self.target, self.min_gain)
        if new == current:
            return []
        gain = batch_lib.step_gain(current, new, b_simple)  # type: ignore[arg-type]
        self.decisions = [*[d for d in self.decisions if d[0] < step + 2], (step + 2, new)]
        log.info(
            "adaptive batch: B %d -> %d from step %d (B_simple = %.1f after step %d, predicted gain %.1f%% per step)",
            current,
            new,
            step + 2,
            b_simple,
            step,
            100 * gain,
        )
        return [
            {
                "event": EVENT,
                "step": step,
                "examples_seen": examples_seen,
                "from_step": step + 2,
                "global_batch_before": current,
                "global_batch": new,
                "noise_scale_simple": b_simple,
                "predicted_gain": gain,
            }
        ]
