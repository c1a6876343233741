"""The training loop: the side-effecting part (data, programs, metrics, eval, checkpoints).

Progress is measured in examples seen. One step of :meth:`Trainer.run` reads: plan point ->
k = B / M ``accum`` calls -> ``apply`` -> record -> hooks (metrics flush and the non-finite
policy, eval, checkpoint and preemption). The mutable state of a run is one :class:`RunState`;
the periodic decisions live beside what they decide (:class:`~lbt.train.evaluate.EvalSchedule`,
:class:`~lbt.train.checkpoint.SavePolicy`, :class:`~lbt.train.metrics.PendingMetrics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lbt import config as config_lib
from lbt import storage
from lbt.data.pipeline import TrainStream, prefetch_to_devices
from lbt.data.registry import load_splits, train_size
from lbt.errors import ConfigError, TrainingError
from lbt.models import build_model
from lbt.parallel.accumulate import TrainPrograms, build_programs
from lbt.parallel.mesh import StepScalars, data_sharded, global_batch_array, make_mesh
from lbt.schedules.plan import Plan, PlanPoint, plan_warnings
from lbt.train.adaptive import AdaptiveBatch
from lbt.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    SavePolicy,
    agree_any,
    config_differences,
    state_digest,
)
from lbt.train.compiles import CompileCounter
from lbt.train.evaluate import EvalSchedule, eval_interval, evaluate
from lbt.train.faults import Faults
from lbt.train.metrics import (
    MetricsWriter,
    PendingMetrics,
    TrainClock,
    json_safe,
    metrics_writer,
    write_json,
    write_text_atomic,
)
from lbt.train.noise_scale import NoiseScaleMonitor, across_devices, unmeasurable_reason
from lbt.train.optim import make_optimizer
from lbt.train.perf import Profiler, flops_per_example, mfu, peak_flops
from lbt.train.state import TrainState, abstract_state, init_state_fn
from lbt.train.workdir import WorkdirLock, already_finished_message, finished_summary

log = logging.getLogger("lbt")


@dataclasses.dataclass
class RunState:
    """Everything a run changes from step to step; checkpoints store it (with the state)."""

    train_state: TrainState
    acc: Any  # per-device gradient / BN accumulators (zero between steps)
    examples_seen: int = 0
    step: int = 0
    skip_windows: list[list[int]] = dataclasses.field(default_factory=list)
    rollbacks: int = 0
    noise: NoiseScaleMonitor | None = None  # B_simple's EMAs (None: train.measure_noise_scale off)

    @property
    def adaptive(self) -> AdaptiveBatch | None:
        """The adaptive batch's decisions (schedule.batch.mode='adaptive'), kept by the monitor."""
        return self.noise.adaptive if self.noise is not None else None

    def skipped_examples(self) -> int:
        return sum(w[1] - w[0] for w in self.skip_windows)


@dataclasses.dataclass
class _Io:
    """The run's services: data, metrics, progress, checkpoints, schedules, signals, clock."""

    ckpt: Checkpointer
    writer: MetricsWriter
    pending: PendingMetrics
    progress: Any
    batches: Iterator
    evals: EvalSchedule
    saves: SavePolicy
    preempt: _PreemptionFlag
    clock: TrainClock
    profiler: Profiler
    flops_per_example: float | None = None  # XLA's cost analysis of accum
    peak_flops: float | None = None  # per device; None on CPU or an unknown device


class Trainer:
    """One training run of ``config`` in ``workdir``."""

    def __init__(
        self,
        config,
        workdir: str | Path,
        *,
        counter: CompileCounter | None = None,
        devices: list | None = None,
        allow_config_change: bool = False,
        faults: Faults | None = None,
        stop_at_examples: int | None = None,
    ):
        """``stop_at_examples``: end the run there instead of at the plan's end (the steps are those
        of the full run; ``lbt noise-scale`` trains briefly this way)."""
        self.config = config
        self.workdir = storage.as_path(workdir)  # a local Path, or an epath.Path for gs:// (lbt.storage)
        self.allow_config_change = allow_config_change
        self.faults = faults or Faults()
        self._owns_counter = counter is None
        self.counter = counter or CompileCounter()
        self.primary = jax.process_index() == 0
        self.num_devices = len(devices) if devices is not None else jax.device_count()
        self.N = train_size(config)
        # Validate everything and build the Plan once, before any data is loaded.
        self.plan: Plan = config_lib.validate(config, num_devices=self.num_devices, num_train=self.N)
        self.total_examples = self.plan.total_examples
        if stop_at_examples is not None:
            self.total_examples = min(self.total_examples, int(stop_at_examples))
        self.splits = load_splits(config)
        if len(self.splits.train) != self.N:
            raise TrainingError(f"the train split has {len(self.splits.train)} examples, expected N={self.N}")
        self.M = int(config.train.global_microbatch)
        self.mesh = make_mesh(devices)
        self._scalars = StepScalars(self.mesh)
        self.model = build_model(config, self.splits.num_classes, self.num_devices)
        self.tx = make_optimizer(config)
        G = int(config.model.ghost_batch_size)
        max_k = max(p.global_batch for p in self.plan.phases) // self.M
        if self.plan.mode == "adaptive":
            max_k = self.plan.max_global_batch // self.M
            _check_adaptive_layout(config, self.M, self.num_devices)
        #: why the gradient noise scale is not measured (None: it is, or it is switched off)
        self.noise_unmeasurable = unmeasurable_reason(G, self.M, self.num_devices, max_k)
        self.measure_noise = bool(config.train.measure_noise_scale) and self.noise_unmeasurable is None
        self._init_fn: Callable[[], TrainState] | None = None
        #: train.noise_scale_every resolved once, for the programs and the monitor alike
        self.noise_every = noise_scale_every(config)
        # uint8 on the wire, normalised on the device; injected NaN images need the float32 wire
        self.raw = self.faults.nan_at is None
        self.programs: TrainPrograms = build_programs(
            self.model,
            self.tx,
            self.mesh,
            num_classes=self.splits.num_classes,
            bn_momentum=config.model.bn_momentum,
            label_smoothing=config.train.label_smoothing,
            reduction=grad_reduction(config),
            input_lut=self.splits.train.input_lut if self.raw else None,
            measure_noise=self.measure_noise,
            microbatch_norms=not across_devices(G, self.M, self.num_devices),
            noise_every=self.noise_every,
        )
        process = jax.process_index(), jax.process_count()
        self.stream = TrainStream(self.splits.train, config.seed, self.M, *process, raw=self.raw)

    # -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end of the plan (resuming from the workdir) and return the summary."""
        t0 = time.time()
        total = self.total_examples
        with contextlib.ExitStack() as stack:
            stack.callback(self._close_counter)
            done = self._claim_workdir(stack)
            if done is not None:
                return done
            ckpt = Checkpointer(self.workdir, keep=self.config.checkpoint.keep, digest=self.config.checkpoint.digest)
            stack.callback(ckpt.close)
            rs, resumed = self._start(ckpt)
            io = self._open_io(stack, ckpt, rs, resumed)
            while rs.examples_seen < total:
                if self._skip_bad_window(rs, io):
                    continue
                point = self._point(rs)
                compiled = self._train_step(rs, io, point)
                io.clock.step(point.global_batch, compiled)
                sync = rs.step % self.config.train.log_every_steps == 0 or rs.examples_seen >= total
                sync = sync or (rs.adaptive is not None and rs.adaptive.needs_read(rs.step))
                eval_due = io.evals.due(rs.examples_seen, total)
                full = (
                    eval_due
                    or rs.examples_seen >= total
                    or io.saves.interval_due(rs.examples_seen, total)
                    or self.faults.pause_at is not None
                )
                if sync or full:
                    if self._flush(rs, io, keep=0 if full else 1):  # rolled back: go on from the restored step
                        self._checkpoint_hook(rs, io, sync=True)  # SIGTERM is honoured here too
                        continue
                    self.faults.maybe_pause(rs.step, stop=lambda: io.preempt.requested)
                if eval_due:
                    self._write_eval(io.writer, rs)
                    io.evals.done(rs.examples_seen)
                    io.clock.skip()
                self._checkpoint_hook(rs, io, sync)
            io.pending.flush(self._train_extra())
            io.clock.finish()
            if io.progress is not None:
                io.progress.close()
            last_eval = self._write_eval(io.writer, rs)
            io.ckpt.save(rs.step, rs.train_state, self._meta(rs))
            io.ckpt.wait()
            digest = state_digest(rs.train_state)
            summary = self._summary(rs, last_eval, digest, resumed=resumed, wall_s=time.time() - t0, io=io)
            self._write_summary(summary)  # still under the workdir lock
        return summary

    # -------------------------------------------------------------------------------------
    # Pieces of a step

    def _point(self, rs: RunState) -> PlanPoint:
        """B, ε, m of the next step: the plan's, or the adaptive batch's on the plan's reference."""
        point = self.plan.at(rs.examples_seen)
        return point if rs.adaptive is None else rs.adaptive.point(point, rs.step + 1)

    def _train_step(self, rs: RunState, io: _Io, point: PlanPoint) -> bool:
        """k ``accum`` calls and one ``apply``; queue the step's record. True if it compiled."""
        B = point.global_batch
        k = B // self.M
        compiles = self.counter.train
        io.profiler.before_step(rs.step + 1)
        with self.counter.training():
            for _ in range(k - 1):
                rs.acc = self.programs.accum(rs.train_state, rs.acc, *next(io.batches))
            hyper = self._scalars(k, point.lr, point.momentum)  # on the device; re-sent only on a change
            rs.train_state, rs.acc, dev_metrics = self.programs.final(
                rs.train_state, rs.acc, *next(io.batches), *hyper
            )
        record = {
            "step": rs.step + 1,
            "examples_seen": rs.examples_seen + B,
            "epoch": (rs.examples_seen + B) / self.N,
            "global_batch": B,
            "microbatches": k,
            "phase": point.phase,
            "lr": point.lr,
            "momentum": point.momentum,
            "noise_scale": point.noise_scale,
            "noise_scale_exact": point.noise_scale_exact,
        }
        io.pending.add(record, dev_metrics)
        io.profiler.after_step(rs.step + 1, dev_metrics)
        rs.examples_seen += B
        rs.step += 1
        if io.progress is not None:
            io.progress.update(B)
        return self.counter.train != compiles

    def _train_extra(self) -> dict[str, Any]:
        return {"corrupt_skipped": self.splits.train.corrupt_count}

    def _skip_bad_window(self, rs: RunState, io: _Io) -> bool:
        """At the start of data that produced a non-finite step, jump past it (True if so)."""
        window = next((w for w in rs.skip_windows if w[0] == rs.examples_seen), None)
        if window is None:
            return False
        rs.examples_seen = window[1]
        self._reopen_batches(rs, io)
        return True

    def _device_batches(self, start: int) -> Iterator[tuple[jax.Array, jax.Array]]:
        """Global microbatches from ``start`` on, transferred ``train.device_prefetch`` ahead."""

        def put(item: tuple[int, tuple[np.ndarray, np.ndarray]]) -> tuple[jax.Array, jax.Array]:
            pos, (images, labels) = item
            images = self.faults.corrupt(pos, self.M, images)
            return global_batch_array(self.mesh, images, self.M), global_batch_array(self.mesh, labels, self.M)

        return prefetch_to_devices(self.stream.iterate(start), put, int(self.config.train.device_prefetch))

    def _reopen_batches(self, rs: RunState, io: _Io) -> None:
        io.batches.close()
        io.batches = self._device_batches(rs.examples_seen)

    def _flush(self, rs: RunState, io: _Io, keep: int = 0) -> bool:
        """Write pending records (all but the newest ``keep``) and apply the non-finite policy;
        True if the run rolled back."""
        bad = io.pending.flush(self._train_extra(), keep=keep)
        if bad is None:
            return False
        if self.config.train.on_nonfinite == "stop":
            io.writer.flush()
            raise TrainingError(
                f"non-finite loss or gradient at step {bad['step']} (examples_seen "
                f"{bad['examples_seen'] - bad['global_batch']}..{bad['examples_seen']}); the update was skipped and "
                f"training stopped (train.on_nonfinite='stop'). The last good checkpoint is kept in "
                f"{io.ckpt.directory}. Lower schedule.base_lr, or set train.on_nonfinite='rollback'."
            )
        self._rollback(rs, io, bad)
        return True

    def _rollback(self, rs: RunState, io: _Io, bad: dict[str, Any]) -> None:
        """Restore the newest checkpoint before the bad step (or the initial state) and skip
        the bad step's data from then on."""
        window = [bad["examples_seen"] - bad["global_batch"], bad["examples_seen"]]
        io.ckpt.wait()
        restored = self._resume(io.ckpt, below=bad["step"])
        rs.rollbacks += 1
        if restored is None:
            rs.train_state, rs.examples_seen, rs.step = self._init_state(), 0, 0
            rs.noise = self._noise_monitor(None)
        else:
            rs.train_state, meta = restored
            rs.examples_seen, rs.step = int(meta["examples_seen"]), int(meta["step"])
            rs.noise = self._noise_monitor(meta)
        rs.skip_windows = [list(w) for w in sorted({tuple(w) for w in rs.skip_windows} | {tuple(window)})]
        rs.acc = self.programs.zeros_acc(rs.train_state)
        io.writer.truncate_after(rs.examples_seen)
        io.writer.write(
            {
                "event": "rollback",
                "bad_step": bad["step"],
                "skipped_window": window,
                "restored_step": rs.step,
                "examples_seen": rs.examples_seen,
                "rollbacks": rs.rollbacks,
            }
        )
        log.warning(
            "non-finite step %d: rolled back to step %d (examples_seen %d), skipping examples %d..%d",
            bad["step"],
            rs.step,
            rs.examples_seen,
            window[0],
            window[1],
        )
        self._check_rollback_bounds(rs, bad)
        self._reopen_batches(rs, io)
        io.evals = EvalSchedule(io.evals.every, rs.examples_seen)
        io.saves = SavePolicy(self.config, self.N, rs.examples_seen)
        if io.progress is not None:
            io.progress.reset(total=self.total_examples)
            io.progress.update(rs.examples_seen)

    def _check_rollback_bounds(self, rs: RunState, bad: dict[str, Any]) -> None:
        """Stop with an error past ``train.max_rollbacks`` or ``train.max_skipped_fraction``."""
        cfg, total = self.config.train, self.plan.total_examples
        skipped = rs.skipped_examples()
        if rs.rollbacks > cfg.max_rollbacks or skipped > cfg.max_skipped_fraction * total:
            raise TrainingError(
                f"non-finite loss or gradient at step {bad['step']} again: {rs.rollbacks} rollback(s) and "
                f"{skipped} of {total} examples ({skipped / total:.2%}) skipped, past train.max_rollbacks="
                f"{cfg.max_rollbacks} or train.max_skipped_fraction={cfg.max_skipped_fraction}. Training is "
                "diverging, not hitting a bad batch: lower schedule.base_lr (or add warmup). The checkpoints are kept."
            )

    def _checkpoint_hook(self, rs: RunState, io: _Io, sync: bool) -> None:
        """Save when the policy says so; on an agreed SIGTERM save, then raise :class:`Preempted`."""
        io.ckpt.check(sync)  # a failed async save: one-line CheckpointError at this step boundary
        decision = io.saves.decide(
            rs.examples_seen,
            self.total_examples,
            sync=sync,
            preempt_requested=io.preempt.requested,
            last_save_time=io.ckpt.last_save_time,
        )
        if decision.preempt:
            io.pending.flush(self._train_extra())
            io.ckpt.save(rs.step, rs.train_state, self._meta(rs))
            io.ckpt.wait()
            io.writer.write({"event": "preempted", "step": rs.step, "examples_seen": rs.examples_seen})
            io.writer.flush()
            log.warning(
                "SIGTERM: saved a checkpoint at step %d (examples_seen %d); exiting", rs.step, rs.examples_seen
            )
            raise Preempted(rs.step, rs.examples_seen)
        if decision.save:
            if len(io.pending) and self._flush(rs, io):  # a save by the clock: every record first
                return  # rolled back: nothing to save
            io.writer.sync()  # object storage: the records up to this checkpoint are stored first
            io.ckpt.save(rs.step, rs.train_state, self._meta(rs))
            io.saves.saved(rs.examples_seen)
            io.clock.skip()

    # -------------------------------------------------------------------------------------
    # Start and end of a run

    def _claim_workdir(self, stack: contextlib.ExitStack) -> dict[str, Any] | None:
        """Lock the workdir for this run (every process of a job refuses together if another
        run holds it); return the stored summary if this run already finished, else None."""
        stack.enter_context(WorkdirLock(self.workdir, primary=self.primary, agree=agree_any))
        config = json.loads(config_lib.to_json(self.config))
        done = finished_summary(self.workdir, self.total_examples, config=config, agree=agree_any)
        if done is not None:
            log.info("%s", already_finished_message(self.workdir, done))
        return done

    def _init_state(self) -> TrainState:
        """The initial state; its program is compiled once per Trainer (rollbacks to the start
        used to recompile it every time: 4 s each for the digits CNN)."""
        if self._init_fn is None:
            self._init_fn = init_state_fn(
                self.model, self.tx, self.mesh, self.splits.train.image_shape, self.config.seed
            )
        return self._init_fn()

    def _check_meta(self, meta: dict[str, Any]) -> None:
        """Refuse a checkpoint whose config differs (unless allow_config_change)."""
        current = json.loads(config_lib.to_json(self.config))
        diffs = config_differences(meta.get("config", {}), current)
        if diffs and not self.allow_config_change:
            raise CheckpointError(
                f"the config differs from the checkpoint's in {len(diffs)} field(s): "
                + "; ".join(diffs)
                + ". Use the original config, a new --workdir, or --allow_config_change to continue with the change."
            )
        if diffs:
            log.warning("resuming with config changes (allowed): %s", "; ".join(diffs))

    def abstract_state(self) -> Any:
        """Shapes, dtypes and shardings of this run's state (the target of a restore)."""
        return abstract_state(self.model, self.tx, self.mesh, self.splits.train.image_shape, self.config.seed)

    def _resume(self, ckpt: Checkpointer, below: int | None = None):
        """Restore the newest good checkpoint (config checked first), or None."""
        return ckpt.restore_latest(self.abstract_state(), below=below, check_meta=self._check_meta)

    def _start(self, ckpt: Checkpointer) -> tuple[RunState, bool]:
        """The run state from the newest good checkpoint, or the initial one; and whether resumed."""
        resumed = self._resume(ckpt)
        if resumed is None:
            state = self._init_state()
            return RunState(state, self.programs.zeros_acc(state), noise=self._noise_monitor(None)), False
        state, meta = resumed
        rs = RunState(
            state,
            self.programs.zeros_acc(state),
            examples_seen=int(meta["examples_seen"]),
            step=int(meta["step"]),
            skip_windows=[list(w) for w in meta.get("skip_windows", [])],
            rollbacks=int(meta.get("rollbacks", 0)),
            noise=self._noise_monitor(meta),
        )
        return rs, True

    def _noise_monitor(self, meta: dict[str, Any] | None) -> NoiseScaleMonitor | None:
        """The noise-scale EMAs, from a checkpoint's metadata (fresh for None or an older checkpoint)."""
        cfg = self.config
        if not self.measure_noise:
            return None
        state = (meta or {}).get("noise_scale")
        G, beta, factor = int(cfg.model.ghost_batch_size), cfg.train.noise_scale_ema, cfg.schedule.batch.regime_factor
        adaptive = None
        if self.plan.mode == "adaptive":
            saved = (state or {}).get("adaptive")
            adaptive = AdaptiveBatch(self.plan, cfg.schedule.batch, self.plan.phases[0].global_batch, saved)
        if state and adaptive is not None:
            _check_adaptive_noise_resume(state, self.noise_every, beta)
        every = self.noise_every
        return NoiseScaleMonitor(self.num_devices, self.M, G, beta, factor, state, adaptive=adaptive, every=every)

    def _open_io(self, stack: contextlib.ExitStack, ckpt: Checkpointer, rs: RunState, resumed: bool) -> _Io:
        """Open the run's services (closed by ``stack``) and log the start or the resume."""
        writer = metrics_writer(self.workdir, enabled=self.primary)
        stack.callback(writer.close)
        writer.truncate_after(rs.examples_seen)  # also drops records of a run killed before its first save
        if resumed:
            epoch = rs.examples_seen / self.N
            writer.write({"event": "resume", "step": rs.step, "examples_seen": rs.examples_seen, "epoch": epoch})
            log.info(
                "resumed from %s at step %d, examples_seen %d (epoch %.3f)",
                ckpt.directory / str(rs.step),
                rs.step,
                rs.examples_seen,
                epoch,
            )
        if self.primary:
            write_text_atomic(self.workdir / "config.json", config_lib.to_json(self.config))
        log.info(
            "plan: N=%d, M=%d, %d phases, %d optimizer steps, %d examples",
            self.N,
            self.M,
            len(self.plan.phases),
            self.plan.total_steps(),
            self.plan.total_examples,
        )
        if rs.adaptive is not None:
            log.info(
                "adaptive batch: B from %d up to B_max = %d (adapt_target %g x B_simple, gain >= %g), "
                "ε = ε_ref x B / %d; the step count above is the reference's",
                rs.adaptive.batch_for(rs.step + 1),
                rs.adaptive.B_max,
                rs.adaptive.target,
                rs.adaptive.min_gain,
                rs.adaptive.B0,
            )
        for line in plan_warnings(self.plan):
            log.warning("plan: %s", line)
        if rs.noise is not None:
            log.info("gradient noise scale: the %s estimator", rs.noise.estimator)
        if self.config.train.measure_noise_scale and self.noise_unmeasurable:
            log.info("gradient noise scale not measured: %s", self.noise_unmeasurable)
        progress = _progress(self.total_examples, rs.examples_seen, self.primary and self.config.train.progress)
        preempt = _PreemptionFlag()
        stack.callback(preempt.restore)
        io = _Io(
            ckpt=ckpt,
            writer=writer,
            pending=PendingMetrics(
                writer,
                progress,
                steps_in_flight(self.config),
                lambda: self._rates(io),
                on_record=(lambda rec, dev: rs.noise.observe(rec, dev)) if rs.noise is not None else None,
                tb_every=self.config.train.log_every_steps,
            ),
            progress=progress,
            batches=self._device_batches(rs.examples_seen),
            evals=EvalSchedule(eval_interval(self.config, self.N), rs.examples_seen),
            saves=SavePolicy(self.config, self.N, rs.examples_seen),
            preempt=preempt,
            clock=TrainClock(),
            profiler=Profiler(self.workdir, tuple(self.config.train.profile_steps)),
        )
        stack.callback(io.profiler.stop)
        io.flops_per_example, io.peak_flops = self._flops(rs)
        stack.callback(lambda: io.batches.close())  # the iterator is replaced on rollback
        return io

    def _flops(self, rs: RunState) -> tuple[float | None, float | None]:
        """Model FLOPs per example (cost analysis of ``accum``) and the device's peak FLOP/s."""
        wire = np.uint8 if self.raw and self.splits.train.input_lut is not None else np.float32
        shard = data_sharded(self.mesh)
        images = jax.ShapeDtypeStruct((self.M, *self.splits.train.image_shape), wire, sharding=shard)
        labels = jax.ShapeDtypeStruct((self.M,), np.int32, sharding=shard)
        args = (rs.train_state, rs.acc, images, labels)
        flops = flops_per_example(self.programs.accum, args, self.M // self.num_devices)
        device = jax.devices()[0]
        override = float(self.config.train.peak_flops)
        if device.platform == "cpu" and not override:
            return flops, None  # no meaningful peak: MFU is omitted on CPU
        return flops, peak_flops(device.device_kind, self.config.model.dtype, override)

    def _rates(self, io: _Io) -> dict[str, Any]:
        """Throughput of the steps read since the last flush (eval, checkpoint, compile excluded)."""
        examples, seconds, steps = io.clock.window()
        if not steps or seconds <= 0:
            return {}
        rates = {"examples_per_s": examples / seconds, "step_s": seconds / steps}
        util = mfu(io.flops_per_example, rates["examples_per_s"], io.peak_flops, self.num_devices)
        if util is not None:
            rates["mfu"] = util
        return rates

    def _meta(self, rs: RunState) -> dict[str, Any]:
        """Checkpoint metadata: the position, the config, and what the loop needs to resume."""
        cfg = self.config
        return {
            "examples_seen": rs.examples_seen,
            "step": rs.step,
            "epoch": rs.examples_seen / self.N,
            "config_hash": config_lib.config_hash(cfg),
            "config": json.loads(config_lib.to_json(cfg)),
            "rng": {
                "seed": int(cfg.seed),
                "data_order": "philox(seed, epoch) permutation",
                "position": rs.examples_seen,
            },
            "skip_windows": rs.skip_windows,
            "rollbacks": rs.rollbacks,
            "noise_scale": rs.noise.state_dict() if rs.noise is not None else None,
            "devices": self.num_devices,
            "processes": jax.process_count(),
            # what lbt.load needs to rebuild the model without the data (lbt.train.trained)
            "image_shape": list(self.splits.train.image_shape),
            "num_classes": int(self.splits.num_classes),
        }

    def _summary(
        self,
        rs: RunState,
        last_eval: dict[str, float],
        digest: str,
        *,
        resumed: bool,
        wall_s: float,
        io: _Io,
    ) -> dict[str, Any]:
        return json_safe(
            {
                "final_eval_accuracy": last_eval["accuracy"],
                "final_eval_loss": last_eval["loss"],
                "optimizer_steps": rs.step,
                "examples_seen": rs.examples_seen,
                "train_compilations": self.counter.train,
                "wall_s": wall_s,
                # steps only: eval, checkpoint and compile time excluded (TrainClock)
                "train_examples_per_s": io.clock.examples_per_s,
                "train_cache_hits": self.counter.train_cache_hits,
                "model_flops_per_example": io.flops_per_example,
                "mfu": mfu(io.flops_per_example, io.clock.examples_per_s, io.peak_flops, self.num_devices),
                "device_kind": jax.devices()[0].device_kind,
                "devices": self.num_devices,
                "processes": jax.process_count(),
                "config_name": self.config.name,
                "resumed": resumed,
                "rollbacks": rs.rollbacks,
                "skipped_examples": rs.skipped_examples(),
                "corrupt_examples_skipped": {
                    "train": self.splits.train.corrupt_count,
                    "test": self.splits.test.corrupt_count,
                },
                "final_state_sha256": digest,
                # the smoothed gradient noise scale at the end (McCandlish et al. 2018), and its steps
                "noise_scale_simple": rs.noise.b_simple if rs.noise is not None else None,
                "noise_scale_steps": rs.noise.ema.count if rs.noise is not None else 0,
                # the adaptive batch's (first step, B) decisions
                "adaptive_batch": rs.adaptive.state_dict()["decisions"] if rs.adaptive is not None else None,
            }
        )

    def _write_summary(self, summary: dict[str, Any]) -> None:
        if not self.primary:
            return
        write_json(self.workdir / "summary.json", summary)
        try:
            from lbt.tools.curves import plot_curves

            plot_curves(self.workdir / "metrics.jsonl", self.workdir / "curves.png")
        except Exception as e:  # plotting must never fail a finished run
            log.warning("could not plot curves: %s", e)

    def _close_counter(self) -> None:
        if self._owns_counter:
            self.counter.close()

    def _write_eval(self, writer: MetricsWriter, rs: RunState) -> dict[str, float]:
        ev = evaluate(self.programs, rs.train_state, self.splits.test, self.mesh, self.M, raw=self.raw)
        rec = {
            "split": "test",
            "step": rs.step,
            "examples_seen": rs.examples_seen,
            "epoch": rs.examples_seen / self.N,
            "accuracy": ev["accuracy"],
            "loss": ev["loss"],
            "count": ev["count"],
            "corrupt_skipped": self.splits.test.corrupt_count,  # masked out of accuracy and count
        }
        writer.write(rec, tb_step=rs.examples_seen, prefix="eval/")
        writer.flush()
        if self.primary:
            log.info(
                "eval @ epoch %.2f (step %d): accuracy %.4f, loss %.4f",
                rec["epoch"],
                rs.step,
                ev["accuracy"],
                ev["loss"],
            )
        return ev


def _check_adaptive_layout(config, M: int, num_devices: int) -> None:
    """batch.mode='adaptive' needs the noise scale from its first steps on."""
    if not config.train.measure_noise_scale:
        raise ConfigError(
            "train.measure_noise_scale",
            "is off, but schedule.batch.mode='adaptive' chooses B from the measured noise scale; set it to true",
        )
    B0 = int(config.schedule.global_batch)
    if not across_devices(int(config.model.ghost_batch_size), M, num_devices) and B0 < 2 * M:
        raise ConfigError(
            "schedule.global_batch",
            f"is {B0} = M with {num_devices} device(s) and ghost batch {config.model.ghost_batch_size or M} "
            f"(b = M/D = {M // num_devices}), so no step of schedule.batch.mode='adaptive' can measure the noise scale "
            f"and B would never grow; use global_batch >= {2 * M}, or ghost_batch_size <= {M // num_devices} on "
            "more than one device",
        )


def _check_adaptive_noise_resume(state: dict[str, Any], every: int, beta: float) -> None:
    """An adaptive run decides B from the noise-scale EMA, so it resumes only with the EMA it was
    measuring: the same steps (``train.noise_scale_every``, whose auto value depends on the
    backend) and the same factor (``train.noise_scale_ema``); otherwise its decisions, and the
    training, would differ from an uninterrupted run's."""
    saved = int(state.get("every", 1))  # checkpoints from before the option measured every step
    if saved != every:
        raise ConfigError(
            "train.noise_scale_every",
            f"this adaptive run's checkpoint measured the noise scale every {saved} step(s), this run every {every} "
            f"(0 = auto: 4 on CPU, 1 on GPU/TPU); pass --config.train.noise_scale_every={saved} to resume its "
            "decisions exactly",
        )
    per_measured = float(beta) ** every  # as NoiseScaleMonitor derives it
    saved_beta = float(state.get("ema", {}).get("beta", per_measured))
    if saved_beta != per_measured:
        raise ConfigError(
            "train.noise_scale_ema",
            f"this adaptive run's checkpoint smoothed the noise scale with {saved_beta ** (1 / every):.6g} per step, "
            f"this run with {beta}; resume with the checkpoint's value to keep its decisions exact",
        )


def grad_reduction(config) -> str:
    """``train.grad_reduction``; ``auto`` is ``flat`` on CPU (XLA:CPU does one rendezvous per
    all-reduce operand) and ``per_leaf`` on GPU/TPU (each leaf's all-reduce can start as soon as its
    gradient exists, overlapping the backward pass; not measured here, see docs/benchmarks.md)."""
    choice = config.train.grad_reduction
    if choice != "auto":
        return choice
    return "flat" if jax.default_backend() == "cpu" else "per_leaf"


def noise_scale_every(config) -> int:
    """``train.noise_scale_every``; ``0`` (auto) is 4 on CPU and 1 on GPU/TPU. Taking the squared
    norm reads the gradient once more; on XLA:CPU's simulated devices that cost 2.8% of the digits
    CNN's step at k = 1 measured every step and 0.5% every fourth (docs/benchmarks.md, runs 3 and
    4); on an accelerator it is bounded by 0.13% of a ResNet-50 step, so every step is measured."""
    n = int(config.train.noise_scale_every)
    if n >= 1:
        return n
    return 4 if jax.default_backend() == "cpu" else 1


def steps_in_flight(config) -> int:
    """``train.steps_in_flight``; ``-1`` (auto) is 1 on CPU, where a deep queue of dispatched
    collective programs once deadlocked XLA:CPU's simulated devices, and 0 (unbounded: the loop
    runs ahead until a metric is needed) on accelerators."""
    n = int(config.train.steps_in_flight)
    if n >= 0:
        return n
    return 1 if jax.default_backend() == "cpu" else 0


class Preempted(Exception):
    """Raised after a SIGTERM was honoured: a checkpoint was saved at ``step``."""

    def __init__(self, step: int, examples_seen: int):
        super().__init__(f"preempted at step {step} (examples_seen {examples_seen}); checkpoint saved")
        self.step = step
        self.examples_seen = examples_seen


class _PreemptionFlag:
    """SIGTERM sets a flag; the loop saves at the next step boundary (agreed across processes)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="ex", unit_scale=True, dynamic_ncols=True, desc="train")


def train(config, workdir: str | Path, **kwargs) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` and return the summary (also written to summary.json)."""
    storage.as_path(workdir).mkdir(parents=True, exist_ok=True)
    return Trainer(config, workdir, **kwargs).run()
