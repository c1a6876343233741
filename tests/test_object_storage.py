"""Workdirs on object storage (``gs://``), through etils.epath on a fake bucket in a local
directory that refuses appends (lbt.testing.fake_gcs). Real GCS is not reached from tests."""

import json
import logging
from pathlib import Path

import jax
import pytest

from lbt import cli, storage
from lbt.config import apply_override, base_config
from lbt.testing.fake_gcs import fake_gcs
from lbt.testing.tb_events import tb_scalars
from lbt.train import checkpoint as checkpoint_mod
from lbt.train.metrics import MetricsWriter, ObjectMetricsWriter, metrics_writer, read_jsonl, write_json
from lbt.train.workdir import WorkdirLock

RUN = "gs://bucket/runs/r1"


def _records():
    yield {"step": 1, "examples_seen": 32, "loss": 2.5, "lr": 0.1, "phase": "a"}, 32, "train/"
    yield {"split": "test", "step": 1, "examples_seen": 32, "accuracy": 0.5}, 32, "eval/"
    yield {"event": "resume", "step": 1, "examples_seen": 32}, None, ""
    yield {"step": 2, "examples_seen": 64, "loss": float("nan"), "lr": 0.1}, 64, "train/"
    yield {"step": 3, "examples_seen": 96, "loss": 1.0, "lr": 0.1}, 96, "train/"


def test_object_writer_writes_what_the_local_writer_writes_without_appending(tmp_path):
    local = MetricsWriter(tmp_path / "local")
    with fake_gcs(tmp_path / "gcs") as store:
        remote = metrics_writer(RUN)
        assert isinstance(remote, ObjectMetricsWriter)
        obj = Path(store.local(RUN + "/metrics.jsonl"))
        for rec, tb_step, prefix in _records():
            local.write(dict(rec), tb_step=tb_step, prefix=prefix)
            remote.write(dict(rec), tb_step=tb_step, prefix=prefix)
        assert not obj.exists()  # buffered until a sync
        remote.sync()
        assert obj.read_bytes() == (tmp_path / "local" / "metrics.jsonl").read_bytes()
        local.truncate_after(32)  # a resume to examples_seen 32 keeps the events
        remote.truncate_after(32)
        assert obj.read_bytes() == (tmp_path / "local" / "metrics.jsonl").read_bytes()
        assert [r.get("event", r.get("step")) for r in read_jsonl(RUN + "/metrics.jsonl")] == [1, 1, "resume"]
        local.close()
        remote.close()
        assert tb_scalars(Path(store.local(RUN + "/tb"))) == tb_scalars(tmp_path / "local" / "tb")
        assert len(tb_scalars(tmp_path / "local" / "tb")) == 4
        assert all(mode in ("rb", "wb") for _, mode in store.opened)


def test_object_writer_drops_a_partial_last_line_and_syncs_on_its_clock(tmp_path, caplog):
    with fake_gcs(tmp_path) as store:
        storage.as_path(RUN).mkdir(parents=True)
        obj = Path(store.local(RUN + "/metrics.jsonl"))
        obj.write_bytes(b'{"step": 1, "examples_seen": 32}\n{"step": 2, "exam')  # a write cut off
        with caplog.at_level(logging.WARNING, logger="lbt"):
            w = ObjectMetricsWriter(RUN, tensorboard=False, sync_every_s=0.0)  # every write syncs
        assert "dropped a partial last line (line 2" in caplog.text
        assert obj.read_bytes() == b'{"step": 1, "examples_seen": 32}\n'
        w.write({"step": 2, "examples_seen": 64})
        assert [r["step"] for r in read_jsonl(RUN + "/metrics.jsonl")] == [1, 2]
        w.close()


def test_json_files_are_one_object_write(tmp_path):
    with fake_gcs(tmp_path) as store:
        storage.as_path(RUN).mkdir(parents=True)
        write_json(RUN + "/summary.json", {"final_eval_loss": float("nan"), "optimizer_steps": 3})
        assert json.loads(storage.as_path(RUN + "/summary.json").read_text()) == {
            "final_eval_loss": None,
            "optimizer_steps": 3,
        }
        assert [p.name for p in storage.as_path(RUN).iterdir()] == ["summary.json"]  # no temp object
        assert store.opened[0] == (RUN + "/summary.json", "wb")


def test_no_lock_on_object_storage_one_warning(tmp_path, caplog):
    with fake_gcs(tmp_path), caplog.at_level(logging.WARNING, logger="lbt"):
        with WorkdirLock(RUN) as a, WorkdirLock(RUN) as b:  # the documented limit: not refused
            assert not a.locked and not b.locked
        assert caplog.text.count("is on object storage, which has no file locks") == 2
        assert not storage.as_path(RUN + "/.lbt.lock").exists()
    with WorkdirLock(tmp_path / "local") as lock:  # local workdirs are locked as before
        assert lock.locked


def test_workdir_urls_on_the_command_line(tmp_path, capsys):
    with fake_gcs(tmp_path / "gcs"):
        cli.check_workdir(RUN)  # writes and deletes a probe object
        assert list(storage.as_path(RUN).iterdir()) == []
    (tmp_path / "file").write_text("")
    with fake_gcs(tmp_path / "file" / "gcs"), pytest.raises(cli.runtime.SetupError) as e:
        cli.check_workdir(RUN)  # the "bucket" cannot be written
    assert str(e.value).startswith(f"--workdir {RUN!r}: cannot write there (")
    for cmd in ("train", "eval"):
        assert cli.main([cmd, "--workdir", "http://host/run"]) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith("lbt: error: --workdir 'http://host/run': http:// is not supported;")
            and err.count("\n") == 1
        )


@pytest.mark.slow
def test_train_rerun_and_evaluate_on_a_gs_workdir(tmp_path, monkeypatch, caplog):
    """A whole run on gs://: metrics, TensorBoard, config, summary and curves go through epath
    (the fake refuses appends); orbax's TensorStore writes go to the fake's directory (TensorStore
    has its own GCS driver, not epath). Rerunning finds the run finished; eval and load work."""
    import lbt
    from lbt.train.loop import Trainer
    from lbt.train.trained import evaluate_checkpoint

    c = base_config()
    for o in [
        "--config.model.width=8",
        "--config.train.global_microbatch=32",
        "--config.model.ghost_batch_size=4",
        "--config.schedule.global_batch=64",
        "--config.schedule.epochs=1.0",
        "--config.schedule.lr.milestones=(0.5,)",
        "--config.train.log_every_steps=5",
        "--config.train.eval_every_epochs=0",
        "--config.checkpoint.every_epochs=0.5",
        "--config.train.progress=false",
    ]:
        apply_override(c, o)
    with fake_gcs(tmp_path) as store:
        local = Path(store.local(RUN))
        monkeypatch.setattr(checkpoint_mod, "checkpoint_dir", lambda wd: Path(store.local(str(wd))) / "checkpoints")
        with caplog.at_level(logging.WARNING, logger="lbt"):
            summary = Trainer(c, RUN).run()
        assert "no file locks" in caplog.text
        names = sorted(p.name for p in local.iterdir())
        assert names == ["checkpoints", "config.json", "curves.png", "metrics.jsonl", "summary.json", "tb"]
        assert json.loads((local / "summary.json").read_text()) == json.loads(json.dumps(summary))
        records = read_jsonl(RUN + "/metrics.jsonl")
        steps = [r["step"] for r in records if "split" not in r and "event" not in r]
        assert steps == list(range(1, summary["optimizer_steps"] + 1))  # every step once, in order
        assert [r["accuracy"] for r in records if r.get("split") == "test"] == [summary["final_eval_accuracy"]]
        assert tb_scalars(local / "tb")[-1][1]["eval/accuracy"] == pytest.approx(summary["final_eval_accuracy"])
        assert all("a" not in mode and "+" not in mode for _, mode in store.opened)

        before = (local / "metrics.jsonl").read_bytes()
        assert Trainer(c, RUN).run() == summary  # finished: nothing trained or written
        assert (local / "metrics.jsonl").read_bytes() == before

        record = evaluate_checkpoint(RUN, devices=jax.devices()[:2])
        assert record["accuracy"] == summary["final_eval_accuracy"] and record["devices"] == 2
        stored = json.loads(storage.as_path(f"{RUN}/eval_step{summary['optimizer_steps']}_test.json").read_text())
        assert stored == record
        model, variables, config = lbt.load(RUN, devices=jax.devices()[:1])
        assert config.schedule.global_batch == 64 and set(variables) == {"params", "batch_stats"}
