"""The loop's side of the gradient noise scale: per-step estimates, their EMAs, the regime warning.

Each step's ``final`` program returns two squared norms, measured where they are free
(``lbt.parallel.accumulate``, ``measure_noise=True``): ``grad_sq_small``, the mean of |g_i|^2 over
the D·k microbatch gradients of b = M / D examples each device computed, and ``grad_sq_big``,
|G_B|^2 of the all-reduced gradient over the step's B examples. :class:`NoiseScaleMonitor` turns
them, record by record as :class:`~lbt.train.metrics.PendingMetrics` reads the pending steps in one
transfer (no host sync of its own), into McCandlish et al.'s unbiased |G|^2 and tr(Σ) (2018,
appendix A.1), bias-corrected EMAs of both (:class:`~lbt.schedules.noise.NoiseScaleEMA`; non-finite
steps are skipped) and the smoothed B_simple = tr(Σ) / |G|^2.

Its state (the EMA and the phases already warned about) is part of the checkpoint metadata
(:meth:`NoiseScaleMonitor.state_dict`), so a resumed run logs exactly the values of an
uninterrupted one; an adaptive batch mode can read the same logged, checkpointed state.

The regime warning: once the EMA has absorbed ``1 / (1 - beta)`` steps (its time constant), a
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


class NoiseScaleMonitor:
    """Estimates, EMAs and the regime warning of one run (see the module docstring).

    ``batch_small`` is b = M / D, the examples behind each small gradient; ``beta`` the EMA
    factor (``train.noise_scale_ema``); ``factor`` the regime factor (0 = no warning).
    """

    def __init__(self, batch_small: int, beta: float, factor: float, state: dict[str, Any] | None = None):
        self.batch_small = int(batch_small)
        self.beta = float(beta)
        self.factor = float(factor)
        state = state or {}
        self.ema = noise_lib.NoiseScaleEMA.from_dict(state.get("ema"), self.beta)
        self.warned: list[int] = sorted(int(p) for p in state.get("warned_phases", []))
        self.min_steps = math.ceil(1.0 / (1.0 - self.beta)) if self.beta > 0 else 1

    def state_dict(self) -> dict[str, Any]:
        """The checkpointed state (JSON: the floats round-trip exactly)."""
        return {"ema": self.ema.to_dict(), "warned_phases": list(self.warned)}

    @property
    def b_simple(self) -> float | None:
        return self.ema.b_simple

    def observe(self, rec: dict[str, Any], dev: dict[str, Any]) -> list[dict[str, Any]]:
        """Add the step's fields to its train record ``rec`` (device values ``dev``), update the
        EMAs (not for a non-finite step) and return the event records to write after it."""
        small, big = float(dev["grad_sq_small"]), float(dev["grad_sq_big"])
        B = int(rec["global_batch"])
        rec.update(grad_sq_norm_small=small, grad_sq_norm_big=big, noise_batch_small=self.batch_small)
        rec["noise_batch_big"] = B
        est = noise_lib.step_estimates(small, big, self.batch_small, B)
        if est is not None and bool(dev["finite"]):
            self.ema = self.ema.update(*est)
        rec.update(
            grad_sq_norm_true=self.ema.g2_hat, grad_trace_sigma=self.ema.trace_hat, noise_scale_simple=self.b_simple
        )
        return self._regime_events(rec)

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


def unmeasurable_reason(ghost_batch_size: int, microbatch: int, num_devices: int) -> str | None:
    """Why the noise scale cannot be measured in this layout, or None if it can.

    The estimator needs the per-device microbatch gradients to be gradients of b = M / D
    independent examples. With cross-replica ghost BN (G > b) a ghost group's statistics span
    G / b devices, so each device's gradient is only its share of its group's gradient: the shares
    are correlated and tr(Σ) would be overstated (measured on digits: |G|^2 came out negative).
    """
    b = microbatch // num_devices
    G = ghost_batch_size or microbatch
    if G <= b:
        return None
    most = max(1, microbatch // G)
    return (
        f"the ghost batch G = {G} spans {G // b} devices (b = M/D = {b}), so the per-device gradients are "
        f"not independent samples; it is measured on at most {most} device(s) (b >= G), e.g. by lbt noise-scale"
    )
