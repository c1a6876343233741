"""``lbt lr-range-test``: the LR range test of L. N. Smith, *Cyclical Learning Rates for Training
Neural Networks* (WACV 2017), section 3.3, run with the real trainer.

A short run on the config's model, data and initial batch B0 (``batch.mode`` becomes
``decay_lr``, so B stays B0): the LR rises from ``--min_lr`` to ``--max_lr`` over ``--steps``
optimizer steps, linearly as in the paper or exponentially with ``--mode exp`` (fastai's
``lr_find``). The LR comes from the Plan (``schedule.lr.name = 'range_test'``), so the run is an
ordinary :class:`~lbt.train.loop.Trainer` run: same programs, ghost BN, data order and devices.

Early stop. The run goes in chunks of ``--eval_every`` steps; each chunk is a Trainer run of
``schedule.steps = chunk end`` that resumes exactly from the previous chunk's final checkpoint
(docs/design.md, semantics 6), so the chunks give the same losses as one run, and each chunk ends
with the trainer's test eval (the CSV's test accuracy). After each chunk the smoothed loss (a
bias-corrected EMA of log loss, :func:`smooth_log_loss`) is checked: the test stops once it is
``--stop_factor`` times above its minimum, or once a step's loss is non-finite
(``train.on_nonfinite='stop'`` ends the chunk there). lbt's compilation cache (``lbt.runtime``)
makes every chunk after the first compile nothing.

Recommendation (:func:`recommend`, a pure function of the (lr, loss) arrays). Smith (section 3.3)
takes ``max_lr`` where the curve "slows, becomes ragged, or starts to fall" and, by the rule of
thumb, ``base_lr`` = ``max_lr`` / 3 or / 4. Here, on the zero-phase smoothed log loss before the
stop: ``max_lr`` is the LR at which the loss has done ``fall_fraction`` (90%) of its fall from the
first step to its minimum, i.e. just before it stops falling; ``min_lr = max_lr / --min_div``. The
LR of the steepest fall and of the loss minimum are reported too. The tool prints ready
``lbt train`` lines for triangular CLR (Smith 2017) and 1cycle (Smith 2018) at these bounds.

Outputs in ``--workdir``: ``lr_range.csv`` (step, lr, loss, smoothed_loss, test_accuracy,
test_loss), ``lr_range.png`` (loss and test accuracy against the LR, log-x for ``--mode exp``,
the bounds marked), ``recommendation.json``, and the trainer's own files under ``run/``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbt.errors import ConfigError, TrainingError

log = logging.getLogger("lbt")

MODES = ("linear", "exp")
#: Half a CLR cycle in epochs for the printed triangular line (Smith 2017: 2 to 10 epochs).
CLR_HALF_CYCLE_EPOCHS = 4.0


class FlagError(ConfigError):
    """A bad flag of an ``lbt`` tool. ``str()`` is one line ``--flag: problem; fix``.

    A :class:`~lbt.errors.ConfigError`, so ``lbt`` prints ``lbt: error: ...`` and exits 2.
    """

    def __init__(self, flag: str, message: str):
        super().__init__(flag, message)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one :class:`FlagError` line, not a usage dump."""

    def error(self, message: str):  # type: ignore[override]
        what, _, problem = message.removeprefix("argument ").partition(": ")
        if not problem:
            what, problem = self.prog, message
        raise FlagError(what, f"{problem}; see {self.prog} --help")

    def parse_flags(self, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
        """(flags, ``--config.a.b=value`` overrides); an unknown flag is a :class:`FlagError` naming it."""
        overrides = [a for a in argv if a.startswith("--config.")]
        args, unknown = self.parse_known_args([a for a in argv if not a.startswith("--config.")])
        if unknown:
            raise FlagError(
                unknown[0], f"not a flag of {self.prog}; see {self.prog} --help (config fields: --config.a.b=value)"
            )
        return args, overrides


# ---------------------------------------------------------------------------------------------
# The recommendation: pure functions of (lr, loss)


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """Bounds from an LR range test (Smith 2017, section 3.3).

    ``max_lr``: the LR just before the loss stops falling; ``min_lr = max_lr / min_div``;
    ``steepest_lr``: where the smoothed loss falls fastest; ``min_loss_lr``: its minimum;
    ``stop_index``: the first step (0-based) at which the test counts as diverged (None: never);
    ``notes``: caveats (e.g. no divergence up to the largest LR tried).
    """

    max_lr: float
    min_lr: float
    steepest_lr: float
    min_loss_lr: float
    stop_index: int | None
    stop_lr: float | None
    notes: tuple[str, ...] = ()


def _log_loss(loss: Sequence[float]) -> np.ndarray:
    """log(loss) with NaN and +-inf as +inf (diverged); the loss must be > 0 (cross-entropy is)."""
    x = np.asarray(loss, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.maximum(x, 1e-300))
    out[~np.isfinite(x)] = np.inf
    return out


def smooth_log_loss(loss: Sequence[float], beta: float = 0.9) -> np.ndarray:
    """Causal, bias-corrected EMA of log(loss) (as fastai's ``lr_find``, in log space so that an
    explosion does not swamp it); +inf from the first non-finite loss on. ``exp`` of it is the
    smoothed loss (a running geometric mean)."""
    x = _log_loss(loss)
    out = np.full(len(x), np.inf)
    avg = 0.0
    for i, v in enumerate(x):
        if not math.isfinite(v):
            break
        avg = beta * avg + (1.0 - beta) * v
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


def divergence_index(smoothed_log: Sequence[float], stop_factor: float = 4.0) -> int | None:
    """The first index where the smoothed loss is ``stop_factor`` times above its running minimum
    or non-finite (the early stop of the range test); None if it never is."""
    lo, limit = math.inf, math.log(stop_factor)
    for i, v in enumerate(smoothed_log):
        if not math.isfinite(v):
            return i
        lo = min(lo, v)
        if v > lo + limit:
            return i
    return None


def _zero_phase(x: np.ndarray, beta: float) -> np.ndarray:
    """Forward then backward bias-corrected EMA: smooth without the causal EMA's lag."""

    def ema(v: np.ndarray) -> np.ndarray:
        out, avg = np.empty_like(v), 0.0
        for i, u in enumerate(v):
            avg = beta * avg + (1.0 - beta) * u
            out[i] = avg / (1.0 - beta ** (i + 1))
        return out

    return ema(ema(x)[::-1])[::-1]


def recommend(
    lr: Sequence[float],
    loss: Sequence[float],
    *,
    beta: float = 0.9,
    stop_factor: float = 4.0,
    fall_fraction: float = 0.9,
    min_div: float = 4.0,
) -> Recommendation:
    """CLR bounds from a range test's per-step ``lr`` and ``loss`` (Smith 2017, section 3.3).

    Up to the minimum of the causal smoothed loss before the stop (:func:`divergence_index` of
    :func:`smooth_log_loss`) the log loss is smoothed without lag; ``max_lr`` is the LR at the
    first step where the loss has done ``fall_fraction`` of its fall from the first step to its
    minimum (just before it stops falling), ``min_lr`` is ``max_lr / min_div`` (Smith: 3 or 4).
    Raises :class:`FlagError` (naming ``--min_lr`` or ``--max_lr``) if the loss diverged at once
    or never fell.
    """
    lrs = np.asarray(lr, dtype=np.float64)
    causal = smooth_log_loss(loss, beta)
    stop = divergence_index(causal, stop_factor)
    # Read only the part before the rise: up to the causal EMA's minimum before the stop (the
    # lag-free smoothing would otherwise carry the explosion back onto the curve's bottom).
    end = len(lrs) if stop is None else int(np.argmin(causal[:stop])) + 1 if stop else 0
    if end < 3:
        raise FlagError(
            "--min_lr", f"the loss diverged within {end + 1} step(s) (lr {lrs[min(end, len(lrs) - 1)]:.3g}); lower it"
        )
    z = _zero_phase(_log_loss(loss)[:end], beta)
    i_min = int(np.argmin(z))
    drop = float(z[0] - z[i_min])
    if i_min == 0 or drop < 0.05:
        raise FlagError(
            "--max_lr",
            f"the smoothed loss did not fall between lr {lrs[0]:.3g} and {lrs[end - 1]:.3g} (by {drop:.3f} in log); "
            "raise --max_lr or --steps, or lower --min_lr",
        )
    i_knee = int(np.argmax(z[: i_min + 1] <= z[i_min] + (1.0 - fall_fraction) * drop))
    i_steep = int(np.argmin(np.gradient(z[: i_min + 1]))) if i_min >= 2 else i_min
    notes = []
    if stop is None:
        notes.append(
            f"the loss did not diverge up to lr {lrs[-1]:.3g}; raise --max_lr to see where it does (max_lr may be low)"
        )
    max_lr = float(lrs[i_knee])
    return Recommendation(
        max_lr=max_lr,
        min_lr=max_lr / min_div,
        steepest_lr=float(lrs[i_steep]),
        min_loss_lr=float(lrs[i_min]),
        stop_index=stop,
        stop_lr=None if stop is None else float(lrs[stop]),
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# The run: chunks of real Trainer runs


@dataclasses.dataclass
class RangeRun:
    """What a range test measured: per step (1-based) its LR and train loss; test evals by step."""

    step: np.ndarray
    lr: np.ndarray
    loss: np.ndarray
    evals: dict[int, tuple[float, float]]  # step -> (test accuracy, test loss)
    stop_reason: str | None = None  # "diverged", "non-finite" or None (ran to --steps)


def range_config(config: Any, *, min_lr: float, max_lr: float, steps: int, mode: str, run_steps: int) -> Any:
    """A copy of ``config`` whose first ``run_steps`` steps are those of the range test: B constant
    at ``schedule.global_batch`` (``decay_lr``, no stepped momentum, no warmup) and the LR of
    Smith 2017, section 3.3, rising from ``min_lr`` at step 1 to ``max_lr`` at step ``steps``."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        s = c.schedule
        s.batch.mode = "decay_lr"
        s.momentum_schedule.milestones, s.momentum_schedule.values = (), ()
        s.lr.name, s.lr.range_mode, s.lr.warmup_epochs = "range_test", mode, 0.0
        s.base_lr, s.lr.max_lr, s.lr.step_size = float(min_lr), float(max_lr), max(int(steps) - 1, 1)
        s.epochs, s.steps = 0.0, int(run_steps)
        c.train.on_nonfinite = "stop"
        c.train.eval_every_epochs = 0.0  # each chunk ends with the trainer's final eval
        c.train.progress = False
        c.checkpoint.every_epochs, c.checkpoint.every_examples, c.checkpoint.every_minutes = 0.0, 0, 0.0
        c.checkpoint.keep = 2
    return c


def read_run(run_dir: str | Path) -> RangeRun:
    """The train and test records of the trainer's ``metrics.jsonl`` in ``run_dir``."""
    from lbt.train.metrics import read_jsonl

    recs = read_jsonl(Path(run_dir) / "metrics.jsonl")
    train = [r for r in recs if "split" not in r and "event" not in r and "loss" in r]
    evals = {int(r["step"]): (float(r["accuracy"]), float(r["loss"])) for r in recs if r.get("split") == "test"}
    return RangeRun(
        step=np.asarray([int(r["step"]) for r in train], dtype=np.int64),
        lr=np.asarray([float(r["lr"]) for r in train]),
        loss=np.asarray([float(r["loss"]) for r in train]),  # "nan"/"inf" strings parse too
        evals=evals,
    )


class _QuietChunks(logging.Filter):
    """Drop the trainer's per-run INFO lines and its (expected) config-change warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not str(record.msg).startswith("resuming with config changes")


def run_range_test(
    config: Any,
    workdir: str | Path,
    *,
    min_lr: float,
    max_lr: float,
    steps: int,
    mode: str = "linear",
    eval_every: int | None = None,
    stop_factor: float = 4.0,
    beta: float = 0.9,
    devices: list | None = None,
    progress: bool = True,
) -> RangeRun:
    """Run the range test in ``workdir/run`` in chunks of ``eval_every`` steps (each a
    :class:`~lbt.train.loop.Trainer` run that resumes the previous one exactly) and stop after
    the chunk where the smoothed loss diverges (:func:`divergence_index`) or a loss is non-finite."""
    from lbt.train.loop import Trainer

    run_dir = Path(workdir) / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    every = eval_every or max(1, math.ceil(steps / 10))
    bar = _bar(steps, progress)
    done, reason, quiet = 0, None, _QuietChunks()
    log.addFilter(quiet)
    try:
        while done < steps and reason is None:
            end = min(done + every, steps)
            cfg = range_config(config, min_lr=min_lr, max_lr=max_lr, steps=steps, mode=mode, run_steps=end)
            try:
                Trainer(cfg, run_dir, devices=devices, allow_config_change=True).run()
            except TrainingError:
                data = read_run(run_dir)
                if not len(data.loss) or np.isfinite(data.loss[-1]):
                    raise  # not the non-finite stop
                reason = "non-finite"
            data = read_run(run_dir)
            if reason is None and divergence_index(smooth_log_loss(data.loss, beta), stop_factor) is not None:
                reason = "diverged"
            if bar is not None:
                bar.update(end - done)
                bar.set_postfix(lr=f"{data.lr[-1]:.3g}", loss=f"{data.loss[-1]:.4g}")
            done = end
    finally:
        log.removeFilter(quiet)
        if bar is not None:
            bar.close()
    data.stop_reason = reason
    return data


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, desc="lr range test")


# ---------------------------------------------------------------------------------------------
# Outputs


def write_csv(data: RangeRun, path: str | Path, beta: float = 0.9) -> Path:
    """``lr_range.csv``: step, lr, loss, smoothed_loss, test_accuracy, test_loss (empty where no eval)."""
    path = Path(path)
    smoothed = np.exp(smooth_log_loss(data.loss, beta))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed_loss", "test_accuracy", "test_loss"])
        for step, lr, loss, sm in zip(data.step, data.lr, data.loss, smoothed):
            acc, tl = data.evals.get(int(step), ("", ""))
            w.writerow([int(step), f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}", acc, tl])
    return path


def plot_range(
    data: RangeRun, rec: Recommendation | None, path: str | Path, *, mode: str, title: str, beta: float = 0.9
) -> Path:
    """``lr_range.png``: train loss (raw, the causal EMA that stops the test, and the lag-free
    smoothing the recommendation reads) and test accuracy against the LR (log-x for ``exp``), with
    the recommended ``min_lr``/``max_lr``, the steepest fall and the stop marked."""
    from lbt.tools.plots import new_figure, save_figure

    fig = new_figure(figsize=(7.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    causal = np.exp(smooth_log_loss(data.loss, beta))
    top.plot(data.lr, data.loss, color="tab:blue", alpha=0.25, linewidth=1, label="train loss")
    top.plot(data.lr, causal, color="tab:blue", linestyle="--", linewidth=1, label="causal EMA (early stop)")
    end = len(data.loss)
    if rec is not None and rec.stop_index is not None:
        end = int(np.argmin(smooth_log_loss(data.loss, beta)[: rec.stop_index])) + 1 if rec.stop_index else 0
    if end >= 2 and np.all(np.isfinite(data.loss[:end])):
        lagless = np.exp(_zero_phase(_log_loss(data.loss[:end]), beta))
        top.plot(data.lr[:end], lagless, color="tab:blue", linewidth=2, label="smoothed, no lag (recommendation)")
    finite = data.loss[np.isfinite(data.loss) & (data.loss > 0)]
    if len(finite):
        head = float(finite[: max(3, len(finite) // 10)].max())
        top.set_ylim(float(finite.min()) * 0.8, max(head, float(finite.min())) * 2.0)
    top.set_yscale("log")
    top.set_ylabel("train loss")
    ev = sorted(data.evals.items())
    step_lr = dict(zip(data.step.tolist(), data.lr.tolist()))
    pts = [(step_lr[s], 100 * a) for s, (a, _) in ev if s in step_lr]
    if pts:
        bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="tab:orange", label="test accuracy")
        bottom.legend(fontsize=8, loc="best")
    bottom.set_ylabel("test accuracy %")
    bottom.set_xlabel("learning rate" + (" (log scale)" if mode == "exp" else ""))
    for ax in (top, bottom):
        _mark(ax, rec)
        ax.set_xscale("log" if mode == "exp" else "linear")
        ax.grid(True, which="both", alpha=0.3)
    top.legend(fontsize=7, loc="best")
    top.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=90)


def _mark(ax: Any, rec: Recommendation | None) -> None:
    if rec is None:
        return
    ax.axvline(rec.max_lr, color="tab:red", linewidth=1.5, label=f"max_lr {rec.max_lr:.3g}")
    ax.axvline(rec.min_lr, color="tab:green", linewidth=1.5, label=f"min_lr {rec.min_lr:.3g}")
    ax.axvline(rec.steepest_lr, color="gray", linestyle=":", label=f"steepest fall {rec.steepest_lr:.3g}")
    if rec.stop_lr is not None:
        ax.axvline(rec.stop_lr, color="black", linestyle="--", linewidth=1, label=f"stop (diverged) {rec.stop_lr:.3g}")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def train_commands(
    rec: Recommendation, config: Any, N: int, *, config_path: str | None, overrides: Sequence[str], min_div: float
) -> dict[str, str]:
    """Ready ``lbt train`` lines at the recommended bounds: ``triangular`` (Smith 2017, CLR with a
    half-cycle of about :data:`CLR_HALF_CYCLE_EPOCHS` epochs, a whole number of cycles over the
    config's run at constant B0) and ``onecycle`` (Smith 2018, from max_lr / min_div up to max_lr)."""
    from lbt.schedules.plan import baseline_config, make_plan

    base = baseline_config(config)
    total = make_plan(base, N).total_steps()
    per_epoch = N / int(base.schedule.global_batch)
    cycles = max(1, int(total // (2 * CLR_HALF_CYCLE_EPOCHS * per_epoch)))
    step_size = math.ceil(total / (2 * cycles))
    head = ["lbt", "train"] + (["--config", config_path] if config_path else []) + list(overrides)
    head.append("--config.schedule.batch.mode=decay_lr")
    ms = config.schedule.get("momentum_schedule")
    if ms is not None and tuple(ms.milestones):
        head += ["--config.schedule.momentum_schedule.milestones=()", "--config.schedule.momentum_schedule.values=()"]
    clr = head + [
        "--config.schedule.lr.name=triangular",
        f"--config.schedule.base_lr={_fmt(rec.min_lr)}",
        f"--config.schedule.lr.max_lr={_fmt(rec.max_lr)}",
        f"--config.schedule.lr.step_size={step_size}",
    ]
    one = head + [
        "--config.schedule.lr.name=onecycle",
        f"--config.schedule.lr.max_lr={_fmt(rec.max_lr)}",
        f"--config.schedule.lr.div_factor={min_div:g}",
    ]
    return {"triangular": " ".join(clr), "onecycle": " ".join(one), "clr_cycles": str(cycles)}


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="lbt lr-range-test",
        allow_abbrev=False,
        description="The LR range test (Smith 2017, section 3.3) with the real trainer; prints CLR and 1cycle bounds.",
    )
    p.add_argument("--config", default=None, help="config file configs/<name>.py (default: embedded digits)")
    p.add_argument("--workdir", default="runs/lr_range", help="output directory (default runs/lr_range)")
    p.add_argument("--min_lr", type=float, default=1e-3, help="LR of the first step (default 1e-3)")
    p.add_argument("--max_lr", type=float, default=10.0, help="LR of the last step (default 10)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of the ramp, >= 3 (default 100)")
    p.add_argument("--mode", choices=MODES, default="linear", help="linear (the paper, default) or exp (fastai)")
    p.add_argument(
        "--eval_every",
        type=int,
        default=None,
        help="steps between divergence checks, each with a test eval (default: steps/10)",
    )
    p.add_argument("--stop_factor", type=float, default=4.0, help="stop once the smoothed loss is this x its minimum")
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA factor beta of the smoothed loss, in [0, 1)")
    p.add_argument("--min_div", type=float, default=4.0, help="min_lr = max_lr / min_div (Smith: 3 or 4)")
    p.add_argument("--num_cpu_devices", type=int, default=None, help="simulated CPU devices (as lbt train)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier range test in --workdir")
    return p


def check_args(args: argparse.Namespace) -> int:
    """Check the flags (one :class:`FlagError` naming the flag and the fix); return eval_every."""
    if not (args.min_lr > 0 and math.isfinite(args.min_lr)):
        raise FlagError("--min_lr", f"must be > 0, got {args.min_lr}; e.g. --min_lr 1e-4")
    if not (args.max_lr > args.min_lr and math.isfinite(args.max_lr)):
        raise FlagError("--max_lr", f"must be > --min_lr={args.min_lr:g}, got {args.max_lr}; e.g. --max_lr 10")
    if args.steps < 3:
        raise FlagError("--steps", f"must be >= 3, got {args.steps}; e.g. --steps 100")
    every = args.eval_every if args.eval_every is not None else max(1, math.ceil(args.steps / 10))
    if not 1 <= every <= args.steps:
        raise FlagError("--eval_every", f"must be in [1, --steps={args.steps}], got {every}; e.g. {args.steps // 10}")
    if not args.stop_factor > 1:
        raise FlagError("--stop_factor", f"must be > 1, got {args.stop_factor}; e.g. 4")
    if not 0 <= args.smoothing < 1:
        raise FlagError("--smoothing", f"must be in [0, 1), got {args.smoothing}; e.g. 0.9")
    if not args.min_div > 1:
        raise FlagError("--min_div", f"must be > 1, got {args.min_div}; Smith 2017 uses 3 or 4")
    try:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlagError(
            "--workdir", f"cannot create {args.workdir!r} ({e.strerror or e}); pass a writable directory"
        ) from None
    run = Path(args.workdir) / "run"
    if run.exists() and any(run.iterdir()) and not args.overwrite:
        raise FlagError(
            "--workdir", f"{run} holds an earlier range test; pass --overwrite to replace it, or a new --workdir"
        )
    return every


def _cache_every_program() -> None:
    """Chunks after the first load their programs from lbt's compilation cache (``lbt.runtime``:
    ``$LBT_COMPILE_CACHE_DIR`` or ``~/.cache/lbt/jax``) instead of compiling: cache programs of any
    compile time (JAX's default skips those under 1 s, i.e. all of a small model's)."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def report_lines(rec: Recommendation, data: RangeRun, commands: dict[str, str], *, min_div: float) -> list[str]:
    """The printed recommendation."""
    n = len(data.step)
    if data.stop_reason is not None:
        why = "a non-finite loss" if data.stop_reason == "non-finite" else "the smoothed loss diverged"
        stop = f"stopped after step {n} ({why} at step {(rec.stop_index or 0) + 1}, lr {rec.stop_lr or 0:.4g})"
    else:
        stop = f"ran all {n} steps"
    lines = [
        f"lr range test: {stop}",
        f"steepest fall at lr {rec.steepest_lr:.4g}; smoothed loss minimum at lr {rec.min_loss_lr:.4g}",
        f"recommended (Smith 2017, section 3.3): max_lr = {rec.max_lr:.4g} (just before the loss stops falling), "
        f"min_lr = max_lr / {min_div:g} = {rec.min_lr:.4g}",
        f"triangular CLR ({commands['clr_cycles']} cycle(s)): {commands['triangular']}",
        f"1cycle: {commands['onecycle']}",
    ]
    return lines + [f"note: {x}" for x in rec.notes]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = _parser().parse_flags(argv)
    every = check_args(args)
    from lbt import config as config_lib
    from lbt import runtime

    n_cpu = runtime.cpu_device_count(args.num_cpu_devices)
    config = config_lib.load_config(args.config, overrides)  # before JAX starts
    workdir = Path(args.workdir)
    if args.overwrite:
        shutil.rmtree(workdir / "run", ignore_errors=True)
    runtime.setup(n_cpu)
    import jax

    from lbt.data.registry import train_size

    N = train_size(config)
    first = range_config(
        config, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, mode=args.mode, run_steps=args.steps
    )
    config_lib.validate(first, num_devices=jax.device_count(), num_train=N)  # before anything compiles
    _cache_every_program()
    kw = dict(min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, mode=args.mode)
    data = run_range_test(config, workdir, **kw, eval_every=every, stop_factor=args.stop_factor, beta=args.smoothing)
    csv_path = write_csv(data, workdir / "lr_range.csv", args.smoothing)
    B = int(config.schedule.global_batch)
    title = (
        f"{config.name}: LR range test, B={B}, {args.mode} {args.min_lr:g} -> {args.max_lr:g} over {args.steps} steps"
    )
    try:
        rec = recommend(data.lr, data.loss, beta=args.smoothing, stop_factor=args.stop_factor, min_div=args.min_div)
    except FlagError:
        plot_range(data, None, workdir / "lr_range.png", mode=args.mode, title=title, beta=args.smoothing)
        print(f"wrote {csv_path} and {workdir / 'lr_range.png'}")
        raise
    png = plot_range(data, rec, workdir / "lr_range.png", mode=args.mode, title=title, beta=args.smoothing)
    commands = train_commands(rec, config, N, config_path=args.config, overrides=overrides, min_div=args.min_div)
    from lbt.train.metrics import write_json

    write_json(
        workdir / "recommendation.json", {**dataclasses.asdict(rec), "test": {**kw, "global_batch": B}, **commands}
    )
    for line in report_lines(rec, data, commands, min_div=args.min_div):
        print(line)
    print(f"wrote {csv_path}, {png} and {workdir / 'recommendation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
