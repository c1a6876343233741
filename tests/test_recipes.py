"""Every recipe in configs/ loads, validates, and plans; each recipe named after a paper gives the
run its account describes (batch per phase, ε, m, ghost batch, B_max, optimizer), and its update
count is the one its docstring and the docs state.

This file is the one place where the recipes' plans are written down (``CIFAR10``, ``IMAGENET``);
other tests derive them from :func:`make_plan`."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lbt.config import load_config, validate
from lbt.data.registry import get_dataset_size
from lbt.schedules.plan import baseline_config, make_plan, plan_warnings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
N_CIFAR, N_IMAGENET = 50_000, 1_281_167

# CIFAR-10 WRN-16-4, 200 epochs, milestones 60/120/160, factor 5 (Smith et al. 2018, section 5),
# Nesterov momentum with weight decay 5e-4 (Holt & Sievert, SciPy 2021), ghost batch 128:
# name -> (optimizer steps of `lbt plan`, [(B, ε, m) per phase], B_max). Phases: epochs 0-60,
# 60-120, 120-160, 160-200. The decay_lr baseline of each is the decay_lr recipe.
CIFAR10 = {
    "cifar10_wrn16_4_decay_lr": (
        78_125,
        [(128, 0.1, 0.9), (128, 0.02, 0.9), (128, 0.004, 0.9), (128, 0.0008, 0.9)],
        None,
    ),
    "cifar10_wrn16_4_increase_batch": (
        28_876,
        [(128, 0.1, 0.9), (640, 0.1, 0.9), (3200, 0.1, 0.9), (16000, 0.1, 0.9)],
        None,
    ),
    # The paper's hybrid: B x5 at the first step only, then ε ÷ 5 (B_max = 640).
    "cifar10_wrn16_4_hybrid": (
        34_376,
        [(128, 0.1, 0.9), (640, 0.1, 0.9), (640, 0.02, 0.9), (640, 0.004, 0.9)],
        640,
    ),
    # lbt's variant.
    "cifar10_wrn16_4_hybrid_5120": (
        29_142,
        [(128, 0.1, 0.9), (640, 0.1, 0.9), (3200, 0.1, 0.9), (5120, 0.032, 0.9)],
        5120,
    ),
    # Section 5.2: initial ε 0.5, initial batch 640, B_max 5,120.
    "cifar10_wrn16_4_increase_lr": (
        6_407,
        [(640, 0.5, 0.9), (3200, 0.5, 0.9), (5120, 0.16, 0.9), (5120, 0.032, 0.9)],
        5120,
    ),
    # Section 5.2: initial ε 0.5, momentum 0.98, initial batch 3,200, B_max 5,120.
    "cifar10_wrn16_4_increase_momentum": (
        2_305,
        [(3200, 0.5, 0.98), (5120, 0.16, 0.98), (5120, 0.032, 0.98), (5120, 0.0064, 0.98)],
        5120,
    ),
}

# ImageNet, 90 epochs, ε ÷ 10 at 30, 60, 80 (lbt's assumption), 5-epoch warmup, M = 8,192:
# name -> (optimizer steps, [(B, ε at the end of the phase, m) per phase], ghost batch, B_max,
# decay_lr baseline steps). Phases: epochs 0-5 (warmup), 5-30, 30-60, 60-80, 80-90 (the
# stepped-momentum variant has two more, at epochs 0.5 and 1.5).
_W = 3.0 * (1 / 32 + (1 - 1 / 32) * 0.5 / 5), 3.0 * (1 / 32 + (1 - 1 / 32) * 1.5 / 5)  # warmup at 0.5, 1.5
IMAGENET = {
    "imagenet_resnet50_goyal8k": (
        14_076,
        [(8192, 3.2, 0.9), (8192, 3.2, 0.9), (8192, 0.32, 0.9), (8192, 0.032, 0.9), (8192, 0.0032, 0.9)],
        32,
        None,
        14_076,
    ),
    "imagenet_resnet50_increase_batch": (
        5_865,
        [(8192, 3.2, 0.9), (8192, 3.2, 0.9), (65536, 2.56, 0.9), (65536, 0.256, 0.9), (65536, 0.0256, 0.9)],
        32,
        65536,
        14_076,
    ),
    "imagenet_inception_resnet_v2_decay_lr": (
        14_076,
        [(8192, 3.0, 0.9), (8192, 3.0, 0.9), (8192, 0.3, 0.9), (8192, 0.03, 0.9), (8192, 0.003, 0.9)],
        32,
        None,
        14_076,
    ),
    # (a) ghost 32, m 0.9, initial batch 8,192, B increased only at the first decay step.
    "imagenet_inception_resnet_v2_ghost32_increase_batch": (
        5_865,
        [(8192, 3.0, 0.9), (8192, 3.0, 0.9), (65536, 2.4, 0.9), (65536, 0.24, 0.9), (65536, 0.024, 0.9)],
        32,
        65536,
        14_076,
    ),
    # (b) ghost 64, m 0.9, initial batch 8,192.
    "imagenet_inception_resnet_v2_ghost64_increase_batch": (
        5_865,
        [(8192, 3.0, 0.9), (8192, 3.0, 0.9), (65536, 2.4, 0.9), (65536, 0.24, 0.9), (65536, 0.024, 0.9)],
        64,
        65536,
        14_076,
    ),
    # (c) ghost 64, m 0.95, initial batch 16,384.
    "imagenet_inception_resnet_v2_ghost64_momentum095": (
        3_519,
        [(16384, 3.0, 0.95), (16384, 3.0, 0.95), (65536, 1.2, 0.95), (65536, 0.12, 0.95), (65536, 0.012, 0.95)],
        64,
        65536,
        14_076,
    ),
    # (d) ghost 64, m 0.975, initial batch 32,768: 77% in under 2,500 updates.
    "imagenet_inception_resnet_v2_ghost64_momentum0975": (
        2_346,
        [(32768, 3.0, 0.975), (32768, 3.0, 0.975), (65536, 0.6, 0.975), (65536, 0.06, 0.975), (65536, 0.006, 0.975)],
        64,
        65536,
        14_076,
    ),
    # lbt's variant: m stepped 0.9 -> 0.95 -> 0.975 within one run.
    "imagenet_inception_resnet_v2_lbt_stepped_momentum": (
        2_445,
        [
            (8192, _W[0], 0.9),
            (16384, _W[1], 0.95),
            (32768, 3.0, 0.975),
            (32768, 3.0, 0.975),
            (65536, 0.6, 0.975),
            (65536, 0.06, 0.975),
            (65536, 0.006, 0.975),
        ],
        32,
        65536,
        14_076,
    ),
}

# What the paper's accounts state about the updates of each recipe named after it: (op, value).
PAPER_UPDATES = {
    "cifar10_wrn16_4_increase_lr": ("<", 6_500),  # "fewer than 6,500"
    "cifar10_wrn16_4_increase_momentum": ("<", 2_500),  # "fewer than 2,500"
    "imagenet_inception_resnet_v2_decay_lr": ("~", 14_000),  # "from 14,000 ..."
    "imagenet_inception_resnet_v2_ghost32_increase_batch": ("<", 6_000),  # "... to below 6,000"
    "imagenet_inception_resnet_v2_ghost64_momentum0975": ("<", 2_500),  # "under 2,500"
}

# lbt's own variants: their docstring says they are not a run of the paper.
VARIANTS = (
    "cifar10_wrn16_4_hybrid_5120",
    "imagenet_inception_resnet_v2_lbt_stepped_momentum",
    "imagenet_resnet50_increase_batch",
)
PAPER_RECIPES = [n for n in (*CIFAR10, *IMAGENET) if n not in VARIANTS]


def _docstring(path: Path) -> str:
    return " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())


def _plan(name: str):
    config = load_config(str(ROOT / "configs" / f"{name}.py"))
    N = get_dataset_size(config.dataset.name, config)
    return config, N, make_plan(config, N)


def test_there_are_recipes():
    names = {p.stem for p in CONFIGS}
    assert set(IMAGENET) <= names and set(CIFAR10) <= names
    assert "imagenet_inception_resnet_v2_2500" not in names  # renamed: it is lbt's stepped-momentum variant


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
    assert all(ph.global_batch % M == 0 and ph.global_batch <= N for ph in plan.phases)
    # The whole config validates on a device count the recipe is designed for (b = M / devices).
    for devices in (8, 256) if M >= 256 else (8,):
        validate(config, num_devices=devices, num_train=N)
    doc = _docstring(path)
    assert "lbt train --config configs/" + path.name in doc, "docstring must carry the command"
    assert "Hardware" in doc and "Expected" in doc
    assert "Paper" in doc and "lbt's" in doc, "docstring must say what is the paper's and what is lbt's"


@pytest.mark.parametrize("name", PAPER_RECIPES + list(VARIANTS))
def test_docstring_states_the_papers_figures_and_lbts_assumptions(name):
    doc = _docstring(ROOT / "configs" / f"{name}.py")
    assert "Paper's figures:" in doc and "lbt's assumptions:" in doc
    assert "Smith" in doc or "Goyal" in doc, "the docstring cites no source"
    if name in VARIANTS:
        assert "NOT" in doc and "lbt's" in doc[:200], "a variant's docstring must say at once that it is lbt's"


@pytest.mark.parametrize("name", sorted(CIFAR10))
def test_cifar10_recipes(name):
    """Batch, ε and m of each phase, ghost batch, B_max and optimizer of each CIFAR-10 recipe; g
    equal to the decay_lr reference's at every examples_seen; the count its docstring and
    docs/schedules.md state."""
    config, N, plan = _plan(name)
    assert N == N_CIFAR
    assert config.model.ghost_batch_size == 128 and config.train.global_microbatch == 128
    assert (config.optimizer.name, config.optimizer.weight_decay) == ("nesterov", 5e-4)
    steps, phases, cap = CIFAR10[name]
    assert plan.total_steps() == steps
    assert [(ph.start_example / N, ph.end_example / N) for ph in plan.phases] == [
        (0, 60),
        (60, 120),
        (120, 160),
        (160, 200),
    ]
    assert [ph.global_batch for ph in plan.phases] == [b for b, _, _ in phases]
    assert [ph.lr_start for ph in plan.phases] == pytest.approx([lr for _, lr, _ in phases], rel=1e-12)
    assert all(ph.lr_start == ph.lr_end for ph in plan.phases)
    assert [ph.momentum for ph in plan.phases] == [m for _, _, m in phases]
    assert plan.max_global_batch == cap
    ref = make_plan(baseline_config(config), N)
    assert ref.total_steps() == CIFAR10["cifar10_wrn16_4_decay_lr"][0]
    for s in range(0, plan.total_examples, 99_991):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12)
    assert f"Expected updates: {steps:,} optimizer steps" in _docstring(ROOT / "configs" / f"{name}.py")
    table = (ROOT / "docs" / "schedules.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("|") and f"`{name}`" in line)
    assert f"| {steps:,} |" in row


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_recipes(name):
    config, N, plan = _plan(name)
    assert config.dataset.name == "imagenet2012" and N == N_IMAGENET
    steps, phases, ghost, cap, baseline = IMAGENET[name]
    assert plan.total_steps() == steps
    assert [ph.global_batch for ph in plan.phases] == [b for b, _, _ in phases]
    assert [ph.lr_end for ph in plan.phases] == pytest.approx([lr for _, lr, _ in phases], rel=1e-5)
    assert [ph.momentum for ph in plan.phases] == [m for _, _, m in phases]
    assert config.model.ghost_batch_size == ghost and plan.max_global_batch == cap
    assert make_plan(baseline_config(config), N).total_steps() == baseline
    assert plan.total_examples == round(90 * N)
    assert plan_warnings(plan) == []  # 65,536 < N/10 = 128,116.7
    # The number is the one the docs state.
    assert f"`lbt plan`: {steps:,} optimizer steps" in _docstring(ROOT / "configs" / f"{name}.py")
    recipes = (ROOT / "docs" / "recipes.md").read_text()
    row = next(line for line in recipes.splitlines() if line.startswith("|") and f"`{name}`" in line)
    assert f"{steps:,}" in row


def test_inception_resnet_v2_runs_share_one_base():
    """The paper's four runs and lbt's variant differ from the decay_lr base only in the name,
    the ghost batch and the batch/momentum schedule; the paper's runs all have ε0 = 3.0 and
    B_max = 65,536, and their initial batch is 8,192 (1 - 0.9) / (1 - m)."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    base = flat(load_config(str(ROOT / "configs" / "imagenet_inception_resnet_v2_decay_lr.py")).to_dict())
    allowed = ("name", "model.ghost_batch_size", "schedule.batch.", "schedule.momentum_schedule.")
    runs = [n for n in IMAGENET if n.startswith("imagenet_inception_resnet_v2_") and not n.endswith("decay_lr")]
    assert len(runs) == 5
    for name in runs:
        config, N, plan = _plan(name)
        diff = {k for k, v in flat(config.to_dict()).items() if base[k] != v}
        assert all(k.startswith(allowed) for k in diff), (name, diff)
        assert config.schedule.base_lr == 3.0 and plan.max_global_batch == 65536
        m = plan.phases[0].momentum
        if "lbt" not in name:
            assert plan.phases[0].global_batch == round(8192 * 0.1 / (1 - m))
            assert {ph.momentum for ph in plan.phases} == {m}  # the paper's runs hold m fixed


@pytest.mark.parametrize("name", sorted(PAPER_UPDATES))
def test_plans_reproduce_the_papers_update_counts(name):
    """Under lbt's assumptions (CIFAR-10: the original 200-epoch schedule; ImageNet: 90 epochs,
    ε ÷ 10 at 30, 60, 80) each plan gives the update count the paper's accounts state."""
    _, _, plan = _plan(name)
    op, value = PAPER_UPDATES[name]
    steps = plan.total_steps()
    if op == "<":
        assert steps < value
    else:  # "from 14,000": about 14,000, not fewer
        assert value <= steps < 1.01 * value


def test_the_cap_rule_is_the_one_the_update_counts_need():
    """Keeping the previous B where a full factor would overshoot B_max (instead of B = B_max
    with ε absorbing the rest) would miss the paper's counts: the CIFAR-10 increased-momentum run
    would stay at B = 3,200 (3,125 updates, not "fewer than 2,500") and ImageNet run (a) at
    B = 8,192 (14,076, not "below 6,000")."""
    assert math.ceil(200 * N_CIFAR / 3200) == 3125 > 2500
    assert math.ceil(90 * N_IMAGENET / 8192) == 14_076 > 6000
    assert _plan("cifar10_wrn16_4_increase_momentum")[2].total_steps() < 2500
    assert _plan("imagenet_inception_resnet_v2_ghost32_increase_batch")[2].total_steps() < 6000


def test_plan_cli_json_every_recipe(capsys, tmp_path):
    """`lbt plan --json` gives each run as its account describes it: B, ε and m per phase, the
    ghost batch and B_max."""
    from lbt.tools.plan_report import main

    table = {**{k: (s, p, 128, c, 78_125) for k, (s, p, c) in CIFAR10.items()}, **IMAGENET}
    for name, (steps, phases, ghost, cap, baseline) in table.items():
        rc = main(["--config", str(ROOT / "configs" / f"{name}.py"), "--json", "--no-plot", "--out", str(tmp_path)])
        assert rc == 0
        data = json.loads(capsys.readouterr().out)
        assert data["total_steps"] == steps and data["baseline_steps"] == baseline
        assert [p["global_batch"] for p in data["phases"]] == [b for b, _, _ in phases]
        assert [p["lr_end"] for p in data["phases"]] == pytest.approx([lr for _, lr, _ in phases], rel=1e-5)
        assert [p["momentum"] for p in data["phases"]] == [m for _, _, m in phases]
        assert (data["ghost_batch"], data["max_global_batch"]) == (ghost, cap)


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


@pytest.mark.parametrize(
    "name", ["imagenet_inception_resnet_v2_lbt_stepped_momentum", "imagenet_inception_resnet_v2_ghost64_momentum0975"]
)
def test_inception_resnet_v2_noise_scale_matches_the_reference(name):
    """g matches the m = 0.9, B = 8192 reference in every phase (stepped or constant high m)."""
    config, N, plan = _plan(name)
    ref = make_plan(baseline_config(config), N)
    assert {ph.momentum for ph in ref.phases} == {0.9} and {ph.global_batch for ph in ref.phases} == {8192}
    for s in (0, N // 4, N, 2 * N, 10 * N, 45 * N, 70 * N, 85 * N, round(0.5 * N), round(1.5 * N)):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-9)
    assert plan.at(10 * N).lr == pytest.approx(3.0)
    assert plan.at(45 * N).lr == pytest.approx(0.6)


def test_inception_resnet_v2_steps_by_hand():
    """Run (d): 1,173 + 1,173 = 2,346. lbt's stepped variant: 2,445 = 79 + 78 + 1,115 + 1,173: each
    batch size's steps continue from where the previous phase's last step ended (milestones at
    round(epoch * N) examples)."""
    N = N_IMAGENET
    total = 90 * N  # 115,305,030
    a, b, e30 = round(0.5 * N), round(1.5 * N), 30 * N  # 640,584 (half to even), 1,921,750, 38,435,010
    assert (a, b, e30) == (640_584, 1_921_750, 38_435_010)
    d0 = -(-e30 // 32768)  # ceil(38,435,010 / 32,768) = 1,173
    d1 = -(-(total - d0 * 32768) // 65536)  # ceil(76,869,146 / 65,536) = 1,173
    assert (d0, d1) == (1173, 1173)
    assert d0 + d1 == IMAGENET["imagenet_inception_resnet_v2_ghost64_momentum0975"][0]
    s = 0
    n0 = -(-(a - s) // 8192)  # ceil(640,584 / 8,192) = 79
    s += n0 * 8192  # 647,168
    n1 = -(-(b - s) // 16384)  # ceil(1,274,582 / 16,384) = 78
    s += n1 * 16384  # 1,925,120
    n2 = -(-(e30 - s) // 32768)  # ceil(36,509,890 / 32,768) = 1,115
    s += n2 * 32768  # 38,461,440
    n3 = -(-(total - s) // 65536)  # ceil(76,843,590 / 65,536) = 1,173
    assert (n0, n1, n2, n3) == (79, 78, 1115, 1173)
    assert n0 + n1 + n2 + n3 == 2445 == IMAGENET["imagenet_inception_resnet_v2_lbt_stepped_momentum"][0]
    steps = _plan("imagenet_inception_resnet_v2_lbt_stepped_momentum")[2].phase_steps()
    assert (steps[0], steps[1], steps[2] + steps[3], sum(steps[4:])) == (79, 78, 1115, 1173)
    assert "under 2,500" in _docstring(ROOT / "configs" / "imagenet_inception_resnet_v2_ghost64_momentum0975.py")


def test_recipes_md_has_the_paper_vs_plan_table(tmp_path):
    """docs/recipes.md compares, for every recipe, the paper's account with lbt's plan: one row
    per configs/*.py, carrying the steps `lbt plan` prints."""
    text = (ROOT / "docs" / "recipes.md").read_text()
    start = text.index("## The paper's account and lbt's plan")
    section = text[start : text.index("\n## ", start + 1)]
    for p in CONFIGS:
        rows = [line for line in section.splitlines() if line.startswith("|") and f"`{p.stem}`" in line]
        assert len(rows) == 1, p.stem
        config = load_config(str(p))
        if config.dataset.name == "npz":
            config = load_config(str(p), [f"--config.dataset.path={_npz_path(tmp_path)}"])
        steps = make_plan(config, get_dataset_size(config.dataset.name, config)).total_steps()
        assert f"{steps:,}" in rows[0], (p.stem, steps)
