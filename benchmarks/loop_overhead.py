"""Loop overhead: the whole ``Trainer`` against a minimal loop over the same two programs.

For each case (the digits CNN of ``base_config()``, M = 64, on all devices; B = 64, k = 1 and
B = 512, k = 8; constant LR and B) it measures examples/s of

* ``trainer``: ``lbt.train.loop.Trainer(config, workdir).run()`` with the progress bar off, eval
  only at the end and no periodic checkpoints, its ``summary['train_examples_per_s']`` (steps
  only: TrainClock leaves out the steps that compiled, eval and checkpoint time);
* ``minimal``: a loop that drives the same programs (the Trainer's own ``programs``, built for this
  config) from the same source: ``TrainStream(raw=True).iterate`` + ``global_batch_array``, k - 1
  ``accum`` + ``final`` per step with the plan's constant hyperparameters, and nothing else; timed
  with a ``TrainClock`` exactly as the Trainer is (the compiled first step left out), over the same
  number of steps. It bounds dispatch as the Trainer does (``train.steps_in_flight``: on CPU it
  waits for the step before last, on accelerators it blocks only at the end): with no bound, this
  loop deadlocked XLA:CPU's simulated devices, at B = 512 and once in five runs at B = 64 (an
  all-reduce rendezvous stuck for minutes, the host waiting in XLA's in-flight limit), as the
  Trainer once did; see docs/benchmarks.md.

Repetitions are interleaved per case (trainer, minimal; then minimal, trainer; ...), each
repetition's ratio trainer / minimal is paired, and every figure is a median, with a bootstrap 95%
interval of that median (``*_ci95``). The headline ``trainer_vs_minimal_loop`` is the lowest paired
median over the cases (target >= 0.95).
``trainer_vs_minimal_cpu``: the same comparison in process CPU time per step (every thread, the
simulated devices included; minimal / trainer, so 1 = the Trainer costs no extra CPU), far less
distorted than wall time when other jobs share the cores (the Trainer is wrapped only to read
``process_time`` at its clock's marks).

``host_profile``: one more, instrumented, run of each (not part of the figures) gives the host's
time per steady-state step in each piece of the Trainer's step (``plan.at``, waiting for the next
device microbatch, dispatching ``accum``/``final``, ``PendingMetrics.add`` with its bounded-dispatch
wait, the periodic ``flush``, the TrainClock) and the main thread's CPU time per step, against the
minimal loop's; ``tqdm_update_us`` is the cost of one progress-bar update (off here), and
``metrics_write_us_per_record`` the cost of writing one train record (JSONL + TensorBoard, and
JSONL alone), which the Trainer does once per step and the minimal loop not at all.

``--split-cores`` pins XLA's threads (the simulated devices) to every core but the last and the
Python threads (loop, loader, prefetch) to the last one (:class:`CoreSplit`), before every timed
run: the host's work then no longer takes CPU from the devices, as on an accelerator, where the
loop's host work runs beside the device's. ``split_cores`` in the JSON says how many threads were
pinned where, and whether XLA started any thread on the host core during a run.

    python benchmarks/loop_overhead.py [--reps 7] [--steps 300,80] [--split-cores] [--quick]

One JSON line on stdout.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io as _io
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("LBT_COMPILE_CACHE_DIR", "")  # no persistent compile cache: real compiles, counted
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lbt import runtime  # noqa: E402

runtime.setup(collective_timeout_s=600, warn_stuck_s=120)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import median, median_ci, rounded, run_info  # noqa: E402

from lbt.config import base_config  # noqa: E402
from lbt.data.registry import train_size  # noqa: E402
from lbt.parallel.mesh import global_batch_array  # noqa: E402
from lbt.train.loop import Trainer, steps_in_flight  # noqa: E402
from lbt.train.metrics import MetricsWriter, TrainClock  # noqa: E402

M = 64
CASES = {"B64_k1": 64, "B512_k8": 512}
TARGET = 0.95


def make_config(B: int, steps: int):
    """base_config()'s digits CNN at constant B and LR, ``steps`` optimizer steps, quiet."""
    c = base_config()
    c.name = f"loop_overhead_B{B}"
    c.train.global_microbatch = M
    c.train.progress = False
    c.train.eval_every_epochs = 0.0  # only at the end
    c.checkpoint.every_epochs, c.checkpoint.every_examples, c.checkpoint.every_minutes = 0.0, 0, 0.0
    s = c.schedule
    s.global_batch = B
    s.lr.name = "constant"
    s.lr.milestones = ()
    s.batch.mode = "decay_lr"
    s.epochs = steps * B / train_size(c)
    return c


# -------------------------------------------------------------------------------------------
# host-time instrumentation (the profile runs only)


class HostTimes:
    """Seconds and calls per named piece of host work, counted only while ``active``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.active = False
        self.cpu0 = self.wall0 = 0.0
        self.cpu = self.wall = 0.0
        self.compiled_steps: list[int] = []

    def wrap(self, name: str, fn: Callable) -> Callable:
        return _Timed(self, name, fn)

    def wrap_iter(self, name: str, it):
        try:
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                if self.active:
                    self.seconds[name] += time.perf_counter() - t
                    self.calls[name] += 1
                yield item
        finally:
            it.close()  # closing the wrapper closes the source (and stops its loader thread)

    def start(self) -> None:
        self.active = True
        self.cpu0, self.wall0 = time.thread_time(), time.perf_counter()

    def mark_end(self) -> None:
        """The end of the counted interval so far (the clock's last ``finish`` wins)."""
        if self.active:
            self.cpu, self.wall = time.thread_time() - self.cpu0, time.perf_counter() - self.wall0

    def stop(self) -> None:
        self.active = False

    def per_step_ms(self, steps: int) -> dict[str, Any]:
        pieces = {k: round(1000 * v / steps, 3) for k, v in sorted(self.seconds.items())}
        return {
            "steps": steps,
            "wall_ms_per_step": round(1000 * self.wall / steps, 3),
            "main_thread_cpu_ms_per_step": round(1000 * self.cpu / steps, 3),
            "pieces_ms_per_step": pieces,
            "calls": dict(sorted(self.calls.items())),
            "compiled_steps_after_first": self.compiled_steps,
        }


class _Timed:
    """``fn`` with its calls timed into ``ht`` (other attributes, e.g. ``.lower``, pass through)."""

    def __init__(self, ht: HostTimes, name: str, fn: Callable):
        self._ht, self._name, self._fn = ht, name, fn

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self._fn(*args, **kwargs)
        finally:
            if self._ht.active:
                self._ht.seconds[self._name] += time.perf_counter() - t
                self._ht.calls[self._name] += 1

    def __getattr__(self, name: str):
        return getattr(self._fn, name)


def instrument_clock(clock: TrainClock, ht: HostTimes) -> None:
    """Start ``ht`` after the first (compiled) step, end it when the clock last finishes; later steps
    that compiled are listed in ``ht.compiled_steps`` (the clock leaves them out, the profile not)."""
    step, finish = clock.step, clock.finish
    count = [0]

    def timed_step(examples: int, compiled: bool) -> None:
        t = time.perf_counter()
        step(examples, compiled)
        count[0] += 1
        if count[0] == 1:
            ht.start()
            return
        if compiled:
            ht.compiled_steps.append(count[0])
        if ht.active:
            ht.seconds["clock"] += time.perf_counter() - t

    def timed_finish() -> None:  # also called by clock.window() at every flush
        finish()
        ht.mark_end()

    clock.step, clock.finish = timed_step, timed_finish


class CpuMark:
    """Process CPU seconds (every thread: the host and the simulated devices) over a clock's counted
    interval, from the end of the first step to the clock's last ``finish``: the CPU cost of the
    steps, which shared cores distort far less than wall time."""

    def __init__(self, clock: TrainClock):
        self.start: float | None = None
        self.seconds = 0.0
        step, finish = clock.step, clock.finish

        def marked_step(examples: int, compiled: bool) -> None:
            step(examples, compiled)
            if self.start is None:
                self.start = time.process_time()

        def marked_finish() -> None:
            finish()
            if self.start is not None:
                self.seconds = time.process_time() - self.start

        clock.step, clock.finish = marked_step, marked_finish


class CpuTrainer(Trainer):
    """The Trainer, unchanged but for two ``process_time`` reads per step on its clock (:class:`CpuMark`)."""

    cpu: CpuMark

    def _open_io(self, *args, **kwargs):
        io = super()._open_io(*args, **kwargs)
        self.cpu = CpuMark(io.clock)
        return io


class ProfiledTrainer(CpuTrainer):
    """The Trainer with its per-step host work timed (the step code itself is untouched)."""

    def __init__(self, *args, host_times: HostTimes, **kwargs):
        super().__init__(*args, **kwargs)
        ht = self.ht = host_times
        self.plan.at = ht.wrap("plan_at", self.plan.at)
        self.programs.accum = ht.wrap("dispatch_accum", self.programs.accum)
        self.programs.final = ht.wrap("dispatch_final", self.programs.final)

    def _device_batches(self, start: int):
        return self.ht.wrap_iter("next_batch", super()._device_batches(start))

    def _open_io(self, *args, **kwargs):
        io = super()._open_io(*args, **kwargs)
        io.pending.add = self.ht.wrap("pending_add_incl_wait", io.pending.add)
        io.pending.flush = self.ht.wrap("pending_flush", io.pending.flush)
        instrument_clock(io.clock, self.ht)
        return io


def metrics_write_us(records: int = 300) -> dict[str, float]:
    """Cost of ``MetricsWriter.write`` for one train record as the loop writes it (JSONL line +
    a TensorBoard scalar per numeric field), with and without TensorBoard: wall microseconds on the
    calling thread, and process CPU microseconds (every thread, the TensorBoard writer's included,
    until it is closed and drained)."""
    rec = {
        "step": 1,
        "examples_seen": 64,
        "epoch": 0.04,
        "global_batch": 64,
        "microbatches": 1,
        "phase": 0,
        "lr": 0.1,
        "momentum": 0.9,
        "noise_scale": 1.0,
        "loss": 2.3,
        "grad_norm": 1.0,
        "skipped_nonfinite": False,
        "corrupt_skipped": 0,
        "examples_per_s": 5000.0,
        "step_s": 0.0128,
    }
    out = {}
    for tb in (True, False):
        with tempfile.TemporaryDirectory() as wd:
            w = MetricsWriter(wd, tensorboard=tb)
            c0, t0 = time.process_time(), time.perf_counter()
            for i in range(records):
                w.write(dict(rec, step=i + 1, examples_seen=64 * (i + 1)), tb_step=64 * (i + 1), prefix="train/")
            wall = time.perf_counter() - t0
            w.flush()
            w.close()
            cpu = time.process_time() - c0
        name = "with_tensorboard" if tb else "jsonl_only"
        out[f"{name}_wall_us"] = round(1e6 * wall / records, 1)
        out[f"{name}_cpu_us"] = round(1e6 * cpu / records, 1)
    return out


def tqdm_update_us(calls: int = 2000) -> float:
    """Microseconds per ``tqdm.update`` of the loop's progress bar (to an in-memory stream)."""
    from tqdm import tqdm

    bar = tqdm(total=calls * 64, unit="ex", unit_scale=True, dynamic_ncols=True, desc="train", file=_io.StringIO())
    t = time.perf_counter()
    for _ in range(calls):
        bar.update(64)
    us = 1e6 * (time.perf_counter() - t) / calls
    bar.close()
    return round(us, 2)


# -------------------------------------------------------------------------------------------
# the two loops


def run_trainer(config, profile: HostTimes | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as wd:
        t = CpuTrainer(config, wd) if profile is None else ProfiledTrainer(config, wd, host_times=profile)
        s = t.run()
    steps = s["optimizer_steps"]
    return {
        "eps": s["train_examples_per_s"],
        "cpu_ms_per_step": 1000 * t.cpu.seconds / (steps - 1),
        "steps": steps,
        "compiles": s["train_compilations"],
    }


class Minimal:
    """The minimal loop, with the Trainer's own programs and stream for ``config``."""

    def __init__(self, config):
        self._tmp = tempfile.TemporaryDirectory()
        t = Trainer(config, self._tmp.name)  # only built: its programs, stream, mesh and initial state
        self.programs, self.stream, self.mesh, self.plan = t.programs, t.stream, t.mesh, t.plan
        self._state0 = t._init_state()  # the Trainer's initial state; each run trains a copy (final donates it)
        self._copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
        self.counter = t.counter  # compiles during the programs' calls
        self.B = int(config.schedule.global_batch)
        self.steps = self.plan.total_steps()
        point = self.plan.at(0)
        self.hyper = np.int32(self.B // M), np.float32(point.lr), np.float32(point.momentum)
        self.lookahead = steps_in_flight(config)

    def run(self, profile: HostTimes | None = None, *, lookahead: int | None = None) -> dict[str, Any]:
        """Train ``self.steps`` steps from the initial state; at most ``lookahead`` steps in flight
        (the Trainer's ``steps_in_flight``, by default; 0 = unbounded, blocking only at the end)."""
        lookahead = self.lookahead if lookahead is None else lookahead
        progs, mesh, k, hyper = self.programs, self.mesh, self.B // M, self.hyper
        accum, final = progs.accum, progs.final
        ht = profile or HostTimes()
        if profile is not None:
            accum, final = ht.wrap("dispatch_accum", accum), ht.wrap("dispatch_final", final)
        state = self._copy(self._state0)
        acc = progs.zeros_acc(state)
        source = self.stream.iterate(0)

        def batches():
            for _, (x, y) in source:
                yield global_batch_array(mesh, x, M), global_batch_array(mesh, y, M)

        it = ht.wrap_iter("next_batch", batches()) if profile is not None else batches()
        clock = TrainClock()
        cpu = CpuMark(clock)
        if profile is not None:
            instrument_clock(clock, ht)
        wait = ht.wrap("bounded_wait", jax.block_until_ready) if profile is not None else jax.block_until_ready
        in_flight: collections.deque = collections.deque()
        compiles_after_first = 0
        try:
            for i in range(self.steps):
                before = self.counter.train
                with self.counter.training():
                    for _ in range(k - 1):
                        acc = accum(state, acc, *next(it))
                    state, acc, metrics = final(state, acc, *next(it), *hyper)
                in_flight.append(metrics["loss"])
                if lookahead and len(in_flight) > lookahead:
                    wait(in_flight.popleft())  # as PendingMetrics.add: wait for the step before last
                compiled = self.counter.train != before
                compiles_after_first += compiled and i > 0
                clock.step(self.B, compiled or i == 0)  # the first step is left out, as if it compiled
            jax.block_until_ready((state, acc, metrics))
            clock.finish()
        finally:
            it.close()
            source.close()
        return {
            "eps": clock.examples_per_s,
            "cpu_ms_per_step": 1000 * cpu.seconds / (self.steps - 1),
            "steps": self.steps,
            "compiles_after_first_step": compiles_after_first,
        }

    def close(self) -> None:
        self.counter.close()
        self._tmp.cleanup()


# -------------------------------------------------------------------------------------------


class CoreSplit:
    """``--split-cores``: XLA's threads (the simulated devices' compute) on all cores but the last,
    Python's threads (the main loop, the loader and prefetch threads) on the last one. It takes
    from the simulated devices the host CPU the loop uses, as an accelerator does: there the host
    work runs beside the device's, not on its cores. Linux only (``sched_setaffinity`` per thread).
    """

    def __init__(self) -> None:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--split-cores needs at least 2 CPU cores")
        self.device_cores, self.host_cores = set(cores[:-1]), {cores[-1]}
        self.pinned = {"device": 0, "host": 0}
        self.xla_threads_on_host_after_run = 0

    @staticmethod
    def _threads() -> tuple[set[int], set[int]]:
        python = {t.native_id for t in threading.enumerate() if t.native_id is not None}
        return {int(t) for t in os.listdir("/proc/self/task")} - python, python

    def apply(self) -> None:
        """Pin every thread as above (before each timed run: later threads inherit their creator's)."""
        xla, python = self._threads()
        for tids, cores, kind in ((xla, self.device_cores, "device"), (python, self.host_cores, "host")):
            for tid in tids:
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(tid, cores)
            self.pinned[kind] = len(tids)

    def check(self) -> None:
        """Count threads XLA created during a run on the host core (they would distort the split)."""
        xla, _ = self._threads()
        on_host = 0
        for tid in xla:
            with contextlib.suppress(ProcessLookupError):
                on_host += os.sched_getaffinity(tid) == self.host_cores
        self.xla_threads_on_host_after_run = max(self.xla_threads_on_host_after_run, on_host)

    def info(self) -> dict[str, Any]:
        return {
            "device_cores": sorted(self.device_cores),
            "host_cores": sorted(self.host_cores),
            "threads_pinned": dict(self.pinned),
            "xla_threads_on_host_after_run": self.xla_threads_on_host_after_run,
        }


def run_case(
    name: str, B: int, steps: int, reps: int, profile: bool, quick: bool = False, split: CoreSplit | None = None
) -> dict[str, Any]:
    """``reps`` interleaved runs of each variant; the host profile from separate runs (``quick``: the
    profile comes from the timed runs themselves, one each, to save the Trainer's fixed cost)."""
    config = make_config(B, steps)
    print(f"[loop_overhead] {name}: build the minimal loop", file=sys.stderr, flush=True)
    minimal = Minimal(config)
    minimal.run()  # compiles the programs once (the timed runs exclude the first step anyway)
    ht_t, ht_m = HostTimes(), HostTimes()
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "trainer": (lambda: run_trainer(config, ht_t)) if quick else (lambda: run_trainer(config)),
        "minimal": (lambda: minimal.run(ht_m)) if quick else minimal.run,
    }
    eps: dict[str, list[float]] = {v: [] for v in runs}
    cpu: dict[str, list[float]] = {v: [] for v in runs}
    compiles: dict[str, list[int]] = {v: [] for v in runs}
    for r in range(reps):
        order = list(runs)
        if r % 2:
            order.reverse()  # trainer, minimal, ...; then ..., minimal, trainer
        for variant in order:
            if split is not None:
                split.apply()
            out = runs[variant]()
            if split is not None:
                split.check()
            eps[variant].append(out["eps"])
            cpu[variant].append(out["cpu_ms_per_step"])
            compiles[variant].append(out["compiles"] if variant == "trainer" else out["compiles_after_first_step"])
        line = ", ".join(f"{v} {e[-1]:.0f}" for v, e in eps.items())
        print(f"[loop_overhead] {name}: rep {r + 1}/{reps}: {line} examples/s", file=sys.stderr, flush=True)

    def paired(a: str, b: str) -> tuple[float, list[float]]:
        ratios = [x / y for x, y in zip(eps[a], eps[b], strict=True)]
        return round(median(ratios), 3), rounded(ratios)

    row: dict[str, Any] = {
        "global_batch": B,
        "k": B // M,
        "steps": minimal.steps,
        "minimal_steps_in_flight": minimal.lookahead,
    }
    for v, e in eps.items():
        row[f"{v}_examples_per_s_median"] = round(median(e), 1)
    row["ratio_of_medians"] = round(median(eps["trainer"]) / median(eps["minimal"]), 3)
    row["trainer_vs_minimal_paired_median"], row["trainer_vs_minimal_paired"] = paired("trainer", "minimal")
    row["trainer_vs_minimal_paired_ci95"] = median_ci(row["trainer_vs_minimal_paired"])  # bootstrap, of the median
    for v, e in eps.items():
        row[f"{v}_examples_per_s"] = rounded(e, 1)
    # CPU cost per step (all threads), minimal / trainer: 1 = the Trainer costs no more CPU per step
    cpu_ratios = [m / t for m, t in zip(cpu["minimal"], cpu["trainer"], strict=True)]
    row["trainer_vs_minimal_cpu_paired_median"] = round(median(cpu_ratios), 3)
    row["trainer_vs_minimal_cpu_paired"] = rounded(cpu_ratios)
    row["trainer_vs_minimal_cpu_paired_ci95"] = median_ci(cpu_ratios)
    for v, c in cpu.items():
        row[f"{v}_cpu_ms_per_step_median"] = round(median(c), 2)
    # the Trainer's programs compile in its first step only (accum is unused at k = 1)
    row["trainer_train_compilations"] = compiles.pop("trainer")
    row["minimal_compiles_after_first_step"] = sum(sum(c) for c in compiles.values())
    row["meets_target"] = row["trainer_vs_minimal_paired_median"] >= TARGET
    if profile:
        print(f"[loop_overhead] {name}: host profile", file=sys.stderr, flush=True)
        counted = minimal.steps - 1  # the steps the clock counts
        if not quick:
            run_trainer(config, ht_t)
            minimal.run(ht_m)
        ht_t.stop()
        ht_m.stop()
        row["host_profile"] = prof = {"trainer": ht_t.per_step_ms(counted), "minimal": ht_m.per_step_ms(counted)}
        extra = prof["trainer"]["main_thread_cpu_ms_per_step"] - prof["minimal"]["main_thread_cpu_ms_per_step"]
        step_ms = 1000 * B / row["minimal_examples_per_s_median"]
        row["host_extra_cpu_ms_per_step"] = round(extra, 3)  # the Trainer's main thread, over the minimal loop's
        row["host_extra_fraction_of_step"] = round(extra / step_ms, 4)
    row["diagnosis"] = diagnosis(row)
    minimal.close()
    return row


def diagnosis(row: dict[str, Any]) -> str:
    """One line on the case, from its figures: where the Trainer stands and what the spread says."""
    paired = row["trainer_vs_minimal_paired"]
    text = (
        f"trainer/minimal {row['trainer_vs_minimal_paired_median']} (paired median; per rep {min(paired)}.."
        f"{max(paired)}), CPU time per step {row['trainer_vs_minimal_cpu_paired_median']} "
        f"({row['trainer_cpu_ms_per_step_median']} vs {row['minimal_cpu_ms_per_step_median']} ms)"
    )
    if "host_extra_cpu_ms_per_step" in row:
        text += (
            f"; the Trainer's main thread spends {row['host_extra_cpu_ms_per_step']} ms more CPU per step "
            f"({100 * row['host_extra_fraction_of_step']:.1f}% of a step)"
        )
    if row["meets_target"]:
        return "meets the target: " + text
    return f"below the target {TARGET}: " + text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="interleaved (trainer, minimal) pairs per case")
    ap.add_argument("--steps", default="300,80", help="optimizer steps per run for B = 64, 512")
    ap.add_argument("--no-profile", action="store_true", help="skip the instrumented host-profile runs")
    ap.add_argument(
        "--split-cores",
        action="store_true",
        help="XLA's threads on all cores but the last, Python's on the last (the host beside the device)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="1 rep of short runs, profiled (the test; figures not meaningful)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lbt").setLevel(logging.WARNING)
    if args.quick:
        args.reps, args.steps = 1, "24,6"
    steps = dict(zip(CASES, (int(s) for s in args.steps.split(",")), strict=True))
    split = CoreSplit() if args.split_cores else None
    cases = {}
    for name, B in CASES.items():
        with contextlib.redirect_stdout(sys.stderr):  # nothing but the JSON line on stdout
            cases[name] = run_case(
                name,
                B,
                steps[name],
                args.reps,
                profile=not args.no_profile,
                quick=args.quick,
                split=split,
            )
    config = make_config(64, 1)
    out = {
        "benchmark": "loop_overhead",
        **run_info(),
        "model": "cnn (base_config digits)",
        "global_microbatch": M,
        "reps": args.reps,
        "quick": args.quick,
        "target": TARGET,
        "steps_in_flight": steps_in_flight(config),
        "log_every_steps": int(config.train.log_every_steps),
        "device_prefetch": int(config.train.device_prefetch),
        "trainer_vs_minimal_loop": min(c["trainer_vs_minimal_paired_median"] for c in cases.values()),
        "split_cores": split.info() if split is not None else None,
        "cases": cases,
        "tqdm_update_us": tqdm_update_us(),
        # per train record; the loop writes one per step, in batches at each flush
        "metrics_write_us_per_record": metrics_write_us(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
