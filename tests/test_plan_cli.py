"""`lbt plan`: JSON output on the CIFAR-10 recipes, the table, plan.png and config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbt.tools.plan import main

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "decay_lr": (78125, [128, 128, 128, 128]),
    "increase_batch": (28876, [128, 640, 3200, 16000]),
    "hybrid": (29142, [128, 640, 3200, 5120]),
    "increase_lr": (6407, [640, 3200, 5120, 5120]),
    "increase_momentum": (6407, [640, 3200, 5120, 5120]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_plan_json_cifar(name, capsys, tmp_path):
    rc = main(["--config", str(ROOT / "configs" / f"cifar10_wrn16_4_{name}.py"), "--json", "--no-plot", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    data = json.loads(out)  # exactly one JSON object on stdout
    total, batches = EXPECTED[name]
    assert data["total_steps"] == total
    assert data["baseline_steps"] == 78125
    assert data["ratio"] == pytest.approx(total / 78125)
    assert [p["global_batch"] for p in data["phases"]] == batches
    assert sum(p["steps"] for p in data["phases"]) == total
    assert [(p["start_epoch"], p["end_epoch"]) for p in data["phases"]] == [(0, 60), (60, 120), (120, 160), (160, 200)]
    g = [p["noise_scale"] for p in data["phases"]]
    assert g == pytest.approx([390.625, 78.125, 15.625, 3.125], rel=1e-12)
    for key in ("lr_start", "lr_end", "momentum"):
        assert all(key in p for p in data["phases"])
    assert not (tmp_path / "plan.png").exists()


def test_plan_table_and_png(capsys, tmp_path):
    rc = main(["--config", str(ROOT / "configs" / "cifar10_wrn16_4_hybrid.py"), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "total optimizer steps: 29142" in out
    assert "decay_lr baseline steps: 78125" in out
    assert "5120" in out and "0.032" in out
    png = tmp_path / "plan.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plan_overrides(capsys):
    rc = main(["--config", str(ROOT / "configs" / "cifar10_wrn16_4_increase_batch.py"), "--json", "--no-plot",
               "--config.schedule.epochs=20.0", "--config.schedule.lr.milestones=(6.0, 12.0, 16.0)"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    # 300k/128 -> 2344 (s=300,032); 299,968/640 -> 469 (s=600,192); 199,808/3200 -> 63 (s=801,792);
    # 198,208/16000 -> 13.
    assert [p["steps"] for p in data["phases"]] == [2344, 469, 63, 13]
    assert data["total_steps"] == 2889 and data["baseline_steps"] == 7813


def test_plan_config_error_exit_code(capsys):
    rc = main(["--config", str(ROOT / "configs" / "cifar10_wrn16_4_hybrid.py"), "--no-plot", "--config.schedule.global_batch=100"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "config.schedule.global_batch:" in err and "128" in err


def test_plan_subprocess_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cfg = ROOT / "configs" / "cifar10_wrn16_4_increase_batch.py"
    code = f"import sys; from lbt.tools.plan import main; sys.exit(main(['--config', {str(cfg)!r}, '--json', '--out', {str(tmp_path)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["total_steps"] == 28876
    assert (tmp_path / "plan.png").exists()
