"""`lbt plan`: JSON output on the CIFAR-10 recipes, the table, plan.png and config errors.

The recipes' step counts are asserted in tests/test_recipes.py; here the command's numbers must
equal those of the library's Plan of the same config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbt.config import load_config
from lbt.schedules.plan import baseline_config, make_plan, plan_warnings
from lbt.tools.plan_report import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("decay_lr", "increase_batch", "hybrid", "hybrid_5120", "increase_lr", "increase_momentum")
N_CIFAR = 50_000


def recipe(name: str) -> Path:
    return ROOT / "configs" / f"cifar10_wrn16_4_{name}.py"


def library_plans(name: str):
    """(plan, decay_lr baseline) of a CIFAR-10 recipe, built directly with the library."""
    config = load_config(str(recipe(name)))
    return make_plan(config, N_CIFAR), make_plan(baseline_config(config), N_CIFAR)


@pytest.mark.parametrize("name", RECIPES)
def test_plan_json_cifar(name, capsys, tmp_path):
    rc = main(["--config", str(recipe(name)), "--json", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # exactly one JSON object on stdout
    plan, baseline = library_plans(name)
    total = plan.total_steps()
    assert data["total_steps"] == total and data["N"] == N_CIFAR
    assert data["baseline_steps"] == baseline.total_steps()
    assert data["ratio"] == pytest.approx(total / baseline.total_steps())
    assert [p["global_batch"] for p in data["phases"]] == [ph.global_batch for ph in plan.phases]
    assert [p["steps"] for p in data["phases"]] == plan.phase_steps()
    assert sum(p["steps"] for p in data["phases"]) == total
    assert [(p["start_epoch"], p["end_epoch"]) for p in data["phases"]] == [(0, 60), (60, 120), (120, 160), (160, 200)]
    g = [p["noise_scale"] for p in data["phases"]]
    assert g == pytest.approx([390.625, 78.125, 15.625, 3.125], rel=1e-12)
    for key in ("lr_start", "lr_end", "momentum"):
        assert all(key in p for p in data["phases"])
    # The exact noise scale ε(N/B - 1)/(1 - m) next to the approximation, per phase.
    for p in data["phases"]:
        B, lr, m = p["global_batch"], p["lr_start"], p["momentum"]
        assert p["noise_scale_exact"] == pytest.approx(lr * (N_CIFAR / B - 1) / (1 - m), rel=1e-12)
        assert p["noise_scale"] / p["noise_scale_exact"] == pytest.approx(N_CIFAR / (N_CIFAR - B), rel=1e-9)
    # The run as its account describes it: ghost batch, B_max, optimizer; and the N/10 warnings.
    assert data["ghost_batch"] == 128 and data["max_global_batch"] == plan.max_global_batch
    assert (data["optimizer"], data["weight_decay"]) == ("nesterov", 5e-4)
    assert data["warnings"] == plan_warnings(plan)
    assert [line for line in captured.err.splitlines() if line.startswith("warning: ")] == [
        f"warning: {w}" for w in data["warnings"]
    ]
    assert bool(data["warnings"]) == (max(p["global_batch"] for p in data["phases"]) > N_CIFAR / 10)
    assert not (tmp_path / "plan.png").exists()


def test_plan_table_and_png(capsys, tmp_path):
    rc = main(["--config", str(recipe("hybrid")), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    plan, baseline = library_plans("hybrid")
    assert f"total optimizer steps: {plan.total_steps()}" in out
    assert f"decay_lr baseline steps: {baseline.total_steps()}" in out
    assert "B_max=640 ghost_batch=128 optimizer=nesterov" in out
    assert "g exact" in out.splitlines()[1]
    last = out.splitlines()[6].split()  # phase 3: epochs 160-200, B 640, k 5, ε 0.004, m 0.9, g, g exact
    assert last[:7] == ["3", "160-200", "640", "5", "0.004", "0.9", "3.125"]
    assert float(last[7]) == pytest.approx(0.004 * (50_000 / 640 - 1) / 0.1, rel=1e-3)
    png = tmp_path / "plan.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plan_overrides(capsys):
    rc = main(
        [
            "--config",
            str(recipe("increase_batch")),
            "--json",
            "--no-plot",
            "--config.schedule.epochs=20.0",
            "--config.schedule.lr.milestones=(6.0, 12.0, 16.0)",
        ]
    )
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    # 300k/128 -> 2344 (s=300,032); 299,968/640 -> 469 (s=600,192); 199,808/3200 -> 63 (s=801,792);
    # 198,208/16000 -> 13.
    assert [p["steps"] for p in data["phases"]] == [2344, 469, 63, 13]
    assert data["total_steps"] == 2889 and data["baseline_steps"] == 7813


def test_plan_warns_where_b_exceeds_n_over_10(capsys):
    """increase_batch's last phase (B = 16,000 > N/10 = 5,000): the approximation εN/(B(1-m))
    overstates the exact g by 16,000 / 34,000 = 47.1%; the warning names the phase and the error."""
    rc = main(["--config", str(recipe("increase_batch")), "--no-plot"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "warning: phase 3 (epochs 160-200): B = 16000 > N/10 = 5000; the noise scale g = εN/(B(1 - m)) "
        "overstates the exact ε(N/B - 1)/(1 - m) by 47.1% (B/(N - B)); see noise_scale_exact"
    ]
    assert "warning" not in captured.out
    # The paper's hybrid stays at B = 640 < N/10: no warning.
    assert main(["--config", str(recipe("hybrid")), "--no-plot"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["--config.schedule.global_batch=51200"], "schedule.global_batch"),  # 400 x 128 > N
        (["--config.schedule.lr.factor=10.0"], "schedule.batch.max_global_batch"),  # 128 -> ... -> 128,000
    ],
)
def test_plan_refuses_a_batch_larger_than_n(overrides, field, capsys):
    rc = main(["--config", str(recipe("increase_batch")), "--no-plot", *overrides])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lbt: error: config.{field}: ") and "more than the N=50000 training examples" in err
    assert "\n" not in err


def test_plan_config_error_exit_code(capsys):
    rc = main(["--config", str(recipe("hybrid")), "--no-plot", "--config.schedule.global_batch=100"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "config.schedule.global_batch:" in err and "128" in err


def test_plan_subprocess_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cfg = recipe("increase_batch")
    code = f"import sys; from lbt.tools.plan_report import main; sys.exit(main(['--config', {str(cfg)!r}, '--json', '--out', {str(tmp_path)!r}]))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["total_steps"] == library_plans("increase_batch")[0].total_steps()
    assert (tmp_path / "plan.png").exists()


def test_plotting_keeps_the_callers_backend(tmp_path):
    """The tools draw on their own Agg canvas: importing them and writing plan.png neither switches
    matplotlib's global backend nor imports pyplot."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = (
        "import sys, matplotlib; matplotlib.use('svg')\n"
        "from lbt.tools import curves, plots, reproduce\n"
        "from lbt.tools.plan_report import main\n"
        f"rc = main(['--config', {str(recipe('hybrid'))!r}, '--out', {str(tmp_path)!r}])\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
        "sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "svg False"
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
