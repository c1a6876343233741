"""Microbatch accumulation throughput: examples/s of one optimizer step at k = 1, 2, 4, 8.

An lbt optimizer step with global batch B = k * M runs what the trainer runs: its compiled
``accum`` program k - 1 times and its ``final`` program once (``lbt.parallel.accumulate
.build_programs``, with the same ghost BN and optimizer). ``accum`` has no collective (ghost groups
are device-local here) and ``final`` has exactly one reduction whatever k is, so the work per
example is the same at every k and the fixed cost per step (the reduction, the update, the
dispatches) is shared by more examples as k grows: examples/s at k = 8 should be at least 0.95 of
k = 1.

The baseline, ``bare``, is a plain ``jax.jit`` training step over one batch of B examples sharded
over the same devices (same model, same ghost BN groups, same optimizer, GSPMD partitioning): one
program per batch size.

Cells and order. A cell is one (kind, k): ``lbt`` (for each ``--reduction``) or ``bare``. On a
CPU host a step's time depends on what ran just before it (a WRN step at k = 1 took 168 ms right
after the bare step at B = 512, 86 ms after a step of its own kind), so every timed cell is
preceded by one untimed step of the same kind (same program, same k), and the cells run in a
seeded random order that changes every repetition. A cell times ``steps_per_cell`` consecutive
steps (chosen per cell in the warm-up so that a cell lasts about ``--cell-s``) and reports the mean
step time; ``switch_ms_median`` is the untimed step's time (the cost of following another kind of
step). Compilation and a warm-up step per cell are excluded.

Figures per model and k: ``examples_per_s`` (B / the median step time), ``ratio_to_k1`` and
``ratio_to_bare`` (ratios of those medians), and the paired figures: the ratio within each
repetition (lbt / bare at the same k, k / k = 1 of the same kind), their median and the
per-repetition list. ``min_ratio_k8_to_k1`` is the smallest paired median at k = 8 over the models
(the first ``--reduction``, what ``lbt train`` runs on this backend). With two reductions,
``per_leaf_vs_flat_paired_median`` gives per_leaf / flat throughput, paired. ``cpu_*`` figures are
the same ratios in process CPU time (all threads) instead of wall time: the CPU cost per example,
which other jobs on shared cores distort far less. One JSON line on stdout.

    python benchmarks/accumulation.py [--reps 7] [--models digits_cnn,cifar_wrn16_1]
        [--reduction flat,per_leaf] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LBT_COMPILE_CACHE_DIR", "")  # no persistent compile cache: real compiles, counted
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lbt import runtime  # noqa: E402

# lbt train's XLA:CPU settings; and 8 simulated devices on a few shared cores: a device thread can
# reach a collective long after its peers, so wait instead of aborting after XLA's default 40 s.
runtime.setup(collective_timeout_s=600, warn_stuck_s=120)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import bare_step, median, rounded, run_info  # noqa: E402

from lbt.config import base_config  # noqa: E402
from lbt.models import build_model  # noqa: E402
from lbt.parallel.accumulate import REDUCTIONS, TrainPrograms, build_programs  # noqa: E402
from lbt.parallel.mesh import global_batch_array, make_mesh  # noqa: E402
from lbt.train.compiles import CompileCounter  # noqa: E402
from lbt.train.optim import make_optimizer  # noqa: E402
from lbt.train.state import init_state  # noqa: E402

KS = (1, 2, 4, 8)
LR, MOMENTUM = 0.01, 0.9
SEED = 0


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


class Case:
    """One model: the lbt programs (per reduction) and the bare step, their states and device data."""

    def __init__(self, config, image_shape: tuple[int, int, int], transform: Callable, reductions: list[str]):
        self.mesh = make_mesh()
        n = self.mesh.devices.size
        self.M = int(config.train.global_microbatch)
        # build_model's ghost BN works on b = M / n examples inside shard_map ...
        model = transform(build_model(config, 10, n))
        # ... and the bare step's on the whole batch under jit: same groups of G consecutive examples
        bare_model = transform(build_model(config, 10, 1))
        tx = make_optimizer(config)
        self.counters = {r: CompileCounter() for r in reductions}  # XLA compiles during lbt steps
        self.bare_counter = CompileCounter()
        self.progs: dict[str, TrainPrograms] = {
            r: build_programs(model, tx, self.mesh, num_classes=10, bn_momentum=config.model.bn_momentum, reduction=r)
            for r in reductions
        }
        self.bare = bare_step(bare_model, tx, 10, self.mesh)
        self.state = {r: init_state(model, tx, self.mesh, image_shape, seed=0) for r in reductions}
        self.acc = {r: self.progs[r].zeros_acc(self.state[r]) for r in reductions}
        self.bare_state = init_state(bare_model, tx, self.mesh, image_shape, seed=0)
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

    def _lbt(self, reduction: str, k: int) -> None:
        """One lbt optimizer step with B = k * M, as the loop runs it: k - 1 accum + final."""
        progs, acc, state = self.progs[reduction], self.acc[reduction], self.state[reduction]
        with self.counters[reduction].training():
            for i in range(k - 1):
                acc = progs.accum(state, acc, *self.micro[i])
            state, acc, metrics = progs.final(state, acc, *self.micro[k - 1], np.int32(k), self.lr, self.mom)
        self.state[reduction], self.acc[reduction] = state, acc
        jax.block_until_ready((state, acc, metrics))

    def _bare(self, k: int) -> None:
        """One bare jitted step over one batch of k * M examples."""
        with self.bare_counter.training():
            self.bare_state, loss = self.bare(self.bare_state, *self.full[k], self.lr, self.mom)
        jax.block_until_ready((self.bare_state, loss))

    def step(self, kind: str, k: int) -> float:
        """Seconds for one step of ``kind`` ('bare' or a reduction) at k."""
        t = time.perf_counter()
        if kind == "bare":
            self._bare(k)
        else:
            self._lbt(kind, k)
        return time.perf_counter() - t

    def close(self) -> None:
        for c in [*self.counters.values(), self.bare_counter]:
            c.close()


def paired(num: list[float], den: list[float]) -> tuple[float, list[float]]:
    """Per-repetition num / den and its median."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    return round(median(r), 3), rounded(r)


def run_model(name: str, reps: int, reductions: list[str], cell_s: float, rng: random.Random) -> dict[str, Any]:
    config, shape, transform = model_configs()[name]
    print(f"[accumulation] {name}: build and compile", file=sys.stderr, flush=True)
    case = Case(config, shape, transform, reductions)
    kinds = [*reductions, "bare"]
    cells = [(kind, k) for kind in kinds for k in KS]
    steps: dict[tuple[str, int], int] = {}
    for cell in cells:  # warm-up: compiles (lbt: accum and final once for all k; bare: once per k)
        case.step(*cell)
        steps[cell] = max(1, round(cell_s / case.step(*cell)))
    warm = {r: case.counters[r].train for r in reductions}
    bare_warm = case.bare_counter.train
    times: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    switch: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}
    cpu: dict[tuple[str, int], list[float]] = {cell: [] for cell in cells}  # process CPU s per step
    for r in range(reps):
        order = cells[:]
        rng.shuffle(order)  # a new seeded order every repetition
        for cell in order:
            switch[cell].append(case.step(*cell))  # untimed for the figures: follows another kind of step
            n = steps[cell]
            c0 = time.process_time()
            times[cell].append(sum(case.step(*cell) for _ in range(n)) / n)
            cpu[cell].append((time.process_time() - c0) / n)
        print(f"[accumulation] {name}: rep {r + 1}/{reps}", file=sys.stderr, flush=True)
    M = case.M
    rate = {cell: [cell[1] * M / t for t in v] for cell, v in times.items()}
    med = {cell: cell[1] * M / median(v) for cell, v in times.items()}
    cpu_rate = {cell: [cell[1] * M / t for t in v] for cell, v in cpu.items()}  # examples per CPU second
    results = []
    for kind in kinds:
        for k in KS:
            cell = (kind, k)
            row: dict[str, Any] = {
                "model": name,
                "kind": "bare" if kind == "bare" else "lbt",
                "reduction": None if kind == "bare" else kind,
                "k": k,
                "global_batch": k * M,
                "steps_per_cell": steps[cell],
                "examples_per_s": round(med[cell], 1),
                "ratio_to_k1": round(med[cell] / med[kind, 1], 3),
                "step_ms_median": round(1000 * median(times[cell]), 2),
                "step_ms_min": round(1000 * min(times[cell]), 2),
                "switch_ms_median": round(1000 * median(switch[cell]), 2),
                "cpu_ms_per_step_median": round(1000 * median(cpu[cell]), 2),
            }
            row["ratio_to_k1_paired_median"], row["ratio_to_k1_paired"] = paired(rate[cell], rate[kind, 1])
            row["cpu_ratio_to_k1_paired_median"], _ = paired(cpu_rate[cell], cpu_rate[kind, 1])
            if kind != "bare":
                row["bare_examples_per_s"] = round(med["bare", k], 1)
                row["ratio_to_bare"] = round(med[cell] / med["bare", k], 3)
                row["ratio_to_bare_paired_median"], row["ratio_to_bare_paired"] = paired(rate[cell], rate["bare", k])
                # the same in CPU time (all threads): examples per CPU second, lbt / bare
                row["cpu_ratio_to_bare_paired_median"], _ = paired(cpu_rate[cell], cpu_rate["bare", k])
                if kind != reductions[0]:
                    ref = (reductions[0], k)
                    row[f"ratio_to_{reductions[0]}_paired_median"], row[f"ratio_to_{reductions[0]}_paired"] = paired(
                        rate[cell], rate[ref]
                    )
            results.append(row)
    compiles = {r: {"warmup": warm[r], "timed": case.counters[r].train - warm[r]} for r in reductions}
    compiles["bare"] = {"warmup": bare_warm, "timed": case.bare_counter.train - bare_warm}
    case.close()
    return {"results": results, "compiles": compiles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions of every cell")
    ap.add_argument(
        "--models", default="digits_cnn,cifar_wrn16_1", help="comma-separated: " + ", ".join(model_configs())
    )
    ap.add_argument(
        "--reduction",
        default="flat,per_leaf",
        help="comma-separated of flat, per_leaf (build_programs(reduction=...)); the first is the headline",
    )
    ap.add_argument("--cell-s", type=float, default=0.3, help="target seconds of timed steps per cell")
    ap.add_argument("--seed", type=int, default=SEED, help="seed of the cell order")
    ap.add_argument("--quick", action="store_true", help="digits_cnn, flat only, 1 rep, short cells (the test)")
    args = ap.parse_args()
    if args.quick:
        args.models, args.reduction, args.reps, args.cell_s = "digits_cnn", "flat", 1, 0.03
    reductions = args.reduction.split(",")
    bad = [r for r in reductions if r not in REDUCTIONS]
    if bad or len(set(reductions)) != len(reductions):
        ap.error(f"--reduction: one or both of {', '.join(REDUCTIONS)}, got {args.reduction!r}")
    rng = random.Random(args.seed)
    results, compiles = [], {}
    for name in args.models.split(","):
        out = run_model(name, args.reps, reductions, args.cell_s, rng)
        results += out["results"]
        compiles[name] = out["compiles"]
    head = [r for r in results if r["kind"] == "lbt" and r["reduction"] == reductions[0]]
    summary: dict[str, Any] = {
        "min_ratio_k8_to_k1": min(r["ratio_to_k1_paired_median"] for r in head if r["k"] == 8),
        "ratio_to_bare_paired_median": {
            m: {r["k"]: r["ratio_to_bare_paired_median"] for r in head if r["model"] == m}
            for m in dict.fromkeys(r["model"] for r in head)
        },
    }
    summary["cpu_ratio_to_bare_paired_median"] = {
        m: {r["k"]: r["cpu_ratio_to_bare_paired_median"] for r in head if r["model"] == m}
        for m in dict.fromkeys(r["model"] for r in head)
    }
    if len(reductions) > 1:
        other = reductions[1]
        summary[f"{other}_vs_{reductions[0]}_paired_median"] = {
            m: {
                r["k"]: r[f"ratio_to_{reductions[0]}_paired_median"]
                for r in results
                if r["reduction"] == other and r["model"] == m
            }
            for m in dict.fromkeys(r["model"] for r in head)
        }
    out = {
        "benchmark": "accumulation",
        **run_info(),
        "global_microbatch": 64,
        "reps": args.reps,
        "quick": args.quick,
        "seed": args.seed,
        "cell_s": args.cell_s,
        "reductions": reductions,
        "lbt_step": "k-1 accum + final",
        "order": "seeded random order of cells per repetition; each timed cell after one untimed step of its kind",
        **summary,
        "compiles": compiles,
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
