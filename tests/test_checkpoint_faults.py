"""Checkpoint faults that must end in one clear decision, the same on every process:

* a corrupt newest checkpoint on a 2-process resume (both fall back, nobody hangs);
* a failed async save (disk full) is reported at the next step boundary in one line;
* a changed model shape under ``--allow_config_change`` is refused as a config change, not
  treated as corruption (nothing is moved aside).
"""

import errno
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import portpicker
import pytest
from test_checkpoint import make_config

from lbt.errors import CheckpointError
from lbt.train.checkpoint import Checkpointer
from lbt.train.loop import Trainer
from lbt.train.metrics import read_jsonl

# A short digits run: 0.5 epochs (719 examples), B = 32 -> 64 at 0.25 epochs.
SHORT = ["--config.schedule.epochs=0.5", "--config.schedule.lr.milestones=(0.25,)"]


def step_dirs(workdir: Path) -> list[int]:
    return sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())


# ---------------------------------------------------------------------------------------------
# 1. A corrupt newest checkpoint on a 2-process resume

MP_OVERRIDES = [
    "--config.model.width=8",
    "--config.train.global_microbatch=32",
    "--config.model.ghost_batch_size=8",
    "--config.schedule.global_batch=32",
    "--config.schedule.base_lr=0.02",
    "--config.schedule.epochs=0.5",
    "--config.schedule.lr.milestones=(0.25,)",
    "--config.train.eval_every_epochs=0.5",
    "--config.train.progress=false",
    "--config.checkpoint.every_epochs=0.25",
]


def run_two_processes(workdir: Path, timeout: float = 150.0) -> list[tuple[int, str]]:
    """``lbt train`` in 2 processes x 4 CPU devices; kill both if they outlive ``timeout``."""
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            LBT_NUM_CPU_DEVICES="4",
            LBT_HEARTBEAT_TIMEOUT_S="30",
            JAX_PLATFORMS="cpu",
            PYTHONUNBUFFERED="1",
        )
        cmd = [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(workdir), *MP_OVERRIDES]
        cmd += ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            try:
                out, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                tails = [q.communicate()[0][-1500:] for q in procs]
                raise AssertionError(f"2-process run still running after {timeout:.0f}s (hung): {tails}") from None
            outs.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


@pytest.mark.slow
def test_two_process_resume_past_corrupt_newest_checkpoint(tmp_path):
    for rc, out in run_two_processes(tmp_path):
        assert rc == 0, out[-3000:]
    full = json.loads((tmp_path / "summary.json").read_text())
    steps = step_dirs(tmp_path)
    assert len(steps) == 2 and steps[-1] == full["optimizer_steps"]
    data = [f for f in (tmp_path / "checkpoints" / str(steps[-1]) / "state").rglob("*") if f.is_file()]
    data = [f for f in data if f.parent.name == "d"]
    assert data
    for f in data:  # truncate every data file of the newest step (which files hold which arrays varies)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    (tmp_path / "summary.json").unlink()

    outs = run_two_processes(tmp_path)  # resume: the same command
    for rc, out in outs:
        assert rc == 0, out[-3000:]
        assert "is corrupt or incomplete" in out and f"at step {steps[0]}" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed"] and summary["optimizer_steps"] == full["optimizer_steps"]
    assert summary["final_state_sha256"] == full["final_state_sha256"]
    assert step_dirs(tmp_path) == steps  # the final step was saved again
    assert len(list((tmp_path / "checkpoints_corrupt").iterdir())) == 1
    events = [r["event"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "event" in r]
    assert events == ["resume"]


# ---------------------------------------------------------------------------------------------
# 2. A failed async save (disk full)

# Saves every 200 examples of the SHORT run land at steps 7, 13 and 16 (the final one is 18).
EVERY_200 = SHORT + ["--config.checkpoint.every_examples=200"]


@pytest.fixture
def disk_full_from(monkeypatch):
    """``arm(step)``: every array write of a save at ``step`` or later fails with ENOSPC, in orbax's
    background commit, at its last Python layer before TensorStore (``async_serialize_from_host``)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.serialization import serialization

    state = {"from": None, "saving": None, "calls": []}
    write = serialization.async_serialize_from_host
    save = ocp.CheckpointManager.save
    in_progress = ocp.CheckpointManager.is_saving_in_progress

    async def failing_write(*args, **kwargs):
        if state["from"] is not None and state["saving"] >= state["from"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await write(*args, **kwargs)

    def settled_in_progress(self):
        # While a doomed save runs, let its background commit end before answering, so the step
        # that reports it does not depend on how loaded the machine is (CI has 2 slow cores).
        doomed = state["from"] is not None and state["saving"] >= state["from"]
        deadline = time.monotonic() + 60
        while doomed and in_progress(self) and time.monotonic() < deadline:
            time.sleep(0.01)
        return in_progress(self)

    def recording_save(self, step, *args, **kwargs):
        state["saving"] = step
        state["calls"].append(step)
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(serialization, "async_serialize_from_host", failing_write)
    monkeypatch.setattr(ocp.CheckpointManager, "save", recording_save)
    monkeypatch.setattr(ocp.CheckpointManager, "is_saving_in_progress", settled_in_progress)

    def arm(step):
        state["from"] = step
        return state

    return arm


def test_failed_async_save_is_reported_in_one_line_at_the_next_step(tmp_path, disk_full_from, caplog):
    """The loop calls ``Checkpointer.check`` after every step, so the failed save at step 13 stops
    the run before the next save (step 16), with one line; the checkpoint at step 7 survives."""
    faults = disk_full_from(13)
    config = make_config(EVERY_200)
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError) as e:
        Trainer(config, tmp_path).run()
    msg = str(e.value)
    assert "\n" not in msg
    assert "step 13" in msg and "No space left on device" in msg and str(tmp_path / "checkpoints" / "7") in msg
    # reported at the step boundary after the failure, not at the next save (step 16)
    assert faults["calls"] == [7, 13]
    assert max(r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r) < 16
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    # nothing good was deleted: step 7 is still there and restores
    assert step_dirs(tmp_path) == [7]
    ck = Checkpointer(tmp_path)
    try:
        _, meta = ck.restore_latest(Trainer(config, tmp_path).abstract_state())
    finally:
        ck.close()
    assert meta["step"] == 7


def test_check_is_non_blocking_and_reports_a_failed_save_once(tmp_path, disk_full_from):
    config = make_config(EVERY_200)
    trainer = Trainer(config, tmp_path)
    state = trainer._init_state()
    ck = Checkpointer(tmp_path)
    try:
        ck.save(1, state, {"examples_seen": 32, "step": 1})
        ck.wait()
        ck.check()  # nothing pending: returns at once
        disk_full_from(2)
        ck.save(2, state, {"examples_seen": 64, "step": 2})
        deadline = time.time() + 60
        with pytest.raises(CheckpointError, match=r"saving checkpoint step 2 failed .*No space left on device"):
            while time.time() < deadline:
                ck.check()
                time.sleep(0.01)
        ck.check()  # reported once
        assert ck.steps() == [1]
    finally:
        ck.close()


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
        capture_output=True,
    )
    return probe.returncode == 0


def _fill(directory: Path) -> None:
    """Write to ``directory`` until its filesystem is full."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def test_real_disk_full_during_a_save(tmp_path):
    """``lbt train`` with its checkpoints on a private 2 MiB tmpfs, which the test fills (through
    /proc/PID/root) as soon as the checkpoint at step 7 is committed: the save at step 13 fails."""
    ck = tmp_path / "checkpoints"
    if not _can_mount_tmpfs(ck):
        pytest.skip("cannot mount a tmpfs in a private mount namespace (needs unshare -m and CAP_SYS_ADMIN)")
    from test_checkpoint import OVERRIDES

    train = [sys.executable, "-m", "lbt.cli", "train", "--workdir", str(tmp_path), *OVERRIDES, *EVERY_200]
    script = f"mount -t tmpfs -o size=2m tmpfs {shlex.quote(str(ck))} && exec {shlex.join(train)}"
    p = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LBT_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu"),
    )
    try:
        deadline = time.time() + 240
        inside = Path(f"/proc/{p.pid}/root") / ck.relative_to("/")  # the tmpfs, seen from its namespace
        while not (inside / "7").is_dir():  # the save at step 7 is committed
            assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.01)
        _fill(inside)
        _, err = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 3, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err[-3000:]
    assert "No space left on device" in errors[0] and "step 13" in errors[0], errors
    assert str(ck / "7") in errors[0]
    assert max(r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r) < 16


# ---------------------------------------------------------------------------------------------
# 3. A changed model shape is a config change, not corruption


def test_changed_model_shape_is_refused_without_calling_checkpoints_corrupt(tmp_path, caplog):
    Trainer(make_config(EVERY_200), tmp_path).run()
    steps = step_dirs(tmp_path)
    assert steps == [13, 16, 18]
    wider = make_config(EVERY_200 + ["--config.model.width=16"])
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(CheckpointError) as e:
        Trainer(wider, tmp_path, allow_config_change=True).run()
    msg = str(e.value)
    assert "\n" not in msg and "shape" in msg
    assert "params.conv1.kernel" in msg and "(3, 3, 1, 8)" in msg and "(3, 3, 1, 16)" in msg, msg
    assert "--workdir" in msg and "original config" in msg
    assert step_dirs(tmp_path) == steps  # every checkpoint stays where it is
    assert not (tmp_path / "checkpoints_corrupt").exists()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("corrupt" in w for w in warned), warned
    assert len(warned) <= 2, warned
