"""Helpers shared by the benchmarks (import after ``lbt.runtime.setup``: this imports JAX)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lbt.parallel.accumulate import normalize_on_device
from lbt.parallel.mesh import data_sharded, replicated
from lbt.train.losses import cross_entropy
from lbt.train.state import TrainState


def run_info() -> dict[str, Any]:
    """Machine, date and versions, for the JSON line."""
    devices = jax.devices()
    if devices[0].platform == "cpu":
        machine = f"{os.cpu_count()}-core {platform.machine()} CPU, {len(devices)} simulated XLA CPU devices"
    else:
        machine = f"{len(devices)} x {devices[0].device_kind}"
    return {
        "machine": machine,
        "backend": jax.default_backend(),
        "devices": len(devices),
        "cpu_cores": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def bare_step(model, tx, num_classes: int, mesh, lut: np.ndarray | None = None) -> Callable:
    """A plain jitted data-parallel step over one whole batch (GSPMD; BN groups by example index):
    the baseline that compiles one program per batch size."""

    def step(state: TrainState, images, labels, lr, momentum):
        x = normalize_on_device(images, lut)

        def loss_fn(params):
            logits, new = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return cross_entropy(logits, labels, num_classes).mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        opt_state = state.opt_state
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        opt_state.hyperparams["momentum"] = jnp.asarray(momentum, jnp.float32)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, stats, opt_state, state.step + 1), loss

    rep, shard = replicated(mesh), data_sharded(mesh)
    return jax.jit(step, in_shardings=(rep, shard, shard, rep, rep), out_shardings=(rep, rep), donate_argnums=(0,))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def rounded(values: Sequence[float], digits: int = 3) -> list[float]:
    return [round(v, digits) for v in values]


def median_ci(values: Sequence[float], level: float = 0.95, resamples: int = 4000, seed: int = 0) -> list[float]:
    """A bootstrap confidence interval of the median of ``values`` (percentile method; fixed seed, so
    a JSON line is reproducible from its own numbers)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return [float(x[0]), float(x[0])] if x.size else []
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]


def cluster_median_ci(
    groups: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> list[float]:
    """A bootstrap confidence interval of the median of the pooled ``groups`` (e.g. the repetitions
    of several processes, each of which may carry its own bias: compiled code and buffer layout):
    resample the groups, then the values within each (two-stage cluster bootstrap; fixed seed)."""
    gs = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if len(gs) < 2:
        return median_ci(gs[0] if gs else [], level, resamples, seed)
    rng = np.random.default_rng(seed)
    medians = np.empty(resamples)
    for r in range(resamples):
        pick = rng.integers(0, len(gs), size=len(gs))
        medians[r] = np.median(np.concatenate([gs[i][rng.integers(0, gs[i].size, size=gs[i].size)] for i in pick]))
    lo, hi = np.quantile(medians, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(lo), 4), round(float(hi), 4)]
