"""One run per workdir (WorkdirLock) and finished-run detection (finished_summary).

The unit tests at the top need nothing else. The end-to-end tests at the bottom (``test_e2e_*``,
marked slow) run the real CLI and pass only once ``lbt/train/loop.py`` takes the lock and
returns a finished run's summary (see the docstring of :mod:`lbt.train.workdir`).
"""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbt.errors import CheckpointError
from lbt.train import workdir as workdir_lib
from lbt.train.metrics import read_jsonl
from lbt.train.workdir import LOCK_NAME, WorkdirBusyError, WorkdirLock, finished_summary

REPO = Path(__file__).resolve().parent.parent

_HOLDER = """
import sys, time
from lbt.train.workdir import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("LOCKED", flush=True)
time.sleep(120)
"""


def _hold_lock(workdir: Path) -> subprocess.Popen:
    """Another process that takes the workdir's lock and sleeps."""
    p = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(workdir), "--fake-flag"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    line = p.stdout.readline()
    assert line.strip() == "LOCKED", p.stderr.read()
    return p


# ---------------------------------------------------------------------------------------------
# defect 3: the lock


def test_lock_held_by_another_process_refuses_then_stale_lock_is_free(tmp_path):
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(WorkdirBusyError) as e:
            WorkdirLock(tmp_path).acquire()
        msg = str(e.value)
        assert isinstance(e.value, CheckpointError) and "\n" not in msg
        assert str(tmp_path) in msg and "in use by another run" in msg
        assert f"pid {holder.pid}" in msg and os.uname().nodename in msg and "--fake-flag" in msg
        assert e.value.holder["pid"] == holder.pid
        info = json.loads((tmp_path / LOCK_NAME).read_text())  # the holder's record, left intact
        assert info["pid"] == holder.pid and "started" in info
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no cleanup runs
        holder.wait(timeout=30)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # a stale file stays
    with WorkdirLock(tmp_path) as lock:  # ... but the kernel dropped the lock with the process
        assert lock.locked
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_same_process_reacquire_after_release(tmp_path):
    lock = WorkdirLock(tmp_path / "new")  # the workdir is created
    lock.acquire()
    assert lock.locked
    with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
        WorkdirLock(tmp_path / "new").acquire()  # a second run in the same process is refused too
    lock.release()
    lock.release()  # idempotent
    assert not lock.locked
    with WorkdirLock(tmp_path / "new"):
        pass
    lock.acquire()
    lock.release()


def test_agree_makes_every_process_refuse(tmp_path):
    """Multi-process: process 0 takes the OS lock, the flags are agreed, all refuse together."""
    holder = _hold_lock(tmp_path)
    try:
        seen = []

        def agree(flags):  # process 1's view: process 0 found the lock busy
            seen.append(list(flags))
            return [True, False]

        with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
            WorkdirLock(tmp_path, primary=False, agree=agree).acquire()
        assert seen == [[False, False]]  # a non-primary process takes no lock, so it saw nothing
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # process 0 took the lock, but another process reports busy: process 0 lets go and refuses
    lock = WorkdirLock(tmp_path, agree=lambda flags: [True, False])
    with pytest.raises(WorkdirBusyError):
        lock.acquire()
    assert not lock.locked
    WorkdirLock(tmp_path).acquire().release()  # it was released
    # all agree it is free
    with WorkdirLock(tmp_path, agree=lambda flags: flags) as lock:
        assert lock.locked


def test_filesystem_without_flock_warns_once_and_continues(tmp_path, monkeypatch, caplog):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_lib.fcntl, "flock", no_flock)
    monkeypatch.setattr(workdir_lib, "_warned_unsupported", False)
    with caplog.at_level(logging.WARNING, logger="lbt"):
        with WorkdirLock(tmp_path / "a") as a:
            assert not a.locked
        with WorkdirLock(tmp_path / "b") as b:
            assert not b.locked
    warned = [r.getMessage() for r in caplog.records if r.name == "lbt"]
    assert len(warned) == 1 and "does not support file locks" in warned[0] and "unlocked" in warned[0]


def test_unexpected_lock_failure_is_a_clear_error(tmp_path, monkeypatch):
    def denied(fd, op):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(workdir_lib.fcntl, "flock", denied)
    with pytest.raises(CheckpointError, match="cannot lock the workdir"):
        WorkdirLock(tmp_path).acquire()


# ---------------------------------------------------------------------------------------------
# defect 4: finished runs

TOTAL = 2880
CONFIG = {"schedule": {"epochs": 2.0, "base_lr": 0.1}, "train": {"progress": False}}


def _fake_run(d: Path, examples_seen=TOTAL, steps=90, final_eval=True, checkpoints=(64, 90), config=CONFIG):
    d.mkdir(parents=True, exist_ok=True)
    summary = {"examples_seen": examples_seen, "optimizer_steps": steps, "final_eval_accuracy": 0.9}
    (d / "summary.json").write_text(json.dumps(summary))
    recs = [{"step": s, "examples_seen": 32 * s, "loss": 1.0} for s in range(1, steps + 1)]
    if final_eval:
        recs.append({"split": "test", "step": steps, "examples_seen": examples_seen, "accuracy": 0.9})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "config.json").write_text(json.dumps(config))
    for s in checkpoints:
        (d / "checkpoints" / str(s)).mkdir(parents=True, exist_ok=True)
    (d / "checkpoints" / "91.orbax-checkpoint-tmp-123").mkdir(parents=True, exist_ok=True)  # not a checkpoint
    return summary


def test_finished_summary_of_a_finished_run(tmp_path):
    summary = _fake_run(tmp_path)
    assert finished_summary(tmp_path, TOTAL) == summary
    assert finished_summary(tmp_path, TOTAL - 32) == summary
    assert finished_summary(tmp_path, TOTAL, config=CONFIG) == summary
    cosmetic = {"schedule": CONFIG["schedule"], "train": {"progress": True}}
    assert finished_summary(tmp_path, TOTAL, config=cosmetic) == summary
    assert finished_summary(tmp_path, TOTAL, agree=lambda flags: flags) == summary
    msg = workdir_lib.already_finished_message(tmp_path, summary)
    assert "already finished" in msg and "summary.json kept" in msg and "--allow_config_change" in msg
    assert str(tmp_path) in msg and "\n" not in msg


def test_finished_summary_without_checkpoints_is_still_finished(tmp_path):
    summary = _fake_run(tmp_path, checkpoints=())
    assert finished_summary(tmp_path, TOTAL) == summary


@pytest.mark.parametrize(
    "case",
    ["longer", "no_summary", "corrupt_summary", "not_a_dict", "no_final_eval", "newer_checkpoint", "older_newest",
     "config_changed", "no_metrics", "damaged_metrics", "other_process_disagrees"],
)  # fmt: skip
def test_finished_summary_is_none_when_not_finished(tmp_path, case):
    _fake_run(tmp_path)
    total, config, agree = TOTAL, None, None
    if case == "longer":
        total = TOTAL + 1
    elif case == "no_summary":
        (tmp_path / "summary.json").unlink()
    elif case == "corrupt_summary":
        (tmp_path / "summary.json").write_text('{"examples_seen": 28')
    elif case == "not_a_dict":
        (tmp_path / "summary.json").write_text("[2880]")
    elif case == "no_final_eval":
        _fake_run(tmp_path, final_eval=False)
    elif case == "newer_checkpoint":  # e.g. a longer run was started and killed
        (tmp_path / "checkpoints" / "120").mkdir()
    elif case == "older_newest":  # the final checkpoint is gone (quarantined as corrupt)
        (tmp_path / "checkpoints" / "90").rmdir()
    elif case == "config_changed":
        config = {"schedule": {"epochs": 2.0, "base_lr": 0.2}, "train": {"progress": False}}
    elif case == "no_metrics":
        (tmp_path / "metrics.jsonl").unlink()
    elif case == "damaged_metrics":
        (tmp_path / "metrics.jsonl").write_text('{"a": 1}\n{"b\n{"c": 2}\n')
    elif case == "other_process_disagrees":
        agree = lambda flags: [True]  # noqa: E731 - another process saw no finished run
    assert finished_summary(tmp_path, total, config=config, agree=agree) is None


def test_finished_summary_of_an_empty_or_missing_workdir(tmp_path):
    assert finished_summary(tmp_path, TOTAL) is None
    assert finished_summary(tmp_path / "missing", TOTAL) is None


# ---------------------------------------------------------------------------------------------
# End to end through the real CLI. These pass only after loop.py is wired (WorkdirLock around
# Trainer.run, finished_summary before the resume, write_json for summary.json).

OVERRIDES = [
    "--config.model.width=8",
    "--config.train.global_microbatch=32",
    "--config.schedule.global_batch=32",
    "--config.schedule.epochs=2.0",
    "--config.schedule.lr.milestones=(1.0,)",
    "--config.train.eval_every_epochs=1.0",
    "--config.train.log_every_steps=1",
    "--config.train.progress=false",
    "--config.checkpoint.every_examples=1000",
]


def _lbt_train(workdir: Path, *extra: str, env_extra=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(workdir), *OVERRIDES, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **(env_extra or {})),
        cwd=REPO,
    )


def _wait_for_step(workdir: Path, step: int, proc, timeout: float = 240.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        path = workdir / "metrics.jsonl"
        if path.exists() and any(r.get("step") == step and "loss" in r for r in read_jsonl(path)):
            return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"step {step} never logged")


def _finish(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


@pytest.mark.slow
def test_e2e_second_run_refuses_then_resume_after_kill_and_partial_line(tmp_path):
    """Defects 3 and 1: a second `lbt train` on a busy workdir refuses, naming the first; after
    a SIGKILL (stale lock) and a half-written last line the same command resumes and finishes."""
    a = _lbt_train(tmp_path, env_extra={"LBT_FAULT_PAUSE_AT_STEP": "40", "LBT_FAULT_PAUSE_S": "300"})
    try:
        _wait_for_step(tmp_path, 40, a)
        before = (tmp_path / "metrics.jsonl").read_bytes()
        rc, _, err = _finish(_lbt_train(tmp_path))
        assert rc == 3, err[-2000:]
        line = [ln for ln in err.splitlines() if "in use by another run" in ln]
        assert len(line) == 1 and f"pid {a.pid}" in line[0] and "lbt.cli train" in line[0], err[-2000:]
        assert (tmp_path / "metrics.jsonl").read_bytes() == before  # the refused run wrote nothing
        assert a.poll() is None  # and the first one is unharmed
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=30)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 41, "examples_seen": 13')  # killed mid-write
    rc, out, err = _finish(_lbt_train(tmp_path))
    assert rc == 0, err[-3000:]
    assert "resumed from" in err and "at step 32" in err and "partial last line" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed"] is True and summary["examples_seen"] >= 2 * 1438
    recs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r and "split" not in r]
    assert [r["step"] for r in recs] == list(range(1, summary["optimizer_steps"] + 1))  # no duplicates, no gaps


@pytest.mark.slow
def test_e2e_rerun_of_finished_run_keeps_results_and_extension_is_explicit(tmp_path):
    """Defect 4 (and 2: summary.json parses with allow_nan off)."""
    rc, out, err = _finish(_lbt_train(tmp_path))
    assert rc == 0, err[-3000:]
    summary_bytes = (tmp_path / "summary.json").read_bytes()
    summary = json.loads(summary_bytes, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    metrics_bytes = (tmp_path / "metrics.jsonl").read_bytes()

    rc, out, err = _finish(_lbt_train(tmp_path))  # the same command again
    assert rc == 0, err[-3000:]
    assert "already finished" in err and "summary.json kept" in err
    assert (tmp_path / "summary.json").read_bytes() == summary_bytes
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics_bytes
    assert json.loads(out.strip().splitlines()[-1]) == summary

    rc, _, err = _finish(_lbt_train(tmp_path, "--config.schedule.epochs=2.5"))  # longer: must be explicit
    assert rc == 3 and "schedule.epochs" in err and "--allow_config_change" in err, err[-3000:]
    assert (tmp_path / "summary.json").read_bytes() == summary_bytes

    rc, _, err = _finish(_lbt_train(tmp_path, "--config.schedule.epochs=2.5", "--allow_config_change"))
    assert rc == 0, err[-3000:]
    longer = json.loads((tmp_path / "summary.json").read_text())
    assert longer["resumed"] and longer["examples_seen"] >= 2.5 * 1438 > summary["examples_seen"]
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r["step"] for r in recs if "loss" in r and "split" not in r]
    assert steps == list(range(1, longer["optimizer_steps"] + 1))
    finals = [r["examples_seen"] for r in recs if r.get("split") == "test"]
    assert finals.count(summary["examples_seen"]) == 1 and finals[-1] == longer["examples_seen"]
