"""Microbatch accumulation throughput: examples/s of one optimizer step at k = 1, 2, 4, 8.

An lbt optimizer step with global batch B = k * M runs the trainer's compiled ``accum`` program
k times and its ``apply`` program once (``lbt.parallel.accumulate.build_programs``, the same
programs ``lbt train`` uses, with the same ghost BN and optimizer). ``accum`` has no collective
(ghost groups are device-local here) and ``apply`` has exactly one all-reduce whatever k is, so the
work per example is the same at every k and the fixed cost per step (``apply``, one all-reduce,
the dispatches) is shared by more examples as k grows: examples/s at k = 8 should be at least
0.95 of k = 1 (in practice above 1).

For each model and k it reports

* ``examples_per_s``: B / (median wall time of one full step: k ``accum`` calls, one ``apply``,
  ``block_until_ready``), the microbatches already on the devices (the input pipeline is measured
  by ``benchmarks/input_pipeline.py``);
* ``ratio_to_k1``: ``examples_per_s`` / the same model's figure at k = 1;
* ``bare_examples_per_s``: a bare ``jax.jit`` training step over one batch of B examples sharded
  over the same devices (same model, same ghost BN groups, same optimizer, GSPMD partitioning):
  one program per batch size, the baseline accumulation competes with;
* ``ratio_to_bare``: ``examples_per_s`` / ``bare_examples_per_s``.

Compilation and a warm-up step are excluded. Repetitions are interleaved across k and lbt/bare
(the machine may be shared) and each figure is the median over repetitions. It prints one JSON
line on stdout (progress on stderr).

    python benchmarks/accumulation.py [--reps 7] [--models digits_cnn,cifar_wrn]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lbt import runtime  # noqa: E402

# lbt train's XLA:CPU settings; and 8 simulated devices on a few shared cores: a device thread can
# reach a collective long after its peers, so wait instead of aborting after XLA's default 40 s.
runtime.setup(collective_timeout_s=600, warn_stuck_s=120)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from lbt.config import base_config  # noqa: E402
from lbt.models import build_model  # noqa: E402
from lbt.parallel.accumulate import TrainPrograms, build_programs  # noqa: E402
from lbt.parallel.mesh import data_sharded, global_batch_array, make_mesh, replicated  # noqa: E402
from lbt.train.compiles import CompileCounter  # noqa: E402
from lbt.train.losses import cross_entropy  # noqa: E402
from lbt.train.optim import make_optimizer  # noqa: E402
from lbt.train.state import TrainState, init_state  # noqa: E402

KS = (1, 2, 4, 8)
LR, MOMENTUM = 0.01, 0.9


def model_configs() -> dict[str, tuple[Any, tuple[int, int, int], Callable]]:
    """name -> (config, image shape, model transform). Both use M = 64 (b = 8 per device), G = 8."""
    cnn = base_config()  # the digits recipe's CNN: width 32, 8x8x1 inputs
    cnn.train.global_microbatch = 64
    cnn.model.ghost_batch_size = 8
    wrn = base_config()  # a CIFAR-size model: WRN-16-1 (pre-activation, 0.18M params) at 32x32x3
    wrn.model.name = "wrn16_4"
    wrn.train.global_microbatch = 64
    wrn.model.ghost_batch_size = 8
    return {
        "digits_cnn": (cnn, (8, 8, 1), lambda m: m),
        "cifar_wrn16_1": (wrn, (32, 32, 3), lambda m: m.clone(widen=1)),
    }


def bare_step(model, tx, num_classes: int, mesh) -> Callable:
    """A plain jitted data-parallel step over one whole batch (BN groups by example index)."""

    def step(state: TrainState, images, labels, lr, momentum):
        def loss_fn(params):
            logits, new = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
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


class Case:
    """One model: the lbt programs and the bare step, their states and device-resident data."""

    def __init__(self, name: str, config, image_shape: tuple[int, int, int], transform: Callable):
        self.name = name
        self.counter = CompileCounter()  # XLA compiles during lbt steps
        self.mesh = make_mesh()
        n = self.mesh.devices.size
        self.M = int(config.train.global_microbatch)
        # build_model's ghost BN works on b = M / n examples inside shard_map ...
        self.model = transform(build_model(config, 10, n))
        # ... and the bare step's on the whole batch under jit: same groups of G consecutive examples
        self.bare_model = transform(build_model(config, 10, 1))
        self.tx = make_optimizer(config)
        self.progs: TrainPrograms = build_programs(
            self.model, self.tx, self.mesh, num_classes=10, bn_momentum=config.model.bn_momentum
        )
        self.bare = bare_step(self.bare_model, self.tx, 10, self.mesh)
        self.state = init_state(self.model, self.tx, self.mesh, image_shape, seed=0)
        self.bare_state = init_state(self.bare_model, self.tx, self.mesh, image_shape, seed=0)
        self.acc = self.progs.zeros_acc(self.state)
        rng = np.random.default_rng(0)
        kmax = max(KS)
        images = rng.normal(size=(kmax * self.M,) + image_shape).astype(np.float32)
        labels = rng.integers(0, 10, size=(kmax * self.M,)).astype(np.int32)
        self.micro = [
            (
                global_batch_array(self.mesh, images[i * self.M : (i + 1) * self.M], self.M),
                global_batch_array(self.mesh, labels[i * self.M : (i + 1) * self.M], self.M),
            )
            for i in range(kmax)
        ]
        self.full = {
            k: (
                global_batch_array(self.mesh, images[: k * self.M], k * self.M),
                global_batch_array(self.mesh, labels[: k * self.M], k * self.M),
            )
            for k in KS
        }
        self.lr, self.mom = np.float32(LR), np.float32(MOMENTUM)

    def time_lbt(self, k: int) -> float:
        """Seconds for one lbt optimizer step with B = k * M."""
        with self.counter.training():
            t = time.perf_counter()
            acc = self.acc
            for i in range(k):
                x, y = self.micro[i]
                acc = self.progs.accum(self.state, acc, x, y)
            self.state, self.acc, metrics = self.progs.apply(self.state, acc, np.int32(k), self.lr, self.mom)
            jax.block_until_ready((self.state, self.acc, metrics))
            return time.perf_counter() - t

    def time_bare(self, k: int) -> float:
        """Seconds for one bare jitted step over one batch of k * M examples."""
        x, y = self.full[k]
        t = time.perf_counter()
        self.bare_state, loss = self.bare(self.bare_state, x, y, self.lr, self.mom)
        jax.block_until_ready((self.bare_state, loss))
        return time.perf_counter() - t


def run(names: list[str], reps: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """Per-(model, k) results, and per model the XLA compiles during lbt steps (warm-up / timed)."""
    configs = model_configs()
    results, compiles = [], {}
    for name in names:
        config, shape, transform = configs[name]
        print(f"[accumulation] {name}: build and compile", file=sys.stderr, flush=True)
        case = Case(name, config, shape, transform)
        for k in KS:  # warm-up: compiles (lbt: once for every k; bare: once per k) and one step each
            case.time_lbt(k)
            case.time_bare(k)
        warm = case.counter.train
        times: dict[tuple[str, int], list[float]] = {(kind, k): [] for kind in ("lbt", "bare") for k in KS}
        order = list(KS)
        for r in range(reps):
            # interleave k and lbt/bare, and rotate the order, so load drift hits every cell alike
            rot = order[r % len(order) :] + order[: r % len(order)]
            for k in rot:
                times["lbt", k].append(case.time_lbt(k))
                times["bare", k].append(case.time_bare(k))
            print(f"[accumulation] {name}: rep {r + 1}/{reps}", file=sys.stderr, flush=True)
        rate = {key: key[1] * case.M / statistics.median(v) for key, v in times.items()}
        for k in KS:
            results.append(
                {
                    "model": name,
                    "k": k,
                    "global_batch": k * case.M,
                    "examples_per_s": round(rate["lbt", k], 1),
                    "ratio_to_k1": round(rate["lbt", k] / rate["lbt", 1], 3),
                    "bare_examples_per_s": round(rate["bare", k], 1),
                    "ratio_to_bare": round(rate["lbt", k] / rate["bare", k], 3),
                    "step_ms_median": round(1000 * statistics.median(times["lbt", k]), 2),
                    "step_ms_min": round(1000 * min(times["lbt", k]), 2),
                }
            )
        # expected: accum and apply compiled once each in the warm-up for all four k, none after
        compiles[name] = {"warmup": warm, "timed": case.counter.train - warm}
        case.counter.close()
    return results, compiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per (model, k, lbt/bare)")
    ap.add_argument(
        "--models", default="digits_cnn,cifar_wrn16_1", help="comma-separated: " + ", ".join(model_configs())
    )
    args = ap.parse_args()
    results, compiles = run(args.models.split(","), args.reps)
    devices = jax.devices()
    machine = (
        f"{os.cpu_count()}-core CPU, {len(devices)} simulated XLA CPU devices"
        if devices[0].platform == "cpu"
        else f"{len(devices)} x {devices[0].device_kind}"
    )
    out = {
        "benchmark": "accumulation",
        "machine": machine,
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "global_microbatch": 64,
        "reps": args.reps,
        "min_ratio_k8_to_k1": min(r["ratio_to_k1"] for r in results if r["k"] == 8),
        "lbt_compiles": compiles,
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
