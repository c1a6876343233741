"""`lbt train` on the embedded default, through the real CLI in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from lbt.train.metrics import read_jsonl

TRAIN_KEYS = {"step", "examples_seen", "epoch", "global_batch", "lr", "momentum", "loss"}
EVAL_KEYS = {"split", "examples_seen", "accuracy", "loss"}
SUMMARY_KEYS = {
    "final_eval_accuracy",
    "optimizer_steps",
    "examples_seen",
    "train_compilations",
    "wall_s",
    "devices",
    "config_name",
}


@pytest.mark.slow
def test_lbt_train_default_reaches_accuracy_bar(tmp_path):
    env = dict(os.environ)
    env.pop("LBT_NUM_CPU_DEVICES", None)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    p = subprocess.run(
        [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert json.loads(p.stdout.strip().splitlines()[-1]) == summary
    assert summary["devices"] == 8  # the CLI gave the CPU backend 8 simulated devices
    assert summary["config_name"] == "digits"
    assert summary["final_eval_accuracy"] >= 0.95
    assert summary["wall_s"] < 120
    assert summary["train_compilations"] == 2  # accum + final, for 3 batch sizes
    records = read_jsonl(tmp_path / "metrics.jsonl")
    train = [r for r in records if "split" not in r]
    evals = [r for r in records if r.get("split") == "test"]
    assert all(TRAIN_KEYS <= r.keys() for r in train) and all(EVAL_KEYS <= r.keys() for r in evals)
    assert len(train) == summary["optimizer_steps"]
    assert [r["step"] for r in train] == list(range(1, len(train) + 1))
    assert sorted({r["global_batch"] for r in train}) == [64, 128, 256]
    assert train[-1]["examples_seen"] == summary["examples_seen"] >= 30 * 1438
    assert evals[-1]["accuracy"] == summary["final_eval_accuracy"] and evals[-1]["count"] == 359
    assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "tb").iterdir())
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "ex/s" in p.stderr  # the progress bar shows examples/s
