"""The training loop: the side-effecting part (data, programs, metrics, eval, checkpoints).

Progress is measured in examples seen. At each optimizer step the Plan gives the global batch
B, the LR and the momentum; the step runs k = B / M ``accum`` calls and one ``apply``.
"""

from __future__ import annotations

import functools
import json
import logging
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
from lbt.train.compiles import CompileCounter
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


def init_state(model, tx, mesh, image_shape: tuple[int, ...], seed: int) -> TrainState:
    """Initialise replicated params, BN statistics and optimizer state (same on every process)."""

    def init():
        variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
        params = variables["params"]
        stats = variables.get("batch_stats", {})
        return TrainState(params=params, batch_stats=stats, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))

    return jax.jit(init, out_shardings=replicated(mesh))()


class Trainer:
    """One training run of ``config`` in ``workdir``."""

    def __init__(
        self,
        config,
        workdir: str | Path,
        *,
        counter: CompileCounter | None = None,
        devices: list | None = None,
    ):
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
    def run(self) -> dict[str, Any]:
        t0 = time.time()
        cfg = self.config
        writer = MetricsWriter(self.workdir, enabled=self.primary)
        if self.primary:
            (self.workdir / "config.json").write_text(config_lib.to_json(cfg))
        log.info(
            "plan: N=%d, M=%d, %d phases, %d optimizer steps, %d examples",
            self.N, self.M, len(self.plan.phases), self.plan.total_steps(), self.plan.total_examples,
        )
        state = init_state(self.model, self.tx, self.mesh, self.splits.train.image_shape, cfg.seed)
        acc = self.programs.zeros_acc(state)
        examples_seen, step = 0, 0
        total = self.plan.total_examples
        eval_every = int(round(cfg.train.eval_every_epochs * self.N)) if cfg.train.eval_every_epochs > 0 else 0
        next_eval = eval_every if eval_every else None
        pbar = _progress(total, examples_seen, enabled=self.primary and cfg.train.progress)
        pending: list[tuple[dict[str, Any], dict[str, jax.Array]]] = []
        last_eval: dict[str, float] | None = None
        batches = self.stream.iterate(examples_seen)
        t_steps = time.time()

        def flush_pending() -> None:
            for rec, dev in pending:
                rec.update(loss=float(host_value(dev["loss"])), grad_norm=float(host_value(dev["grad_norm"])))
                finite = bool(host_value(dev["finite"]))
                rec["skipped_nonfinite"] = not finite
                writer.write(rec, tb_step=rec["examples_seen"], prefix="train/")
                if not finite and cfg.train.on_nonfinite == "stop":
                    writer.flush()
                    raise TrainingError(
                        f"non-finite loss or gradient at step {rec['step']} (examples_seen={rec['examples_seen']}); "
                        "the update was skipped and training stopped (train.on_nonfinite='stop'). "
                        "Lower schedule.base_lr or set train.on_nonfinite='rollback'."
                    )
            if pending and pbar is not None:
                rec = pending[-1][0]
                pbar.set_postfix(loss=f"{rec['loss']:.4f}", B=rec["global_batch"], lr=f"{rec['lr']:.4g}")
            pending.clear()

        while examples_seen < total:
            point = self.plan.at(examples_seen)
            B = point.global_batch
            k = B // self.M
            with self.counter.training():
                for _ in range(k):
                    pos, (images, labels) = next(batches)
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
            examples_seen += B
            step += 1
            if pbar is not None:
                pbar.update(B)
            if step % cfg.train.log_every_steps == 0 or examples_seen >= total:
                flush_pending()
            if next_eval is not None and examples_seen >= next_eval and examples_seen < total:
                flush_pending()
                last_eval = self._write_eval(writer, state, examples_seen, step)
                while next_eval <= examples_seen:
                    next_eval += eval_every
        flush_pending()
        train_s = time.time() - t_steps
        if pbar is not None:
            pbar.close()
        last_eval = self._write_eval(writer, state, examples_seen, step)
        summary = {
            "final_eval_accuracy": last_eval["accuracy"],
            "final_eval_loss": last_eval["loss"],
            "optimizer_steps": step,
            "examples_seen": examples_seen,
            "train_compilations": self.counter.train,
            "wall_s": time.time() - t0,
            "train_examples_per_s": examples_seen / max(train_s, 1e-9),
            "devices": self.num_devices,
            "processes": jax.process_count(),
            "config_name": cfg.name,
        }
        if self.primary:
            (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
            try:
                from lbt.tools.curves import plot_curves

                plot_curves(self.workdir / "metrics.jsonl", self.workdir / "curves.png")
            except Exception as e:  # plotting must never fail a finished run
                log.warning("could not plot curves: %s", e)
        writer.close()
        self.final_state = state
        return summary

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
        writer.write(rec, tb_step=examples_seen, prefix="eval/")
        writer.flush()
        if self.primary:
            log.info("eval @ epoch %.2f (step %d): accuracy %.4f, loss %.4f", rec["epoch"], step, ev["accuracy"], ev["loss"])
        return ev


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="ex", unit_scale=True, dynamic_ncols=True, desc="train")


def train(config, workdir: str | Path, **kwargs) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` and return the summary (also written to summary.json)."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return Trainer(config, workdir, **kwargs).run()
