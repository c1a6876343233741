"""The loop's side of the gradient noise scale: per-step estimates, their EMAs, the regime warning.

Each measured step's ``final`` program (every step, or every n-th: ``train.noise_scale_every``)
returns squared norms measured where they are free
(``lbt.parallel.accumulate``, ``measure_noise=True``): ``grad_sq_device``, the mean over the D
devices of |A_d|^2, each device's gradient over its k b examples (b = M / D); ``grad_sq_big``,
|G_B|^2 of the all-reduced gradient over the step's B examples; and, where the device gradients
are not independent, ``grad_sq_micro``, the mean |g_i|^2 of the microbatch gradients of the first
k - 1 ``accum`` calls. :class:`NoiseScaleMonitor` turns them, record by record as
:class:`~lbt.train.metrics.PendingMetrics` reads the pending steps in one transfer (no host sync of
its own), into McCandlish et al.'s unbiased |G|^2 and tr(Σ) (2018, appendix A.1), by one of two
estimators (:func:`across_devices`): ``devices`` (D gradients of B / D examples against their mean)
or ``microbatches`` (:func:`lbt.schedules.noise.microbatch_stats`, for cross-replica ghost BN and
one device; steps with k >= 2 only). Then bias-corrected EMAs of both
(:class:`~lbt.schedules.noise.NoiseScaleEMA`; non-finite steps are skipped) and the smoothed
B_simple = tr(Σ) / |G|^2.

Its state (the EMA and the phases already warned about) is part of the checkpoint metadata
(:meth:`NoiseScaleMonitor.state_dict`), so a resumed run logs exactly the values of an
uninterrupted one; an adaptive batch mode can read the same logged, checkpointed state.

The regime warning: once the EMA has absorbed its time constant, ``ceil(1 / (1 - beta**n))``
measured steps (about ``1 / (1 - beta)`` steps; n = ``train.noise_scale_every``), a
step whose planned B exceeds ``schedule.batch.regime_factor`` × B_simple logs one warning for its
phase and writes a ``noise_regime`` event to metrics.jsonl (Smith, Elsen & De 2020's
curvature-dominated regime; see :data:`lbt.schedules.noise.DEFAULT_REGIME_FACTOR`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from lbt.schedules import noise as noise_lib

log = logging.getLogger("lbt")

#: The event written when a phase's B is past the measured critical batch.
REGIME_EVENT = "noise_regime"


def across_devices(ghost_batch_size: int, microbatch: int, num_devices: int) -> bool:
    """True when the D per-device gradients are independent samples of B / D examples each (D >= 2
    and every ghost group inside one device, G <= b = M / D): the ``devices`` estimator. Otherwise
    (cross-replica ghost BN, or one device) the ``microbatches`` estimator runs, from steps with
    k >= 2 (:func:`lbt.schedules.noise.microbatch_stats`): with cross-replica ghost BN the shares of
    a group's gradient on its G / b devices are correlated, and taking them for independent
    samples overstated tr(Σ) (measured on digits: |G|^2 came out negative)."""
    b = microbatch // num_devices
    return num_devices >= 2 and (ghost_batch_size or microbatch) <= b


class NoiseScaleMonitor:
    """Estimates, EMAs and the regime warning of one run (see the module docstring).

    ``num_devices`` D, ``microbatch`` M and ``ghost_batch_size`` G choose the estimator
    (:func:`across_devices`); ``beta`` is the EMA factor per step (``train.noise_scale_ema``),
    ``factor`` the regime factor (0 = no warning). With ``every`` = n > 1 the programs take the
    norms on every n-th step only (``train.noise_scale_every``; the others report
    ``noise_measured`` false and are not absorbed), and the EMA factor per measured step is
    beta**n, so the EMA's time constant stays 1 / (1 - beta) steps.
    """

    def __init__(
        self,
        num_devices: int,
        microbatch: int,
        ghost_batch_size: int,
        beta: float,
        factor: float,
        state: dict[str, Any] | None = None,
        adaptive: Any = None,
        every: int = 1,
    ):
        self.num_devices = int(num_devices)
        self.batch_small = int(microbatch) // self.num_devices
        self.across = across_devices(ghost_batch_size, microbatch, num_devices)
        self.every = max(1, int(every))
        self.beta = float(beta) ** self.every
        self.factor = float(factor)
        state = state or {}
        self.ema = noise_lib.NoiseScaleEMA.from_dict(state.get("ema"), self.beta)
        self.warned: list[int] = sorted(int(p) for p in state.get("warned_phases", []))
        self.min_steps = math.ceil(1.0 / (1.0 - self.beta)) if self.beta > 0 else 1
        #: the adaptive batch's decisions (:class:`lbt.train.adaptive.AdaptiveBatch`), or None
        self.adaptive = adaptive

    @property
    def estimator(self) -> str:
        return "devices" if self.across else "microbatches"

    def state_dict(self) -> dict[str, Any]:
        """The checkpointed state (JSON: the floats round-trip exactly)."""
        out = {"ema": self.ema.to_dict(), "warned_phases": list(self.warned), "every": self.every}
        if self.adaptive is not None:
            out["adaptive"] = self.adaptive.state_dict()
        return out

    @property
    def b_simple(self) -> float | None:
        return self.ema.b_simple

    def _estimate(self, B: int, k: int, dev: dict[str, Any]) -> tuple[float | None, int, tuple | None]:
        """(the small-batch squared norm, its batch size, the step's (|G|^2, tr Σ) or None)."""
        if not bool(dev.get("noise_measured", True)):  # train.noise_scale_every: not this step
            return None, B // self.num_devices if self.across else self.batch_small, None
        q, big = float(dev["grad_sq_device"]), float(dev["grad_sq_big"])
        if self.across:  # the D device gradients over B / D examples each, and their mean over B
            return q, B // self.num_devices, noise_lib.gradient_stats(q, big, B // self.num_devices, B)
        if k < 2 or "grad_sq_micro" not in dev:  # one batch size only in this step
            return None, self.batch_small, None
        s = float(dev["grad_sq_micro"])  # the microbatches (b examples, or b-example shares of ghost groups)
        return s, self.batch_small, noise_lib.microbatch_stats(s, q, big, k, B)

    def observe(self, rec: dict[str, Any], dev: dict[str, Any]) -> list[dict[str, Any]]:
        """Add the step's fields to its train record ``rec`` (device values ``dev``), update the
        EMAs (not for a non-finite step) and return the event records to write after it."""
        B, k = int(rec["global_batch"]), int(rec["microbatches"])
        small, b, est = self._estimate(B, k, dev)
        rec.update(grad_sq_norm_small=small, grad_sq_norm_big=float(dev["grad_sq_big"]), noise_batch_small=b)
        rec.update(noise_batch_big=B, noise_estimator=self.estimator if est is not None else None)
        rec.update(noise_g2_step=est[0] if est else None, noise_trace_step=est[1] if est else None)
        if est is not None and bool(dev["finite"]):
            self.ema = self.ema.update(*est)
        rec.update(
            grad_sq_norm_true=self.ema.g2_hat, grad_trace_sigma=self.ema.trace_hat, noise_scale_simple=self.b_simple
        )
        events = self._regime_events(rec)
        if self.adaptive is not None and self.ema.count >= self.min_steps:  # decisions on a settled EMA only
            events += self.adaptive.observe(int(rec["step"]), self.b_simple, int(rec["examples_seen"]))
        return events

    def _regime_events(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        phase, B, bs = int(rec["phase"]), int(rec["global_batch"]), self.b_simple
        if phase in self.warned or self.ema.count < self.min_steps:
            return []
        if not noise_lib.curvature_dominated(B, bs, self.factor):
            return []
        self.warned = sorted([*self.warned, phase])
        log.warning(
            "phase %d (step %d, epoch %.2f): B = %d is %.1f x the measured gradient noise scale B_simple = %.1f "
            "(> schedule.batch.regime_factor = %g): the curvature-dominated regime (Smith, Elsen & De 2020), "
            "where a larger batch saves few steps and costs examples (McCandlish et al. 2018, section 2.3); "
            "consider capping B near B_simple (schedule.batch.max_global_batch)",
            phase,
            rec["step"],
            rec["epoch"],
            B,
            B / bs,
            bs,
            self.factor,
        )
        return [
            {
                "event": REGIME_EVENT,
                "regime": "curvature_dominated",
                "phase": phase,
                "step": rec["step"],
                "examples_seen": rec["examples_seen"],
                "global_batch": B,
                "noise_scale_simple": bs,
                "regime_factor": self.factor,
            }
        ]


def unmeasurable_reason(ghost_batch_size: int, microbatch: int, num_devices: int, max_k: int) -> str | None:
    """Why no step of the run can measure the noise scale, or None if some can: without
    independent device gradients (:func:`across_devices`) the steps need k >= 2 microbatches."""
    if across_devices(ghost_batch_size, microbatch, num_devices) or max_k >= 2:
        return None
    b = microbatch // num_devices
    where = (
        "one device"
        if num_devices == 1
        else f"the ghost batch G spans {(ghost_batch_size or microbatch) // b} devices"
    )
    return (
        f"{where} and every step has one microbatch (k = 1), so each step sees one batch size only; "
        "a phase with B >= 2 M measures it"
    )
