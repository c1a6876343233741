"""Noise-scale overhead: the same step and the same run with ``train.measure_noise_scale`` on and off.

The measurement (``lbt.parallel.accumulate``, ``measure_noise=True``, the ``devices`` estimator)
adds to ``final`` the squared norm of the device's accumulated gradient, one more float32 to the
step's one all-reduce and the squared norm of the reduced gradient, nothing to ``accum``, and a
few float operations per record where the loop already reads the step's metrics
(``lbt.train.noise_scale``). This measures what that costs,
on the digits CNN of ``base_config()`` (M = 64, ghost batch G = 8 so that b = M / D = 8 >= G and the
noise scale is measured on all 8 simulated devices), for B = 64 (k = 1) and B = 512 (k = 8):

* ``programs``: the step alone, k - 1 ``accum`` + ``final`` with the microbatches already on the
  devices, built both ways from the same model; each repetition times a cell of ``--cell-steps``
  steps of each variant, after one untimed step of the same variant, in alternating order, with at
  most one step in flight (as the Trainer on CPU; an unbounded queue wedged XLA:CPU's simulated
  devices in an all-reduce once, docs/design.md refinement 8); and XLA's cost analysis (FLOPs and
  bytes accessed) of ``accum`` and ``final`` on / off, which no load on the host distorts;
* ``trainer``: whole ``Trainer`` runs (progress bar off, eval only at the end, no periodic
  checkpoint), ``summary['train_examples_per_s']`` (compiles, eval and checkpoint excluded), and
  the process CPU time per step (every thread), as ``benchmarks/loop_overhead.py`` measures it.

Each repetition's on/off ratio is paired; every figure is a median of those pairs, with a bootstrap
95% interval of that median (``*_ci95``). Program cells are cheap (no compile, no run set-up), so
``--program-reps`` of them can be many more than the Trainer runs (``--reps``); on this noisy
host (one cell varies by about 10%) only hundreds of pairs narrow the interval to about 1%. The
headline ``overhead`` is 1 - the lowest programs paired median over the cases (the target is
< 0.02), with ``overhead_ci95``; ``cpu_overhead`` the same in CPU time; ``trainer_overhead``
(and ``trainer_overhead_ci95``) the same for whole Trainer runs, which few repetitions leave wide.

    python benchmarks/noise_scale_overhead.py [--reps 9] [--program-reps 9] [--steps 200,40] [--cell-steps 30,6]
        [--cases ...] [--quick]

One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LBT_COMPILE_CACHE_DIR", "")  # no persistent compile cache: real compiles
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lbt import runtime  # noqa: E402

runtime.setup(collective_timeout_s=600, warn_stuck_s=120)
import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import median, median_ci, rounded, run_info  # noqa: E402
from loop_overhead import CpuTrainer  # noqa: E402  (the Trainer with its CPU time per step)

from lbt.config import base_config  # noqa: E402
from lbt.data.registry import train_size  # noqa: E402
from lbt.parallel.accumulate import build_programs  # noqa: E402
from lbt.parallel.mesh import global_batch_array  # noqa: E402
from lbt.train.loop import Trainer, grad_reduction  # noqa: E402

M, G = 64, 8
CASES = {"B64_k1": 64, "B512_k8": 512}
TARGET = 0.02


def make_config(B: int, steps: int, measure: bool):
    """base_config()'s digits CNN at constant B and LR, G = 8, ``steps`` optimizer steps, quiet."""
    c = base_config()
    c.name = f"noise_overhead_B{B}"
    c.model.ghost_batch_size = G
    c.train.global_microbatch = M
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    c.train.measure_noise_scale = measure
    c.checkpoint.every_epochs, c.checkpoint.every_examples, c.checkpoint.every_minutes = 0.0, 0, 0.0
    s = c.schedule
    s.global_batch = B
    s.lr.name, s.lr.milestones, s.batch.mode = "constant", (), "decay_lr"
    s.epochs = steps * B / train_size(c)
    return c


class Programs:
    """Both variants of the step (the Trainer's model, optimizer, data and reduction)."""

    def __init__(self, B: int):
        with tempfile.TemporaryDirectory() as wd:
            t = Trainer(make_config(B, 1, True), wd)  # only built: model, optimizer, mesh, stream
        t.counter.close()  # compiles are not counted here
        assert t.measure_noise, t.noise_unmeasurable
        self.k = B // M
        self.init = t._init_state
        kw = dict(num_classes=t.splits.num_classes, bn_momentum=0.9, input_lut=t.splits.train.input_lut)
        off = build_programs(t.model, t.tx, t.mesh, **kw, reduction=grad_reduction(t.config), measure_noise=False)
        self.progs = {"on": t.programs, "off": off}
        self.batches = [
            tuple(global_batch_array(t.mesh, a, M) for a in t.stream.local_microbatch(i * M)) for i in range(self.k)
        ]
        self.state = {v: self.init() for v in self.progs}
        self.acc = {v: p.zeros_acc(self.state[v]) for v, p in self.progs.items()}
        self.hyper = np.int32(self.k), np.float32(0.0), np.float32(0.9)  # LR 0: the same point every step

    def cost_ratios(self) -> dict[str, float]:
        """XLA's cost analysis of ``accum`` and ``final``, on / off: FLOPs and bytes accessed
        (deterministic, unlike the timings)."""
        out = {}
        x, y = self.batches[-1]
        for name in ("accum", "final"):
            cost = {}
            for v, progs in self.progs.items():
                state = self.state[v]
                acc = self.acc[v]
                low = (
                    progs.accum.lower(state, acc, x, y)
                    if name == "accum"
                    else progs.final.lower(state, acc, x, y, *self.hyper)
                )
                ca = low.compile().cost_analysis()
                cost[v] = ca[0] if isinstance(ca, list) else ca
            for key, label in (("flops", "flops"), ("bytes accessed", "bytes")):
                out[f"{name}_{label}_on_vs_off"] = round(cost["on"][key] / cost["off"][key], 4)
        return out

    def step(self, v: str):
        progs, acc = self.progs[v], self.acc[v]
        for x, y in self.batches[:-1]:
            acc = progs.accum(self.state[v], acc, x, y)
        self.state[v], self.acc[v], m = progs.final(self.state[v], acc, *self.batches[-1], *self.hyper)
        return m

    def cell(self, v: str, steps: int) -> tuple[float, float]:
        """(examples/s, CPU ms per step) of ``steps`` steps of variant ``v`` after one untimed step."""
        jax.block_until_ready(self.step(v))
        c0, t0 = time.process_time(), time.perf_counter()
        prev = None
        for _ in range(steps):
            m = self.step(v)
            if prev is not None:  # at most one step in flight, as the Trainer on CPU: a deep queue of
                jax.block_until_ready(prev["loss"])  # dispatched all-reduces wedged XLA:CPU here once
            prev = m
        jax.block_until_ready((m, self.state[v]))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return steps * self.k * M / wall, 1000 * cpu / steps


def run_trainer(B: int, steps: int, measure: bool) -> tuple[float, float, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as wd:
        t = CpuTrainer(make_config(B, steps, measure), wd)
        s = t.run()
    return s["train_examples_per_s"], 1000 * t.cpu.seconds / (s["optimizer_steps"] - 1), s


def paired(on: list[float], off: list[float], invert: bool = False) -> tuple[float, list[float]]:
    """Median of the per-repetition ratios on/off (off/on with ``invert``: CPU time, 1 = no cost)."""
    ratios = [(b / a) if invert else (a / b) for a, b in zip(on, off, strict=True)]
    return round(median(ratios), 4), rounded(ratios, 4)


def run_case(B: int, steps: int, cell_steps: int, reps: int, program_reps: int) -> dict[str, Any]:
    progs = Programs(B)
    for v in progs.progs:  # compile both
        jax.block_until_ready(progs.step(v))
    prog = {v: ([], []) for v in progs.progs}
    trainer = {v: ([], []) for v in ("on", "off")}
    summary_on: dict[str, Any] = {}
    for r in range(program_reps):  # >= reps: the first reps repetitions also run the Trainer
        order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
        for v in order:
            eps, cpu = progs.cell(v, cell_steps)
            prog[v][0].append(eps)
            prog[v][1].append(cpu)
        if r >= reps:
            continue  # program cells only (they are cheap: no compile, no run set-up)
        for v in order:
            eps, cpu, s = run_trainer(B, steps, v == "on")
            trainer[v][0].append(eps)
            trainer[v][1].append(cpu)
            summary_on = s if v == "on" else summary_on
        print(
            f"[noise_scale_overhead] B={B} rep {r + 1}/{reps}: programs on/off "
            f"{prog['on'][0][-1] / prog['off'][0][-1]:.3f}, trainer on/off {trainer['on'][0][-1] / trainer['off'][0][-1]:.3f}",
            file=sys.stderr,
            flush=True,
        )
    row: dict[str, Any] = {"global_batch": B, "k": B // M, "trainer_steps": steps, "cell_steps": cell_steps}
    for kind, data in (("programs", prog), ("trainer", trainer)):
        row[f"{kind}_on_vs_off_paired_median"], row[f"{kind}_on_vs_off_paired"] = paired(data["on"][0], data["off"][0])
        row[f"{kind}_cpu_on_vs_off_paired_median"], row[f"{kind}_cpu_on_vs_off_paired"] = paired(
            data["on"][1], data["off"][1], invert=True
        )
        row[f"{kind}_on_vs_off_paired_ci95"] = median_ci(row[f"{kind}_on_vs_off_paired"])
        row[f"{kind}_cpu_on_vs_off_paired_ci95"] = median_ci(row[f"{kind}_cpu_on_vs_off_paired"])
        for v in ("on", "off"):
            row[f"{kind}_{v}_examples_per_s_median"] = round(median(data[v][0]), 1)
            row[f"{kind}_{v}_cpu_ms_per_step_median"] = round(median(data[v][1]), 3)
    row["trainer_noise_scale_simple"] = summary_on.get("noise_scale_simple")
    row["cost_analysis"] = progs.cost_ratios()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9, help="interleaved (on, off) pairs per case")
    ap.add_argument("--steps", default="200,40", help="optimizer steps per Trainer run for B = 64, 512")
    ap.add_argument("--cell-steps", default="30,6", help="steps per timed program cell for B = 64, 512")
    ap.add_argument(
        "--program-reps", type=int, default=0, help="interleaved program-cell pairs per case (default: --reps)"
    )
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument(
        "--quick", action="store_true", help="1 rep of short runs of B64_k1 (the test; figures not meaningful)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lbt").setLevel(logging.WARNING)
    if args.quick:
        args.reps, args.steps, args.cell_steps, args.cases = 1, "6,3", "3,2", "B64_k1"
        args.program_reps = 2
    args.program_reps = max(args.program_reps, args.reps)  # default 0: as many as --reps
    steps = dict(zip(CASES, (int(s) for s in args.steps.split(",")), strict=True))
    cells = dict(zip(CASES, (int(s) for s in args.cell_steps.split(",")), strict=True))
    cases = {}
    for name in args.cases.split(","):
        B = CASES[name]
        with contextlib.redirect_stdout(sys.stderr):  # nothing but the JSON line on stdout
            cases[name] = run_case(B, steps[name], cells[name], args.reps, args.program_reps)
    worst_case = min(cases.values(), key=lambda c: c["programs_on_vs_off_paired_median"])
    worst = worst_case["programs_on_vs_off_paired_median"]
    worst_cpu = min(c["programs_cpu_on_vs_off_paired_median"] for c in cases.values())
    lo, hi = worst_case["programs_on_vs_off_paired_ci95"]
    worst_trainer = min(cases.values(), key=lambda c: c["trainer_on_vs_off_paired_median"])
    t_lo, t_hi = worst_trainer["trainer_on_vs_off_paired_ci95"]
    out = {
        "benchmark": "noise_scale_overhead",
        **run_info(),
        "model": "cnn (base_config digits), ghost batch 8",
        "global_microbatch": M,
        "reps": args.reps,
        "program_reps": args.program_reps,
        "quick": args.quick,
        "target": TARGET,
        "overhead": round(1 - worst, 4),
        "overhead_ci95": [round(1 - hi, 4), round(1 - lo, 4)],
        "cpu_overhead": round(1 - worst_cpu, 4),
        "trainer_overhead": round(1 - worst_trainer["trainer_on_vs_off_paired_median"], 4),
        "trainer_overhead_ci95": [round(1 - t_hi, 4), round(1 - t_lo, 4)],
        "meets_target": 1 - worst < TARGET,
        "cases": cases,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
