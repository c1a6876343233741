"""Loss and accuracy curves of a run (PNG), from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from lbt.tools.plots import new_figure, save_figure
from lbt.train.metrics import read_jsonl


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Train loss and global batch against epochs and steps, and test accuracy against epochs."""
    recs = read_jsonl(metrics_path)
    train = [r for r in recs if "split" not in r and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in recs if r.get("split") == "test"]
    fig = new_figure(figsize=(14, 3.8))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    ax.plot([r["epoch"] for r in train], [r["loss"] for r in train], lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.step([r["epoch"] for r in train], [r["global_batch"] for r in train], color="tab:orange", where="post", lw=1)
    ax2.set_ylabel("global batch B", color="tab:orange")
    axes[1].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    axes[1].set_xlabel("optimizer step")
    axes[1].set_ylabel("train loss")
    axes[1].set_yscale("log")
    axes[2].plot([r["epoch"] for r in evals], [r["accuracy"] for r in evals], marker="o")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("test accuracy")
    return save_figure(fig, out_path, dpi=110)
