"""Every recipe in configs/ loads, validates, and plans; the CIFAR-10 and ImageNet recipes' update
counts are the numbers stated in their docstrings and in the docs.

This file is the one place where the recipes' step counts are written down (``CIFAR10``,
``IMAGENET``); other tests derive them from :func:`make_plan`."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from lbt.config import load_config, validate
from lbt.data.registry import get_dataset_size
from lbt.schedules.plan import baseline_config, make_plan

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))

# CIFAR-10 WRN-16-4, 200 epochs, milestones 60/120/160, factor 5 (Smith et al. 2018, section 5.1):
# name -> (optimizer steps of `lbt plan`, the batch of each phase). The decay_lr baseline of each
# is the decay_lr recipe.
CIFAR10 = {
    "cifar10_wrn16_4_decay_lr": (78_125, [128, 128, 128, 128]),
    "cifar10_wrn16_4_increase_batch": (28_876, [128, 640, 3200, 16000]),
    "cifar10_wrn16_4_hybrid": (29_142, [128, 640, 3200, 5120]),
    "cifar10_wrn16_4_increase_lr": (6_407, [640, 3200, 5120, 5120]),
    "cifar10_wrn16_4_increase_momentum": (6_407, [640, 3200, 5120, 5120]),
}

# name -> (optimizer steps of `lbt plan`, the batch of each phase, the decay_lr baseline's steps)
IMAGENET = {
    "imagenet_resnet50_goyal8k": (14_076, [8192] * 5, 14_076),
    "imagenet_resnet50_increase_batch": (5_865, [8192, 8192, 65536, 65536, 65536], 14_076),
    "imagenet_inception_resnet_v2_2500": (2_445, [8192, 16384, 32768, 32768, 65536, 65536, 65536], 14_076),
}


def _docstring(path: Path) -> str:
    return " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())


def test_there_are_recipes():
    names = {p.stem for p in CONFIGS}
    assert set(IMAGENET) <= names and set(CIFAR10) <= names


def _npz_path(tmp_path: Path) -> str:
    """An npz recipe needs a file: the shared 10k MNIST if present, else 10,000 dummy rows."""
    shared = ROOT.parent / "shared" / "data" / "mnist10k.npz"
    if shared.is_file():
        return str(shared)
    f = tmp_path / "dummy10k.npz"
    np.savez(f, images=np.zeros((10_000, 1, 1), np.uint8), labels=np.zeros((10_000,), np.int64))
    return str(f)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_loads_validates_and_plans(path, tmp_path):
    config = load_config(str(path))
    if config.dataset.name == "npz" and not config.dataset.path:
        config = load_config(str(path), [f"--config.dataset.path={_npz_path(tmp_path)}"])
    N = get_dataset_size(config.dataset.name, config)
    plan = make_plan(config, N)
    assert plan.total_steps() > 0
    assert sum(plan.phase_steps()) == plan.total_steps()
    M = config.train.global_microbatch
    assert all(ph.global_batch % M == 0 for ph in plan.phases)
    # The whole config validates on a device count the recipe is designed for (b = M / devices).
    for devices in (8, 256) if M >= 256 else (8,):
        validate(config, num_devices=devices, num_train=N)
    doc = _docstring(path)
    assert "lbt train --config configs/" + path.name in doc, "docstring must carry the command"
    assert "Hardware" in doc and "Expected" in doc


@pytest.mark.parametrize("name", sorted(CIFAR10))
def test_cifar10_update_counts(name):
    """Steps and batches of each CIFAR-10 recipe, its g equal to the decay_lr reference's at every
    examples_seen, and the count its docstring and docs/schedules.md state."""
    path = ROOT / "configs" / f"{name}.py"
    config = load_config(str(path))
    assert config.model.ghost_batch_size == 128 and config.train.global_microbatch == 128
    N = get_dataset_size(config.dataset.name, config)
    assert N == 50_000
    plan = make_plan(config, N)
    steps, batches = CIFAR10[name]
    assert plan.total_steps() == steps
    assert [ph.global_batch for ph in plan.phases] == batches
    ref = make_plan(baseline_config(config), N)
    assert ref.total_steps() == CIFAR10["cifar10_wrn16_4_decay_lr"][0]
    for s in range(0, plan.total_examples, 99_991):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12)
    assert f"Expected updates: {steps:,} optimizer steps" in _docstring(path)
    table = (ROOT / "docs" / "schedules.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("|") and f"`{name}`" in line)
    assert f"| {steps:,} |" in row


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_update_counts(name):
    path = ROOT / "configs" / f"{name}.py"
    config = load_config(str(path))
    assert config.dataset.name == "imagenet2012"
    N = get_dataset_size("imagenet2012", config)
    assert N == 1_281_167
    plan = make_plan(config, N)
    steps, batches, baseline = IMAGENET[name]
    assert plan.total_steps() == steps
    assert [ph.global_batch for ph in plan.phases] == batches
    assert make_plan(baseline_config(config), N).total_steps() == baseline
    assert plan.total_examples == round(90 * N)
    # The number is the one the docs state.
    assert f"`lbt plan`: {steps:,} optimizer steps" in _docstring(path)
    recipes = (ROOT / "docs" / "recipes.md").read_text()
    row = next(line for line in recipes.splitlines() if line.startswith("|") and f"`{name}`" in line)
    assert f"{steps:,}" in row


def test_imagenet_plan_cli_json(capsys, tmp_path):
    from lbt.tools.plan_report import main

    for name, (steps, batches, baseline) in IMAGENET.items():
        rc = main(["--config", str(ROOT / "configs" / f"{name}.py"), "--json", "--no-plot", "--out", str(tmp_path)])
        assert rc == 0
        data = json.loads(capsys.readouterr().out)
        assert data["total_steps"] == steps
        assert data["baseline_steps"] == baseline
        assert [p["global_batch"] for p in data["phases"]] == batches


def test_goyal_schedule_values():
    """ε = 0.1 · 8192 / 256 = 3.2 after a 5-epoch warmup from 0.1; ÷10 at 30, 60, 80."""
    config = load_config(str(ROOT / "configs" / "imagenet_resnet50_goyal8k.py"))
    N = get_dataset_size("imagenet2012", config)
    plan = make_plan(config, N)
    assert plan.at(0).lr == pytest.approx(0.1)
    assert plan.at(5 * N).lr == pytest.approx(3.2)
    assert plan.at(30 * N).lr == pytest.approx(0.32)
    assert plan.at(80 * N).lr == pytest.approx(0.0032)
    assert {ph.momentum for ph in plan.phases} == {0.9}


def test_inception_resnet_v2_momentum_and_noise_scale():
    """m = 0.9 -> 0.95 -> 0.975 at epochs 0.5 and 1.5 with B 8192 -> 16384 -> 32768, then 65536
    from epoch 30; g matches the m = 0.9, B = 8192 reference in every phase."""
    config = load_config(str(ROOT / "configs" / "imagenet_inception_resnet_v2_2500.py"))
    N = get_dataset_size("imagenet2012", config)
    plan = make_plan(config, N)
    ref = make_plan(baseline_config(config), N)
    assert [ph.momentum for ph in plan.phases] == [0.9, 0.95, 0.975, 0.975, 0.975, 0.975, 0.975]
    assert {ph.momentum for ph in ref.phases} == {0.9}
    for s in (0, N // 4, N, 2 * N, 10 * N, 45 * N, 70 * N, 85 * N, round(0.5 * N), round(1.5 * N)):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-9)
    assert plan.at(10 * N).lr == pytest.approx(3.0)
    assert plan.at(45 * N).lr == pytest.approx(0.6)


def test_inception_resnet_v2_steps_by_hand():
    """2,445 = 79 + 78 + 1,115 + 1,173: each batch size's steps continue from where the previous
    phase's last step ended (milestones at round(epoch * N) examples)."""
    N = 1_281_167
    total = 90 * N  # 115,305,030
    a, b, e30 = round(0.5 * N), round(1.5 * N), 30 * N  # 640,584 (half to even), 1,921,750, 38,435,010
    assert (a, b, e30) == (640_584, 1_921_750, 38_435_010)
    s = 0
    n0 = -(-(a - s) // 8192)  # ceil(640,584 / 8,192) = 79
    s += n0 * 8192  # 647,168
    n1 = -(-(b - s) // 16384)  # ceil(1,274,582 / 16,384) = 78
    s += n1 * 16384  # 1,925,120
    n2 = -(-(e30 - s) // 32768)  # ceil(36,509,890 / 32,768) = 1,115
    s += n2 * 32768  # 38,461,440
    n3 = -(-(total - s) // 65536)  # ceil(76,843,590 / 65,536) = 1,173
    assert (n0, n1, n2, n3) == (79, 78, 1115, 1173)
    assert n0 + n1 + n2 + n3 == 2445 == IMAGENET["imagenet_inception_resnet_v2_2500"][0]
    config = load_config(str(ROOT / "configs" / "imagenet_inception_resnet_v2_2500.py"))
    plan = make_plan(config, N)
    steps = plan.phase_steps()
    assert (steps[0], steps[1], steps[2] + steps[3], sum(steps[4:])) == (79, 78, 1115, 1173)
    assert "under 2,500" in _docstring(ROOT / "configs" / "imagenet_inception_resnet_v2_2500.py")
