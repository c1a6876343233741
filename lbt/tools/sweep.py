"""``lbt sweep``: a grid of batch size B × learning rate ε at a constant epoch or step budget.

Smith, Elsen & De, *On the Generalization Benefit of Noise in Stochastic Gradient Descent*
(ICML 2020), train a grid of B × ε at a constant epoch budget and at a constant step budget
(their sections 3 and 4) and read two things from it: the test accuracy at the best ε for each B,
and that best ε against B. For small B (the "noise dominated" regime) the best ε grows
proportionally to B and the accuracy is independent of B; above a transition batch size (the
"curvature dominated" regime) the best ε stops growing and, at a constant epoch budget, the
test accuracy falls.

Usage::

    lbt sweep [--config X] --batch 16,32,64 --lr 0.025:1.6:2 --budget epochs|steps
              [--epochs E | --steps S] [--seeds 1] [--parallel 1] [--workdir runs/sweep]
              [--data FILE.npz] [--num_cpu_devices 1] [--acc_tol 0.01] [--dry_run] [--config.a.b=v ...]

``--batch`` and ``--lr`` take a comma list or ``lo:hi:factor`` (a geometric grid). Every point
(B, ε, seed) is a real ``lbt train`` run (``python -m lbt.cli train``) in its own workdir
``<workdir>/points/B<B>_lr<ε>_seed<s>_<config hash>``. A point's config is the base config with
``batch.mode = 'decay_lr'`` (B constant, no stepped momentum), ``global_batch = B``,
``base_lr = ε``, ``seed = s``, the run length of the budget (``--budget epochs``: ``--epochs``,
default the config's; ``--budget steps``: ``schedule.steps = --steps``, default the config's own
step count at B0), the LR milestones and warmup scaled to the same fractions of the run, the
microbatch M = gcd(B, M_config) and the ghost batch gcd(G_config, M) (G is unchanged when it
divides B). The LR schedule must be constant, step or cosine.

Resumable: a point whose workdir holds its ``summary.json`` (or a recorded divergence: a
non-finite loss stops the run, ``train.on_nonfinite='stop'``) is skipped on rerun; an interrupted
point resumes from its last checkpoint, if any. ``--parallel N`` runs N points at once
(subprocesses; at most the number of cores). Children share lbt's compilation cache
(``lbt.runtime``: ``$LBT_COMPILE_CACHE_DIR`` or ``~/.cache/lbt/jax``), so points with the same M
compile once.

Outputs in ``--workdir``: ``sweep.csv`` (one row per point), ``sweep.png`` (best test accuracy
vs B and best ε vs B, log axes, the transition marked) and ``sweep.json`` (the per-B table and
the transition, :func:`estimate_transition`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lbt.tools.lr_range import FlagError, OneLineParser

log = logging.getLogger("lbt")

BUDGETS = ("epochs", "steps")
SWEEP_LR_SCHEDULES = ("constant", "step", "cosine")
STATUS_FILE = "sweep_point.json"


# ---------------------------------------------------------------------------------------------
# Grids and points


def parse_grid(flag: str, text: str, kind: type = float) -> list:
    """``"16,32,64"`` or ``"16:64:2"`` (lo, hi, factor: lo, lo·f, ... up to hi) as sorted values."""
    try:
        if ":" in text:
            lo, hi, f = (float(x) for x in text.split(":"))
            if not (0 < lo <= hi and f > 1):
                raise ValueError
            n = int(math.floor(math.log(hi / lo) / math.log(f) + 1e-9)) + 1
            values = [lo * f**i for i in range(n)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
        if kind is int:
            if any(v != round(v) for v in values):
                raise ValueError
            values = [int(round(v)) for v in values]
        else:
            values = [float(f"{v:.6g}") for v in values]
    except ValueError:
        example = "16,32,64 or 16:512:2" if kind is int else "0.05,0.1,0.2 or 0.025:1.6:2"
        raise FlagError(flag, f"cannot parse {text!r}; write a comma list or lo:hi:factor, e.g. {example}") from None
    if not values or any(v <= 0 for v in values):
        raise FlagError(flag, f"needs positive values, got {text!r}")
    if len(set(values)) != len(values):
        raise FlagError(flag, f"has repeated values in {text!r}; list each once")
    return sorted(values)


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the grid: its overrides (on top of the user's) and where it runs."""

    batch: int
    lr: float
    seed: int
    overrides: tuple[str, ...]
    workdir: Path
    config_json: str  # the resolved config, as the trainer writes config.json
    epochs: float = 0.0  # the run's length (examples / N) and optimizer steps, from its Plan
    steps: int = 0


def _run_epochs(config: Any, N: int) -> float:
    """The config's run length in epochs (``schedule.steps`` counted through its Plan)."""
    from lbt.schedules.plan import make_plan

    return make_plan(config, N).total_examples / N


def point_overrides(
    config: Any, *, batch: int, lr: float, seed: int, budget: str, length: float, N: int, base_epochs: float
) -> list[str]:
    """``--config.a.b=value`` overrides that make ``config`` the grid point (B, ε, seed): constant B
    (decay_lr), ε0 = lr, the budget's run length, milestones and warmup at the same fractions of the
    run, M = gcd(B, M_config), G = gcd(G_config, M) (0 stays 0)."""
    s = config.schedule
    M = math.gcd(batch, int(config.train.global_microbatch))
    G = int(config.model.ghost_batch_size)
    epochs = float(length) if budget == "epochs" else int(length) * batch / N
    ratio = epochs / base_epochs
    milestones = tuple(float(f"{m * ratio:.12g}") for m in s.lr.milestones)
    out = [
        f"--config.seed={seed}",
        "--config.schedule.batch.mode=decay_lr",
        f"--config.schedule.global_batch={batch}",
        f"--config.schedule.base_lr={lr!r}",
        f"--config.schedule.lr.milestones={milestones!r}",
        f"--config.schedule.lr.warmup_epochs={float(s.lr.warmup_epochs) * ratio:.12g}",
        f"--config.train.global_microbatch={M}",
        f"--config.model.ghost_batch_size={math.gcd(G, M) if G else 0}",
        "--config.train.on_nonfinite=stop",
        "--config.train.eval_every_epochs=0.0",
        "--config.train.progress=false",
    ]
    if budget == "epochs":
        out += [f"--config.schedule.epochs={float(length)!r}", "--config.schedule.steps=0"]
    else:
        out += ["--config.schedule.epochs=0.0", f"--config.schedule.steps={int(length)}"]
    ms = s.get("momentum_schedule")
    if ms is not None and tuple(ms.milestones):
        out += ["--config.schedule.momentum_schedule.milestones=()", "--config.schedule.momentum_schedule.values=()"]
    return out


def make_points(
    config_path: str | None,
    overrides: Sequence[str],
    *,
    batches: Sequence[int],
    lrs: Sequence[float],
    seeds: int,
    budget: str,
    length: float | None,
    workdir: Path,
    num_devices: int,
) -> tuple[list[Point], float]:
    """Every grid point, each config validated (a bad point is a :class:`FlagError` naming
    ``--batch`` or ``--lr``); returns (points, the run length used)."""
    from lbt import config as config_lib
    from lbt.data.registry import train_size
    from lbt.errors import ConfigError
    from lbt.schedules.plan import baseline_config, make_plan

    base = config_lib.load_config(config_path, overrides)
    if base.schedule.lr.name not in SWEEP_LR_SCHEDULES:
        raise FlagError(
            "--config",
            f"schedule.lr.name is {base.schedule.lr.name!r}; the sweep varies base_lr and needs one of "
            f"{', '.join(SWEEP_LR_SCHEDULES)} (set --config.schedule.lr.name=...)",
        )
    N = train_size(base)
    base_epochs = _run_epochs(base, N)
    if length is None:
        length = base_epochs if budget == "epochs" else make_plan(baseline_config(base), N).total_steps()
    points = []
    for B in batches:
        for lr in lrs:
            for seed in range(seeds):
                extra = point_overrides(
                    base, batch=B, lr=lr, seed=seed, budget=budget, length=length, N=N, base_epochs=base_epochs
                )
                try:
                    c = config_lib.load_config(config_path, [*overrides, *extra])
                    plan = config_lib.validate(c, num_devices=num_devices, num_train=N)
                except ConfigError as e:
                    flag = "--lr" if "base_lr" in e.field else "--batch"
                    raise FlagError(flag, f"the point B={B}, lr={lr:g} is not a valid run: {e}") from None
                d = workdir / "points" / f"B{B}_lr{lr:g}_seed{seed}_{config_lib.config_hash(c)[:8]}"
                epochs = plan.total_examples / N
                points.append(Point(B, lr, seed, tuple(extra), d, config_lib.to_json(c), epochs, plan.total_steps()))
    return points, float(length)


# ---------------------------------------------------------------------------------------------
# Running the points (resumable)


def point_result(point: Point) -> dict[str, Any] | None:
    """The stored result of a finished point (``done`` with its summary, or ``diverged``), else
    None. Finished means: its config.json is the point's config and summary.json (or the sweep's
    divergence record) is there."""
    d = point.workdir
    try:
        same = json.loads((d / "config.json").read_text()) == json.loads(point.config_json)
    except (OSError, ValueError):
        return None
    if not same:
        return None
    try:
        summary = json.loads((d / "summary.json").read_text())
        return {"status": "done", **summary}
    except (OSError, ValueError):
        pass
    try:
        status = json.loads((d / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status if status.get("status") == "diverged" else None


def train_command(point: Point, config_path: str | None, overrides: Sequence[str], num_cpu_devices: int) -> list[str]:
    """The point's ``python -m lbt.cli train ...`` command line."""
    cmd = [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(point.workdir)]
    cmd += ["--num_cpu_devices", str(num_cpu_devices)] + (["--config", config_path] if config_path else [])
    return cmd + list(overrides) + list(point.overrides)


def child_env(parallel: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The children's environment: lbt's compilation cache (``lbt.runtime``) keeps programs of any
    compile time, so points with the same microbatch compile once; parallel runs do not preallocate
    GPU memory."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if parallel > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def _launch(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start one point; in its own session, so that a Ctrl-C reaches only the sweep, which then
    sends the children SIGTERM (they save a checkpoint and exit 143)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _finish(point: Point, returncode: int) -> dict[str, Any]:
    """Record how a point's run ended: done (its summary), diverged (non-finite stop) or failed."""
    if returncode == 0:  # the child ran this point's command to the end
        try:
            return {"status": "done", **json.loads((point.workdir / "summary.json").read_text())}
        except (OSError, ValueError):
            pass
    tail = ""
    try:
        tail = (point.workdir / "train.log").read_text(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        pass
    if returncode == 3 and "non-finite loss" in tail:
        from lbt.train.metrics import write_json

        status = {"status": "diverged", "returncode": returncode, "message": tail}
        write_json(point.workdir / STATUS_FILE, status)
        return status
    log.warning(
        "sweep point B=%d lr=%g seed=%d failed (exit %d): %s", point.batch, point.lr, point.seed, returncode, tail
    )
    return {"status": "failed", "returncode": returncode, "message": tail}


def run_points(
    points: Sequence[Point],
    commands: Sequence[list[str]],
    *,
    parallel: int = 1,
    env: dict[str, str] | None = None,
    launch: Callable[[list[str], Path, dict[str, str]], Any] = _launch,
    progress: bool = True,
    poll_s: float = 0.2,
) -> list[dict[str, Any]]:
    """Run every unfinished point (``parallel`` at a time) and return each point's result, in order.

    Finished points (:func:`point_result`) are not started again. On an exception (e.g. Ctrl-C)
    the running children get SIGTERM, so each saves a checkpoint and a rerun resumes it.
    """
    results: list[dict[str, Any] | None] = [point_result(p) for p in points]
    todo = [i for i, r in enumerate(results) if r is None]
    bar = _bar(len(points), len(points) - len(todo), progress)
    running: dict[int, Any] = {}
    try:
        while todo or running:
            while todo and len(running) < parallel:
                i = todo.pop(0)
                points[i].workdir.mkdir(parents=True, exist_ok=True)
                running[i] = launch(list(commands[i]), points[i].workdir / "train.log", env or dict(os.environ))
            for i, proc in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[i]
                results[i] = _finish(points[i], code)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(_describe(points[i], results[i]))
            if running:
                time.sleep(poll_s)
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.wait()
        if bar is not None:
            bar.close()
    return [r or {"status": "failed"} for r in results]


def _describe(point: Point, result: dict[str, Any]) -> str:
    acc = result.get("final_eval_accuracy")
    what = f"acc {acc:.4f}" if isinstance(acc, (int, float)) else result.get("status", "?")
    return f"B={point.batch} lr={point.lr:g} seed={point.seed}: {what}"


def _bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="run", dynamic_ncols=True, desc="sweep")


# ---------------------------------------------------------------------------------------------
# Results: the table, the best LR per batch size, the transition


CSV_FIELDS = (
    "batch",
    "lr",
    "seed",
    "budget",
    "epochs",
    "steps",
    "status",
    "final_test_accuracy",
    "final_test_loss",
    "wall_s",
    "workdir",
)


def table_rows(points: Sequence[Point], results: Sequence[dict[str, Any]], budget: str) -> list[dict[str, Any]]:
    """One row per point (the columns of ``sweep.csv``)."""
    rows = []
    for p, r in zip(points, results):
        rows.append(
            {
                "batch": p.batch,
                "lr": p.lr,
                "seed": p.seed,
                "budget": budget,
                "epochs": round(p.epochs, 6),
                "steps": int(r.get("optimizer_steps") or p.steps),
                "status": r.get("status", "failed"),
                "final_test_accuracy": r.get("final_eval_accuracy"),
                "final_test_loss": r.get("final_eval_loss"),
                "wall_s": None if r.get("wall_s") is None else round(float(r["wall_s"]), 2),
                "workdir": str(p.workdir),
            }
        )
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_FIELDS})
    return path


def best_by_batch(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch size: the LR of the best mean test accuracy over seeds (a diverged seed counts as
    accuracy 0, a failed one is left out) and that accuracy (Smith, Elsen & De 2020 plot both
    against B). LRs tied at the best accuracy give their geometric mean. ``edge`` says whether the
    best LR is the smallest or the largest one tried (the grid should be extended there)."""
    out = []
    for B in sorted({r["batch"] for r in rows}):
        per_lr: dict[float, list[float]] = {}
        for r in rows:
            if r["batch"] != B or r["status"] == "failed":
                continue
            acc = r["final_test_accuracy"] if r["status"] == "done" else 0.0
            per_lr.setdefault(r["lr"], []).append(float(acc if acc is not None else 0.0))
        if not per_lr:
            continue
        means = {lr: float(np.mean(v)) for lr, v in per_lr.items()}
        top = max(means.values())
        tied = sorted(lr for lr, m in means.items() if m >= top - 1e-12)
        best = tied[0] if len(tied) == 1 else float(np.exp(np.mean(np.log(tied))))
        grid = sorted(per_lr)
        edge = (
            "low" if tied[0] == grid[0] and len(grid) > 1 else "high" if tied[-1] == grid[-1] and len(grid) > 1 else ""
        )
        vals = per_lr[tied[0]]
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        out.append({"batch": B, "best_lr": best, "tied_lrs": tied, "accuracy": top, "accuracy_std": std, "edge": edge})
    return out


def fit_lr_hinge(batches: Sequence[float], lrs: Sequence[float]) -> tuple[float, float, float]:
    """Least squares in log space of ``log ε = log c + min(log B, log B*)``: ε = c·B below B* (the
    noise-dominated regime, where the best ε is proportional to B) and flat above it (curvature
    dominated), Smith, Elsen & De 2020, section 3. Returns (B*, c, plateau ε = c·B*)."""
    x, y = np.log(np.asarray(batches, float)), np.log(np.asarray(lrs, float))
    best = (math.inf, x[-1], 0.0)
    for xs in np.linspace(x.min(), x.max(), 801):
        m = np.minimum(x, xs)
        a = float(np.mean(y - m))
        sse = float(np.sum((y - a - m) ** 2))
        if sse < best[0] - 1e-12:
            best = (sse, float(xs), a)
    _, xs, a = best
    near = int(np.argmin(np.abs(x - xs)))
    b_star = float(np.asarray(batches, float)[near]) if abs(x[near] - xs) < 1e-12 else math.exp(xs)
    return b_star, math.exp(a), math.exp(a + xs)


@dataclasses.dataclass(frozen=True)
class Transition:
    """The estimated transition batch size of a sweep (Smith, Elsen & De 2020).

    ``batch``: B* of :func:`fit_lr_hinge`, where the best LR stops growing ∝ B (None if it grows
    over the whole grid); ``lr_per_batch`` (c) and ``lr_plateau``: the fitted ε = c·B and its cap;
    ``accuracy_batch``: epochs budget, the largest B whose best test accuracy is within ``acc_tol``
    of the best (past it the accuracy falls); steps budget, the smallest such B (below it the
    accuracy is still rising); None if there is no such change within the grid.
    """

    batch: float | None
    lr_per_batch: float
    lr_plateau: float
    accuracy_batch: float | None
    notes: tuple[str, ...] = ()


def estimate_transition(
    batches: Sequence[float], best_lrs: Sequence[float], accuracies: Sequence[float], *, budget: str, acc_tol: float
) -> Transition:
    """:class:`Transition` from the best LR and test accuracy per batch size (a pure function)."""
    B = np.asarray(batches, float)
    order = np.argsort(B)
    B, lrs, acc = B[order], np.asarray(best_lrs, float)[order], np.asarray(accuracies, float)[order]
    within = np.flatnonzero(acc >= acc.max() - acc_tol)
    if budget == "epochs":
        acc_batch = None if within[-1] == len(B) - 1 else float(B[within[-1]])
    else:
        acc_batch = None if within[0] == 0 else float(B[within[0]])
    if len(B) < 3:
        return Transition(None, math.nan, math.nan, acc_batch, ("needs at least 3 batch sizes to fit the transition",))
    notes = []
    b_star, c, plateau = fit_lr_hinge(B, lrs)
    batch: float | None = b_star
    if b_star >= B[-1] * (1 - 1e-9):
        batch = None
        notes.append(f"the best LR grows ∝ B up to the largest B={B[-1]:g}; the transition is above: extend --batch")
    elif b_star <= B[0] * (1 + 1e-9):
        notes.append(f"the best LR is flat from the smallest B={B[0]:g}: the transition lies at or below it")
    elif int(np.sum(B > b_star)) < 2:
        notes.append("only one batch size lies above the transition; extend --batch to confirm it")
    return Transition(batch, c, plateau, acc_batch, tuple(notes))


# ---------------------------------------------------------------------------------------------
# Plot and report


def plot_sweep(
    per_batch: Sequence[dict[str, Any]],
    transition: Transition,
    lrs: Sequence[float],
    path: str | Path,
    *,
    title: str,
) -> Path:
    """``sweep.png``: best test accuracy vs B (left) and the best LR vs B with the fitted
    ε = min(c·B, plateau) (right), log axes, the transition marked (as Smith, Elsen & De 2020's
    figures)."""
    from lbt.tools.plots import new_figure, save_figure

    fig = new_figure(figsize=(12, 4.4))
    left, right = fig.subplots(1, 2)
    B = np.array([r["batch"] for r in per_batch], float)
    acc = np.array([100 * r["accuracy"] for r in per_batch])
    std = np.array([100 * r["accuracy_std"] for r in per_batch])
    left.errorbar(B, acc, yerr=std, marker="o", capsize=3, color="tab:blue", label="test accuracy at the best LR")
    left.set_ylabel("test accuracy % (mean over seeds)")
    best = np.array([r["best_lr"] for r in per_batch])
    right.plot(B, best, "o", color="tab:blue", label="best LR")
    if math.isfinite(transition.lr_per_batch):
        xs = np.geomspace(B.min(), B.max(), 200)
        fit = np.minimum(transition.lr_per_batch * xs, transition.lr_plateau)
        right.plot(
            xs,
            fit,
            "-",
            color="tab:gray",
            label=f"fit: ε = min({transition.lr_per_batch:.3g}·B, {transition.lr_plateau:.3g})",
        )
    for lr in (min(lrs), max(lrs)):
        right.axhline(lr, color="tab:gray", linestyle=":", linewidth=0.8)
    right.set_yscale("log")
    right.set_ylabel("best learning rate (dotted: grid range)")
    for ax in (left, right):
        if transition.batch is not None:
            ax.axvline(
                transition.batch, color="tab:red", linestyle="--", label=f"transition B* ≈ {transition.batch:.3g}"
            )
        if transition.accuracy_batch is not None:
            ax.axvline(
                transition.accuracy_batch,
                color="tab:orange",
                linestyle=":",
                label=f"accuracy change at B={transition.accuracy_batch:g}",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8, loc="best")
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=90)


def summary_lines(
    per_batch: Sequence[dict[str, Any]], transition: Transition, *, budget: str, acc_tol: float
) -> list[str]:
    """The printed table and the transition."""
    lines = [f"{'B':>7} {'best lr':>10} {'test acc %':>16}  note"]
    for r in per_batch:
        note = {"low": "best LR is the smallest tried", "high": "best LR is the largest tried"}.get(r["edge"], "")
        if len(r["tied_lrs"]) > 1:
            note = (note + "; " if note else "") + f"tied: {', '.join(f'{x:g}' for x in r['tied_lrs'])}"
        acc = f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}"
        lines.append(f"{r['batch']:>7} {r['best_lr']:>10.4g} {acc:>16}  {note}")
    if transition.batch is not None:
        lines.append(
            f"transition batch size B* ≈ {transition.batch:.4g}: the best LR grows as "
            f"{transition.lr_per_batch:.3g}·B below it and stays near {transition.lr_plateau:.3g} above "
            "(Smith, Elsen & De 2020)"
        )
    else:
        lines.append("transition batch size: not within the grid")
    change = "falls past" if budget == "epochs" else "stops rising at"
    if transition.accuracy_batch is not None:
        lines.append(f"test accuracy {change} B = {transition.accuracy_batch:g} (tolerance {100 * acc_tol:g} pp)")
    else:
        lines.append(f"test accuracy: no change beyond {100 * acc_tol:g} pp within the grid")
    return lines + [f"note: {n}" for n in transition.notes]


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> OneLineParser:
    p = OneLineParser(
        prog="lbt sweep",
        allow_abbrev=False,
        description="Batch size x LR grid at a constant epoch or step budget (Smith, Elsen & De 2020).",
    )
    p.add_argument("--config", default=None, help="config file configs/<name>.py (default: embedded digits)")
    p.add_argument("--batch", required=True, help="batch sizes: 16,32,64 or lo:hi:factor, e.g. 16:512:2")
    p.add_argument("--lr", required=True, help="learning rates: 0.05,0.1 or lo:hi:factor, e.g. 0.025:1.6:2")
    p.add_argument("--budget", choices=BUDGETS, default="epochs", help="constant epochs (default) or constant steps")
    p.add_argument("--epochs", type=float, default=None, help="--budget epochs: epochs per run (default: config's)")
    p.add_argument(
        "--steps", type=int, default=None, help="--budget steps: optimizer steps per run (default: config's)"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..S-1 per point (default 1)")
    p.add_argument("--parallel", type=int, default=1, help="points run at once, at most the cores (default 1)")
    p.add_argument("--workdir", default="runs/sweep", help="output directory (default runs/sweep)")
    p.add_argument("--data", default=None, help="an .npz with images and labels (sets dataset.name=npz and its path)")
    p.add_argument("--num_cpu_devices", type=int, default=None, help="simulated CPU devices per run (default 1)")
    p.add_argument("--acc_tol", type=float, default=0.01, help="accuracy tolerance for the transition (default 0.01)")
    p.add_argument("--dry_run", action="store_true", help="print the points' commands and exit")
    return p


def check_args(args: argparse.Namespace, cores: int | None = None) -> tuple[float | None, list[str]]:
    """Check the flags (one :class:`FlagError` naming the flag and the fix); returns the run length
    (None: the config's) and the overrides ``--data`` adds."""
    if args.budget == "epochs" and args.steps is not None:
        raise FlagError("--steps", "only applies with --budget steps; pass --epochs for an epoch budget")
    if args.budget == "steps" and args.epochs is not None:
        raise FlagError("--epochs", "only applies with --budget epochs; pass --steps for a step budget")
    if args.epochs is not None and not (args.epochs > 0 and math.isfinite(args.epochs)):
        raise FlagError("--epochs", f"must be > 0, got {args.epochs}; e.g. --epochs 10")
    if args.steps is not None and args.steps < 1:
        raise FlagError("--steps", f"must be >= 1, got {args.steps}; e.g. --steps 500")
    if args.seeds < 1:
        raise FlagError("--seeds", f"must be >= 1, got {args.seeds}")
    cores = cores or os.cpu_count() or 1
    if not 1 <= args.parallel <= cores:
        raise FlagError("--parallel", f"must be in [1, {cores}] (this machine's cores), got {args.parallel}")
    if not 0 <= args.acc_tol < 1:
        raise FlagError("--acc_tol", f"must be in [0, 1), got {args.acc_tol}; e.g. 0.01 (one percentage point)")
    extra = []
    if args.data is not None:
        if not Path(args.data).is_file():
            raise FlagError("--data", f"no file at {args.data!r}; pass an .npz with `images` and `labels`")
        extra = ["--config.dataset.name=npz", f"--config.dataset.path={Path(args.data).resolve()}"]
    length = args.epochs if args.budget == "epochs" else args.steps
    return length, extra


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = _parser().parse_flags(argv)
    batches, lrs = parse_grid("--batch", args.batch, int), parse_grid("--lr", args.lr)
    length, data_overrides = check_args(args)
    from lbt import runtime
    from lbt.errors import TrainingError

    devices = runtime.cpu_device_count(args.num_cpu_devices, default=1)
    overrides = data_overrides + overrides  # the user's own overrides come last and win
    workdir = Path(args.workdir)
    kw = dict(batches=batches, lrs=lrs, seeds=args.seeds, budget=args.budget, length=length, workdir=workdir)
    points, length = make_points(args.config, overrides, num_devices=devices, **kw)
    commands = [train_command(p, args.config, overrides, devices) for p in points]
    if args.dry_run:
        for p, cmd in zip(points, commands):
            print(f"{'done' if point_result(p) else 'todo'}  {shlex.join(cmd)}")
        return 0
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlagError(
            "--workdir", f"cannot create {workdir} ({e.strerror or e}); pass a writable directory"
        ) from None
    t0 = time.time()
    results = run_points(points, commands, parallel=args.parallel, env=child_env(args.parallel))
    rows = table_rows(points, results, args.budget)
    csv_path = write_csv(rows, workdir / "sweep.csv")
    per_batch = best_by_batch(rows)
    tr = estimate_transition(
        [r["batch"] for r in per_batch],
        [r["best_lr"] for r in per_batch],
        [r["accuracy"] for r in per_batch],
        budget=args.budget,
        acc_tol=args.acc_tol,
    )
    unit = "epochs" if args.budget == "epochs" else "steps"
    title = f"{Path(args.config).stem if args.config else 'digits'}: {length:g} {unit} per run, {args.seeds} seed(s)"
    png = plot_sweep(per_batch, tr, lrs, workdir / "sweep.png", title=title) if per_batch else None
    from lbt.train.metrics import write_json

    write_json(
        workdir / "sweep.json",
        {"budget": args.budget, "length": length, "per_batch": per_batch, "transition": dataclasses.asdict(tr)},
    )
    for line in summary_lines(per_batch, tr, budget=args.budget, acc_tol=args.acc_tol):
        print(line)
    print(f"wrote {csv_path}, {png} and {workdir / 'sweep.json'} ({(time.time() - t0) / 60:.1f} min)")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        raise TrainingError(
            f"{len(failed)} of {len(rows)} point(s) failed (see their train.log, e.g. {failed[0]['workdir']}); "
            "rerun the same command to retry them (finished points are kept)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
