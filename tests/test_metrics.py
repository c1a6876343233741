"""metrics.jsonl and summary.json survive interrupted writes: a partial last line (kill or full
disk mid-write) is dropped with one warning, a damaged middle line is a clear error, and
summary.json is always valid JSON (non-finite floats become null) written atomically."""

import json
import logging
import math
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lbt.errors import TrainingError
from lbt.testing.tb_events import tb_scalars
from lbt.train.metrics import MetricsWriter, read_jsonl

GOOD = [{"step": s, "examples_seen": 32 * s, "loss": 1.0 / s} for s in range(1, 6)]


def _metrics(tmp_path, tail: str = "", records=GOOD):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _warnings(caplog):
    return [r for r in caplog.records if r.name == "lbt" and r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------------------------
# defect 1: a partial last line


def test_partial_last_line_is_dropped_by_truncate_after(tmp_path, caplog):
    path = _metrics(tmp_path, tail='{"step": 6, "lo')  # a kill or full disk mid-write
    with caplog.at_level(logging.WARNING, logger="lbt"):
        w = MetricsWriter(tmp_path, tensorboard=False)
        w.truncate_after(3 * 32)  # the resume path: this raised JSONDecodeError
        w.write({"step": 4, "examples_seen": 128, "loss": 0.5})
        w.close()
    assert read_jsonl(path) == GOOD[:3] + [{"step": 4, "examples_seen": 128, "loss": 0.5}]
    assert path.read_text().endswith("\n") and "lo\n" not in path.read_text()
    warned = _warnings(caplog)
    assert len(warned) == 1 and "partial last line" in warned[0].getMessage()
    assert str(path) in warned[0].getMessage()


def test_partial_last_line_is_not_glued_to_the_next_record(tmp_path, caplog):
    """A fresh start (no checkpoint, so no truncate_after) must not append to the partial line."""
    path = _metrics(tmp_path, tail='{"step": 6, "lo')
    with caplog.at_level(logging.WARNING, logger="lbt"):
        w = MetricsWriter(tmp_path, tensorboard=False)
        w.write({"event": "start"})
        w.close()
    assert read_jsonl(path) == GOOD + [{"event": "start"}]
    assert len(_warnings(caplog)) == 1


def test_readers_tolerate_a_partial_last_line(tmp_path, caplog):
    path = _metrics(tmp_path, tail="\x00\x00\x00\n")  # zero-filled tail after a crash, newline or not
    with caplog.at_level(logging.WARNING, logger="lbt"):
        assert read_jsonl(path) == GOOD
    assert len(_warnings(caplog)) == 1
    _metrics(tmp_path, tail='{"step": 6')
    assert read_jsonl(path) == GOOD
    _metrics(tmp_path, tail="\n\n")  # blank lines are no records
    assert read_jsonl(path) == GOOD


def test_valid_last_record_without_newline_is_kept_and_terminated(tmp_path, caplog):
    """A complete JSON object is never the prefix of a longer record: keep it, and end the file
    with a newline before appending."""
    path = _metrics(tmp_path, records=GOOD[:4], tail=json.dumps(GOOD[4]))
    assert read_jsonl(path) == GOOD
    with caplog.at_level(logging.WARNING, logger="lbt"):
        w = MetricsWriter(tmp_path, tensorboard=False)
        w.write({"step": 6})
        w.close()
    assert read_jsonl(path) == GOOD + [{"step": 6}]
    assert not _warnings(caplog)


def test_damaged_middle_line_is_a_clear_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in GOOD]
    lines[2] = '{"step": 3, "lo'
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    with pytest.raises(TrainingError, match=r"metrics\.jsonl line 3: .*damaged") as e:
        read_jsonl(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    w = MetricsWriter(tmp_path, tensorboard=False)
    with pytest.raises(TrainingError, match="line 3"):
        w.truncate_after(64)
    w.close()
    assert path.read_bytes() == before  # nothing was changed


def test_truncate_after_keeps_events_past_the_cut(tmp_path):
    """Events after dropped records (a rewrite, not a cut) and a partial last line together."""
    event = {"event": "preempted", "step": 5, "examples_seen": 160}
    path = _metrics(tmp_path, records=GOOD + [event], tail='{"step": 6, "lo')
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.truncate_after(64)
    w.write({"step": 3, "examples_seen": 96})
    w.close()
    assert read_jsonl(path) == GOOD[:2] + [event, {"step": 3, "examples_seen": 96}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_metrics_records_keep_nan_as_string(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write({"step": 1, "loss": float("nan"), "grad_norm": np.float32("inf")})
    w.close()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": "nan", "grad_norm": "inf"}]


_DISK_FULL = textwrap.dedent(
    """
    import json, sys
    from lbt.errors import TrainingError
    from lbt.train.metrics import MetricsWriter, read_jsonl

    d = sys.argv[1]
    path = d + "/metrics.jsonl"
    # 1) our writer on a full disk: a clear error, and no partial record is left behind
    w = MetricsWriter(d, tensorboard=False)
    n = 0
    try:
        while True:
            n += 1
            w.write({"step": n, "examples_seen": 32 * n, "pad": "x" * 333})
    except TrainingError as e:
        assert "could not append" in str(e) and "No space left" in str(e), e
    w.close()
    raw = open(path, "rb").read()
    assert raw.endswith(b"\\n"), raw[-50:]
    recs = read_jsonl(path)
    assert [r["step"] for r in recs] == list(range(1, n)), (len(recs), n)
    # 2) a plain buffered writer (what lbt did) leaves a partial last line; resume must cope
    try:
        with open(path, "a") as f:
            f.write(json.dumps({"step": n, "pad": "y" * 100000}) + "\\n")
    except OSError:
        pass
    assert not open(path, "rb").read().endswith(b"\\n")
    w = MetricsWriter(d, tensorboard=False)
    w.truncate_after(32 * 10)
    w.close()
    assert [r["step"] for r in read_jsonl(path)] == list(range(1, 11))
    print("DISK-FULL-OK", n)
    """
)


@pytest.mark.skipif(
    not (sys.platform == "linux" and shutil.which("unshare") and shutil.which("mount")), reason="needs unshare"
)
def test_real_disk_full(tmp_path):
    """A real full disk: a 64 KiB tmpfs in a private mount namespace (needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(_DISK_FULL)
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m not permitted: {probe.stderr.decode().strip()}")
    cmd = f"mount -t tmpfs -o size=64k tmpfs '{mnt}' && exec '{sys.executable}' '{script}' '{mnt}'"
    p = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and "mount:" in p.stderr:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    assert p.returncode == 0 and "DISK-FULL-OK" in p.stdout, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------
# defect 2: summary.json is valid JSON


def test_json_safe_maps_nonfinite_to_none():
    from lbt.train.metrics import json_safe

    obj = {
        "loss": float("nan"),
        "x": [1.0, float("inf"), {"y": -math.inf, "z": np.float32("nan")}],
        "t": (np.float64(2.5), np.int64(3), np.array([1.0, np.nan])),
        "ok": True,
        "s": "nan",
        "n": None,
    }
    assert json_safe(obj) == {
        "loss": None,
        "x": [1.0, None, {"y": None, "z": None}],
        "t": [2.5, 3, [1.0, None]],
        "ok": True,
        "s": "nan",
        "n": None,
    }
    assert type(json_safe({"i": np.int64(3)})["i"]) is int


def test_write_json_is_valid_json_and_atomic(tmp_path, monkeypatch):
    from lbt.train import metrics as metrics_lib

    path = tmp_path / "summary.json"
    summary = {"final_eval_loss": float("nan"), "final_eval_accuracy": 0.5, "wall_s": float("inf")}
    metrics_lib.write_json(path, summary)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"final_eval_loss": None, "final_eval_accuracy": 0.5, "wall_s": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp file left

    # a failure while writing leaves the old file intact (and no temp file)
    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics_lib.os, "fsync", boom)
    with pytest.raises(OSError):
        metrics_lib.write_json(path, {"other": 1})
    assert json.loads(path.read_text())["final_eval_accuracy"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# ---------------------------------------------------------------------------------------------
# TensorBoard: one event per record, with every number of the record


def test_tensorboard_gets_each_records_numbers_as_one_event(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write({"step": 1, "examples_seen": 32, "loss": 2.5, "lr": 0.1, "phase": "a", "ok": True}, tb_step=32)
    w.write({"split": "test", "step": 1, "accuracy": 0.75}, tb_step=32, prefix="eval/")
    w.write({"step": 2, "loss": 1.25}, tb_step=None)  # JSONL only
    w.close()
    events = tb_scalars(tmp_path / "tb")
    # strings, booleans and examples_seen (the TB step itself) are not scalars
    assert events == [
        (32, {"step": 1.0, "loss": 2.5, "lr": pytest.approx(0.1)}),
        (32, {"eval/step": 1.0, "eval/accuracy": 0.75}),
    ]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 1, 2]


def test_periodic_flush_keeps_the_newest_step_pending(tmp_path):
    """flush(keep=1) reads and writes every step but the one just dispatched (so the host never
    waits for it); flush() writes the rest; a non-finite step drops the ones after it."""
    import jax.numpy as jnp

    from lbt.train.metrics import PendingMetrics

    w = MetricsWriter(tmp_path, tensorboard=False)
    pending = PendingMetrics(w, lookahead=0, on_read=lambda: {"examples_per_s": 1.0})

    def dev(loss, finite=True):
        return {"loss": jnp.float32(loss), "grad_norm": jnp.float32(2 * loss), "finite": jnp.bool_(finite)}

    for s in (1, 2, 3):
        pending.add({"step": s, "examples_seen": 32 * s, "global_batch": 32, "lr": 0.1}, dev(s / 4))
    assert pending.flush(keep=1) is None
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2] and len(pending) == 1
    pending.add({"step": 4, "examples_seen": 128, "global_batch": 32, "lr": 0.1}, dev(np.nan, finite=False))
    pending.add({"step": 5, "examples_seen": 160, "global_batch": 32, "lr": 0.1}, dev(1.0))
    bad = pending.flush(keep=0)
    assert bad["step"] == 4 and bad["skipped_nonfinite"] and len(pending) == 0
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["loss"] == 0.75 and records[2]["grad_norm"] == 1.5 and records[2]["examples_per_s"] == 1.0
    assert pending.flush(keep=1) is None and len(pending) == 0  # nothing pending: a no-op
    w.close()


def test_tensorboard_gets_every_log_step_the_end_of_a_full_flush_and_nonfinite_steps(tmp_path):
    """metrics.jsonl has every step; TensorBoard every tb_every-th, the last of a full flush
    (eval, save, end) and any non-finite step."""
    import jax.numpy as jnp

    from lbt.train.metrics import PendingMetrics

    w = MetricsWriter(tmp_path)
    pending = PendingMetrics(w, lookahead=0, tb_every=3)

    def add(step, finite=True):
        dev = {"loss": jnp.float32(step), "grad_norm": jnp.float32(1.0), "finite": jnp.bool_(finite)}
        pending.add({"step": step, "examples_seen": 10 * step, "global_batch": 10, "lr": 0.1}, dev)

    for step in range(1, 8):
        add(step)
    pending.flush(keep=1)  # steps 1..6; 7 stays pending
    pending.flush()  # step 7: the end of a full flush
    for step in (8, 9):
        add(step, finite=step != 8)
    assert pending.flush()["step"] == 8
    w.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 9))
    events = [(tb_step, v["train/step"], v["train/loss"]) for tb_step, v in tb_scalars(tmp_path / "tb")]
    assert events == [(30, 3.0, 3.0), (60, 6.0, 6.0), (70, 7.0, 7.0), (80, 8.0, 8.0)]


def test_write_many_is_one_append_in_order_and_a_failed_one_removes_all_of_it(tmp_path, monkeypatch):
    """A metrics flush's records (and their events) go out in one ``os.write``, in order, TensorBoard
    only for the entries with a step; a write that fails half-way leaves the file as it was."""
    import errno
    import os as os_module

    import lbt.train.metrics as metrics_module

    w = MetricsWriter(tmp_path)
    w.write({"step": 0, "examples_seen": 0})
    calls = []
    real_write = os_module.write

    def counting(fd, data):
        calls.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(metrics_module.os, "write", counting)
    entries = [({"step": 1, "examples_seen": 10, "loss": 0.5}, 10, "train/"), ({"event": "x", "step": 1}, None, "")]
    entries.append(({"step": 2, "examples_seen": 20, "loss": 0.25}, None, "train/"))
    w.write_many(entries)
    assert len(calls) == 1
    path = tmp_path / "metrics.jsonl"
    assert [r.get("event", r["step"]) for r in read_jsonl(path)] == [0, 1, "x", 2]
    before = path.read_bytes()

    def half_then_full(fd, data):
        if len(data) > 8:
            real_write(fd, bytes(data[: len(data) // 2]))
            return len(data) // 2
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics_module.os, "write", half_then_full)
    with pytest.raises(TrainingError, match="could not append"):
        w.write_many([({"step": 3, "examples_seen": 30, "pad": "x" * 50}, 30, "train/")] * 3)
    assert path.read_bytes() == before
    monkeypatch.setattr(metrics_module.os, "write", real_write)
    w.close()
    assert [(s, v["train/loss"]) for s, v in tb_scalars(tmp_path / "tb")] == [(10, 0.5)]
