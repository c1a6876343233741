"""``lbt noise-scale``: measure the gradient noise scale B_simple of a config with the real trainer.

McCandlish, Kaplan, Amodei et al. 2018, *An Empirical Model of Large-Batch Training*: the critical
batch size, past which a larger batch saves few optimizer steps and costs examples, is about the
noise scale B_noise, which B_simple = tr(Σ) / |G|^2 estimates (eq. 2.8; appendix A.1 for the
estimator the trainer runs in its steps, ``lbt.train.noise_scale``).

The run. A short :class:`~lbt.train.loop.Trainer` run of ``--steps`` optimizer steps of the
config's own plan (same model, data order, B, ε and m), stopped early
(``Trainer(stop_at_examples=...)``), in ``WORKDIR/measure``: from the start of the run, or, when
``WORKDIR`` holds a training run's checkpoints (``WORKDIR/checkpoints``), from a copy of its newest
checkpoint (the run itself is not touched), i.e. at that point of training; without ``--config``
the run's own ``config.json`` is used. B_simple grows as the
loss falls (McCandlish et al., section 3), so a measurement at the start understates later ones.
The estimator needs independent per-device gradients (ghost BN groups inside one device, G <= b),
so the run uses the largest device count with b = M / D >= G; ghost BN by example index makes the
training computation the same on any device count.

The report (printed, and ``WORKDIR/noise_scale.json``): B_simple over the measured steps
(``ratio_estimate``: mean tr(Σ) / mean |G|^2, ± one standard error) and the trainer's smoothed
value at the end, Smith et al. 2018's B_max = N/10, the config's planned B per phase with
B / B_simple and the regime (``schedule.batch.regime_factor``), the steps and examples each phase
would need relative to the minimum by McCandlish et al.'s eq. 2.11 model, S/S_min = 1 + B_simple/B
and E/E_min = 1 + B/B_simple, and a recommendation.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from lbt.tools.lr_range import FlagError, OneLineParser

log = logging.getLogger("lbt")


def measure_devices(microbatch: int, ghost_batch_size: int, available: int) -> int:
    """The largest device count D <= ``available`` that divides M with b = M / D a multiple of the
    ghost batch G (0 = M): the layouts in which the per-device gradients are independent."""
    G = ghost_batch_size or microbatch
    return max(d for d in range(1, available + 1) if microbatch % d == 0 and (microbatch // d) % G == 0)


def stop_after(plan: Any, start: int, steps: int) -> int:
    """Examples seen after ``steps`` optimizer steps of ``plan`` from ``start`` (capped at its end)."""
    s = start
    for _ in range(steps):
        if s >= plan.total_examples:
            break
        s += plan.at(s).global_batch
    return min(s, plan.total_examples)


def measure_config(config: Any) -> Any:
    """The config of the measurement run: the same training, measuring every step (its cost does
    not matter here; the more samples, the tighter the estimate), quiet, one final save."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.train.measure_noise_scale = True
        c.train.noise_scale_every = 1
        c.train.eval_every_epochs = 0.0
        c.checkpoint.every_epochs, c.checkpoint.every_examples, c.checkpoint.every_minutes = 0.0, 0, 0.0
        c.checkpoint.keep = 1
    return c


def analyse(records: list[dict[str, Any]]) -> dict[str, Any]:
    """B_simple over the measured train ``records`` (ratio of the means, ± standard error)."""
    from lbt.schedules import noise as noise_lib

    traces, g2s = [], []
    for r in records:
        if r.get("skipped_nonfinite") or r.get("noise_g2_step") is None:
            continue
        est = r["noise_g2_step"], r["noise_trace_step"]  # the step's unbiased |G|^2 and tr(Σ)
        if all(math.isfinite(v) for v in est):
            g2s.append(est[0])
            traces.append(est[1])
    if not traces:
        raise FlagError("--steps", "no step measured the noise scale (one device and k = 1?); raise --steps")
    b_simple, se = noise_lib.ratio_estimate(traces, g2s)
    return {"b_simple": b_simple, "b_simple_se": se, "steps": len(traces), "g2": sum(g2s) / len(g2s)}


def phase_table(plan: Any, b_simple: float, factor: float) -> list[dict[str, Any]]:
    """Per phase: B, B / B_simple, the regime, and McCandlish et al.'s S/S_min and E/E_min (eq. 2.11)."""
    from lbt.schedules import noise as noise_lib

    rows = []
    for p in plan.phases:
        B = p.global_batch
        finite = math.isfinite(b_simple) and b_simple > 0
        if noise_lib.curvature_dominated(B, b_simple, factor):
            regime = "curvature dominated"
        elif finite and B > b_simple:
            regime = "past B_simple"
        else:
            regime = "noise dominated"
        rows.append(
            {
                "phase": p.index,
                "epochs": [p.start_example / plan.N, p.end_example / plan.N],
                "global_batch": B,
                "batch_over_b_simple": B / b_simple if finite else 0.0,
                "regime": regime,
                "steps_over_min": 1 + b_simple / B if finite else math.inf,
                "examples_over_min": 1 + B / b_simple if finite else 1.0,
            }
        )
    return rows


def recommendation(rows: list[dict[str, Any]], b_simple: float, M: int, N: int, factor: float) -> str:
    """One line: where the planned batches stand against B_simple and what to change."""
    from lbt.schedules.batch import default_max_global_batch, floor_to_multiple

    bmax = default_max_global_batch(N, M)
    if not (math.isfinite(b_simple) and b_simple > 0):
        return "noise swamps the gradient signal (|G|^2 <= 0): every planned B is noise dominated; measure longer"
    cap = max(M, floor_to_multiple(b_simple, M))
    over = [r for r in rows if r["regime"] == "curvature dominated"]
    if over:
        names = ", ".join(str(r["phase"]) for r in over)
        return (
            f"phase(s) {names} plan B > {factor:g} x B_simple: curvature dominated, where a larger batch buys few "
            f"steps; cap B near B_simple with --config.schedule.batch.max_global_batch={cap} (or measure again from a "
            "later checkpoint: B_simple grows as the loss falls)"
        )
    largest = max(r["global_batch"] for r in rows)
    return (
        f"every planned B (largest {largest}) is at most {factor:g} x B_simple: noise dominated, a larger batch still "
        f"cuts the steps almost proportionally; B could grow to about {cap} (B_simple, a multiple of M; "
        f"B_max = N/10 = {bmax})"
    )


def report_lines(rep: dict[str, Any]) -> list[str]:
    m = rep["measured"]
    lines = [
        f"measured {m['steps']} steps from step {rep['start_step']} (examples_seen {rep['start_examples']}) on "
        f"{rep['devices']} device(s), b = {rep['batch_small']} per device and microbatch",
        f"B_simple = {m['b_simple']:.4g} ± {m['b_simple_se']:.2g} (ratio of the means over the steps, ± 1 s.e.); "
        f"smoothed (EMA) at the end: {rep['b_simple_ema']:.4g}",
        f"B_max = N/10 = {rep['N'] / 10:g} (Smith et al. 2018); regime factor {rep['regime_factor']:g}",
        "phase  epochs          B      B/B_simple  S/S_min  E/E_min  regime",
    ]
    for r in rep["phases"]:
        e0, e1 = r["epochs"]
        lines.append(
            f"{r['phase']:>5}  {e0:6.2f}-{e1:<7.2f} {r['global_batch']:>6}  {r['batch_over_b_simple']:>10.3g}"
            f"  {r['steps_over_min']:>7.3g}  {r['examples_over_min']:>7.3g}  {r['regime']}"
        )
    return lines + [f"recommendation: {rep['recommendation']}"]


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="lbt noise-scale",
        allow_abbrev=False,
        description="Measure the gradient noise scale B_simple (McCandlish et al. 2018) with the real trainer.",
    )
    p.add_argument("--config", default=None, help="config file configs/<name>.py (default: embedded digits)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps to measure, >= 2 (default 100)")
    p.add_argument(
        "--workdir",
        default="runs/noise_scale",
        help="output directory; if it holds a run's checkpoints/, measure from its newest (default runs/noise_scale)",
    )
    p.add_argument("--num_cpu_devices", type=int, default=None, help="simulated CPU devices (as lbt train)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier measurement in --workdir")
    return p


def _prepare(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The measurement directory (fresh) and the run checkpoint to start from (None: the start)."""
    if args.steps < 2:
        raise FlagError("--steps", f"must be >= 2, got {args.steps}; e.g. --steps 100")
    workdir = Path(args.workdir)
    run = workdir / "measure"
    if run.exists() and any(run.iterdir()):
        if not args.overwrite:
            raise FlagError("--workdir", f"{run} holds an earlier measurement; pass --overwrite, or a new --workdir")
        shutil.rmtree(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlagError("--workdir", f"cannot create {run} ({e.strerror or e}); pass a writable directory") from None
    ckpts = workdir / "checkpoints"
    steps = sorted(int(d.name) for d in ckpts.iterdir() if d.name.isdigit()) if ckpts.is_dir() else []
    return run, (ckpts / str(steps[-1]) if steps else None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, overrides = _parser().parse_flags(argv)
    from lbt import config as config_lib
    from lbt import runtime

    n_cpu = runtime.cpu_device_count(args.num_cpu_devices)
    run, source = _prepare(args)
    stored = Path(args.workdir) / "config.json"
    if args.config is None and source is not None and stored.is_file():  # a run's workdir: its own config
        config = config_lib.from_json(stored.read_text())
        for item in overrides:
            config_lib.apply_override(config, item)
    else:
        config = config_lib.load_config(args.config, overrides)  # before JAX starts
    config = measure_config(config)
    runtime.setup(n_cpu)
    import jax

    from lbt.data.registry import train_size
    from lbt.train.loop import Trainer
    from lbt.train.metrics import read_jsonl, write_json

    N, M = train_size(config), int(config.train.global_microbatch)
    plan = config_lib.validate(config, num_devices=jax.device_count(), num_train=N)  # before anything compiles
    D = measure_devices(M, int(config.model.ghost_batch_size), jax.device_count())
    start_examples, start_step = 0, 0
    if source is not None:  # a copy: the run's own checkpoints stay as they are
        shutil.copytree(source, run / "checkpoints" / source.name)
        meta = json_meta(source)
        start_examples, start_step = int(meta["examples_seen"]), int(meta["step"])
    stop = stop_after(plan, start_examples, args.steps)
    summary = Trainer(config, run, devices=jax.devices()[:D], allow_config_change=True, stop_at_examples=stop).run()
    records = [r for r in read_jsonl(run / "metrics.jsonl") if "split" not in r and "event" not in r]
    measured = analyse([r for r in records if r["examples_seen"] > start_examples])
    factor = float(config.schedule.batch.regime_factor)
    rows = phase_table(plan, measured["b_simple"], factor)
    rep = {
        "config_name": config.name,
        "start_step": start_step,
        "start_examples": start_examples,
        "devices": D,
        "batch_small": M // D,
        "measured": measured,
        "b_simple_ema": summary["noise_scale_simple"] if summary["noise_scale_simple"] is not None else math.inf,
        "N": N,
        "b_max": N / 10,
        "regime_factor": factor,
        "phases": rows,
        "recommendation": recommendation(rows, measured["b_simple"], M, N, factor),
    }
    for line in report_lines(rep):
        print(line)
    write_json(Path(args.workdir) / "noise_scale.json", rep)
    print(f"wrote {Path(args.workdir) / 'noise_scale.json'}")
    return 0


def json_meta(step_dir: Path) -> dict[str, Any]:
    """The JSON metadata of an orbax checkpoint step directory (its ``meta`` item)."""
    import orbax.checkpoint as ocp

    try:
        meta = ocp.JsonCheckpointHandler().restore(step_dir.absolute() / "meta", args=ocp.args.JsonRestore())
    except Exception as e:  # noqa: BLE001 - any failure: not a usable checkpoint
        raise FlagError(
            "--workdir", f"{step_dir}: unreadable checkpoint metadata ({e}); pass a run's workdir"
        ) from None
    if not isinstance(meta, dict) or "examples_seen" not in meta:
        raise FlagError("--workdir", f"{step_dir}: incomplete checkpoint metadata; pass a run's workdir")
    return meta


if __name__ == "__main__":
    sys.exit(main())
