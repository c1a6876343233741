"""``lbt sweep`` (Smith, Elsen & De 2020) and ``schedule.steps``: the step budget in the Plan, the
grid points, resumability, the transition estimate on synthetic data, the flags, and one small
real 2-point grid."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lbt import cli
from lbt.config import load_config, validate
from lbt.errors import ConfigError
from lbt.schedules.plan import make_plan
from lbt.tools import sweep

N_DIGITS = 1438


# ---------------------------------------------------------------------------------------------
# schedule.steps


def _steps_config(steps: int, **over):
    items = [f"--config.schedule.steps={steps}", "--config.schedule.epochs=0.0"]
    return load_config(None, items + [f"--config.schedule.{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("B, steps", [(64, 100), (64, 1), (128, 37), (192, 500)])
@pytest.mark.parametrize("lr", ["constant", "step", "cosine", "onecycle"])
def test_steps_budget_decay_lr_is_exact(B, steps, lr):
    """decay_lr (B constant): exactly `steps` optimizer steps of B, so total_examples = steps × B."""
    c = _steps_config(steps, global_batch=B, **{"batch.mode": "decay_lr", "lr.name": lr, "lr.milestones": "(0.5,)"})
    if lr == "step" and steps * B / N_DIGITS <= 0.5:
        with pytest.raises(ConfigError, match=r"schedule\.lr\.milestones.*schedule\.steps="):
            make_plan(c, N_DIGITS)
        return
    plan = make_plan(c, N_DIGITS)
    assert plan.total_steps() == steps == len(list(plan.steps()))
    assert plan.total_examples == steps * B
    assert {p.global_batch for _, _, p in plan.steps()} == {B}


def test_steps_budget_with_batch_growth_counts_each_step():
    """increase_batch on digits (B 64 -> 128 -> 256 at epochs 10 and 20): milestones stay in epochs;
    the run is exactly `steps` steps and total_examples is the sum of their batches."""
    plan = make_plan(_steps_config(450), N_DIGITS)
    assert plan.total_steps() == 450
    assert [(ph.global_batch, ph.steps) for ph in plan.phases] == [(64, 225), (128, 113), (256, 112)]
    assert plan.total_examples == 225 * 64 + 113 * 128 + 112 * 256
    for mode in ("hybrid", "increase_lr", "increase_momentum"):
        assert make_plan(_steps_config(450, **{"batch.mode": mode}), N_DIGITS).total_steps() == 450


def test_steps_budget_errors_name_the_fields():
    with pytest.raises(ConfigError, match=r"^config\.schedule\.epochs: is 30\.0, but schedule\.steps=100"):
        make_plan(load_config(None, ["--config.schedule.steps=100"]), N_DIGITS)
    with pytest.raises(ConfigError, match=r"^config\.schedule\.steps: must be an int >= 0"):
        make_plan(_steps_config(-1), N_DIGITS)
    with pytest.raises(ConfigError, match=r"^config\.schedule\.steps: expected int"):
        load_config(None, ["--config.schedule.steps=1.5"])
    with pytest.raises(ConfigError, match=r"^config\.schedule\.steps: cannot fix the step count of cosine batch"):
        make_plan(_steps_config(100, **{"lr.name": "cosine", "batch.rounding": "down"}), N_DIGITS)
    # milestones are epochs: 300 steps end before epoch 20
    with pytest.raises(ConfigError, match=r"^config\.schedule\.lr\.milestones: .*\(schedule\.steps=300 makes"):
        make_plan(_steps_config(300), N_DIGITS)
    with pytest.raises(ConfigError, match=r"^config\.schedule\.epochs: must be > 0"):
        make_plan(load_config(None, ["--config.schedule.epochs=0.0"]), N_DIGITS)


# ---------------------------------------------------------------------------------------------
# Grids and points


def test_parse_grid():
    assert sweep.parse_grid("--batch", "64,16,32", int) == [16, 32, 64]
    assert sweep.parse_grid("--batch", "16:512:2", int) == [16, 32, 64, 128, 256, 512]
    assert sweep.parse_grid("--lr", "0.025:1.6:2") == [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert sweep.parse_grid("--lr", "0.1:0.3:10") == [0.1]
    for flag, text, kind in [("--batch", "16,x", int), ("--batch", "16.5", int), ("--lr", "1:0.1:2", float)]:
        with pytest.raises(ConfigError, match=f"^{flag}: cannot parse"):
            sweep.parse_grid(flag, text, kind)
    with pytest.raises(ConfigError, match="^--lr: needs positive values"):
        sweep.parse_grid("--lr", "0,0.1")
    with pytest.raises(ConfigError, match="^--batch: has repeated values"):
        sweep.parse_grid("--batch", "16,16", int)


@pytest.mark.parametrize("budget, length", [("epochs", 6.0), ("steps", 90)])
def test_points_are_constant_batch_runs_of_the_budget(budget, length, tmp_path):
    points, used = sweep.make_points(
        None,
        ["--config.model.width=8"],
        batches=[16, 48, 128],
        lrs=[0.05, 0.2],
        seeds=2,
        budget=budget,
        length=length,
        workdir=tmp_path,
        num_devices=1,
    )
    assert used == length and len(points) == 3 * 2 * 2 and len({p.workdir for p in points}) == 12
    for p in points:
        c = load_config(None, ["--config.model.width=8", *p.overrides])
        assert p.config_json == json.dumps(c.to_dict(), sort_keys=True, indent=2, default=str)
        plan = validate(c, num_devices=1, num_train=N_DIGITS)
        assert {pt.global_batch for _, _, pt in plan.steps()} == {p.batch}
        assert plan.at(0).lr == pytest.approx(p.lr) and c.seed == p.seed and c.model.width == 8
        assert c.train.global_microbatch == math.gcd(p.batch, 64) and c.model.ghost_batch_size == 16
        epochs = length if budget == "epochs" else length * p.batch / N_DIGITS
        if budget == "steps":
            assert plan.total_steps() == p.steps == length
        else:
            assert plan.total_examples == round(length * N_DIGITS) and p.steps == plan.total_steps()
        # the LR halves at 1/3 and 2/3 of the run (digits: milestones 10 and 20 of 30 epochs)
        assert tuple(c.schedule.lr.milestones) == pytest.approx((epochs / 3, 2 * epochs / 3))
        assert p.epochs == pytest.approx(plan.total_examples / N_DIGITS)


def test_default_lengths_are_the_configs(tmp_path):
    kw = dict(batches=[64], lrs=[0.1], seeds=1, length=None, workdir=tmp_path, num_devices=1)
    assert sweep.make_points(None, [], budget="epochs", **kw)[1] == 30.0
    assert sweep.make_points(None, [], budget="steps", **kw)[1] == 675  # 30 epochs at B0 = 64: ceil(43140 / 64)


# ---------------------------------------------------------------------------------------------
# Resumable runs (a fake launcher stands in for `python -m lbt.cli train`)


class _Proc:
    def __init__(self, code: int):
        self.code, self.polls = code, 0

    def poll(self):
        self.polls += 1
        return self.code if self.polls > 1 else None  # still running at the first poll

    def terminate(self):
        pass

    def wait(self):
        return self.code


class _FakeTrain:
    """Writes what `lbt train` leaves: config.json, then summary.json (exit 0), a non-finite stop
    (exit 3) or nothing (exit 1, a crash)."""

    def __init__(self, points, outcome):
        self.by_dir = {str(p.workdir): p for p in points}
        self.outcome, self.launched, self.running, self.max_running = outcome, [], 0, 0

    def __call__(self, cmd, log_path, env):
        p = self.by_dir[cmd[cmd.index("--workdir") + 1]]
        self.launched.append((p.batch, p.lr))
        code = self.outcome(p)
        (p.workdir / "config.json").write_text(p.config_json)
        if code == 0:
            summary = {
                "final_eval_accuracy": 0.9 - 0.001 * p.batch,
                "final_eval_loss": 0.3,
                "optimizer_steps": p.steps,
            }
            (p.workdir / "summary.json").write_text(json.dumps({**summary, "wall_s": 1.0}))
        line = "lbt: error: non-finite loss or gradient at step 3 (...)" if code == 3 else "Traceback: boom"
        log_path.write_text(f"lbt: plan: ...\n{line}\n")
        return _Proc(code)


def test_sweep_is_resumable_and_records_divergence(tmp_path):
    points, _ = sweep.make_points(
        None,
        [],
        batches=[16, 32],
        lrs=[0.1, 0.8, 6.4],
        seeds=1,
        budget="epochs",
        length=1.0,
        workdir=tmp_path,
        num_devices=1,
    )
    crash = {"first": True}

    def outcome(p):
        if p.lr == 6.4:
            return 3  # diverges
        if p.batch == 32 and p.lr == 0.8 and crash["first"]:
            crash["first"] = False
            return 1  # crashes once
        return 0

    fake = _FakeTrain(points, outcome)
    cmds = [sweep.train_command(p, None, [], 1) for p in points]
    results = sweep.run_points(points, cmds, parallel=2, launch=fake, progress=False, poll_s=0)
    assert len(fake.launched) == 6
    assert [r["status"] for r in results] == ["done", "done", "diverged", "done", "failed", "diverged"]
    assert json.loads((points[2].workdir / sweep.STATUS_FILE).read_text())["status"] == "diverged"
    # rerun: only the crashed point runs again; finished and diverged points are skipped
    fake.launched.clear()
    results = sweep.run_points(points, cmds, parallel=2, launch=fake, progress=False, poll_s=0)
    assert fake.launched == [(32, 0.8)]
    assert [r["status"] for r in results] == ["done", "done", "diverged", "done", "done", "diverged"]
    fake.launched.clear()
    sweep.run_points(points, cmds, parallel=1, launch=fake, progress=False, poll_s=0)
    assert fake.launched == []
    rows = sweep.table_rows(points, results, "epochs")
    path = sweep.write_csv(rows, tmp_path / "sweep.csv")
    read = list(csv.DictReader(path.open()))
    assert list(read[0]) == list(sweep.CSV_FIELDS) and len(read) == 6
    assert read[2]["status"] == "diverged" and read[2]["final_test_accuracy"] == ""
    assert float(read[0]["final_test_accuracy"]) == pytest.approx(0.884)
    # a changed config is a different point (new workdir), not a finished one
    other, _ = sweep.make_points(
        None, [], batches=[16], lrs=[0.1], seeds=1, budget="epochs", length=2.0, workdir=tmp_path, num_devices=1
    )
    assert other[0].workdir != points[0].workdir and sweep.point_result(other[0]) is None


def test_child_env_keeps_the_users_settings():
    env = sweep.child_env(2, {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "5"})
    assert env == {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "5", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in sweep.child_env(1, {})


# ---------------------------------------------------------------------------------------------
# The transition on synthetic data


def synthetic_sweep(b_star: float = 128, c: float = 0.002, seeds: int = 2):
    """Rows of a sweep whose test accuracy, at each B, peaks at ε = min(c·B, c·b_star) on the grid
    (noise-dominated below b_star, curvature-dominated above) and falls for B > b_star."""
    rng = np.random.default_rng(0)
    lrs = [0.0125 * 2**i for i in range(8)]
    rows = []
    for B in [2**k for k in range(3, 11)]:
        opt = min(c * B, c * b_star)
        peak = 0.98 - (0.03 * math.log2(B / b_star) if B > b_star else 0.0)
        for lr in lrs:
            for seed in range(seeds):
                acc = peak - 0.02 * math.log2(lr / opt) ** 2 + rng.normal(0, 0.001)
                status = "diverged" if lr > 8 * opt else "done"
                rows.append({"batch": B, "lr": lr, "seed": seed, "status": status, "final_test_accuracy": acc})
    return rows, lrs


@pytest.mark.parametrize("b_star", [64, 128, 256])
def test_transition_of_a_synthetic_sweep(b_star, tmp_path):
    rows, lrs = synthetic_sweep(b_star)
    per = sweep.best_by_batch(rows)
    assert [r["batch"] for r in per] == [8, 16, 32, 64, 128, 256, 512, 1024]
    tr = sweep.estimate_transition(
        [r["batch"] for r in per],
        [r["best_lr"] for r in per],
        [r["accuracy"] for r in per],
        budget="epochs",
        acc_tol=0.01,
    )
    assert b_star / math.sqrt(2) <= tr.batch <= b_star * math.sqrt(2)
    assert tr.lr_plateau == pytest.approx(0.002 * b_star, rel=0.5) and tr.accuracy_batch == b_star
    lines = sweep.summary_lines(per, tr, budget="epochs", acc_tol=0.01)
    assert any(line.startswith("transition batch size B* ≈") for line in lines)
    png = sweep.plot_sweep(per, tr, lrs, tmp_path / "sweep.png", title="synthetic")
    assert png.stat().st_size > 10_000


def test_transition_edge_cases():
    B = [16, 32, 64, 128, 256]
    linear = sweep.estimate_transition(B, [0.001 * b for b in B], [0.9] * 5, budget="epochs", acc_tol=0.01)
    assert linear.batch is None and linear.accuracy_batch is None and "extend --batch" in linear.notes[0]
    assert linear.lr_per_batch == pytest.approx(0.001)
    flat = sweep.estimate_transition(B, [0.4] * 5, [0.9, 0.9, 0.8, 0.7, 0.6], budget="epochs", acc_tol=0.01)
    assert flat.batch == 16 and flat.accuracy_batch == 32 and "at or below" in flat.notes[0]
    rising = sweep.estimate_transition(B, [0.4] * 5, [0.7, 0.8, 0.9, 0.9, 0.905], budget="steps", acc_tol=0.01)
    assert rising.accuracy_batch == 64  # steps budget: the accuracy stops rising there
    two = sweep.estimate_transition([16, 32], [0.1, 0.2], [0.9, 0.8], budget="epochs", acc_tol=0.01)
    assert two.batch is None and two.accuracy_batch == 16 and "at least 3" in two.notes[0]


def test_best_by_batch_ties_edges_and_divergence():
    rows = [
        {"batch": 16, "lr": lr, "seed": 0, "status": "done", "final_test_accuracy": acc}
        for lr, acc in [(0.1, 0.9), (0.2, 0.95), (0.4, 0.95)]
    ] + [
        {"batch": 32, "lr": 0.1, "seed": 0, "status": "done", "final_test_accuracy": 0.5},
        {"batch": 32, "lr": 0.4, "seed": 0, "status": "diverged", "final_test_accuracy": None},
        {"batch": 32, "lr": 0.4, "seed": 1, "status": "done", "final_test_accuracy": 0.99},
        {"batch": 64, "lr": 0.1, "seed": 0, "status": "failed", "final_test_accuracy": None},
    ]
    per = sweep.best_by_batch(rows)
    assert [r["batch"] for r in per] == [16, 32]  # B = 64 has no finished point
    assert per[0]["tied_lrs"] == [0.2, 0.4] and per[0]["best_lr"] == pytest.approx(math.sqrt(0.08))
    assert per[0]["edge"] == "high" and per[0]["accuracy"] == 0.95
    assert per[1]["best_lr"] == 0.1 and per[1]["edge"] == "low"  # 0.4: mean(0, 0.99) < 0.5


# ---------------------------------------------------------------------------------------------
# Flags


@pytest.mark.parametrize(
    "flags, start",
    [
        (["--batch", "16,x", "--lr", "0.1"], "--batch: cannot parse"),
        (["--batch", "16", "--lr", "-1"], "--lr: needs positive values"),
        (["--batch", "16", "--lr", "0.1", "--budget", "time"], "--budget: invalid choice"),
        (["--batch", "16", "--lr", "0.1", "--steps", "10"], "--steps: only applies with --budget steps"),
        (["--batch", "16", "--lr", "0.1", "--budget", "steps", "--epochs", "3"], "--epochs: only applies"),
        (["--batch", "16", "--lr", "0.1", "--epochs", "0"], "--epochs: must be > 0"),
        (["--batch", "16", "--lr", "0.1", "--budget", "steps", "--steps", "0"], "--steps: must be >= 1"),
        (["--batch", "16", "--lr", "0.1", "--seeds", "0"], "--seeds: must be >= 1"),
        (["--batch", "16", "--lr", "0.1", "--parallel", "0"], "--parallel: must be in [1, "),
        (["--batch", "16", "--lr", "0.1", "--parallel", "100000"], "--parallel: must be in [1, "),
        (["--batch", "16", "--lr", "0.1", "--acc_tol", "1"], "--acc_tol: must be in [0, 1)"),
        (["--batch", "16", "--lr", "0.1", "--data", "/nonexistent.npz"], "--data: no file at"),
        (
            ["--batch", "12", "--lr", "0.1", "--num_cpu_devices", "8"],
            "--batch: the point B=12, lr=0.1 is not a valid run",
        ),
        (["--batch", "16", "--lr", "0.1", "--config.schedule.lr.name=onecycle"], "--config: schedule.lr.name is"),
        (["--batch", "16", "--lr", "0.1", "--bogus"], "--bogus: not a flag of lbt sweep"),
        (["--batch", "16", "--lr", "0.1", "--config.model.widht=8"], "config.model.widht: unknown key"),
        (["--lr", "0.1"], "the following arguments are required: --batch"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, start, tmp_path, capsys):
    assert cli.main(["sweep", "--workdir", str(tmp_path / "w"), *flags]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lbt: error: {start}"), err
    assert not (tmp_path / "w").exists()  # nothing ran, nothing was written


def test_dry_run_lists_the_commands(tmp_path, capsys):
    argv = ["sweep", "--workdir", str(tmp_path), "--batch", "16,32", "--lr", "0.1,0.2", "--epochs", "2", "--dry_run"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("todo  ") and " -m lbt.cli train " in line for line in lines)
    assert "--config.schedule.global_batch=32" in lines[2] and "--config.schedule.base_lr=0.2" in lines[3]
    (tmp_path / "file").write_text("")
    argv = ["sweep", "--workdir", str(tmp_path / "file"), "--batch", "16", "--lr", "0.1", "--epochs", "2"]
    assert cli.main(argv) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.strip().startswith("lbt: error: --workdir: cannot create")


# ---------------------------------------------------------------------------------------------
# A real grid


@pytest.mark.slow
def test_digits_two_point_sweep_end_to_end_and_rerun(tmp_path, repo):
    """`lbt sweep` on digits (width 8, 1 device, 1 epoch): B in {32, 64} at lr 0.1, two at once;
    the rerun trains nothing and writes the same CSV."""
    work = tmp_path / "sw"
    cmd = [sys.executable, "-m", "lbt.cli", "sweep", "--workdir", str(work), "--batch", "32,64", "--lr", "0.1"]
    cmd += ["--epochs", "1", "--parallel", "2", "--config.model.width=8", "--config.schedule.lr.milestones=()"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((work / "sweep.csv").open()))
    assert [(r["batch"], r["status"], r["steps"]) for r in rows] == [("32", "done", "45"), ("64", "done", "23")]
    for r in rows:
        summary = json.loads((Path(r["workdir"]) / "summary.json").read_text())
        assert (
            float(r["final_test_accuracy"]) == summary["final_eval_accuracy"]
            and 0.0 <= summary["final_eval_accuracy"] <= 1
        )
    assert (work / "sweep.png").stat().st_size > 10_000
    assert json.loads((work / "sweep.json").read_text())["per_batch"][0]["batch"] == 32
    logs = {r["workdir"]: (Path(r["workdir"]) / "train.log").stat().st_mtime for r in rows}
    again = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {d: (Path(d) / "train.log").stat().st_mtime for d in logs} == logs  # nothing ran again
    assert list(csv.DictReader((work / "sweep.csv").open())) == rows
