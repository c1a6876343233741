"""Matplotlib helpers for ``lbt`` tools.

Figures are ``matplotlib.figure.Figure`` objects drawn by their own ``FigureCanvasAgg``: no
pyplot, no global backend switch, so importing or plotting never changes the caller's backend.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lbt import storage

if TYPE_CHECKING:
    from lbt.schedules.plan import Plan


def new_figure(**kwargs: Any) -> Figure:
    """A Figure with its own Agg canvas (``kwargs`` go to ``Figure``, e.g. ``figsize``)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Lay out ``fig`` and write it as a PNG to ``path`` (parent folders are created; a URL such
    as ``gs://...`` is written with one upload, :mod:`lbt.storage`)."""
    path = storage.as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    if storage.is_remote(path):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        path.write_bytes(buf.getvalue())
    else:
        fig.savefig(path, dpi=dpi)
    return path


def plan_samples(plan: Plan, max_points: int = 4000) -> dict[str, np.ndarray]:
    """Sample ε, B, m, g of ``plan`` over examples seen: every step start if the run has at most
    ``max_points`` steps, else evenly spaced points plus both sides of every phase boundary."""
    if plan.total_steps() <= max_points:
        xs = [s for _, s, _ in plan.steps()]
    else:
        xs = np.linspace(0, plan.total_examples - 1, max_points).astype(np.int64).tolist()
        for ph in plan.phases:
            xs += [ph.start_example, max(ph.start_example, ph.end_example - 1)]
    xs = sorted(set(int(x) for x in xs))
    pts = [plan.at(x) for x in xs]
    return {
        "epoch": np.asarray(xs, dtype=np.float64) / plan.N,
        "lr": np.asarray([p.lr for p in pts]),
        "batch": np.asarray([p.global_batch for p in pts], dtype=np.float64),
        "momentum": np.asarray([p.momentum for p in pts]),
        "noise": np.asarray([p.noise_scale for p in pts]),
    }


def plot_plan(plan: Plan, path: str | Path, title: str | None = None, baseline: Plan | None = None) -> Path:
    """Write ε, B and g versus epochs (3 stacked panels, log-y for B and g) to ``path``.

    ``baseline`` (e.g. the decay_lr plan) is drawn dashed for comparison.
    """
    fig = new_figure(figsize=(7, 7))
    axes = fig.subplots(3, 1, sharex=True)
    curves = [(plan, "-", "plan")] + ([(baseline, "--", "decay_lr baseline")] if baseline is not None else [])
    for p, style, label in curves:
        d = plan_samples(p)
        kw = dict(drawstyle="steps-post", linestyle=style, label=label, linewidth=1.4 if style == "-" else 1.0)
        axes[0].plot(d["epoch"], d["lr"], **kw)
        axes[1].plot(d["epoch"], d["batch"], **kw)
        axes[2].plot(d["epoch"], d["noise"], **kw)
    axes[0].set_ylabel("learning rate ε")
    axes[1].set_ylabel("global batch B")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("noise scale g = εN/(B(1-m))")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("epochs (examples seen / N)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    if baseline is not None:
        axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title or f"{plan.mode} ({plan.lr_name}): {plan.total_steps():,} optimizer steps", fontsize=10)
    return save_figure(fig, path, dpi=90)
