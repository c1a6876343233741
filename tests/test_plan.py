"""The Plan over examples seen: exact step counts, equal noise scale across modes, validation."""

from __future__ import annotations

import math

import ml_collections
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lbt.errors import ConfigError
from lbt.schedules import lr as lr_lib
from lbt.schedules.plan import (
    baseline_config,
    default_schedule_config,
    make_plan,
    plan_warnings,
    to_batch_growth,
    validate_schedule,
)

N_CIFAR = 50_000
MODES = ("decay_lr", "increase_batch", "hybrid", "increase_lr", "increase_momentum")


def make_config(M: int = 128, **schedule) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.train = ml_collections.ConfigDict({"global_microbatch": M})
    c.schedule = default_schedule_config()
    for key, value in schedule.items():
        node = c.schedule
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def cifar(mode: str, **kw) -> ml_collections.ConfigDict:
    base = dict(
        epochs=200.0,
        base_lr=0.1,
        momentum=0.9,
        global_batch=128,
        lr__name="step",
        lr__milestones=(60.0, 120.0, 160.0),
        lr__factor=5.0,
        batch__mode=mode,
    )
    base.update(kw)
    return make_config(128, **base)


def hand_steps(phases: list[tuple[int, int, int]]) -> int:
    """Closed-form step count: each phase (start, end, B) continues from where the last step ended."""
    s, total = 0, 0
    for _, end, B in phases:
        n = max(0, math.ceil((end - s) / B))
        s += n * B
        total += n
    return total


# ---------------------------------------------------------------------------------------------
# Step counts of the CIFAR-10 WRN-16-4 schedule (paper section 5.1), derived by hand. The recipe
# files' totals are asserted once, in tests/test_recipes.py.


def test_decay_lr_steps_cifar():
    plan = make_plan(cifar("decay_lr"), N_CIFAR)
    assert plan.total_examples == 10_000_000
    assert plan.total_steps() == math.ceil(10_000_000 / 128)
    assert plan.phase_steps() == [23438, 23437, 15625, 15625]


def test_increase_batch_steps_cifar():
    plan = make_plan(cifar("increase_batch"), N_CIFAR)
    # Phase 1: ceil(3e6/128) = 23438 steps -> s = 3,000,064. Phase 2: ceil(2,999,936/640) = 4688
    # -> s = 6,000,384. Phase 3: ceil(1,999,616/3200) = 625 -> s = 8,000,384.
    # Phase 4: ceil(1,999,616/16000) = 125 -> s = 10,000,384 (overshoot 384).
    assert [p.global_batch for p in plan.phases] == [128, 640, 3200, 16000]
    assert plan.phase_steps() == [23438, 4688, 625, 125]
    assert plan.total_steps() == sum(plan.phase_steps())
    assert plan.total_steps() == hand_steps(
        [(0, 3_000_000, 128), (0, 6_000_000, 640), (0, 8_000_000, 3200), (0, 10_000_000, 16000)]
    )
    assert all(p.lr_start == 0.1 == p.lr_end for p in plan.phases)


def test_hybrid_steps_cifar():
    plan = make_plan(cifar("hybrid", batch__max_global_batch=5120), N_CIFAR)
    assert [p.global_batch for p in plan.phases] == [128, 640, 3200, 5120]
    assert plan.phase_steps() == [23438, 4688, 625, 391]
    assert plan.total_steps() == hand_steps(
        [(0, 3_000_000, 128), (0, 6_000_000, 640), (0, 8_000_000, 3200), (0, 10_000_000, 5120)]
    )
    assert plan.phases[-1].lr_start == pytest.approx(0.1 * 5120 / 16000)


def test_papers_hybrid_steps_cifar():
    """Smith et al. 2018's CIFAR-10 hybrid: B x5 at the first step (640 = B_max), then constant
    and ε ÷ 5 at the later steps."""
    plan = make_plan(cifar("hybrid", batch__max_global_batch=640), N_CIFAR)
    assert [p.global_batch for p in plan.phases] == [128, 640, 640, 640]
    assert [p.lr_start for p in plan.phases] == [0.1, 0.1, 0.02, 0.004]
    # 23,438 -> 3,000,064; ceil(2,999,936/640) = 4,688 -> 6,000,384; ceil(1,999,616/640) = 3,125
    # -> 8,000,384; ceil(1,999,616/640) = 3,125.
    assert plan.phase_steps() == [23438, 4688, 3125, 3125]
    assert (
        plan.total_steps()
        == 34_376
        == hand_steps([(0, 3_000_000, 128), (0, 6_000_000, 640), (0, 8_000_000, 640), (0, 10_000_000, 640)])
    )


def test_increase_momentum_with_lr_factor_is_the_papers_run():
    """Section 5.2's increased momentum coefficient: ε 0.5, m 0.98, B 3,200 (= 128 x 5 x 5) from
    the start, B_max 5,120; g equals decay_lr's everywhere; 2,305 < 2,500 updates."""
    plan = make_plan(
        cifar("increase_momentum", batch__final_momentum=0.98, batch__lr_factor=5.0, batch__max_global_batch=5120),
        N_CIFAR,
    )
    assert [(p.global_batch, p.lr_start, p.momentum) for p in plan.phases] == [
        (3200, 0.5, 0.98),
        (5120, 0.16, 0.98),
        (5120, 0.032, 0.98),
        (5120, 0.0064, 0.98),
    ]
    # ceil(3e6/3200) = 938 -> 3,001,600; ceil(2,998,400/5120) = 586 -> 6,001,920; 391 -> 8,003,840; 390.
    assert plan.phase_steps() == [938, 586, 391, 390]
    assert (
        plan.total_steps()
        == 2305
        == hand_steps([(0, 3_000_000, 3200), (0, 6_000_000, 5120), (0, 8_000_000, 5120), (0, 10_000_000, 5120)])
    )
    ref = make_plan(cifar("decay_lr"), N_CIFAR)
    for s in range(0, plan.total_examples, 49_999):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12), s


def test_hybrid_default_bmax_is_n_over_10():
    plan = make_plan(cifar("hybrid"), N_CIFAR)
    assert max(p.global_batch for p in plan.phases) == 4992  # 5000 rounded down to 39 * 128


@pytest.mark.parametrize(
    "mode,extra", [("increase_lr", {"batch__lr_factor": 5.0}), ("increase_momentum", {"batch__final_momentum": 0.98})]
)
def test_increase_lr_and_momentum_steps_cifar(mode, extra):
    plan = make_plan(cifar(mode, batch__max_global_batch=5120, **extra), N_CIFAR)
    assert [p.global_batch for p in plan.phases] == [640, 3200, 5120, 5120]
    assert plan.phase_steps() == [4688, 938, 391, 390]
    assert plan.total_steps() == hand_steps(
        [(0, 3_000_000, 640), (0, 6_000_000, 3200), (0, 8_000_000, 5120), (0, 10_000_000, 5120)]
    )
    if mode == "increase_momentum":
        assert plan.phases[0].momentum == 0.98 and plan.phases[0].lr_start == 0.1
    else:
        assert plan.phases[0].lr_start == 0.5


@pytest.mark.parametrize("mode", MODES)
def test_noise_scale_equal_to_decay_lr_everywhere(mode):
    extra = {"batch__max_global_batch": 5120, "batch__lr_factor": 5.0} if mode != "increase_batch" else {}
    plan = make_plan(cifar(mode, **extra), N_CIFAR)
    ref = make_plan(cifar("decay_lr"), N_CIFAR)
    for s in list(range(0, 10_000_000, 9973)) + [
        2_999_999,
        3_000_000,
        5_999_999,
        6_000_000,
        7_999_999,
        8_000_000,
        9_999_999,
    ]:
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12), s
        if mode == "increase_batch":
            assert plan.at(s).global_batch * ref.at(s).lr == pytest.approx(128 * plan.at(s).lr, rel=1e-12)


def test_steps_simulation_matches_closed_form():
    plan = make_plan(cifar("increase_batch", epochs=20.0, lr__milestones=(6.0, 12.0, 16.0)), N_CIFAR)
    seen = list(plan.steps())
    assert len(seen) == plan.total_steps()
    per_phase = [0] * len(plan.phases)
    for _step, _s, p in seen:
        per_phase[p.phase] += 1
    assert per_phase == plan.phase_steps()
    last_step, last_s, last_p = seen[-1]
    assert last_s < plan.total_examples <= last_s + last_p.global_batch


# ---------------------------------------------------------------------------------------------
# The exact noise scale, the N/10 warning, and B <= N


def test_exact_noise_scale_in_points_and_phases():
    """noise_scale = εN/(B(1-m)); noise_scale_exact = ε(N/B - 1)/(1-m). At B = 16,000 of
    N = 50,000 the approximation overstates the exact g by 50,000/34,000 - 1 = 47%."""
    plan = make_plan(cifar("increase_batch"), N_CIFAR)
    for _step, _s, p in list(plan.steps())[::997]:
        assert p.noise_scale == pytest.approx(p.lr * N_CIFAR / (p.global_batch * (1 - p.momentum)), rel=1e-12)
        assert p.noise_scale_exact == pytest.approx(
            p.lr * (N_CIFAR / p.global_batch - 1) / (1 - p.momentum), rel=1e-12
        )
    last = plan.phases[-1]
    assert (last.global_batch, last.noise_scale, last.noise_scale_exact) == (
        16000,
        pytest.approx(3.125),
        pytest.approx(2.125),
    )
    assert (
        last.noise_scale / last.noise_scale_exact - 1
        == pytest.approx(16000 / 34000)
        == pytest.approx(0.4706, abs=1e-4)
    )
    assert last.noise_scale_exact_end == last.noise_scale_exact
    for ph in plan.phases:
        assert plan.at(ph.start_example).noise_scale_exact == ph.noise_scale_exact
    # Warmup: the exact g varies inside the phase like ε.
    w = make_plan(make_config(128, epochs=10.0, lr__warmup_epochs=2.0, lr__warmup_start_factor=0.5), N_CIFAR)
    assert w.phases[0].noise_scale_exact == pytest.approx(w.phases[0].noise_scale_exact_end / 2, rel=1e-4)


def test_plan_warnings_name_the_phases_above_n_over_10():
    assert plan_warnings(make_plan(cifar("decay_lr"), N_CIFAR)) == []
    assert plan_warnings(make_plan(cifar("hybrid", batch__max_global_batch=640), N_CIFAR)) == []
    # B = N/10 exactly is fine; one multiple of M above it warns.
    assert plan_warnings(make_plan(make_config(128, global_batch=5000 // 128 * 128), N_CIFAR)) == []
    assert plan_warnings(make_plan(make_config(128, global_batch=1280), 12_800)) == []  # B = N/10
    (line,) = plan_warnings(make_plan(make_config(128, global_batch=1408), 12_800))
    assert line.startswith("phase 0 (epochs 0-90): B = 1408 > N/10 = 1280;") and "by 12.4% (B/(N - B))" in line
    # Consecutive phases with the same B are one line.
    (line,) = plan_warnings(
        make_plan(cifar("increase_lr", batch__lr_factor=5.0, batch__max_global_batch=5120), N_CIFAR)
    )
    assert line.startswith("phases 2-3 (epochs 120-200): B = 5120 > N/10 = 5000;") and "11.4%" in line
    lines = plan_warnings(make_plan(cifar("increase_batch"), N_CIFAR))
    assert lines == [
        "phase 3 (epochs 160-200): B = 16000 > N/10 = 5000; the noise scale g = εN/(B(1 - m)) overstates "
        "the exact ε(N/B - 1)/(1 - m) by 47.1% (B/(N - B)); see noise_scale_exact"
    ]
    # B = N: the exact g is 0.
    (line,) = plan_warnings(make_plan(make_config(128, epochs=2.0, global_batch=1280), 1280))
    assert "infinitely (the exact g is 0 at B = N)" in line
    assert make_plan(make_config(128, epochs=2.0, global_batch=1280), 1280).phases[0].noise_scale_exact == 0.0


@pytest.mark.parametrize(
    "field,kw",
    [
        ("schedule.global_batch", dict(global_batch=51_200)),
        ("schedule.batch.lr_factor", dict(batch__mode="increase_lr", batch__lr_factor=500.0)),
        ("schedule.batch.final_momentum", dict(batch__mode="increase_momentum", batch__final_momentum=0.9998)),
        ("schedule.batch.max_global_batch", dict(batch__mode="increase_batch", lr__factor=10.0)),
        (
            "schedule.batch.max_global_batch",
            dict(batch__mode="hybrid", lr__factor=10.0, batch__max_global_batch=64_000),
        ),
        (
            "schedule.batch.max_global_batch",
            dict(momentum_schedule__milestones=(100.0,), momentum_schedule__values=(0.99999,)),
        ),
    ],
)
def test_a_batch_larger_than_n_is_refused(field, kw):
    """B > N makes the exact g negative: a ConfigError naming the field that produced the batch."""
    config = cifar(kw.pop("batch__mode", "decay_lr"), **kw)
    with pytest.raises(ConfigError) as e:
        validate_schedule(config, N_CIFAR)
    assert e.value.field == field
    text = str(e.value)
    assert text.startswith(f"config.{field}: ") and "more than the N=50000 training examples" in text
    assert "\n" not in text


def test_a_batch_equal_to_n_is_allowed():
    plan = make_plan(make_config(128, epochs=3.0, global_batch=1280), 1280)
    assert plan.total_steps() == 3 and plan.phases[0].noise_scale_exact == 0.0
    capped = make_plan(cifar("increase_batch", lr__factor=10.0, batch__max_global_batch=49_920), N_CIFAR)
    assert max(p.global_batch for p in capped.phases) == 49_920


@pytest.mark.parametrize(
    "optimizer,overrides,named",
    [
        ("sgd", {}, "schedule.momentum=0.9"),
        ("sgd", {"momentum": 0.0, "batch.mode": "increase_momentum"}, "increase_momentum"),
        (
            "sgd",
            {"momentum": 0.0, "momentum_schedule.milestones": (5.0,), "momentum_schedule.values": (0.5,)},
            "momentum_schedule",
        ),
        ("adam", {"batch.mode": "increase_momentum", "batch.final_momentum": 0.95}, "b1"),
        ("lamb", {"momentum_schedule.milestones": (5.0,), "momentum_schedule.values": (0.95,)}, "b1"),
    ],
)
def test_optimizer_that_ignores_the_plans_momentum_is_a_config_error(optimizer, overrides, named):
    """sgd has no momentum; adam/lamb use m as b1 of a normalised average (no 1/(1-m) gain), so
    a momentum the Plan's g and B ∝ 1/(1-m) assume is a ConfigError naming the fields."""
    from lbt.config import base_config, validate

    c = base_config()
    c.optimizer.name = optimizer
    for key, value in overrides.items():
        node = c.schedule
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ConfigError) as e:
        validate(c, num_devices=1, num_train=1438)
    text = str(e.value)
    assert e.value.field == "optimizer.name" and named in text and "\n" not in text
    assert text.startswith(f"config.optimizer.name: '{optimizer}' ")


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "lars", "adam", "lamb"])
def test_optimizers_whose_momentum_matches_the_plan_validate(optimizer):
    from lbt.config import base_config, validate

    c = base_config()
    c.optimizer.name = optimizer
    if optimizer == "sgd":
        c.schedule.momentum = 0.0
    validate(c, num_devices=1, num_train=1438)
    if optimizer in ("momentum", "nesterov", "lars"):  # the B ∝ 1/(1-m) modes too
        c.schedule.batch.mode, c.schedule.batch.final_momentum = "increase_momentum", 0.95
        validate(c, num_devices=1, num_train=1438)


# ---------------------------------------------------------------------------------------------
# LR shapes inside the plan


def test_clr_in_plan_uses_exact_iteration():
    c = make_config(
        32, epochs=7.0, base_lr=0.01, global_batch=96, lr__name="triangular2", lr__max_lr=0.07, lr__step_size=45
    )
    plan = make_plan(c, 1000)
    for step, _s, p in plan.steps():
        assert p.lr == pytest.approx(lr_lib.triangular2(step, 0.01, 0.07, 45), rel=1e-12)


def test_clr_iteration_exact_with_increase_lr():
    c = make_config(
        32,
        epochs=5.0,
        base_lr=0.01,
        global_batch=64,
        lr__name="exp_range",
        lr__max_lr=0.05,
        lr__step_size=10,
        lr__gamma=0.99,
        batch__mode="increase_lr",
        batch__lr_factor=2.0,
    )
    plan = make_plan(c, 1000)
    assert plan.phases[0].global_batch == 128
    for step, _s, p in plan.steps():
        assert p.lr == pytest.approx(2.0 * lr_lib.exp_range(step, 0.01, 0.05, 10, 0.99), rel=1e-12)


def test_onecycle_in_plan():
    c = make_config(16, epochs=4.0, base_lr=0.1, global_batch=48, lr__name="onecycle", lr__max_lr=0.5)
    plan = make_plan(c, 1000)
    T = plan.total_steps()
    assert T == math.ceil(4000 / 48)
    for step, _s, p in plan.steps():
        assert p.lr == pytest.approx(lr_lib.onecycle(step, T, 0.5, 0.3, 25.0, 1e4), rel=1e-12)


def test_warmup_goyal():
    c = make_config(
        64, epochs=10.0, base_lr=3.2, global_batch=8192, lr__warmup_epochs=5.0, lr__warmup_start_factor=1 / 32
    )
    plan = make_plan(c, 100_000)
    assert plan.at(0).lr == pytest.approx(0.1)
    assert plan.at(250_000).lr == pytest.approx(0.1 + (3.2 - 0.1) / 2)
    assert plan.at(500_000).lr == 3.2
    assert [p.start_example for p in plan.phases] == [0, 500_000]


def test_warmup_with_increase_batch_keeps_g():
    kw = dict(
        epochs=30.0,
        global_batch=64,
        lr__name="step",
        lr__milestones=(10.0, 20.0),
        lr__factor=4.0,
        lr__warmup_epochs=2.0,
    )
    plan = make_plan(make_config(64, batch__mode="increase_batch", **kw), 2000)
    ref = make_plan(make_config(64, batch__mode="decay_lr", **kw), 2000)
    for s in range(0, 60_000, 97):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12)
    assert plan.at(0).lr == 0.0


def test_cosine_growth_keeps_g_and_multiples():
    kw = dict(epochs=50.0, global_batch=64, lr__name="cosine", batch__rounding="down")
    plan = make_plan(make_config(32, batch__mode="hybrid", **kw), 5000)
    ref = make_plan(make_config(32, batch__mode="decay_lr", **kw), 5000)
    Bs = [p.global_batch for p in plan.phases]
    assert Bs == sorted(Bs) and Bs[0] == 64 and Bs[-1] == 480  # N/10 = 500 -> 480
    assert all(b % 32 == 0 for b in Bs)
    for s in range(0, plan.total_examples, 331):
        p = plan.at(s)
        assert p.noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-9)
        # B is the largest multiple of M not above B0 / cosine (until B_max): ε never exceeds ε0.
        assert p.lr <= 0.1 + 1e-12
    assert plan.total_steps() < ref.total_steps()


def test_to_batch_growth_step_and_cosine():
    c = cifar("decay_lr")
    hybrid = to_batch_growth(c, N_CIFAR, max_global_batch=5120)
    assert hybrid.schedule.batch.mode == "hybrid" and c.schedule.batch.mode == "decay_lr"
    assert (
        make_plan(hybrid, N_CIFAR).phases == make_plan(cifar("hybrid", batch__max_global_batch=5120), N_CIFAR).phases
    )
    cos = make_config(128, epochs=100.0, lr__name="cosine")
    grown = make_plan(to_batch_growth(cos, N_CIFAR), N_CIFAR)
    ref = make_plan(cos, N_CIFAR)
    for s in range(0, 5_000_000, 49_999):
        assert grown.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-9)
    assert max(p.global_batch for p in grown.phases) == 4992
    with pytest.raises(ConfigError):
        to_batch_growth(make_config(128, lr__name="triangular", lr__max_lr=1.0), N_CIFAR)


def test_non_multiple_growth_with_rounding():
    kw = dict(
        epochs=30.0,
        global_batch=128,
        lr__name="step",
        lr__milestones=(10.0, 20.0),
        lr__factor=2.5,
        batch__mode="increase_batch",
    )
    with pytest.raises(ConfigError) as e:
        make_plan(make_config(128, **kw), 1000)
    assert e.value.field == "schedule.lr.factor"
    plan = make_plan(make_config(128, batch__rounding="down", **kw), 1000)
    assert [p.global_batch for p in plan.phases] == [128, 256, 768]  # 320 -> 256, 800 -> 768
    ref = make_plan(make_config(128, **{**kw, "batch__mode": "decay_lr"}), 1000)
    for s in range(0, 30_000, 101):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# Stepped momentum (Smith et al. 2018: B ∝ 1/(1 - m))


def test_stepped_momentum_keeps_g_across_the_step():
    """m 0.9 -> 0.95 -> 0.975 at epochs 20 and 40 doubles B each time; g is continuous there and
    equals the decay_lr reference (m = 0.9, B = 128) everywhere. (N = 100,000: the last batch,
    64,000, must not exceed N.)"""
    N = 100_000
    kw = dict(momentum_schedule__milestones=(20.0, 40.0), momentum_schedule__values=(0.95, 0.975))
    plan = make_plan(cifar("increase_batch", **kw), N)
    ref = make_plan(cifar("decay_lr"), N)
    # B: 128 (m .9) / 256 (m .95) / 512 (m .975) / then x5 at epochs 60, 120, 160.
    assert [(p.global_batch, p.momentum) for p in plan.phases] == [
        (128, 0.9),
        (256, 0.95),
        (512, 0.975),
        (2560, 0.975),
        (12800, 0.975),
        (64000, 0.975),
    ]
    for edge in (20 * N, 40 * N):
        before, after = plan.at(edge - 1), plan.at(edge)
        assert after.global_batch == 2 * before.global_batch and after.momentum > before.momentum
        assert after.lr == before.lr == 0.1  # ε unchanged across the step
        assert after.noise_scale == pytest.approx(before.noise_scale, rel=1e-12)
    for s in range(0, plan.total_examples, 49_999):
        assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12), s
    # Steps by hand (each phase continues from where the last step ended).
    e = N
    phases = [
        (0, 20 * e, 128),
        (20 * e, 40 * e, 256),
        (40 * e, 60 * e, 512),
        (60 * e, 120 * e, 2560),
        (120 * e, 160 * e, 12800),
        (160 * e, 200 * e, 64000),
    ]
    assert plan.total_steps() == hand_steps(phases) == 15625 + 7813 + 3906 + 2344 + 313 + 63 == 30064
    with pytest.raises(ConfigError, match="reaches 64000 in phase 5"):  # on CIFAR-10's N = 50,000
        make_plan(cifar("increase_batch", **kw), N_CIFAR)
    # The baseline that `lbt plan` compares with drops the momentum schedule.
    assert make_plan(baseline_config(cifar("increase_batch", **kw)), N).phases == ref.phases


def test_stepped_momentum_in_decay_lr_and_hybrid_cap():
    kw = dict(momentum_schedule__milestones=(30.0,), momentum_schedule__values=(0.98,))
    plan = make_plan(cifar("decay_lr", **kw), N_CIFAR)
    assert [p.global_batch for p in plan.phases] == [128, 640, 640, 640, 640]  # only m grows B
    assert [p.lr_start for p in plan.phases] == pytest.approx([0.1, 0.1, 0.02, 0.004, 0.0008])
    hybrid = make_plan(cifar("hybrid", batch__max_global_batch=5120, **kw), N_CIFAR)
    ref = make_plan(cifar("decay_lr"), N_CIFAR)
    assert [p.global_batch for p in hybrid.phases] == [128, 640, 3200, 5120, 5120]
    for s in range(0, hybrid.total_examples, 49_999):
        assert hybrid.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-12), s
    # Cosine growth with a momentum step keeps g too (rounding down, ε absorbs).
    ckw = dict(epochs=50.0, global_batch=64, lr__name="cosine", batch__rounding="down")
    cos = make_plan(
        make_config(
            32, batch__mode="hybrid", momentum_schedule__milestones=(10.0,), momentum_schedule__values=(0.95,), **ckw
        ),
        5000,
    )
    cref = make_plan(make_config(32, batch__mode="decay_lr", **ckw), 5000)
    Bs = [p.global_batch for p in cos.phases]
    assert Bs == sorted(Bs) and cos.at(10 * 5000 - 1).momentum == 0.9 and cos.at(10 * 5000).momentum == 0.95
    for s in range(0, cos.total_examples, 331):
        assert cos.at(s).noise_scale == pytest.approx(cref.at(s).noise_scale, rel=1e-9)


@pytest.mark.slow
def test_trainer_feeds_the_plans_momentum_to_the_optimizer(tmp_path):
    """Train a tiny digits run whose momentum steps 0.9 -> 0.95 at epoch 1 (B doubles there, ε
    halves at 1.5) and read back what the optimizer was given: ``opt_state.hyperparams`` in every
    checkpoint equals ``plan.at(s)`` of that checkpoint's last step (s = its examples_seen at the
    start), and each metrics.jsonl train record follows the plan step by step."""
    import numpy as np
    import orbax.checkpoint as ocp

    from lbt.config import base_config
    from lbt.data.registry import get_dataset_size
    from lbt.train.loop import train
    from lbt.train.metrics import read_jsonl

    c = base_config()
    c.model.width, c.model.ghost_batch_size, c.train.global_microbatch = 8, 4, 32
    c.train.progress, c.train.eval_every_epochs = False, 0.0
    c.checkpoint.every_examples, c.checkpoint.keep = 700, 20  # every checkpoint is kept
    s = c.schedule
    s.epochs, s.global_batch, s.batch.mode, s.lr.milestones = 2.0, 32, "decay_lr", (1.5,)
    s.momentum_schedule.milestones, s.momentum_schedule["values"] = (1.0,), (0.95,)
    plan = make_plan(c, get_dataset_size(c.dataset.name, c))
    starts = [start for _, start, _ in plan.steps()]  # examples_seen at the start of each step

    summary = train(c, tmp_path)

    assert summary["optimizer_steps"] == len(starts)
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "split" not in r and "event" not in r]
    assert [r["step"] for r in records] == list(range(1, len(starts) + 1))
    for r, start in zip(records, starts):
        p = plan.at(start)
        assert (r["examples_seen"] - r["global_batch"], r["global_batch"], r["momentum"]) == (
            start,
            p.global_batch,
            p.momentum,
        )
    steps = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert steps[-1] == len(starts)
    used = []
    for step in steps:
        state = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(step) / "state")
        hp = {k: np.asarray(v) for k, v in state["opt_state"]["hyperparams"].items()}
        p = plan.at(starts[step - 1])
        assert hp["momentum"] == np.float32(p.momentum), step
        assert hp["learning_rate"] == np.float32(p.lr), step
        used.append((float(np.float32(p.momentum)), float(np.float32(p.lr))))
    # The checkpoints straddle both steps of the schedule; the last one has the final momentum.
    assert set(used) == {(np.float32(m), np.float32(lr)) for m, lr in [(0.9, 0.1), (0.95, 0.1), (0.95, 0.05)]}
    assert plan.at(starts[-1]).momentum == 0.95


# ---------------------------------------------------------------------------------------------
# Property tests


@st.composite
def configs(draw):
    M = draw(st.sampled_from([8, 16, 32]))
    N = draw(st.integers(100, 3000))
    epochs = draw(st.sampled_from([1.0, 2.5, 6.0, 10.0]))
    mode = draw(st.sampled_from(MODES))
    name = draw(
        st.sampled_from(
            ["constant", "step", "cosine"]
            if mode in ("increase_batch", "hybrid")
            else ["constant", "step", "cosine", "triangular", "onecycle"]
        )
    )
    k = draw(st.integers(1, 4))
    n_ms = draw(st.integers(0, 3))
    ms = sorted(set(round(x, 2) for x in draw(st.lists(st.floats(0.05, 0.95), min_size=n_ms, max_size=n_ms))))
    c = make_config(
        M,
        epochs=epochs,
        base_lr=draw(st.sampled_from([0.05, 0.1, 0.4])),
        momentum=draw(st.sampled_from([0.0, 0.9])),
        global_batch=k * M,
        lr__name=name,
        lr__milestones=tuple(m * epochs for m in ms),
        lr__factor=float(draw(st.sampled_from([2, 3, 5, 10]))),
        lr__max_lr=1.0,
        lr__step_size=draw(st.integers(1, 50)),
        lr__warmup_epochs=draw(st.sampled_from([0.0, 0.3])),
        batch__mode=mode,
        batch__max_global_batch=draw(st.sampled_from([0, 8 * M, 64 * M])),
        batch__rounding="down",
        batch__lr_factor=float(draw(st.sampled_from([1, 2, 4]))),
        batch__final_momentum=0.95,
    )
    if mode != "increase_momentum" and draw(st.booleans()):  # stepped momentum (B x (1-m)/(1-m'))
        m0 = c.schedule.momentum
        values = draw(
            st.sampled_from([(0.5,), (0.5, 0.75), (0.3, 0.6)] if m0 == 0.0 else [(0.95,), (0.95, 0.975), (0.93, 0.97)])
        )
        at = sorted(
            set(round(x, 2) for x in draw(st.lists(st.floats(0.05, 0.95), min_size=len(values), max_size=len(values))))
        )
        assume(len(at) == len(values))
        c.schedule.momentum_schedule.milestones = tuple(a * epochs for a in at)
        c.schedule.momentum_schedule.values = values
    return c, N


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_plan_properties(cfg):
    config, N = cfg
    M = config.train.global_microbatch
    try:
        plan = make_plan(config, N)
    except ConfigError as e:
        # The drawn B_max is below the scaled initial batch, or the grown batch exceeds N: real errors.
        assert e.field == "schedule.batch.max_global_batch" or "training examples" in str(e), str(e)
        assume(False)
    assert all(p.global_batch <= N for p in plan.phases)
    # Phases cover [0, total_examples) without gaps or overlaps.
    assert plan.phases[0].start_example == 0 and plan.phases[-1].end_example == plan.total_examples
    for a, b in zip(plan.phases, plan.phases[1:]):
        assert a.end_example == b.start_example and a.start_example < a.end_example
    assert all(p.global_batch % M == 0 and p.global_batch > 0 for p in plan.phases)
    # The simulated run: examples_seen strictly increasing, step index contiguous, B multiple of M.
    prev, count = -1, 0
    for step, s, p in plan.steps():
        assert step == count and s > prev and p.global_batch % M == 0
        assert plan.phases[p.phase].start_example <= s < plan.phases[p.phase].end_example
        prev, count = s, count + 1
    assert count == plan.total_steps() == sum(plan.phase_steps())
    # Every mode keeps the noise scale of its decay_lr reference.
    if config.schedule.lr.name in ("constant", "step", "cosine"):
        ref = make_plan(baseline_config(config), N)
        for s in range(0, plan.total_examples, max(1, plan.total_examples // 97)):
            assert plan.at(s).noise_scale == pytest.approx(ref.at(s).noise_scale, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "field,kw",
    [
        ("schedule.base_lr", dict(base_lr=0.0)),
        ("schedule.base_lr", dict(base_lr=-0.1)),
        ("schedule.epochs", dict(epochs=0.0)),
        ("schedule.momentum", dict(momentum=1.0)),
        ("schedule.global_batch", dict(global_batch=100)),
        ("schedule.global_batch", dict(global_batch=0)),
        ("schedule.lr.milestones", dict(lr__name="step", lr__milestones=(60.0, 30.0))),
        ("schedule.lr.milestones", dict(lr__name="step", lr__milestones=(60.0, 60.0))),
        ("schedule.lr.milestones", dict(lr__name="step", lr__milestones=(10.0, 95.0))),
        ("schedule.lr.factor", dict(lr__name="step", lr__milestones=(10.0,), lr__factor=0.5)),
        ("schedule.lr.name", dict(lr__name="linear")),
        ("schedule.batch.mode", dict(batch__mode="grow")),
        ("schedule.batch.mode", dict(lr__name="triangular", lr__max_lr=1.0, batch__mode="increase_batch")),
        ("schedule.batch.rounding", dict(batch__rounding="up")),
        ("schedule.batch.rounding", dict(lr__name="cosine", batch__mode="hybrid")),
        ("schedule.lr.max_lr", dict(lr__name="triangular", lr__max_lr=0.05)),
        ("schedule.lr.step_size", dict(lr__name="triangular", lr__max_lr=1.0, lr__step_size=0)),
        ("schedule.lr.gamma", dict(lr__name="exp_range", lr__max_lr=1.0, lr__gamma=1.5)),
        ("schedule.lr.pct_start", dict(lr__name="onecycle", lr__pct_start=1.0)),
        ("schedule.lr.warmup_epochs", dict(lr__warmup_epochs=90.0)),
        ("schedule.lr.warmup_start_factor", dict(lr__warmup_start_factor=2.0)),
        ("schedule.batch.max_global_batch", dict(batch__mode="hybrid", batch__max_global_batch=1000)),
        ("schedule.batch.max_global_batch", dict(batch__mode="hybrid", global_batch=512, batch__max_global_batch=256)),
        ("schedule.batch.lr_factor", dict(batch__mode="increase_lr", batch__lr_factor=1.5)),
        ("schedule.batch.final_momentum", dict(batch__mode="increase_momentum", batch__final_momentum=0.97)),
        (
            "schedule.momentum_schedule.values",
            dict(momentum_schedule__milestones=(10.0, 20.0), momentum_schedule__values=(0.95,)),
        ),
        (
            "schedule.momentum_schedule.milestones",
            dict(momentum_schedule__milestones=(20.0, 10.0), momentum_schedule__values=(0.95, 0.975)),
        ),
        (
            "schedule.momentum_schedule.milestones",
            dict(momentum_schedule__milestones=(10.0, 10.0), momentum_schedule__values=(0.95, 0.975)),
        ),
        (
            "schedule.momentum_schedule.milestones",
            dict(momentum_schedule__milestones=(10.0, 95.0), momentum_schedule__values=(0.95, 0.975)),
        ),
        (
            "schedule.momentum_schedule.milestones",
            dict(momentum_schedule__milestones=(0.0,), momentum_schedule__values=(0.95,)),
        ),
        (
            "schedule.momentum_schedule.values",
            dict(momentum_schedule__milestones=(10.0, 20.0), momentum_schedule__values=(0.95, 1.0)),
        ),
        (
            "schedule.momentum_schedule.values",
            dict(momentum=0.0, momentum_schedule__milestones=(10.0,), momentum_schedule__values=(-0.5,)),
        ),
        (
            "schedule.momentum_schedule.values",
            dict(momentum_schedule__milestones=(10.0, 20.0), momentum_schedule__values=(0.975, 0.95)),
        ),
        (
            "schedule.momentum_schedule.values",
            dict(momentum_schedule__milestones=(10.0,), momentum_schedule__values=(0.93,)),
        ),  # B = 182.9
        (
            "schedule.momentum_schedule",
            dict(
                batch__mode="increase_momentum",
                momentum_schedule__milestones=(10.0,),
                momentum_schedule__values=(0.99,),
            ),
        ),
    ],
)
def test_invalid_schedules_name_the_field(field, kw):
    config = make_config(128, **{"epochs": 90.0, **kw})
    with pytest.raises(ConfigError) as e:
        validate_schedule(config, N_CIFAR)
    assert e.value.field == field
    text = str(e.value)
    assert text.startswith(f"config.{field}: ") and "\n" not in text


def test_microbatch_validated():
    config = make_config(0)
    with pytest.raises(ConfigError) as e:
        validate_schedule(config, N_CIFAR)
    assert e.value.field == "train.global_microbatch"


def test_default_schedule_is_valid():
    validate_schedule(make_config(128), N_CIFAR)
    plan = make_plan(make_config(128), N_CIFAR)
    assert plan.total_steps() == math.ceil(90 * N_CIFAR / 128)
    with pytest.raises(ValueError):
        plan.at(-1)
