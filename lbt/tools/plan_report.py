"""``lbt plan``: print the phases of a config's schedule and plot ε, B and g over epochs.

Usage::

    lbt plan --config configs/cifar10_wrn16_4_hybrid.py [--json] [--out DIR] [--config.a.b=value ...]

N comes from the dataset registry (no data is loaded). The table lists each phase's epochs,
B, k = B / M, ε, m, the noise scale g = εN/(B(1 - m)) and its exact form ε(N/B - 1)/(1 - m),
and optimizer steps, then the total steps and the ratio against the ``decay_lr`` plan with the
same epochs (the "parameter updates" Smith et al. 2018 count). Where a phase's B exceeds N/10
(the approximation is off by more than 11%) a warning names the phase on stderr
(:func:`lbt.schedules.plan.plan_warnings`); ``--json`` carries the same lines as ``warnings``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lbt.errors import ConfigError


def _load(path: str | None, overrides: Sequence[str]):
    from lbt.config import load_config

    return load_config(path, list(overrides))


def _dataset_size(config) -> int:
    from lbt.data.registry import get_dataset_size

    return int(get_dataset_size(config.dataset.name, config))


def plan_summary(plan, baseline=None, config=None) -> dict[str, Any]:
    """The JSON summary: phases, total_steps, B_max (``max_global_batch``, null = no cap), the
    N/10 ``warnings``, (with a baseline) baseline_steps and ratio, and (with the config) the
    ghost batch G (``model.ghost_batch_size``, 0 resolved to M), momentum optimizer and weight decay."""
    from lbt.schedules.plan import plan_warnings

    out: dict[str, Any] = {
        "phases": [
            {
                "start_epoch": ph.start_example / plan.N,
                "end_epoch": ph.end_example / plan.N,
                "global_batch": ph.global_batch,
                "k": ph.global_batch // plan.microbatch,
                "lr_start": ph.lr_start,
                "lr_end": ph.lr_end,
                "momentum": ph.momentum,
                "noise_scale": ph.noise_scale,
                "noise_scale_exact": ph.noise_scale_exact,
                "steps": ph.steps,
            }
            for ph in plan.phases
        ],
        "total_steps": plan.total_steps(),
        "N": plan.N,
        "microbatch": plan.microbatch,
        "total_examples": plan.total_examples,
        "max_global_batch": plan.max_global_batch,
        "mode": plan.mode,
        "lr_name": plan.lr_name,
        "warnings": plan_warnings(plan),
    }
    if config is not None:
        out["ghost_batch"] = int(config.model.ghost_batch_size) or plan.microbatch
        out["optimizer"] = config.optimizer.name
        out["weight_decay"] = float(config.optimizer.weight_decay)
    if baseline is not None:
        out["baseline_steps"] = baseline.total_steps()
        out["ratio"] = plan.total_steps() / baseline.total_steps()
    return out


def _span(a: float, b: float) -> str:
    return f"{a:.4g}" if abs(a - b) <= 1e-9 * abs(a) else f"{a:.4g}->{b:.4g}"


def format_table(plan, baseline=None, config=None) -> str:
    """A plain-text table of the phases (with the config: the ghost batch and the optimizer too)."""
    head = f"{'phase':>5} {'epochs':>15} {'B':>7} {'k':>5} {'lr':>21} {'m':>6} {'g':>19} {'g exact':>19} {'steps':>8}"
    cap = plan.max_global_batch if plan.max_global_batch is not None else "none"
    extra = ""
    if config is not None:
        G = int(config.model.ghost_batch_size) or plan.microbatch
        extra = f" ghost_batch={G} optimizer={config.optimizer.name} weight_decay={config.optimizer.weight_decay:g}"
    lines = [
        f"mode={plan.mode} lr={plan.lr_name} N={plan.N} M={plan.microbatch} B_max={cap}{extra} total_examples={plan.total_examples}",
        head,
        "-" * len(head),
    ]
    for ph in plan.phases:
        ep = f"{ph.start_example / plan.N:g}-{ph.end_example / plan.N:g}"
        lr = f"{ph.lr_start:.4g}" if ph.lr_start == ph.lr_end else f"{ph.lr_start:.4g}->{ph.lr_end:.4g}"
        g, gx = _span(ph.noise_scale, ph.noise_scale_end), _span(ph.noise_scale_exact, ph.noise_scale_exact_end)
        lines.append(
            f"{ph.index:>5} {ep:>15} {ph.global_batch:>7} {ph.global_batch // plan.microbatch:>5} {lr:>21} {ph.momentum:>6.3g} {g:>19} {gx:>19} {ph.steps:>8}"
        )
    lines.append(f"total optimizer steps: {plan.total_steps()}")
    if baseline is not None:
        b = baseline.total_steps()
        lines.append(
            f"decay_lr baseline steps: {b}  ratio: {plan.total_steps() / b:.4f} ({b / plan.total_steps():.2f}x fewer updates)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lbt plan``; returns the exit code (2 and one ``lbt: error:`` line for a bad
    flag or config value, as every ``lbt`` command)."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        print(f"lbt: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    from lbt.config import split_overrides
    from lbt.schedules.plan import baseline_config, make_plan, plan_warnings
    from lbt.tools.lr_range import FlagError, OneLineParser

    parser = OneLineParser(prog="lbt plan", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--config", default=None, help="configs/<name>.py defining get_config() (default: the embedded default)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--out", default=".", help="directory for plan.png (default: .)")
    parser.add_argument("--no-plot", action="store_true", help="do not write plan.png")
    flags, overrides = split_overrides(argv)
    args, bad = parser.parse_known_args(flags)
    if bad:
        raise FlagError(bad[0], "not a flag of lbt plan; see lbt plan --help (overrides: --config.schedule.epochs=90)")
    config = _load(args.config, overrides)
    N = _dataset_size(config)
    plan = make_plan(config, N)
    baseline = make_plan(baseline_config(config), N)
    if not args.no_plot:
        from lbt.tools.plots import plot_plan

        png = plot_plan(plan, Path(args.out) / "plan.png", baseline=baseline if plan.mode != "decay_lr" else None)
    for line in plan_warnings(plan):
        print(f"warning: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(plan_summary(plan, baseline, config)))
    else:
        print(format_table(plan, baseline, config))
        if not args.no_plot:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
