"""Checkpoints: exact resume after a real SIGKILL, SIGTERM preemption, corruption fallback,
config mismatch, elastic resume on fewer devices, and the non-finite policies."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lbt import cli
from lbt.config import apply_override, base_config
from lbt.errors import CheckpointError, TrainingError
from lbt.train.checkpoint import Checkpointer
from lbt.train.faults import Faults
from lbt.train.loop import Trainer
from lbt.train.metrics import read_jsonl

# digits, M = 32, B = 32 -> 64 at epoch 1 (step 45), 2 epochs; checkpoints every 1000 examples
# land at step 32 (1,024 examples) and step 54 (2,016), so a kill at step 50 leaves the last
# checkpoint *before* the batch-growth boundary. The noise-scale EMA (time constant 40 steps) and
# a regime factor of 0.25 make the regime warning fire at steps 40 (phase 0) and 46 (phase 1),
# between that checkpoint and the kill, so the resume must regenerate those events, not repeat them.
OVERRIDES = [
    "--config.model.width=8",
    "--config.train.global_microbatch=32",
    "--config.model.ghost_batch_size=4",
    "--config.schedule.global_batch=32",
    "--config.schedule.epochs=2.0",
    "--config.schedule.lr.milestones=(1.0,)",
    "--config.schedule.lr.factor=2.0",
    "--config.train.eval_every_epochs=0.5",
    "--config.train.log_every_steps=1",
    "--config.train.progress=false",
    "--config.checkpoint.every_examples=1000",
    "--config.train.noise_scale_ema=0.975",
    "--config.schedule.batch.regime_factor=0.25",
]


def make_config(extra=()):
    c = base_config()
    for o in list(OVERRIDES) + list(extra):
        apply_override(c, o)
    return c


def train_records(path: Path):
    return [r for r in read_jsonl(path / "metrics.jsonl") if "event" not in r]


def lbt_train(workdir: Path, env_extra=None, extra=()):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(workdir), *OVERRIDES, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_step(workdir: Path, step: int, proc, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        path = workdir / "metrics.jsonl"
        if path.exists() and any(r.get("step") == step and "loss" in r for r in read_jsonl(path) if "event" not in r):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"step {step} never logged")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A: straight through, through the real CLI."""
    wd = tmp_path_factory.mktemp("A")
    p = lbt_train(wd)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    return wd, json.loads((wd / "summary.json").read_text())


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(uninterrupted, tmp_path):
    a_dir, a_sum = uninterrupted
    p = lbt_train(tmp_path, {"LBT_FAULT_PAUSE_AT_STEP": "50"})
    wait_for_step(tmp_path, 50, p)
    p.send_signal(signal.SIGKILL)  # a real, unannounced kill
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit()) == [32]
    killed = train_records(tmp_path)
    assert max(r["step"] for r in killed if "step" in r and "split" not in r) == 50
    # The batch grew (step 46 has B = 64) between the last checkpoint (step 32) and the kill.
    assert {r["global_batch"] for r in killed if r.get("step", 0) > 32 and "split" not in r} == {32, 64}

    p = lbt_train(tmp_path)  # resume: same command
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert "resumed from" in err and "at step 32" in err
    b_sum = json.loads((tmp_path / "summary.json").read_text())
    assert b_sum["resumed"] is True
    assert b_sum["final_state_sha256"] == a_sum["final_state_sha256"]  # bit-identical state
    timing = ("examples_per_s", "step_s", "mfu")  # wall-clock measurements, not training results
    a_after = [
        {k: v for k, v in r.items() if k not in timing} for r in train_records(a_dir) if r["examples_seen"] > 1024
    ]
    b_after = [
        {k: v for k, v in r.items() if k not in timing} for r in train_records(tmp_path) if r["examples_seen"] > 1024
    ]
    assert len(a_after) > 20 and a_after == b_after  # every record after the resume point, exactly
    assert all(r["noise_scale_simple"] is not None for r in a_after if "split" not in r)  # the EMAs resumed
    assert b_sum["noise_scale_simple"] == a_sum["noise_scale_simple"]
    events = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "event" in r]
    assert [r["event"] for r in events] == ["resume", "noise_regime", "noise_regime"]
    regime = [r for r in read_jsonl(a_dir / "metrics.jsonl") if r.get("event") == "noise_regime"]
    # the EMA's time constant (40 steps at 0.975) in measured steps: every 4th on CPU, so the 11th
    # measured step, step 44, is the first that may warn
    assert [(r["phase"], r["step"]) for r in regime] == [(0, 44), (1, 46)]
    assert events[1:] == regime  # regenerated after the resume, the killed run's copies dropped


@pytest.mark.slow
def test_uninterrupted_run_logs_the_noise_scale(uninterrupted):
    """Every train record has the big-batch squared norm, its batch sizes and the smoothed
    B_simple; the measured steps (every 4th on CPU, ``train.noise_scale_every`` = 0) also the
    small-batch norm, and B_simple is the bias-corrected EMA ratio (factor 0.975**4 per measured
    step) of their estimates; the summary has the last one."""
    from lbt.schedules import noise as noise_lib
    from lbt.train.loop import noise_scale_every

    a_dir, a_sum = uninterrupted
    every = noise_scale_every(make_config())
    assert every == 4
    recs = [r for r in train_records(a_dir) if "split" not in r]
    assert len(recs) == a_sum["optimizer_steps"] and {r["global_batch"] for r in recs} == {32, 64}
    ema, measured = noise_lib.NoiseScaleEMA(0.975**every), 0
    for r in recs:
        B = r["global_batch"]
        assert (r["noise_batch_small"], r["noise_batch_big"]) == (B // 8, B)  # B / D, B
        assert r["grad_sq_norm_big"] == pytest.approx(r["grad_norm"] ** 2, rel=1e-4)
        if r["step"] % every:  # measured: the steps 4, 8, ... (TensorBoard's every 20th has them)
            assert r["grad_sq_norm_small"] is None and r["noise_g2_step"] is None and r["noise_estimator"] is None
        else:
            assert r["noise_estimator"] == "devices"
            est = noise_lib.gradient_stats(r["grad_sq_norm_small"], r["grad_sq_norm_big"], B // 8, B)
            assert (r["noise_g2_step"], r["noise_trace_step"]) == pytest.approx(est, rel=1e-12)
            ema, measured = ema.update(*est), measured + 1
        if not ema.count:  # before the first measured step (4) nothing is smoothed yet
            assert r["noise_scale_simple"] is None and r["grad_sq_norm_true"] is None
            continue
        assert r["noise_scale_simple"] == pytest.approx(ema.b_simple, rel=1e-9)
        assert r["grad_sq_norm_true"] == pytest.approx(ema.g2_hat, rel=1e-9)
    assert measured == len(recs) // every and a_sum["noise_scale_steps"] == measured
    assert a_sum["noise_scale_simple"] == recs[-1]["noise_scale_simple"]
    assert 10 < a_sum["noise_scale_simple"] < 10_000


@pytest.mark.slow
def test_sigterm_saves_at_step_boundary_and_exits(uninterrupted, tmp_path):
    a_dir, a_sum = uninterrupted
    p = lbt_train(tmp_path, {"LBT_FAULT_PAUSE_AT_STEP": "20"})
    wait_for_step(tmp_path, 20, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == cli.EXIT_PREEMPTED, err[-2000:]
    assert "rerun the same command to resume" in err
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps == [20]  # the signal arrived while the process stood at step 20's boundary
    events = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "event" in r]
    assert events == [{"event": "preempted", "step": 20, "examples_seen": 20 * 32}]
    p = lbt_train(tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    b_sum = json.loads((tmp_path / "summary.json").read_text())
    assert b_sum["final_state_sha256"] == a_sum["final_state_sha256"]


def _finished_run(tmp_path, extra=()):
    config = make_config(extra)
    summary = Trainer(config, tmp_path).run()
    return config, summary


def test_corrupt_latest_falls_back_and_none_good_fails(tmp_path, caplog):
    config, _ = _finished_run(tmp_path)
    ck = tmp_path / "checkpoints"
    steps = sorted(int(d.name) for d in ck.iterdir() if d.name.isdigit())
    assert len(steps) == 3  # keep = 3: 54, 77 (checkpoint at 3,008 examples), and the final one
    # truncate every data file of the latest checkpoint's state
    latest = ck / str(steps[-1])
    for f in (latest / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    # and remove the metadata of the one before it
    for f in (ck / str(steps[-2]) / "meta").rglob("*"):
        if f.is_file():
            f.unlink()
    with caplog.at_level(logging.WARNING, logger="lbt"):
        restored = Checkpointer(tmp_path).restore_latest(Trainer(config, tmp_path).abstract_state())
    state, meta = restored
    assert meta["step"] == steps[-3]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(latest) in warned and str(ck / str(steps[-2])) in warned
    # the bad ones were moved aside, not deleted
    assert len(list((tmp_path / "checkpoints_corrupt").iterdir())) == 2

    # now make the last good one bad too: a clear error, and nothing is deleted
    for f in (ck / str(steps[-3]) / "meta").rglob("*"):
        if f.is_file():
            f.unlink()
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        Trainer(config, tmp_path).run()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_config_mismatch_lists_fields_and_flag_allows_longer_run(tmp_path):
    _finished_run(tmp_path)
    changed = make_config(
        ["--config.model.width=16", "--config.train.global_microbatch=64", "--config.schedule.global_batch=64"]
    )
    with pytest.raises(CheckpointError) as e:
        Trainer(changed, tmp_path).run()
    msg = str(e.value)
    assert "3 field(s)" in msg and "model.width: checkpoint=8 now=16" in msg
    assert "train.global_microbatch: checkpoint=32 now=64" in msg and "--allow_config_change" in msg
    longer = make_config(["--config.schedule.epochs=2.5"])
    with pytest.raises(CheckpointError, match="schedule.epochs"):
        Trainer(longer, tmp_path).run()
    s = Trainer(longer, tmp_path, allow_config_change=True).run()
    assert s["resumed"] and s["examples_seen"] >= 2.5 * 1438


def test_elastic_resume_on_fewer_devices(tmp_path):
    """Checkpoint on 8 devices, resume on 4 (M unchanged: b doubles, k is the same)."""
    low_lr = ["--config.schedule.base_lr=0.02"]
    full = Trainer(make_config(low_lr), tmp_path / "full").run()
    Trainer(make_config(low_lr + ["--config.schedule.epochs=1.5"]), tmp_path / "e").run()
    s = Trainer(make_config(low_lr), tmp_path / "e", devices=jax.devices()[:4], allow_config_change=True).run()
    assert s["devices"] == 4 and s["resumed"]
    a = [r["loss"] for r in train_records(tmp_path / "full") if "split" not in r]
    b = [r["loss"] for r in train_records(tmp_path / "e") if "split" not in r]
    assert len(a) == len(b) == full["optimizer_steps"]
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)  # stated tolerance: float32 reduction order
    assert abs(s["final_eval_accuracy"] - full["final_eval_accuracy"]) <= 2 / 359


def test_nonfinite_stop_keeps_checkpoint(tmp_path):
    nan = Faults(nan_at=1500)  # inside step 46 (1,440..1,504)
    with pytest.raises(TrainingError, match="non-finite loss or gradient at step 46"):
        Trainer(make_config(), tmp_path, faults=nan).run()
    assert sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit()) == [32]
    bad = [r for r in train_records(tmp_path) if r.get("skipped_nonfinite")]
    assert [r["step"] for r in bad] == [46] and bad[0]["loss"] == "nan"


def test_nonfinite_rollback_skips_window(tmp_path):
    s = Trainer(make_config(["--config.train.on_nonfinite=rollback"]), tmp_path, faults=Faults(nan_at=1500)).run()
    assert s["rollbacks"] == 1 and s["skipped_examples"] == 64
    events = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "rollback"]
    assert events == [
        {
            "event": "rollback",
            "bad_step": 46,
            "skipped_window": [1440, 1504],
            "restored_step": 32,
            "examples_seen": 1024,
            "rollbacks": 1,
        }
    ]
    recs = [r for r in train_records(tmp_path) if "split" not in r]
    assert all(r["skipped_nonfinite"] is False for r in recs)
    assert [r["step"] for r in recs] == list(range(1, s["optimizer_steps"] + 1))
    assert 1504 not in [r["examples_seen"] for r in recs]  # the window was skipped
    assert np.isfinite(s["final_eval_loss"]) and s["final_eval_accuracy"] > 0.8
