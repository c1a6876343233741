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
host (one cell varies by about 10%) only hundreds of pairs narrow the interval to about 1%.
Within one process, though, the two compiled variants keep their own speed (code and buffer
layout): the paired medians of six processes ranged from 0.94 to 1.00. ``--processes P`` runs the
program cells in P fresh processes (``--program-reps`` pairs each), pools the pairs and gives the
interval of a two-stage bootstrap over processes, then pairs (``_common.cluster_median_ci``). The
headline ``overhead`` is 1 - the lowest programs paired median over the cases (the target is
< 0.02), with ``overhead_ci95``; ``cpu_overhead`` the same in CPU time; ``trainer_overhead``
(and ``trainer_overhead_ci95``) the same for whole Trainer runs, which few repetitions leave wide.

``--cost-models resnet50,wrn16_4,cnn`` adds ``model_costs``: XLA's cost analysis of ``accum`` and
``final`` on / off for a recipe's model at its per-device microbatch (ResNet-50 at 224x224, b = G =
32; WRN-16-4 at b = 16 with its cross-device G = 128, i.e. the ``microbatches`` estimator), compiled
from abstract inputs, and ``bound_overhead_k2``, the larger of the FLOPs and bytes ratios of a k = 2
step minus 1: what the measurement costs a compute- or memory-bound step, whatever the host.

    python benchmarks/noise_scale_overhead.py [--reps 9] [--program-reps 9] [--processes 1] [--steps 200,40]
        [--cell-steps 30,6] [--cases ...] [--cost-models ...] [--quick]

One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
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
from _common import cluster_median_ci, median, median_ci, rounded, run_info  # noqa: E402
from loop_overhead import CpuTrainer  # noqa: E402  (the Trainer with its CPU time per step)

from lbt.config import base_config  # noqa: E402
from lbt.data.registry import train_size  # noqa: E402
from lbt.models import build_model  # noqa: E402
from lbt.parallel.accumulate import build_programs  # noqa: E402
from lbt.parallel.mesh import data_sharded, global_batch_array, make_mesh  # noqa: E402
from lbt.train.loop import Trainer, grad_reduction, noise_scale_every  # noqa: E402
from lbt.train.noise_scale import across_devices  # noqa: E402
from lbt.train.optim import make_optimizer  # noqa: E402
from lbt.train.state import abstract_state  # noqa: E402

M, G = 64, 8
CASES = {"B64_k1": 64, "B512_k8": 512}
TARGET = 0.02
# --cost-models: (per-device microbatch b, ghost batch G, image side, classes) as in the recipes
# (configs/imagenet_resnet50_goyal8k.py: b = 8192 / 256 = G = 32; configs/cifar10_wrn16_4_*.py:
# M = G = 128, here b = 128 / D per device, so G spans the devices: the ``microbatches`` estimator)
COST_MODELS = {"resnet50": (32, 32, 224, 1000), "wrn16_4": (16, 128, 32, 10), "cnn": (8, 8, 8, 10)}


def make_config(B: int, steps: int, measure: bool, every: int = 0):
    """base_config()'s digits CNN at constant B and LR, G = 8, ``steps`` optimizer steps, quiet,
    the noise scale measured every ``every``-th step (0: the backend's default)."""
    c = base_config()
    c.name = f"noise_overhead_B{B}"
    c.model.ghost_batch_size = G
    c.train.global_microbatch = M
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    c.train.measure_noise_scale = measure
    c.train.noise_scale_every = every
    c.checkpoint.every_epochs, c.checkpoint.every_examples, c.checkpoint.every_minutes = 0.0, 0, 0.0
    s = c.schedule
    s.global_batch = B
    s.lr.name, s.lr.milestones, s.batch.mode = "constant", (), "decay_lr"
    s.epochs = steps * B / train_size(c)
    return c


class Programs:
    """Both variants of the step (the Trainer's model, optimizer, data and reduction)."""

    def __init__(self, B: int, every: int = 0):
        with tempfile.TemporaryDirectory() as wd:
            t = Trainer(make_config(B, 1, True, every), wd)  # only built: model, optimizer, mesh, stream
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


def _fusions(compiled) -> int:
    """Fusions in the optimized HLO (what XLA:CPU launches one by one)."""
    return sum(line.lstrip().startswith("%fusion") or " fusion(" in line for line in compiled.as_text().splitlines())


def model_cost(name: str) -> dict[str, Any]:
    """XLA's cost analysis of ``accum`` and ``final`` for a recipe's model on all devices, with the
    measurement on / off, compiled from abstract inputs (nothing runs, so ResNet-50 at 224x224 fits
    on a small host). The ratio of FLOPs and of bytes accessed bounds what the measurement costs
    a step that is compute- or memory-bound, as on an accelerator; it does not depend on the host."""
    b, ghost, side, classes = COST_MODELS[name]
    config = base_config()
    config.model.name, config.model.ghost_batch_size = name, ghost
    mesh = make_mesh()
    n = mesh.devices.size
    config.train.global_microbatch = b * n
    channels = 1 if name == "cnn" else 3
    image = (side, side, channels)
    tx = make_optimizer(config)
    lut = np.tile(np.linspace(-2.0, 2.0, 256, dtype=np.float32), (channels, 1))
    model = build_model(config, classes, n)
    state = abstract_state(model, tx, mesh, image, config.seed)
    shard = data_sharded(mesh)
    images = jax.ShapeDtypeStruct((b * n, *image), np.uint8, sharding=shard)
    labels = jax.ShapeDtypeStruct((b * n,), np.int32, sharding=shard)
    hyper = np.int32(2), np.float32(0.1), np.float32(0.9)
    norms = not across_devices(ghost, b * n, n)
    row: dict[str, Any] = {
        "per_device_microbatch": b,
        "ghost_batch_size": ghost,
        "image_shape": list(image),
        "estimator": "microbatches" if norms else "devices",
        "param_count": int(sum(np.prod(a.shape) for a in jax.tree.leaves(state.params))),
    }
    cost: dict[str, dict[str, dict[str, float]]] = {"accum": {}, "final": {}}
    for v, measure in (("on", True), ("off", False)):
        progs = build_programs(
            model,
            tx,
            mesh,
            num_classes=classes,
            bn_momentum=0.9,
            reduction="flat",
            input_lut=lut,
            measure_noise=measure,
            microbatch_norms=norms,
        )
        acc_shapes = jax.eval_shape(progs.zeros_acc, state)
        acc = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shard), acc_shapes)
        for prog in ("accum", "final"):
            print(f"[noise_scale_overhead] {name}: compile {prog} ({v})", file=sys.stderr, flush=True)
            extra = hyper if prog == "final" else ()
            compiled = getattr(progs, prog).lower(state, acc, images, labels, *extra).compile()
            ca = compiled.cost_analysis()
            ca = ca[0] if isinstance(ca, list) else ca
            cost[prog][v] = {"flops": ca["flops"], "bytes": ca["bytes accessed"], "fusions": _fusions(compiled)}
    for prog, c in cost.items():
        for key in ("flops", "bytes"):
            row[f"{prog}_{key}_on_vs_off"] = round(c["on"][key] / c["off"][key], 5)
        row[f"{prog}_fusions_on_off"] = [c["on"]["fusions"], c["off"]["fusions"]]
        row[f"{prog}_flops_per_example_off"] = round(c["off"]["flops"] / b, 1)
    # the larger of the two ratios over the step: k - 1 accum + final at the recipe's k = 2
    row["bound_overhead_k2"] = round(
        max(
            sum(cost[p]["on"][key] for p in cost) / sum(cost[p]["off"][key] for p in cost) - 1
            for key in ("flops", "bytes")
        ),
        5,
    )
    return row


def run_trainer(B: int, steps: int, measure: bool, every: int) -> tuple[float, float, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as wd:
        t = CpuTrainer(make_config(B, steps, measure, every), wd)
        s = t.run()
    return s["train_examples_per_s"], 1000 * t.cpu.seconds / (s["optimizer_steps"] - 1), s


def paired(on: list[float], off: list[float], invert: bool = False) -> tuple[float, list[float]]:
    """Median of the per-repetition ratios on/off (off/on with ``invert``: CPU time, 1 = no cost)."""
    ratios = [(b / a) if invert else (a / b) for a, b in zip(on, off, strict=True)]
    return round(median(ratios), 4), rounded(ratios, 4)


def program_cells(progs: Programs, cell_steps: int, reps: int) -> dict[str, tuple[list[float], list[float]]]:
    """``reps`` interleaved (on, off) pairs of program cells: variant -> (examples/s, CPU ms/step)."""
    prog: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in progs.progs}
    for r in range(reps):
        for v in ["on", "off"] if r % 2 == 0 else ["off", "on"]:
            eps, cpu = progs.cell(v, cell_steps)
            prog[v][0].append(eps)
            prog[v][1].append(cpu)
    return prog


def program_cells_in_process(
    name: str, cell_steps: str, reps: int, every: int
) -> dict[str, tuple[list[float], list[float]]]:
    """:func:`program_cells` in a fresh process (``--worker``), which compiles both variants anew."""
    cmd = [sys.executable, __file__, "--worker", name, "--program-reps", str(reps), "--cell-steps", cell_steps]
    cmd += ["--noise-every", str(every)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    return {v: tuple(c) for v, c in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def trainer_runs(
    B: int, steps: int, reps: int, every: int
) -> tuple[dict[str, tuple[list[float], list[float]]], dict[str, Any]]:
    """``reps`` interleaved (on, off) pairs of whole Trainer runs, and the last summary with it on."""
    trainer: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in ("on", "off")}
    summary_on: dict[str, Any] = {}
    for r in range(reps):
        for v in ["on", "off"] if r % 2 == 0 else ["off", "on"]:
            eps, cpu, s = run_trainer(B, steps, v == "on", every)
            trainer[v][0].append(eps)
            trainer[v][1].append(cpu)
            summary_on = s if v == "on" else summary_on
        ratio = trainer["on"][0][-1] / trainer["off"][0][-1]
        print(
            f"[noise_scale_overhead] B={B} trainer rep {r + 1}/{reps}: on/off {ratio:.3f}", file=sys.stderr, flush=True
        )
    return trainer, summary_on


def run_case(
    name: str, steps: int, cell_steps: str, reps: int, program_reps: int, processes: int, every: int = 0
) -> dict[str, Any]:
    B = CASES[name]
    cells = dict(zip(CASES, (int(s) for s in cell_steps.split(",")), strict=True))[name]
    progs = Programs(B, every)
    for v in progs.progs:  # compile both
        jax.block_until_ready(progs.step(v))
    if processes > 1:  # each process's compiled programs are one draw of their layout
        groups = []
        for p in range(processes):
            groups.append(program_cells_in_process(name, cell_steps, program_reps, every))
            g = groups[-1]
            ratio = median([a / b for a, b in zip(g["on"][0], g["off"][0], strict=True)])
            print(
                f"[noise_scale_overhead] B={B} process {p + 1}/{processes}: programs on/off {ratio:.4f}",
                file=sys.stderr,
            )
    else:
        groups = [program_cells(progs, cells, program_reps)]
    prog = {v: tuple(sum((list(g[v][i]) for g in groups), []) for i in (0, 1)) for v in ("on", "off")}
    trainer, summary_on = trainer_runs(B, steps, reps, every)
    row: dict[str, Any] = {"global_batch": B, "k": B // M, "trainer_steps": steps, "cell_steps": cells}
    row["program_processes"] = processes
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
    if processes > 1:  # the interval that counts the processes' own biases
        per = [[a / b for a, b in zip(g["on"][0], g["off"][0], strict=True)] for g in groups]
        cpu = [[b / a for a, b in zip(g["on"][1], g["off"][1], strict=True)] for g in groups]
        row["programs_per_process_paired_medians"] = [round(median(x), 4) for x in per]
        row["programs_on_vs_off_paired_ci95"] = cluster_median_ci(per)
        row["programs_cpu_on_vs_off_paired_ci95"] = cluster_median_ci(cpu)
    row["trainer_noise_scale_simple"] = summary_on.get("noise_scale_simple")
    row["cost_analysis"] = progs.cost_ratios()
    return row


def headline(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``overhead``: 1 - the lowest programs paired median over the cases, with its interval; the
    same in CPU time and for whole Trainer runs."""
    worst_case = min(cases.values(), key=lambda c: c["programs_on_vs_off_paired_median"])
    worst = worst_case["programs_on_vs_off_paired_median"]
    worst_cpu = min(c["programs_cpu_on_vs_off_paired_median"] for c in cases.values())
    lo, hi = worst_case["programs_on_vs_off_paired_ci95"]
    worst_trainer = min(cases.values(), key=lambda c: c["trainer_on_vs_off_paired_median"])
    t_lo, t_hi = worst_trainer["trainer_on_vs_off_paired_ci95"]
    return {
        "overhead": round(1 - worst, 4),
        "overhead_ci95": [round(1 - hi, 4), round(1 - lo, 4)],
        "cpu_overhead": round(1 - worst_cpu, 4),
        "trainer_overhead": round(1 - worst_trainer["trainer_on_vs_off_paired_median"], 4),
        "trainer_overhead_ci95": [round(1 - t_hi, 4), round(1 - t_lo, 4)],
        "meets_target": 1 - worst < TARGET,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9, help="interleaved (on, off) pairs per case")
    ap.add_argument("--steps", default="200,40", help="optimizer steps per Trainer run for B = 64, 512")
    ap.add_argument("--cell-steps", default="30,6", help="steps per timed program cell for B = 64, 512")
    ap.add_argument(
        "--program-reps", type=int, default=0, help="interleaved program-cell pairs per case (default: --reps)"
    )
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)} ('' = none)")
    ap.add_argument(
        "--cost-models", default="", help=f"comma list of {', '.join(COST_MODELS)}: compile-only cost analysis on/off"
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="program cells in this many fresh processes per case, --program-reps each (1: in this one)",
    )
    ap.add_argument(
        "--noise-every",
        type=int,
        default=0,
        help="train.noise_scale_every of the 'on' variant (0: the backend's default)",
    )
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # one process's program cells of a case
    ap.add_argument(
        "--quick", action="store_true", help="1 rep of short runs of B64_k1 (the test; figures not meaningful)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lbt").setLevel(logging.WARNING)
    if args.worker:
        with contextlib.redirect_stdout(sys.stderr):
            progs = Programs(CASES[args.worker], args.noise_every)
            cells = dict(zip(CASES, (int(s) for s in args.cell_steps.split(",")), strict=True))[args.worker]
            for v in progs.progs:  # compile both
                jax.block_until_ready(progs.step(v))
            prog = program_cells(progs, cells, args.program_reps)
        print(json.dumps(prog))
        return
    if args.quick:
        args.reps, args.steps, args.cell_steps, args.cases = 1, "6,3", "3,2", "B64_k1"
        args.program_reps = 2
    args.program_reps = args.program_reps or args.reps  # default 0: as many as --reps
    steps = dict(zip(CASES, (int(s) for s in args.steps.split(",")), strict=True))
    cases = {}
    for name in filter(None, args.cases.split(",")):
        with contextlib.redirect_stdout(sys.stderr):  # nothing but the JSON line on stdout
            cases[name] = run_case(
                name, steps[name], args.cell_steps, args.reps, args.program_reps, args.processes, args.noise_every
            )
    out: dict[str, Any] = {
        "benchmark": "noise_scale_overhead",
        **run_info(),
        "model": "cnn (base_config digits), ghost batch 8",
        "global_microbatch": M,
        "reps": args.reps,
        "program_reps": args.program_reps,
        "program_processes": args.processes,
        "noise_scale_every": noise_scale_every(make_config(M, 1, True, args.noise_every)),
        "quick": args.quick,
        "target": TARGET,
        **(headline(cases) if cases else {}),
        "cases": cases,
    }
    if args.cost_models:
        with contextlib.redirect_stdout(sys.stderr):
            out["model_costs"] = {m: model_cost(m) for m in args.cost_models.split(",")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
