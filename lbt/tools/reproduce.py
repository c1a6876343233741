"""``lbt reproduce``: decay the LR versus increase the batch, measured with the real trainer.

Smith, Kindermans, Ying & Le, *Don't Decay the Learning Rate, Increase the Batch Size* (ICLR
2018) claim that multiplying the batch B by f where a step schedule would divide the learning
rate ε by f gives the same test-accuracy curve versus epochs, with far fewer parameter updates;
past B_max ≈ N/10 the "hybrid" schedule decays ε instead. This tool trains three plans of
**equal epochs** (same base LR, momentum, milestones and factor) for several seeds:

* ``decay_lr``: B constant, ε divided by the factor at each milestone;
* ``increase_batch``: ε constant, B multiplied by the factor at each milestone;
* ``hybrid``: as ``increase_batch`` up to B_max, then ε decays (same g = εN/(B(1-m)) throughout).

Usage::

    lbt reproduce --suite digits|mnist|cifar10 [--seeds 3] [--out docs] [--workdir runs/reproduce]
                  [--epochs E] [--data PATH] [--num_cpu_devices 1] [--reuse]

Each run has its own workdir ``<workdir>/<suite>/<plan>/seed<i>`` (``config.seed = i`` changes
the data order and the initialisation). Afterwards the tool writes

* ``<out>/reproduction.md``: per suite, a table of final test accuracy (mean ± sample std over
  seeds), optimizer steps and their ratio to ``decay_lr``, and measured observations. Each suite
  owns a marked section of the file, so running another suite keeps the others (and any text
  written outside the marked sections);
* ``<out>/img/reproduction_<suite>.png``: test accuracy versus epochs and versus optimizer steps,
  and train loss versus epochs (mean over seeds, one line per plan);
* ``<workdir>/<suite>/results.json``: the numbers behind both.

Suites: ``digits`` (scikit-learn digits, ``configs/reproduce_digits.py``), ``mnist`` (10k real
MNIST digits from an .npz, ``configs/reproduce_mnist.py``; ``--data`` defaults to
``../shared/data/mnist10k.npz`` next to the repository) and ``cifar10`` (the unchanged
``configs/cifar10_wrn16_4_{decay_lr,increase_batch,hybrid}.py``; needs the tfds data, ``--data``
is its data_dir, and an accelerator). ``--epochs`` rescales the milestones proportionally.

On a CPU the suite runs on **one** CPU device by default (``--num_cpu_devices`` or
``$LBT_NUM_CPU_DEVICES`` to change it). Simulated CPU devices are threads: they add no compute on
a small machine, only collectives, and on a 2-core machine shared with other jobs an 8-device
digits run once stalled for good in an all-reduce rendezvous (7 of 8 device threads waiting, 0%
CPU; intermittent: the same run later finished normally). Ghost BN is defined by example index (docs/design.md, semantics 4), so the training semantics
do not depend on the device count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("lbt")

PLANS = ("decay_lr", "increase_batch", "hybrid")
#: The digits and mnist suites also train lbt's adaptive batch (schedule.batch.mode='adaptive').
ADAPTIVE = "adaptive"
SUITES = ("digits", "mnist", "cifar10")
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist10k.npz"
PLAN_COLORS = {"decay_lr": "tab:blue", "increase_batch": "tab:orange", "hybrid": "tab:green", "adaptive": "tab:red"}


# ---------------------------------------------------------------------------------------------
# Configs of a suite


def _load_file(name: str):
    from lbt.config import load_config
    from lbt.errors import ConfigError

    path = CONFIGS / name
    if not path.is_file():
        raise ConfigError("file", f"the reproduction suite needs {path}; run it from a checkout of the lbt repository")
    return load_config(str(path))


def scale_epochs(config, epochs: float):
    """A copy of ``config`` lasting ``epochs`` epochs, with the LR step milestones, the warmup and
    the momentum milestones scaled by the same ratio, so the schedule keeps its shape."""
    c = config.copy_and_resolve_references()
    s = c.schedule
    ratio = float(epochs) / float(s.epochs)
    with c.unlocked():
        s.epochs = float(epochs)
        s.lr.milestones = tuple(float(m) * ratio for m in s.lr.milestones)
        s.lr.warmup_epochs = float(s.lr.warmup_epochs) * ratio
        if "momentum_schedule" in s:
            s.momentum_schedule.milestones = tuple(float(m) * ratio for m in s.momentum_schedule.milestones)
    return c


def _largest_batch(config) -> int:
    """N rounded down to a multiple of the global microbatch: the largest batch a plan may use."""
    from lbt.data.registry import get_dataset_size

    N = get_dataset_size(config.dataset.name, config)
    M = int(config.train.global_microbatch)
    return N // M * M


def _adaptive_start(c: Any) -> None:
    """The adaptive plan starts at B0 = 2M with 2ε0: the same noise scale g as the reference, at
    the smallest batch where one device measures the noise scale (k = 2: the microbatches
    estimator; at k = 1 one device sees one batch size only). B_max is the default N/10."""
    c.schedule.global_batch = 2 * int(c.train.global_microbatch)
    c.schedule.base_lr = 2 * float(c.schedule.base_lr)


def suite_configs(
    suite: str,
    *,
    epochs: float | None = None,
    data: str | None = None,
    eval_every_epochs: float | None = None,
) -> dict[str, Any]:
    """The config of each plan of ``suite`` (``{plan: ConfigDict}``), same epochs for all.

    digits / mnist: the suite's base config with ``schedule.batch.mode`` set per plan (hybrid uses
    the default B_max = N/10 rounded down to a multiple of M), and the ``adaptive`` plan
    (:func:`_adaptive_start`). cifar10: the three recipe files,
    unchanged except ``dataset.data_dir = data`` when ``data`` is given.
    ``eval_every_epochs`` defaults to the config's own value.
    """
    from lbt.errors import ConfigError

    if suite not in SUITES:
        raise ConfigError("suite", f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if suite == "cifar10":
        configs = {p: _load_file(f"cifar10_wrn16_4_{p}.py") for p in PLANS}
        if data:  # the tfds data_dir holding the prepared array_record cifar10 (docs/data.md)
            for c in configs.values():
                with c.unlocked():
                    c.dataset.data_dir = str(data)
    else:
        base = _load_file(f"reproduce_{suite}.py")
        if suite == "mnist":
            path = Path(data) if data else DEFAULT_MNIST
            if not path.is_file():
                raise ConfigError(
                    "data",
                    f"the mnist suite needs an .npz of `images` and `labels` at {path} (not found); "
                    "pass --data PATH (e.g. 10k MNIST digits) or run --suite digits",
                )
            with base.unlocked():
                base.dataset.path = str(path)
        configs = {}
        for p in (*PLANS, ADAPTIVE):
            c = base.copy_and_resolve_references()
            with c.unlocked():
                c.schedule.batch.mode = p
                c.name = f"{base.name}_{p}"
                if p == "increase_batch":  # B may not exceed N: cap it there, ε absorbs the rest (g kept)
                    c.schedule.batch.max_global_batch = _largest_batch(c)
                if p == ADAPTIVE:
                    _adaptive_start(c)
            configs[p] = c
    out = {}
    for p, c in configs.items():
        if epochs is not None:
            c = scale_epochs(c, epochs)
        with c.unlocked():
            if eval_every_epochs is not None:
                c.train.eval_every_epochs = float(eval_every_epochs)
            c.train.progress = False
        out[p] = c
    return out


# ---------------------------------------------------------------------------------------------
# Running


def run_dir(workdir: str | Path, suite: str, plan: str, seed: int) -> Path:
    return Path(workdir) / suite / plan / f"seed{seed}"


def run_suite(
    suite: str,
    *,
    seeds: int = 3,
    workdir: str | Path = "runs/reproduce",
    epochs: float | None = None,
    data: str | None = None,
    eval_every_epochs: float | None = None,
    devices: list | None = None,
    reuse: bool = False,
    plans: Sequence[str] = PLANS,
    configs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train every plan of ``suite`` for seeds ``0 .. seeds-1`` and return the collected results
    (see :func:`collect`). ``configs`` overrides :func:`suite_configs` (``{plan: ConfigDict}``).

    Each run gets a fresh ``run_dir`` (an old one is deleted, since metrics.jsonl appends), unless
    ``reuse`` is set and the directory holds a finished run (summary.json) of the identical config.
    """
    from lbt import config as config_lib
    from lbt.train.loop import train

    if seeds < 1:
        from lbt.errors import ConfigError

        raise ConfigError("seeds", f"must be >= 1, got {seeds}")
    if configs is None:
        configs = suite_configs(suite, epochs=epochs, data=data, eval_every_epochs=eval_every_epochs)
    t0 = time.time()
    for plan in plans:
        for seed in range(seeds):
            c = configs[plan].copy_and_resolve_references()
            with c.unlocked():
                c.seed = seed
            d = run_dir(workdir, suite, plan, seed)
            if reuse and (d / "summary.json").is_file() and (d / "config.json").is_file():
                if (d / "config.json").read_text() == config_lib.to_json(c):
                    log.info("reproduce %s: reusing %s", suite, d)
                    continue
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            t = time.time()
            s = train(c, d, devices=devices)
            log.info(
                "reproduce %s: %s seed %d: accuracy %.4f, %d steps, %.0f s",
                suite,
                plan,
                seed,
                s["final_eval_accuracy"],
                s["optimizer_steps"],
                time.time() - t,
            )
    results = collect(workdir, suite, seeds, plans)
    results["suite_wall_s"] = time.time() - t0
    (Path(workdir) / suite / "results.json").write_text(json.dumps(results, indent=1))
    return results


# ---------------------------------------------------------------------------------------------
# Collecting


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from lbt.train.metrics import read_jsonl

    return read_jsonl(path)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _binned_train_loss(train: list[dict[str, Any]], edges: list[float]) -> list[float | None]:
    """Example-weighted mean train loss of the steps that end in each epoch bin."""
    sums = [0.0] * (len(edges) - 1)
    weights = [0.0] * (len(edges) - 1)
    j = 0
    for r in train:
        e = r["epoch"]
        while j < len(edges) - 2 and e > edges[j + 1]:
            j += 1
        loss = r.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            sums[j] += loss * r["global_batch"]
            weights[j] += r["global_batch"]
    return [s / w if w else None for s, w in zip(sums, weights)]


def collect(
    workdir: str | Path, suite: str, seeds: int, plans: Sequence[str] = PLANS, loss_bins: int = 60
) -> dict[str, Any]:
    """Read each run's summary.json and metrics.jsonl into per-plan results.

    Returns ``{"suite", "seeds", "N", "n_test", "epochs", "plans": {plan: {...}}}`` where each plan
    has per-seed ``accuracy``, ``loss``, ``steps``, ``wall_s``; the plan's ``batches`` and ``lrs``
    per phase; ``eval`` (``epoch``, ``step``, ``accuracy_mean``, ``accuracy_std`` per eval point,
    averaged over seeds) and ``train_loss`` (``epoch`` bin centres, ``loss_mean``).
    """
    out: dict[str, Any] = {"suite": suite, "seeds": seeds, "plans": {}}
    for plan in plans:
        summaries, evals, trains = [], [], []
        for seed in range(seeds):
            d = run_dir(workdir, suite, plan, seed)
            summaries.append(json.loads((d / "summary.json").read_text()))
            recs = _read_jsonl(d / "metrics.jsonl")
            evals.append([r for r in recs if r.get("split") == "test"])
            trains.append([r for r in recs if "split" not in r and "event" not in r])  # not resume/rollback/preempted
        config = json.loads((run_dir(workdir, suite, plan, 0) / "config.json").read_text())
        epochs = float(config["schedule"]["epochs"])
        first = trains[0]
        N = round(first[0]["examples_seen"] / first[0]["epoch"])
        out["N"], out["epochs"] = N, epochs
        out["n_test"] = int(evals[0][-1]["count"])
        out["microbatch"] = int(config["train"]["global_microbatch"])
        phases: list[tuple[int, float]] = []
        for r in first:
            if not phases or (r["global_batch"], r["lr"]) != phases[-1]:
                phases.append((r["global_batch"], r["lr"]))
        n_eval = min(len(e) for e in evals)
        eval_curve = {
            "epoch": [evals[0][i]["epoch"] for i in range(n_eval)],
            "step": [_mean([e[i]["step"] for e in evals]) for i in range(n_eval)],
            "accuracy_mean": [_mean([e[i]["accuracy"] for e in evals]) for i in range(n_eval)],
            "accuracy_std": [_std([e[i]["accuracy"] for e in evals]) for i in range(n_eval)],
        }
        edges = [epochs * i / loss_bins for i in range(loss_bins + 1)]
        edges[-1] = math.inf
        per_seed = [_binned_train_loss(t, edges) for t in trains]
        loss_mean = []
        for j in range(loss_bins):
            vals = [p[j] for p in per_seed if p[j] is not None]
            loss_mean.append(_mean(vals) if vals else None)
        out["plans"][plan] = {
            "accuracy": [s["final_eval_accuracy"] for s in summaries],
            "loss": [s["final_eval_loss"] for s in summaries],
            "steps": [s["optimizer_steps"] for s in summaries],
            "wall_s": [s["wall_s"] for s in summaries],
            "train_compilations": [s["train_compilations"] for s in summaries],
            "batches": [b for b, _ in phases],
            "lrs": [lr for _, lr in phases],
            "eval": eval_curve,
            "train_loss": {
                "epoch": [epochs * (j + 0.5) / loss_bins for j in range(loss_bins)],
                "loss_mean": loss_mean,
            },
        }
    return out


# ---------------------------------------------------------------------------------------------
# Report


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values`` times ``scale`` (sample std, ddof = 1), e.g. accuracies
    [0.98, 0.99, 1.0] -> ``"99.00 ± 1.00"``. A single value has no spread: ``"99.00"``."""
    m = _mean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {_std(values) * scale:.{digits}f}"


def _fmt_steps(steps: Sequence[int]) -> str:
    return str(steps[0]) if len(set(steps)) == 1 else f"{_mean(steps):.1f}"


def results_table(results: dict[str, Any]) -> str:
    """The markdown table of a suite's results."""
    plans = results["plans"]
    base = _mean(plans["decay_lr"]["steps"]) if "decay_lr" in plans else None
    lines = [
        "| plan | B per phase | ε per phase | final test accuracy % (mean ± std) | final test loss | optimizer steps | steps vs decay_lr | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for plan, r in plans.items():
        ratio = f"{_mean(r['steps']) / base:.3f}" if base else "-"
        lines.append(
            f"| {plan} | {' → '.join(str(b) for b in r['batches'])} | {' → '.join(f'{x:.4g}' for x in r['lrs'])} "
            f"| {format_mean_std(r['accuracy'])} | {format_mean_std(r['loss'], scale=1.0, digits=4)} "
            f"| {_fmt_steps(r['steps'])} | {ratio} | {_mean(r['wall_s']):.0f} |"
        )
    return "\n".join(lines)


def observations(results: dict[str, Any]) -> list[str]:
    """Measured statements comparing each plan to decay_lr (no interpretation beyond the numbers)."""
    plans = results["plans"]
    if "decay_lr" not in plans:
        return []
    ref = plans["decay_lr"]
    one = 100.0 / results["n_test"]
    notes = [f"One test example is {one:.2f} percentage points (pp) of accuracy ({results['n_test']} test examples)."]
    for plan, r in plans.items():
        if plan == "decay_lr":
            continue
        d = (_mean(r["accuracy"]) - _mean(ref["accuracy"])) * 100
        spread = max(_std(r["accuracy"]), _std(ref["accuracy"])) * 100
        within = "within" if abs(d) <= max(spread, one) else "outside"
        n = min(len(r["eval"]["accuracy_mean"]), len(ref["eval"]["accuracy_mean"]))
        gaps = [abs(a - b) * 100 for a, b in zip(r["eval"]["accuracy_mean"][:n], ref["eval"]["accuracy_mean"][:n])]
        i_max = max(range(n), key=lambda i: gaps[i]) if n else 0
        steps = _mean(r["steps"]) / _mean(ref["steps"])
        notes.append(
            f"`{plan}` vs `decay_lr`: final accuracy {d:+.2f} pp ({within} the larger seed std {spread:.2f} pp"
            f" or one test example); mean |gap| between the mean accuracy-vs-epochs curves over {n} evals"
            f" {_mean(gaps) if gaps else 0:.2f} pp (largest {gaps[i_max] if gaps else 0:.2f} pp at epoch"
            f" {r['eval']['epoch'][i_max] if n else 0:.3g}); {steps:.3f}× the optimizer steps"
            f" ({1 / steps:.2f}× fewer)."
        )
    return notes


def plot_suite(results: dict[str, Any], path: str | Path) -> Path:
    """Test accuracy vs epochs, test accuracy vs optimizer steps, train loss vs epochs."""
    from lbt.tools.plots import new_figure, save_figure

    fig = new_figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    lows = []
    for plan, r in results["plans"].items():
        ev = r["eval"]
        color = PLAN_COLORS.get(plan)
        mean = [100 * a for a in ev["accuracy_mean"]]
        std = [100 * s for s in ev["accuracy_std"]]
        label = f"{plan} ({_fmt_steps(r['steps'])} steps)"
        axes[0].plot(ev["epoch"], mean, marker=".", color=color, label=label)
        axes[0].fill_between(
            ev["epoch"],
            [m - s for m, s in zip(mean, std)],
            [m + s for m, s in zip(mean, std)],
            color=color,
            alpha=0.15,
        )
        axes[1].plot(ev["step"], mean, marker=".", color=color, label=label)
        tl = r["train_loss"]
        pts = [(e, v) for e, v in zip(tl["epoch"], tl["loss_mean"]) if v is not None and v > 0]
        if pts:
            axes[2].plot([p[0] for p in pts], [p[1] for p in pts], color=color, label=plan)
        skip = [m for e, m in zip(ev["epoch"], mean) if e >= 0.2 * results["epochs"]]
        lows.append(min(skip or mean))
    if lows:
        lo = min(lows)
        for ax in axes[:2]:
            ax.set_ylim(max(0.0, lo - 0.15 * (100 - lo) - 0.5), 100.0)
    axes[0].set_xlabel("epochs")
    axes[0].set_ylabel("test accuracy % (mean ± std over seeds)")
    axes[1].set_xlabel("optimizer steps (parameter updates)")
    axes[1].set_ylabel("test accuracy % (mean over seeds)")
    axes[2].set_xlabel("epochs")
    axes[2].set_ylabel("train loss (mean over seeds)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"{results['suite']}: N={results['N']}, {results['epochs']:g} epochs, {results['seeds']} seed(s)", fontsize=10
    )
    return save_figure(fig, path, dpi=90)


_HEADER = """# Reproduction: decay the learning rate vs increase the batch size

Smith, Kindermans, Ying & Le, *Don't Decay the Learning Rate, Increase the Batch Size* (ICLR
2018), claim that growing the batch B by the factor f where a step schedule would divide the
learning rate ε by f (same noise scale g = εN/(B(1−m))) gives the same test-accuracy curve
versus epochs with far fewer parameter updates, and that past B_max ≈ N/10 one should decay ε
instead ("hybrid"). `lbt reproduce` trains `decay_lr`, `increase_batch` and `hybrid` plans of
equal epochs (same base LR, momentum, milestones and factor) with the real `Trainer`, for several
seeds (`config.seed` changes the data order and the initialisation), and writes the sections
below. Accuracies are in percent, mean ± sample standard deviation over seeds. Each suite's
section is regenerated by its command; text outside the sections is kept.
"""


def _begin(suite: str) -> str:
    return f"<!-- lbt reproduce: {suite} begin -->"


def _end(suite: str) -> str:
    return f"<!-- lbt reproduce: {suite} end -->"


def suite_section(results: dict[str, Any], *, command: str, machine: str, date: str, wall_s: float, image: str) -> str:
    """The markdown section of one suite."""
    suite = results["suite"]
    lines = [
        _begin(suite),
        f"## {suite}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Date: {date}. Wall time of the whole suite: {wall_s / 60:.1f} min"
        f" ({len(results['plans'])} plans × {results['seeds']} seed(s)).",
        "",
        f"N = {results['N']} training examples, {results['n_test']} test examples, {results['epochs']:g} epochs,"
        f" global microbatch M = {results['microbatch']}.",
        "",
        results_table(results),
        "",
        "Measured:",
        "",
    ]
    lines += [f"- {n}" for n in observations(results)]
    lines += ["", f"![{suite}: test accuracy vs epochs and vs steps, train loss vs epochs]({image})", "", _end(suite)]
    return "\n".join(lines)


def write_report(out: str | Path, section: str, suite: str) -> Path:
    """Insert or replace ``suite``'s section of ``<out>/reproduction.md`` (keeping everything else)."""
    path = Path(out) / "reproduction.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else _HEADER
    pattern = re.compile(re.escape(_begin(suite)) + r".*?" + re.escape(_end(suite)), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return path


def report(
    results: dict[str, Any],
    out: str | Path,
    *,
    command: str,
    machine: str | None = None,
    date: str | None = None,
    wall_s: float | None = None,
) -> tuple[Path, Path]:
    """Write the plot and the suite's section of the report; returns (markdown, png) paths."""
    suite = results["suite"]
    png = plot_suite(results, Path(out) / "img" / f"reproduction_{suite}.png")
    section = suite_section(
        results,
        command=command,
        machine=machine or describe_machine(),
        date=date or datetime.date.today().isoformat(),
        wall_s=results.get("suite_wall_s", 0.0) if wall_s is None else wall_s,
        image=f"img/reproduction_{suite}.png",
    )
    return write_report(out, section, suite), png


def describe_machine() -> str:
    """The machine in words, e.g. ``16-core x86_64 CPU, 1 CPU device (jax 0.4.x)``."""
    import jax

    devs = jax.devices()
    kind = devs[0].platform
    cpu = f"{os.cpu_count()}-core {platform.machine()} CPU"
    if kind == "cpu":
        return f"{cpu}, {len(devs)} CPU device{'s' if len(devs) > 1 else ''} (jax {jax.__version__})"
    return f"{len(devs)} × {devs[0].device_kind} ({cpu}, jax {jax.__version__})"


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lbt reproduce",
        allow_abbrev=False,
        description="Train decay_lr, increase_batch and hybrid plans of equal epochs for several seeds and report.",
    )
    p.add_argument("--suite", required=True, choices=SUITES)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 per plan (default 3)")
    p.add_argument("--out", default="docs", help="where reproduction.md and img/ go (default docs)")
    p.add_argument("--workdir", default="runs/reproduce", help="run directories (default runs/reproduce)")
    p.add_argument("--epochs", type=float, default=None, help="override the epochs (milestones scale with them)")
    p.add_argument("--eval_every_epochs", type=float, default=None, help="override the eval interval")
    p.add_argument(
        "--data",
        default=None,
        help=f"mnist: the .npz (default {DEFAULT_MNIST}); cifar10: the tfds data_dir (default: tfds's)",
    )
    p.add_argument(
        "--num_cpu_devices", type=int, default=None, help="simulated CPU devices (default 1 or $LBT_NUM_CPU_DEVICES)"
    )
    p.add_argument("--reuse", action="store_true", help="keep finished runs whose config is unchanged")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    from lbt import runtime

    # before anything starts a JAX backend; a long suite on a busy machine: let collectives wait
    runtime.setup(args.num_cpu_devices, default_cpu_devices=1, collective_timeout_s=900)
    from lbt.errors import ConfigError

    if args.seeds < 1:
        raise ConfigError("seeds", f"must be >= 1, got {args.seeds}")
    configs = suite_configs(args.suite, epochs=args.epochs, data=args.data, eval_every_epochs=args.eval_every_epochs)
    t0 = time.time()
    results = run_suite(
        args.suite, seeds=args.seeds, workdir=args.workdir, reuse=args.reuse, configs=configs, plans=tuple(configs)
    )
    wall = time.time() - t0
    command = "lbt reproduce " + " ".join(argv)
    md, png = report(results, args.out, command=command, wall_s=wall)
    print(results_table(results))
    print(f"wrote {md} and {png} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
