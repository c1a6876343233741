"""The loop's small pieces: when to save, when to evaluate, throughput, the compile listener."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax._src import monitoring as jax_monitoring

from lbt import cli
from lbt.config import base_config
from lbt.data.registry import train_size
from lbt.errors import TrainingError
from lbt.train import metrics as metrics_lib
from lbt.train.checkpoint import Checkpointer, SavePolicy, checkpoint_interval, next_multiple
from lbt.train.compiles import CompileCounter
from lbt.train.evaluate import EvalSchedule, eval_interval
from lbt.train.loop import Trainer
from lbt.train.metrics import TrainClock, read_jsonl


def _ckpt_config(every_epochs=0.0, every_examples=0, every_minutes=0.0) -> ml_collections.ConfigDict:
    c = base_config()
    c.checkpoint.every_epochs = every_epochs
    c.checkpoint.every_examples = every_examples
    c.checkpoint.every_minutes = every_minutes
    return c


def test_next_multiple_and_intervals():
    assert next_multiple(0, 100) == 100 and next_multiple(100, 100) == 200 and next_multiple(199, 100) == 200
    assert next_multiple(5, 0) is None
    assert checkpoint_interval(_ckpt_config(every_epochs=0.5), 1000) == 500
    assert checkpoint_interval(_ckpt_config(every_epochs=0.5, every_examples=300), 1000) == 300  # the smaller
    assert checkpoint_interval(_ckpt_config(), 1000) == 0
    c = base_config()
    c.train.eval_every_epochs = 2.5
    assert eval_interval(c, 1000) == 2500
    c.train.eval_every_epochs = 0.0
    assert eval_interval(c, 1000) == 0


def test_save_policy_interval_clock_and_preemption():
    now = [1000.0]
    policy = SavePolicy(
        _ckpt_config(every_examples=256, every_minutes=1.0), 1000, examples_seen=0, clock=lambda: now[0]
    )
    total = 2048
    # the interval is due at the first boundary past 256, never at the end of training
    assert not policy.decide(192, total, sync=False, preempt_requested=False, last_save_time=1000.0).save
    assert policy.decide(320, total, sync=False, preempt_requested=False, last_save_time=1000.0).save
    policy.saved(320)
    assert policy.next_at == 512
    assert not policy.interval_due(2048, total) and not policy.interval_due(600, 600)
    # the clock and SIGTERM count only at sync steps (where processes agree)
    now[0] = 1000.0 + 61
    assert not policy.decide(384, total, sync=False, preempt_requested=True, last_save_time=1000.0).save
    assert not policy.decide(384, total, sync=False, preempt_requested=True, last_save_time=1000.0).preempt
    d = policy.decide(384, total, sync=True, preempt_requested=False, last_save_time=1000.0)
    assert d.save and not d.preempt
    d = policy.decide(384, total, sync=True, preempt_requested=True, last_save_time=now[0])
    assert d.preempt and not d.save


def test_eval_schedule():
    ev = EvalSchedule(500, examples_seen=0)
    assert not ev.due(499, 2000) and ev.due(512, 2000)
    ev.done(512)
    assert ev.next_at == 1000 and not ev.due(2000, 2000)  # the final eval is the loop's
    assert not EvalSchedule(0, 0).due(10**9, 10**10)
    assert EvalSchedule(500, examples_seen=1000).next_at == 1500  # resumed


def test_train_clock_leaves_out_compiling_steps_and_skipped_time(monkeypatch):
    t = [0.0]
    monkeypatch.setattr(metrics_lib.time, "perf_counter", lambda: t[0])
    clock = TrainClock()
    t[0] = 5.0
    clock.step(64, compiled=True)  # 5 s of compilation: left out
    t[0] = 6.0
    clock.step(64, compiled=False)
    t[0] = 16.0
    clock.skip()  # 10 s of eval
    t[0] = 17.0
    clock.step(128, compiled=False)
    t[0] = 17.5
    clock.finish()
    assert clock.examples == 192 and clock.seconds == pytest.approx(2.5)
    assert clock.examples_per_s == pytest.approx(192 / 2.5)


def _listeners() -> int:
    return len(jax_monitoring._event_duration_secs_listeners)


def test_counter_close_unregisters_and_a_run_leaves_no_listener(tmp_path):
    before = _listeners()
    counter = CompileCounter()
    assert _listeners() == before + 1
    counter.close()
    assert _listeners() == before
    c = base_config()
    c.schedule.epochs = 1.0
    c.schedule.lr.milestones = (0.5,)
    c.train.progress = False
    summary = Trainer(c, tmp_path).run()
    assert _listeners() == before  # lbt reproduce runs many Trainers in one process
    # steps only: compile and eval time are left out, so the rate beats examples / wall time
    assert summary["train_examples_per_s"] > summary["examples_seen"] / summary["wall_s"]


def _diverging(extra: dict | None = None) -> ml_collections.ConfigDict:
    """A run that diverges for good: every step after the first is non-finite."""
    c = base_config()
    c.model.width = 8
    c.schedule.epochs = 3.0
    c.schedule.lr.milestones = (1.0, 2.0)
    c.schedule.base_lr = 1e6
    c.train.on_nonfinite = "rollback"
    c.train.progress = False
    c.train.log_every_steps = 1
    for k, v in (extra or {}).items():
        c.train[k] = v
    return c


def test_rollback_is_bounded(tmp_path):
    """base_lr=1e6 once rolled back 392 times and exited 0; now it stops after max_rollbacks."""
    with pytest.raises(TrainingError, match=r"4 rollback\(s\).*train.max_rollbacks=3") as info:
        Trainer(_diverging({"max_skipped_fraction": 1.0}), tmp_path).run()
    assert "\n" not in str(info.value)
    events = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "rollback"]
    assert len(events) == 4
    assert not (tmp_path / "summary.json").exists()


def test_rollback_to_the_start_reuses_the_init_program(tmp_path):
    """Each rollback to step 0 used to recompile the init program (4 s for the digits CNN)."""
    trainer = Trainer(_diverging(), tmp_path)
    first = trainer._init_state()
    compiled = trainer.counter.total
    again = trainer._init_state()
    assert trainer.counter.total == compiled
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True))


def test_rollback_skipped_fraction_is_bounded(tmp_path):
    c = _diverging({"max_rollbacks": 1000, "max_skipped_fraction": 0.1})
    with pytest.raises(TrainingError, match="train.max_skipped_fraction=0.1"):
        Trainer(c, tmp_path).run()
    events = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "rollback"]
    skipped = sum(e["skipped_window"][1] - e["skipped_window"][0] for e in events)
    total = round(3.0 * 1438)
    assert skipped > 0.1 * total >= skipped - 64 * 4  # it stopped at the first window past the cap


@pytest.mark.slow
def test_sigterm_is_honoured_while_rolling_back(tmp_path):
    """The rollback path used to `continue` past the SIGTERM check: the run ignored SIGTERM."""
    args = [
        "--config.schedule.base_lr=1e6",
        "--config.train.on_nonfinite=rollback",
        "--config.train.max_rollbacks=1000000",
        "--config.train.max_skipped_fraction=1.0",
        "--config.train.progress=false",
    ]
    cmd = [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(tmp_path), "--num_cpu_devices", "2", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and _count_rollbacks(tmp_path) < 3:
            time.sleep(0.2)
        assert _count_rollbacks(tmp_path) >= 3, "the run never rolled back"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == cli.EXIT_PREEMPTED, err[-2000:]
    assert any(r.get("event") == "preempted" for r in read_jsonl(tmp_path / "metrics.jsonl"))


def _count_rollbacks(workdir) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    return path.read_text().count('"event": "rollback"')


def test_an_accuracy_outside_0_1_is_an_error():
    """Labels shaped (N, 1) once broadcast in the comparison and reported an accuracy of 5.6."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lbt.data.sources import ArraySource
    from lbt.parallel.mesh import make_mesh
    from lbt.train.evaluate import evaluate

    source = ArraySource(np.zeros((16, 2, 2, 1), np.float32), np.zeros((16,), np.int32), 2)
    mesh = make_mesh(jax.devices()[:1])

    class Programs:  # evaluate adds a batch's sums into the totals, as the real program does
        def __init__(self, correct_per_example: float):
            self.rate = correct_per_example

        def zeros_eval(self):
            return {"correct": jnp.zeros(()), "loss": jnp.zeros(()), "count": jnp.zeros(())}

        def evaluate(self, state, images, labels, mask, totals):
            n = mask.sum()
            return {
                "correct": totals["correct"] + self.rate * n,
                "loss": totals["loss"] + n,
                "count": totals["count"] + n,
            }

    assert evaluate(Programs(0.5), None, source, mesh, 8)["accuracy"] == 0.5
    with pytest.raises(AssertionError, match="accuracy 3.0 outside"):  # each example counted 3 times
        evaluate(Programs(3.0), None, source, mesh, 8)


def test_summary_json_is_valid_json_when_the_eval_loss_is_not_finite(tmp_path, monkeypatch):
    """final_eval_loss was written as a bare NaN; now it is null (standard JSON)."""
    import json

    from lbt.train import loop as loop_lib

    real = loop_lib.evaluate

    def nan_loss(*args, **kwargs):
        return dict(real(*args, **kwargs), loss=float("nan"))

    monkeypatch.setattr(loop_lib, "evaluate", nan_loss)
    c = base_config()
    c.model.width = 8
    c.schedule.epochs = 1.0
    c.schedule.lr.milestones = (0.5,)
    c.train.progress = False
    summary = Trainer(c, tmp_path).run()
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["final_eval_loss"] is None
    assert summary["final_eval_loss"] is None and 0.0 <= summary["final_eval_accuracy"] <= 1.0


def test_checkpoint_digest_is_optional_and_resume_stays_exact(tmp_path):
    """checkpoint.digest=False: no SHA-256 at save (none to verify at restore); resume still exact."""
    import json as json_lib

    c = _tiny_ckpt(2.0)
    full = Trainer(c, tmp_path / "full").run()
    short = _tiny_ckpt(1.0, digest=False)
    Trainer(short, tmp_path / "cut").run()
    meta_files = sorted((tmp_path / "cut" / "checkpoints").glob("*/meta/metadata"))
    assert meta_files and all(json_lib.loads(f.read_text())["state_sha256"] is None for f in meta_files)
    resumed = Trainer(_tiny_ckpt(2.0, digest=False), tmp_path / "cut", allow_config_change=True).run()
    assert resumed["resumed"] and resumed["final_state_sha256"] == full["final_state_sha256"]


def _tiny_ckpt(epochs: float, digest: bool = True) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.width = 8
    c.schedule.epochs = epochs
    c.schedule.lr.milestones = (0.5,)
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    c.checkpoint.every_epochs = 0.5
    c.checkpoint.digest = digest
    return c


def test_step_scalars_stay_on_the_device_until_a_value_changes():
    """The step's (k, lr, momentum) are sent once and reused while unchanged (a float32 change of
    the LR is a change; a float64 difference below float32's resolution is not)."""
    from lbt.parallel.mesh import StepScalars, make_mesh

    mesh = make_mesh()
    scalars = StepScalars(mesh)
    first = scalars(2, 0.1, 0.9)
    assert scalars(2, 0.1, 0.9) is first
    assert scalars(2, 0.1 + 1e-12, 0.9) is first  # the same float32
    assert [np.asarray(a).dtype for a in first] == [np.int32, np.float32, np.float32]
    assert [np.asarray(a).item() for a in first] == [2, np.float32(0.1), np.float32(0.9)]
    assert all(a.sharding.is_fully_replicated and len(a.sharding.device_set) == jax.device_count() for a in first)
    changed = scalars(2, 0.05, 0.9)
    assert changed is not first and np.asarray(changed[1]).item() == np.float32(0.05)
    assert scalars(4, 0.05, 0.9)[0].item() == 4


def test_an_lr_that_changes_every_step_compiles_the_step_once(tmp_path):
    """Warmup sends new device scalars at every step: still one compilation of each program, and the
    records carry the plan's LR of every step."""
    c = base_config()
    c.model.width = 8
    c.schedule.epochs = 2.0
    c.schedule.lr.milestones = ()
    c.schedule.lr.warmup_epochs = 1.0
    c.schedule.batch.mode = "decay_lr"
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    t = Trainer(c, tmp_path, stop_at_examples=int(0.5 * train_size(c)))  # stop in the middle of the warmup
    summary = t.run()
    ckpt = Checkpointer(tmp_path)
    restored, _ = t._resume(ckpt)
    ckpt.close()
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "microbatches" in r]  # train records
    # the device used the newest LR (the optimizer state holds the one of the last update)
    assert float(restored.opt_state.hyperparams["learning_rate"]) == np.float32(records[-1]["lr"]) > 0
    lrs = [r["lr"] for r in records]
    uses_accum = max(r["microbatches"] for r in records) > 1
    assert summary["train_compilations"] == (2 if uses_accum else 1)  # final (and accum): once each
    assert len(set(lrs[: len(lrs) // 2])) == len(lrs) // 2  # a new LR at every warmup step
    assert lrs == [t.plan.at(r["examples_seen"] - r["global_batch"]).lr for r in records]
