"""Using a trained run: ``lbt eval`` and ``lbt.load`` (lbt.train.trained).

The round trip trains on 8 devices, evaluates with ``lbt eval`` (8 devices) and on 2 devices
(``evaluate_checkpoint(..., devices=jax.devices()[:2])``, and ``lbt.load(..., devices=...)``
with a hand-written eval), and gets the training run's own eval accuracy back each time. The bad inputs are one line and exit 2 before JAX
does any work.
"""

import json

import jax
import numpy as np
import pytest

import lbt
from lbt import cli
from lbt.config import apply_override, base_config
from lbt.data.registry import load_splits
from lbt.train.loop import Trainer
from lbt.train.metrics import read_jsonl
from lbt.train.trained import evaluate_checkpoint

# digits, M = 32; B = 64 for half an epoch (12 steps), then 128 (6 steps); an eval and a
# checkpoint at the first step past each half epoch.
OVERRIDES = [
    "--config.model.width=8",
    "--config.train.global_microbatch=32",
    "--config.model.ghost_batch_size=4",
    "--config.schedule.global_batch=64",
    "--config.schedule.epochs=1.0",
    "--config.schedule.lr.milestones=(0.5,)",
    "--config.train.eval_every_epochs=0.5",
    "--config.checkpoint.every_epochs=0.5",
    "--config.train.log_every_steps=5",
    "--config.train.progress=false",
]


def make_config():
    c = base_config()
    for o in OVERRIDES:
        apply_override(c, o)
    return c


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lbt: error: "), err
    return lines[0]


def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    rc, _, err = run_cli(capsys, "eval", "--workdir", str(missing))
    assert rc == 2 and "--workdir" in one_error_line(err) and "no such directory" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli(capsys, "eval", "--workdir", str(empty))
    assert rc == 2 and "not an lbt workdir" in one_error_line(err)

    (empty / "config.json").write_text("{}")
    rc, _, err = run_cli(capsys, "eval", "--workdir", str(empty))
    assert rc == 2 and "has no checkpoints" in one_error_line(err)

    for step in (32, 54):
        (empty / "checkpoints" / str(step)).mkdir(parents=True)
    (empty / "checkpoints" / "60.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save is not a checkpoint
    rc, _, err = run_cli(capsys, "eval", "--workdir", str(empty), "--step", "60")
    line = one_error_line(err)
    assert rc == 2 and line.startswith("lbt: error: --step 60: no checkpoint at step 60") and "32, 54" in line

    rc, _, err = run_cli(capsys, "eval", "--workdir", str(empty), "--split", "validation")
    assert rc == 2 and one_error_line(err).startswith("lbt: error: --split: invalid choice: 'validation'")
    rc, _, err = run_cli(capsys, "eval", "--workdir", str(empty), "--step", "last")
    assert rc == 2 and one_error_line(err).startswith("lbt: error: --step: invalid int value")
    rc, _, err = run_cli(capsys, "eval")
    assert rc == 2 and "--workdir" in one_error_line(err)
    with pytest.raises(lbt.runtime.SetupError, match="--step 7: no checkpoint at step 7"):
        lbt.load(empty, step=7)


def _accuracy_by_hand(model, variables, config) -> float:
    """The test accuracy from ``model.apply`` alone, the whole split in one batch on the
    devices that hold ``variables``."""
    test = load_splits(config).test
    idx = np.arange(len(test))
    images, labels = test.get(idx, idx, False)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


@pytest.mark.slow
def test_train_on_8_devices_evaluate_and_load_on_2(tmp_path, capsys):
    wd = tmp_path / "run"
    summary = Trainer(make_config(), wd).run()
    assert summary["devices"] == 8 and summary["final_eval_accuracy"] > 0.3
    final = summary["optimizer_steps"]
    evals = {r["step"]: r for r in read_jsonl(wd / "metrics.jsonl") if r.get("split") == "test"}
    steps = sorted(int(p.name) for p in (wd / "checkpoints").iterdir())
    assert steps[-1] == final and steps[0] in evals  # the half-epoch checkpoint was also evaluated

    # lbt eval (the CLI, on this process's 8 devices): one JSON line, also written beside the run
    assert cli.main(["eval", "--workdir", str(wd)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["devices"] == 8 and record["step"] == final and record["count"] == 359
    assert record["accuracy"] == summary["final_eval_accuracy"]
    assert json.loads((wd / f"eval_step{final}_test.json").read_text()) == record

    # on 2 devices: the same accuracy (the loss up to the float32 order of the sums)
    two = evaluate_checkpoint(wd, devices=jax.devices()[:2])
    assert two["devices"] == 2 and two["step"] == final
    assert two["accuracy"] == summary["final_eval_accuracy"]
    assert two["loss"] == pytest.approx(summary["final_eval_loss"], rel=1e-5)

    # an earlier step, in-process on 2 devices: that step's eval during training
    early = evaluate_checkpoint(wd, step=steps[0], devices=jax.devices()[:2])
    assert early["step"] == steps[0] and early["accuracy"] == evals[steps[0]]["accuracy"]
    assert (wd / f"eval_step{steps[0]}_test.json").exists()

    # lbt.load on 2 devices and model.apply by hand
    model, variables, config = lbt.load(wd, devices=jax.devices()[:2])
    assert config.name == "digits" and config.schedule.lr.milestones == (0.5,)
    assert set(variables) == {"params", "batch_stats"}
    assert all(len(a.sharding.device_set) == 2 for a in jax.tree.leaves(variables))
    assert _accuracy_by_hand(model, variables, config) == summary["final_eval_accuracy"]
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == [str(s) for s in steps]  # nothing moved

    # a corrupt newest checkpoint: the newest good one is evaluated instead, nothing is moved
    # (read-only); asked for by --step, it is one line and exit 3
    latest = wd / "checkpoints" / str(final)
    for f in (latest / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    fallback = evaluate_checkpoint(wd, devices=jax.devices()[:2])
    assert fallback["step"] == steps[0] and fallback["accuracy"] == evals[steps[0]]["accuracy"]
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == [str(s) for s in steps]
    assert not (wd / "checkpoints_corrupt").exists()
    assert cli.main(["eval", "--workdir", str(wd), "--step", str(final)]) == 3
    line = one_error_line(capsys.readouterr().err)
    assert f"no usable checkpoint in {wd / 'checkpoints'}" in line and str(latest) in line
