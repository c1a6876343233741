"""The training loop: the side-effecting part (data, programs, metrics, eval, checkpoints).

Progress is measured in examples seen. At each optimizer step the Plan gives the global batch
B, the LR and the momentum; the step runs k = B / M ``accum`` calls and one ``apply``.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lbt import config as config_lib
from lbt.data.pipeline import TrainStream, eval_batches
from lbt.data.sources import load_splits
from lbt.errors import TrainingError
from lbt.models import create_model
from lbt.parallel.accumulate import TrainPrograms, TrainState, build_programs
from lbt.parallel.ghost_bn import GhostBatchNorm
from lbt.parallel.mesh import DATA, global_batch_array, host_value, make_mesh, replicated
from lbt.schedules.plan import Plan, make_plan
from lbt.train.checkpoint import Checkpointer, CheckpointError, config_differences, state_digest
from lbt.train.compiles import CompileCounter
from lbt.train.faults import Faults
from lbt.train.metrics import MetricsWriter
from lbt.train.optim import make_optimizer

log = logging.getLogger("lbt")


def compute_dtype(config) -> Any:
    return jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32


def build_model(config, num_classes: int, num_devices: int):
    """The model with ghost BN wired to the ``data`` axis of ``num_devices`` devices."""
    ghost, _ = config_lib.ghost_layout(config.model.ghost_batch_size, config.train.global_microbatch, num_devices)
    norm = functools.partial(
        GhostBatchNorm,
        ghost_size=ghost,
        axis_name=DATA,
        num_devices=num_devices,
        momentum=config.model.bn_momentum,
        epsilon=config.model.bn_epsilon,
        dtype=compute_dtype(config),
    )
    return create_model(config, num_classes, norm, compute_dtype(config))


def initial_state(model, tx, image_shape: tuple[int, ...], seed: int) -> TrainState:
    """The initial params, BN statistics and optimizer state (a pure function of the seed)."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    return TrainState(params=params, batch_stats=stats, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def init_state(model, tx, mesh, image_shape: tuple[int, ...], seed: int) -> TrainState:
    """:func:`initial_state`, replicated over ``mesh`` (same on every process)."""
    return jax.jit(lambda: initial_state(model, tx, image_shape, seed), out_shardings=replicated(mesh))()


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
    ):
        self.allow_config_change = allow_config_change
        self.config = config
        self.workdir = Path(workdir)
        self.counter = counter or CompileCounter()
        self.primary = jax.process_index() == 0
        self.splits = load_splits(config)
        self.N = len(self.splits.train)
        self.num_devices = len(devices) if devices is not None else jax.device_count()
        config_lib.validate(config, num_devices=self.num_devices, num_train=self.N)
        self.plan: Plan = make_plan(config, self.N)
        self.M = int(config.train.global_microbatch)
        self.mesh = make_mesh(devices)
        self.model = build_model(config, self.splits.num_classes, self.num_devices)
        self.tx = make_optimizer(config)
        self.programs: TrainPrograms = build_programs(
            self.model,
            self.tx,
            self.mesh,
            num_classes=self.splits.num_classes,
            bn_momentum=config.model.bn_momentum,
            label_smoothing=config.train.label_smoothing,
        )
        self.stream = TrainStream(self.splits.train, config.seed, self.M, jax.process_index(), jax.process_count())

    # -------------------------------------------------------------------------------------
    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Accuracy and loss over the whole test split, exactly once (last batch padded, masked)."""
        totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
        for images, labels, mask in eval_batches(self.splits.test, self.M, jax.process_index(), jax.process_count()):
            out = self.programs.evaluate(
                state,
                global_batch_array(self.mesh, images, self.M),
                global_batch_array(self.mesh, labels, self.M),
                global_batch_array(self.mesh, mask, self.M),
            )
            for k in totals:
                totals[k] += float(host_value(out[k]))
        n = totals["count"]
        return {"accuracy": totals["correct"] / n, "loss": totals["loss"] / n, "count": int(n)}

    # -------------------------------------------------------------------------------------
    def _abstract_state(self) -> Any:
        """Shapes, dtypes and (replicated) shardings of the state, for restoring checkpoints."""
        shapes = jax.eval_shape(
            lambda: initial_state(self.model, self.tx, self.splits.train.image_shape, self.config.seed)
        )
        rep = replicated(self.mesh)
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), shapes)

    def _agree(self, flags: list[bool]) -> list[bool]:
        """Each flag true on every process if it is true on any (a collective when multi-process)."""
        if jax.process_count() == 1:
            return [bool(f) for f in flags]
        from jax.experimental import multihost_utils

        gathered = np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int32)))
        return [bool(v) for v in gathered.reshape(-1, len(flags)).any(axis=0)]

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

    def _resume(self, ckpt: Checkpointer, below: int | None = None):
        """Restore the newest good checkpoint (config checked first), or None."""
        return ckpt.restore_latest(self._abstract_state(), below=below, check_meta=self._check_meta)

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        cfg = self.config
        ckpt = Checkpointer(self.workdir, keep=cfg.checkpoint.keep)
        faults = Faults()
        total = self.plan.total_examples
        skip_windows: list[list[int]] = []
        rollbacks = 0

        try:
            resumed = self._resume(ckpt)
        except BaseException:
            ckpt.close()
            raise
        writer = MetricsWriter(self.workdir, enabled=self.primary)
        if resumed is not None:
            state, meta = resumed
            examples_seen, step = int(meta["examples_seen"]), int(meta["step"])
            skip_windows = [list(w) for w in meta.get("skip_windows", [])]
            rollbacks = int(meta.get("rollbacks", 0))
            writer.truncate_after(examples_seen)
            writer.write({"event": "resume", "step": step, "examples_seen": examples_seen, "epoch": examples_seen / self.N})
            log.info(
                "resumed from %s at step %d, examples_seen %d (epoch %.3f)",
                ckpt.directory / str(meta["step"]), step, examples_seen, examples_seen / self.N,
            )
        else:
            state = init_state(self.model, self.tx, self.mesh, self.splits.train.image_shape, cfg.seed)
            examples_seen, step = 0, 0
        if self.primary:
            (self.workdir / "config.json").write_text(config_lib.to_json(cfg))
        log.info(
            "plan: N=%d, M=%d, %d phases, %d optimizer steps, %d examples",
            self.N, self.M, len(self.plan.phases), self.plan.total_steps(), total,
        )
        acc = self.programs.zeros_acc(state)
        eval_every = int(round(cfg.train.eval_every_epochs * self.N)) if cfg.train.eval_every_epochs > 0 else 0
        ck_every = _checkpoint_interval(cfg, self.N)
        next_eval = _next_multiple(examples_seen, eval_every)
        next_ckpt = _next_multiple(examples_seen, ck_every)
        pbar = _progress(total, examples_seen, enabled=self.primary and cfg.train.progress)
        pending: list[tuple[dict[str, Any], dict[str, jax.Array]]] = []
        preempt = _PreemptionFlag()
        batches = self.stream.iterate(examples_seen)
        t_steps, ex_start = time.time(), examples_seen

        def meta() -> dict[str, Any]:
            return {
                "examples_seen": examples_seen,
                "step": step,
                "epoch": examples_seen / self.N,
                "config_hash": config_lib.config_hash(cfg),
                "config": json.loads(config_lib.to_json(cfg)),
                "rng": {"seed": int(cfg.seed), "data_order": "philox(seed, epoch) permutation", "position": examples_seen},
                "skip_windows": skip_windows,
                "rollbacks": rollbacks,
                "devices": self.num_devices,
                "processes": jax.process_count(),
            }

        def flush_pending() -> dict[str, Any] | None:
            """Write pending records; return the first non-finite record (later ones are dropped)."""
            bad = None
            for rec, dev in pending:
                rec.update(loss=float(host_value(dev["loss"])), grad_norm=float(host_value(dev["grad_norm"])))
                rec["skipped_nonfinite"] = not bool(host_value(dev["finite"]))
                if hasattr(self.splits.train, "corrupt_count"):  # tfds, dataset.on_corrupt='skip'
                    rec["corrupt_skipped"] = self.splits.train.corrupt_count
                writer.write(rec, tb_step=rec["examples_seen"], prefix="train/")
                if rec["skipped_nonfinite"]:
                    bad = rec
                    break
            if pending and pbar is not None:
                last = (bad or pending[-1][0])
                pbar.set_postfix(loss=f"{last['loss']:.4f}", B=last["global_batch"], lr=f"{last['lr']:.4g}")
            pending.clear()
            return bad

        try:
            while examples_seen < total:
                window = next((w for w in skip_windows if w[0] == examples_seen), None)
                if window is not None:  # data that produced a non-finite step: skip it
                    examples_seen = window[1]
                    batches.close()
                    batches = self.stream.iterate(examples_seen)
                    continue
                point = self.plan.at(examples_seen)
                B = point.global_batch
                k = B // self.M
                with self.counter.training():
                    for _ in range(k):
                        pos, (images, labels) = next(batches)
                        images = faults.corrupt(pos, self.M, images)
                        acc = self.programs.accum(
                            state,
                            acc,
                            global_batch_array(self.mesh, images, self.M),
                            global_batch_array(self.mesh, labels, self.M),
                        )
                    state, acc, dev_metrics = self.programs.apply(
                        state, acc, np.int32(k), np.float32(point.lr), np.float32(point.momentum)
                    )
                record = {
                    "step": step + 1,
                    "examples_seen": examples_seen + B,
                    "epoch": (examples_seen + B) / self.N,
                    "global_batch": B,
                    "microbatches": k,
                    "phase": point.phase,
                    "lr": point.lr,
                    "momentum": point.momentum,
                    "noise_scale": point.noise_scale,
                }
                pending.append((record, dev_metrics))
                if len(pending) >= 2:
                    # Bound async dispatch to one step ahead. A deep queue of collective programs
                    # (e.g. log_every_steps=1000) deadlocked XLA:CPU's simulated devices in an
                    # all-reduce rendezvous; one step of lookahead keeps the devices busy.
                    jax.block_until_ready(pending[-2][1]["loss"])
                examples_seen += B
                step += 1
                if pbar is not None:
                    pbar.update(B)
                sync = step % cfg.train.log_every_steps == 0 or examples_seen >= total
                eval_due = next_eval is not None and examples_seen >= next_eval and examples_seen < total
                ckpt_due = next_ckpt is not None and examples_seen >= next_ckpt and examples_seen < total
                if sync or eval_due or ckpt_due or faults.pause_at is not None:
                    bad = flush_pending()
                    if bad is not None:
                        if cfg.train.on_nonfinite == "stop":
                            writer.flush()
                            raise TrainingError(
                                f"non-finite loss or gradient at step {bad['step']} (examples_seen "
                                f"{bad['examples_seen'] - bad['global_batch']}..{bad['examples_seen']}); the update was skipped and "
                                f"training stopped (train.on_nonfinite='stop'). The last good checkpoint is kept in {ckpt.directory}. "
                                "Lower schedule.base_lr, or set train.on_nonfinite='rollback'."
                            )
                        # rollback: restore the newest checkpoint before the bad step, skip its data
                        window = [bad["examples_seen"] - bad["global_batch"], bad["examples_seen"]]
                        ckpt.wait()
                        restored = self._resume(ckpt, below=bad["step"])
                        rollbacks += 1
                        if restored is None:
                            state, examples_seen, step = (
                                init_state(self.model, self.tx, self.mesh, self.splits.train.image_shape, cfg.seed), 0, 0,
                            )
                        else:
                            state, m = restored
                            examples_seen, step = int(m["examples_seen"]), int(m["step"])
                        skip_windows = sorted({tuple(w) for w in skip_windows} | {tuple(window)})
                        skip_windows = [list(w) for w in skip_windows]
                        acc = self.programs.zeros_acc(state)
                        writer.truncate_after(examples_seen)
                        writer.write({
                            "event": "rollback", "bad_step": bad["step"], "skipped_window": window,
                            "restored_step": step, "examples_seen": examples_seen, "rollbacks": rollbacks,
                        })
                        log.warning(
                            "non-finite step %d: rolled back to step %d (examples_seen %d), skipping examples %d..%d",
                            bad["step"], step, examples_seen, window[0], window[1],
                        )
                        batches.close()
                        batches = self.stream.iterate(examples_seen)
                        next_eval = _next_multiple(examples_seen, eval_every)
                        next_ckpt = _next_multiple(examples_seen, ck_every)
                        if pbar is not None:
                            pbar.reset(total=total)
                            pbar.update(examples_seen)
                        continue
                    faults.maybe_pause(step, stop=lambda: preempt.requested)
                if eval_due:
                    self._write_eval(writer, state, examples_seen, step)
                    next_eval = _next_multiple(examples_seen, eval_every)
                if sync:  # decisions from clocks and signals are agreed across processes
                    minutes = cfg.checkpoint.every_minutes
                    time_due = minutes > 0 and time.time() - ckpt.last_save_time >= 60 * minutes
                    preempt_now, time_due = self._agree([preempt.requested, time_due])
                    ckpt_due = ckpt_due or time_due
                else:
                    preempt_now = False
                if preempt_now:
                    flush_pending()
                    ckpt.save(step, state, meta())
                    ckpt.wait()
                    writer.write({"event": "preempted", "step": step, "examples_seen": examples_seen})
                    writer.flush()
                    log.warning("SIGTERM: saved a checkpoint at step %d (examples_seen %d); exiting", step, examples_seen)
                    raise Preempted(step, examples_seen)
                if ckpt_due:
                    ckpt.save(step, state, meta())
                    next_ckpt = _next_multiple(examples_seen, ck_every)
            flush_pending()
            train_s = time.time() - t_steps
            if pbar is not None:
                pbar.close()
            last_eval = self._write_eval(writer, state, examples_seen, step)
            ckpt.save(step, state, meta())
            ckpt.wait()
            digest = state_digest(state)
        finally:
            preempt.restore()
            batches.close()
            ckpt.close()
            writer.close()
        summary = {
            "final_eval_accuracy": last_eval["accuracy"],
            "final_eval_loss": last_eval["loss"],
            "optimizer_steps": step,
            "examples_seen": examples_seen,
            "train_compilations": self.counter.train,
            "wall_s": time.time() - t0,
            "train_examples_per_s": (examples_seen - ex_start) / max(train_s, 1e-9),
            "devices": self.num_devices,
            "processes": jax.process_count(),
            "config_name": cfg.name,
            "resumed": resumed is not None,
            "rollbacks": rollbacks,
            "skipped_examples": sum(w[1] - w[0] for w in skip_windows),
            "corrupt_examples_skipped": self.corrupt_skipped(),
            "final_state_sha256": digest,
        }
        if self.primary:
            (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
            try:
                from lbt.tools.curves import plot_curves

                plot_curves(self.workdir / "metrics.jsonl", self.workdir / "curves.png")
            except Exception as e:  # plotting must never fail a finished run
                log.warning("could not plot curves: %s", e)
        self.final_state = state
        return summary

    def corrupt_skipped(self) -> dict[str, int]:
        """Distinct corrupt examples this process met and skipped, per split (``on_corrupt='skip'``)."""
        return {
            split: int(getattr(src, "corrupt_count", 0))
            for split, src in (("train", self.splits.train), ("test", self.splits.test))
        }

    def _write_eval(self, writer: MetricsWriter, state: TrainState, examples_seen: int, step: int) -> dict[str, float]:
        ev = self.evaluate(state)
        rec = {
            "split": "test",
            "step": step,
            "examples_seen": examples_seen,
            "epoch": examples_seen / self.N,
            "accuracy": ev["accuracy"],
            "loss": ev["loss"],
            "count": ev["count"],
        }
        if hasattr(self.splits.test, "corrupt_count"):
            rec["corrupt_skipped"] = self.splits.test.corrupt_count  # masked out of accuracy and count
        writer.write(rec, tb_step=examples_seen, prefix="eval/")
        writer.flush()
        if self.primary:
            log.info("eval @ epoch %.2f (step %d): accuracy %.4f, loss %.4f", rec["epoch"], step, ev["accuracy"], ev["loss"])
        return ev


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


def _next_multiple(x: int, every: int) -> int | None:
    """The smallest multiple of ``every`` strictly greater than ``x`` (None if ``every`` is 0)."""
    return (x // every + 1) * every if every else None


def _checkpoint_interval(cfg, N: int) -> int:
    """Checkpoint interval in examples from checkpoint.every_examples / every_epochs (0 = off)."""
    options = [int(cfg.checkpoint.every_examples)] if cfg.checkpoint.every_examples else []
    if cfg.checkpoint.every_epochs:
        options.append(max(1, int(round(cfg.checkpoint.every_epochs * N))))
    return min(options) if options else 0


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="ex", unit_scale=True, dynamic_ncols=True, desc="train")


def train(config, workdir: str | Path, **kwargs) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` and return the summary (also written to summary.json)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return Trainer(config, workdir, **kwargs).run()
