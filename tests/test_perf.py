"""Throughput, model FLOPs, MFU, profiling and the persistent compilation cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lbt.config import base_config
from lbt.train.loop import Trainer
from lbt.train.metrics import read_jsonl
from lbt.train.perf import mfu, peak_flops


def _tiny(epochs: float = 1.0):
    c = base_config()
    c.model.width = 8
    c.schedule.epochs = epochs
    c.schedule.lr.milestones = (epochs / 2,)
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    return c


def test_peak_table_and_mfu_formula():
    assert peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "float32") == 495e12
    assert peak_flops("cpu", "float32") is None
    assert peak_flops("cpu", "float32", override=1e12) == 1e12
    assert mfu(2e9, 1000.0, 1e12, 4) == pytest.approx(0.5)  # 2e12 FLOP/s of 4e12
    assert mfu(None, 1000.0, 1e12, 4) is None and mfu(2e9, 1000.0, None, 4) is None


def test_train_records_carry_throughput_and_mfu(tmp_path):
    c = _tiny()
    c.train.peak_flops = 1e11  # a made-up peak, so that MFU is reported on CPU too
    summary = Trainer(c, tmp_path).run()
    flops = summary["model_flops_per_example"]
    assert flops > 0 and summary["device_kind"] == "cpu"
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "global_batch" in r]
    timed = [r for r in records if "examples_per_s" in r]
    assert len(timed) >= len(records) - c.train.log_every_steps  # the compiling window may have none
    for r in timed:
        assert r["examples_per_s"] > 0 and r["step_s"] > 0
        assert r["mfu"] == pytest.approx(flops * r["examples_per_s"] / (1e11 * summary["devices"]))
    assert summary["mfu"] == pytest.approx(flops * summary["train_examples_per_s"] / (1e11 * summary["devices"]))


def test_no_mfu_on_cpu_without_a_peak(tmp_path):
    summary = Trainer(_tiny(0.5), tmp_path).run()
    assert summary["mfu"] is None
    assert all("mfu" not in r for r in read_jsonl(tmp_path / "metrics.jsonl"))


def test_profile_steps_write_a_trace(tmp_path):
    c = _tiny()
    c.train.profile_steps = (3, 2)
    Trainer(c, tmp_path).run()
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


@pytest.mark.slow
def test_second_run_loads_its_programs_from_the_compile_cache(tmp_path):
    """Two identical runs with one cache dir: the second compiles nothing, loads both programs."""
    env = dict(
        os.environ,
        LBT_COMPILE_CACHE_DIR=str(tmp_path / "cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # the tiny programs compile in well under 1 s
        JAX_PLATFORMS="cpu",
    )
    args = ["--config.model.width=8", "--config.schedule.epochs=1.0", "--config.schedule.lr.milestones=(0.5,)"]
    args += ["--config.train.progress=false", "--num_cpu_devices=2"]
    summaries = []
    for name in ("first", "second"):
        cmd = [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(tmp_path / name), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text()))
    first, second = summaries
    assert first["train_compilations"] == second["train_compilations"] == 2  # accum + final, either way
    assert first["train_cache_hits"] == 0 and second["train_cache_hits"] == 2
    assert first["final_state_sha256"] == second["final_state_sha256"]
