"""``lbt lr-range-test`` (Smith 2017, section 3.3): the range_test LR schedule, the recommendation
checked against a least-squares problem with a known divergence point, the outputs, the flags,
and one small real run on digits."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from lbt import cli
from lbt.config import load_config, validate
from lbt.errors import ConfigError
from lbt.schedules import lr as lr_lib
from lbt.schedules.plan import make_plan
from lbt.tools import lr_range

N_DIGITS = 1438


# ---------------------------------------------------------------------------------------------
# The schedule


def test_range_test_schedule_endpoints_and_shape():
    lin = [lr_lib.range_test(i, 0.01, 1.0, 9, "linear") for i in range(12)]
    assert lin[0] == 0.01 and lin[9] == pytest.approx(1.0) and lin[10] == lin[11] == pytest.approx(1.0)
    assert np.allclose(np.diff(lin[:10]), 0.11)
    exp = [lr_lib.range_test(i, 0.01, 1.0, 4, "exp") for i in range(5)]
    assert exp == pytest.approx([0.01, 0.01 * 10**0.5, 0.1, 0.1 * 10**0.5, 1.0])
    with pytest.raises(ValueError, match="range-test mode"):
        lr_lib.range_test(0, 0.01, 1.0, 4, "cubic")


def test_range_config_runs_the_ramp_through_the_plan():
    """The tool's config: B constant at B0, LR from min_lr at step 1 to max_lr at step `steps`;
    a shorter chunk (run_steps) has the same LR at every step it has."""
    base = load_config(None)  # digits: increase_batch with milestones; the test must not grow B
    full = lr_range.range_config(base, min_lr=1e-3, max_lr=10.0, steps=50, mode="exp", run_steps=50)
    plan = validate(full, num_devices=8, num_train=N_DIGITS)
    pts = [p for _, _, p in plan.steps()]
    assert plan.total_steps() == 50 and {p.global_batch for p in pts} == {64}
    lrs = np.array([p.lr for p in pts])
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(10.0)
    assert np.allclose(np.diff(np.log(lrs)), np.log(1e4) / 49)
    chunk = lr_range.range_config(base, min_lr=1e-3, max_lr=10.0, steps=50, mode="exp", run_steps=20)
    part = make_plan(chunk, N_DIGITS)
    assert part.total_steps() == 20 and [p.lr for _, _, p in part.steps()] == pytest.approx(lrs[:20].tolist())
    assert base.schedule.lr.name == "step"  # not mutated


def test_range_test_schedule_validation_names_the_field():
    c = lr_range.range_config(load_config(None), min_lr=0.1, max_lr=1.0, steps=10, mode="linear", run_steps=10)
    with c.unlocked():
        c.schedule.lr.max_lr = 0.05
    with pytest.raises(ConfigError, match=r"schedule\.lr\.max_lr"):
        make_plan(c, N_DIGITS)
    with c.unlocked():
        c.schedule.lr.max_lr, c.schedule.lr.range_mode = 1.0, "cubic"
    with pytest.raises(ConfigError, match=r"schedule\.lr\.range_mode"):
        make_plan(c, N_DIGITS)
    with c.unlocked():
        c.schedule.lr.range_mode, c.schedule.batch.mode = "linear", "increase_batch"
    with pytest.raises(ConfigError, match=r"schedule\.batch\.mode"):
        make_plan(c, N_DIGITS)


# ---------------------------------------------------------------------------------------------
# The recommendation against a known answer


def least_squares_range_test(mode: str, *, steps: int = 200, seed: int = 0, max_lr: float = 10.0, sigma: float = 0.01):
    """A range test on least squares f(w) = |Aw - b|^2 / (2n), whose Hessian H = A^T A / n has the
    known eigenvalues λ (λ_max = 1). Full-batch gradient descent plus gradient noise of std sigma
    (the noisy quadratic model): the iterates stay bounded iff lr < 2 / λ_max = 2.
    Returns (lr, loss, divergence LR)."""
    rng = np.random.default_rng(seed)
    d, n = 20, 200
    lam = np.geomspace(0.01, 1.0, d)
    q, _ = np.linalg.qr(rng.normal(size=(n, d)))
    A = q * np.sqrt(n * lam)  # A^T A / n = diag(λ)
    w_star = rng.normal(size=d)
    b = A @ w_star
    H = A.T @ A / n
    assert np.allclose(np.linalg.eigvalsh(H), lam)
    w = w_star + rng.normal(size=d)
    lrs = np.array([lr_lib.range_test(i, 1e-3, max_lr, steps - 1, mode) for i in range(steps)])
    losses = []
    for lr in lrs:
        r = A @ w - b
        losses.append(float(r @ r / (2 * n)))
        w = w - lr * (A.T @ r / n + sigma * rng.normal(size=d))
    return lrs, np.array(losses), 2.0 / lam.max()


@pytest.mark.parametrize("mode, max_lr", [("linear", 4.0), ("exp", 10.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recommendation_below_the_known_divergence_point(mode, max_lr, seed):
    """max_lr falls below 2/λ_max and within a factor of 3 of it; the early stop fires after the
    divergence point, within a factor of 2.5 of it (the smoothing lags a few steps)."""
    lrs, loss, edge = least_squares_range_test(mode, seed=seed, max_lr=max_lr)
    rec = lr_range.recommend(lrs, loss)
    assert edge / 3 <= rec.max_lr < edge
    assert rec.min_lr == pytest.approx(rec.max_lr / 4)
    assert rec.steepest_lr <= rec.min_loss_lr and rec.max_lr <= rec.min_loss_lr
    assert rec.stop_index is not None and rec.stop_index < len(lrs) - 1  # the early stop fired
    assert edge < rec.stop_lr < 2.5 * edge
    assert rec.notes == ()


def test_no_divergence_is_noted():
    lrs, loss, edge = least_squares_range_test("exp", max_lr=1.0)  # never reaches 2/λ_max
    rec = lr_range.recommend(lrs, loss)
    assert rec.stop_index is None and rec.max_lr < edge
    assert "did not diverge" in rec.notes[0] and "--max_lr" in rec.notes[0]


def test_divergence_index_and_smoothing():
    loss = [2.0, 1.0, 0.5, 0.5, 0.5, 4.0, 40.0, 400.0]
    s = lr_range.smooth_log_loss(loss, beta=0.0)  # no smoothing: exactly log(loss)
    assert np.allclose(s, np.log(loss))
    assert lr_range.divergence_index(s, 4.0) == 5  # 4.0 > 4 x 0.5 ... first at 8x
    assert lr_range.divergence_index(s, 10.0) == 6
    nan = lr_range.smooth_log_loss([1.0, 0.9, float("nan"), 0.5], beta=0.9)
    assert np.isfinite(nan[:2]).all() and np.isinf(nan[2:]).all()
    assert lr_range.divergence_index(nan, 4.0) == 2
    assert lr_range.divergence_index(lr_range.smooth_log_loss([1.0, 0.9, 0.8]), 4.0) is None


def test_recommend_errors_name_the_flag():
    lrs = np.geomspace(1e-3, 1.0, 50)
    with pytest.raises(ConfigError, match=r"^--min_lr: the loss diverged"):
        lr_range.recommend(lrs, 10.0 ** np.arange(50.0))
    with pytest.raises(ConfigError, match=r"^--max_lr: the smoothed loss did not fall"):
        lr_range.recommend(lrs, np.full(50, 2.3))


# ---------------------------------------------------------------------------------------------
# Outputs


def _synthetic_run() -> lr_range.RangeRun:
    lrs, loss, _ = least_squares_range_test("exp")
    steps = np.arange(1, len(lrs) + 1)
    evals = {int(s): (min(1.0, 0.1 + s / 150), float(loss[s - 1])) for s in steps[19::20]}
    return lr_range.RangeRun(step=steps, lr=lrs, loss=loss, evals=evals, stop_reason="diverged")


def test_csv_plot_and_commands(tmp_path):
    data = _synthetic_run()
    rec = lr_range.recommend(data.lr, data.loss)
    path = lr_range.write_csv(data, tmp_path / "lr_range.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss", "test_accuracy", "test_loss"]
    assert len(rows) == len(data.step) and rows[19]["test_accuracy"] != "" and rows[0]["test_accuracy"] == ""
    assert float(rows[-1]["lr"]) == pytest.approx(data.lr[-1], rel=1e-5)
    png = lr_range.plot_range(data, rec, tmp_path / "lr_range.png", mode="exp", title="synthetic")
    assert png.stat().st_size > 10_000
    assert lr_range.plot_range(data, None, tmp_path / "none.png", mode="linear", title="t").is_file()

    config = load_config(None, ["--config.model.width=8"])
    cmds = lr_range.train_commands(
        rec, config, N_DIGITS, config_path="configs/digits.py", overrides=["--config.model.width=8"], min_div=4.0
    )
    for name in ("triangular", "onecycle"):
        argv = cmds[name].split()
        assert argv[:4] == ["lbt", "train", "--config", "configs/digits.py"] and "--config.model.width=8" in argv
        trained = load_config(argv[3], [a for a in argv if a.startswith("--config.")])
        plan = validate(trained, num_devices=8, num_train=N_DIGITS)
        assert trained.schedule.lr.name == name and plan.mode == "decay_lr" and trained.model.width == 8
        lrs = [p.lr for _, _, p in plan.steps()]
        assert max(lrs) == pytest.approx(rec.max_lr, rel=1e-3)
        assert min(lrs[:10]) == pytest.approx(rec.min_lr, rel=1e-3)
    # digits: 30 epochs at B=64 is 674 steps; 3 cycles of half-cycle 113 steps (about 5 epochs)
    assert cmds["clr_cycles"] == "3" and "--config.schedule.lr.step_size=113" in cmds["triangular"]


# ---------------------------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--min_lr", "0"], "--min_lr"),
        (["--min_lr", "0.1", "--max_lr", "0.01"], "--max_lr"),
        (["--steps", "2"], "--steps"),
        (["--steps", "10", "--eval_every", "11"], "--eval_every"),
        (["--eval_every", "0"], "--eval_every"),
        (["--stop_factor", "1"], "--stop_factor"),
        (["--smoothing", "1"], "--smoothing"),
        (["--min_div", "1"], "--min_div"),
        (["--mode", "cubic"], "--mode"),
        (["--steps", "ten"], "--steps"),
        (["--bogus", "1"], "--bogus: not a flag of lbt lr-range-test"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, flag, tmp_path, capsys):
    assert cli.main(["lr-range-test", "--workdir", str(tmp_path), *flags]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lbt: error: {flag}"), err


def test_bad_config_field_and_earlier_run_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["lr-range-test", "--workdir", str(tmp_path), "--config.model.widht=8"]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.strip().startswith("lbt: error: config.model.widht: unknown key")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert cli.main(["lr-range-test", "--workdir", str(tmp_path)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith("lbt: error: --workdir: ") and "--overwrite" in err
    (tmp_path / "file").write_text("")
    assert cli.main(["lr-range-test", "--workdir", str(tmp_path / "file")]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.strip().startswith("lbt: error: --workdir: cannot create")


# ---------------------------------------------------------------------------------------------
# A real run


@pytest.mark.slow
def test_digits_range_test_end_to_end(tmp_path, repo):
    """`lbt lr-range-test` on digits (width 8, 1 device): 40 steps from 0.05 to 1000 (exp) in chunks
    of 10; the early stop fires before the end, and the CSV, plot and recommendation are written."""
    work = tmp_path / "lrr"
    cmd = [sys.executable, "-m", "lbt.cli", "lr-range-test", "--workdir", str(work), "--mode", "exp"]
    cmd += ["--min_lr", "0.05", "--max_lr", "1000", "--steps", "40", "--eval_every", "10", "--num_cpu_devices", "1"]
    cmd += ["--config.model.width=8", "--config.train.global_microbatch=32", "--config.schedule.global_batch=32"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((work / "lr_range.csv").open()))
    assert 20 <= len(rows) < 40 and len(rows) % 10 == 0  # stopped early, at the end of a chunk
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == pytest.approx([lr_lib.range_test(i, 0.05, 1000.0, 39, "exp") for i in range(len(rows))], rel=1e-5)
    evals = [r for r in rows if r["test_accuracy"]]
    assert [int(r["step"]) for r in evals] == list(range(10, len(rows) + 1, 10))  # one eval per chunk
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in evals)
    rec = json.loads((work / "recommendation.json").read_text())
    assert rec["stop_index"] is not None and 0.05 <= rec["min_lr"] < rec["max_lr"] < rec["stop_lr"]
    assert (work / "lr_range.png").stat().st_size > 10_000
    assert "max_lr = " in proc.stdout and "--config.schedule.lr.name=triangular" in proc.stdout
    assert "--config.schedule.lr.name=onecycle" in proc.stdout
