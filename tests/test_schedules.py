"""Pure schedule functions: CLR, 1cycle, warmup, step, cosine, noise scale, B_simple, batch rounding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lbt.errors import ConfigError
from lbt.schedules import batch as batch_lib
from lbt.schedules import lr as lr_lib
from lbt.schedules import momentum as mom_lib
from lbt.schedules import noise as noise_lib


def paper_clr(it: int, base: float, top: float, step_size: int, policy: str, gamma: float = 1.0) -> float:
    """Smith 2017, section 3.1, written out independently with numpy."""
    cycle = np.floor(1 + it / (2 * step_size))
    x = np.abs(it / step_size - 2 * cycle + 1)
    amp = (top - base) * np.maximum(0, 1 - x)
    if policy == "triangular2":
        amp = amp / float(2 ** (cycle - 1))
    elif policy == "exp_range":
        amp = amp * gamma**it
    return float(base + amp)


@pytest.mark.parametrize("policy", ["triangular", "triangular2", "exp_range"])
def test_clr_matches_paper_formula(policy):
    for it in range(0, 5000, 7):
        got = lr_lib.cyclic(it, 0.001, 0.006, 400, policy, 0.9994)
        assert got == pytest.approx(paper_clr(it, 0.001, 0.006, 400, policy, 0.9994), rel=1e-12, abs=1e-15)


def test_clr_known_points():
    # triangular: base at 0, peak at step_size, base again at 2 step_size, half way at step_size/2.
    assert lr_lib.triangular(0, 0.1, 1.0, 100) == pytest.approx(0.1)
    assert lr_lib.triangular(50, 0.1, 1.0, 100) == pytest.approx(0.55)
    assert lr_lib.triangular(100, 0.1, 1.0, 100) == pytest.approx(1.0)
    assert lr_lib.triangular(200, 0.1, 1.0, 100) == pytest.approx(0.1)
    # triangular2: second cycle's peak is half the amplitude.
    assert lr_lib.triangular2(300, 0.1, 1.0, 100) == pytest.approx(0.1 + 0.45)
    assert lr_lib.triangular2(500, 0.1, 1.0, 100) == pytest.approx(0.1 + 0.225)
    assert lr_lib.exp_range(100, 0.1, 1.0, 100, 0.99) == pytest.approx(0.1 + 0.9 * 0.99**100)


# torch's CyclicLR / OneCycleLR learning rates, stored by tests/data/make_torch_lr_reference.py
# (torch itself is not a test dependency: about 750 MB for two tests).
TORCH_REFERENCE = json.loads((Path(__file__).parent / "data" / "torch_lr_reference.json").read_text())["cases"]


@pytest.mark.parametrize("policy", ["triangular", "triangular2", "exp_range"])
def test_clr_matches_torch(policy):
    case = TORCH_REFERENCE[f"cyclic_{policy}"]
    a, want = case["args"], case["lr"]
    assert len(want) == a["iterations"] == 2500
    for it, lr in enumerate(want):
        got = lr_lib.cyclic(it, a["base_lr"], a["max_lr"], a["step_size"], policy, a["gamma"])
        assert got == pytest.approx(lr, rel=1e-9, abs=1e-12), it


def test_onecycle_matches_torch():
    a, want = TORCH_REFERENCE["onecycle"]["args"], TORCH_REFERENCE["onecycle"]["lr"]
    assert len(want) == a["total_steps"] == 1000
    for it, lr in enumerate(want):
        got = lr_lib.onecycle(
            it, a["total_steps"], a["max_lr"], a["pct_start"], a["div_factor"], a["final_div_factor"]
        )
        assert got == pytest.approx(lr, rel=1e-9, abs=1e-12), it


def test_onecycle_endpoints():
    assert lr_lib.onecycle(0, 1000, 1.0, 0.3, 25.0, 1e4) == pytest.approx(0.04)
    assert lr_lib.onecycle(299, 1000, 1.0, 0.3, 25.0, 1e4) == pytest.approx(1.0)
    assert lr_lib.onecycle(999, 1000, 1.0, 0.3, 25.0, 1e4) == pytest.approx(0.04 / 1e4)


def test_step_decay_is_exact():
    ms = (60, 120, 160)
    assert lr_lib.step_decay(0, 0.1, ms, 5) == 0.1
    assert lr_lib.step_decay(59.999, 0.1, ms, 5) == 0.1
    assert lr_lib.step_decay(60, 0.1, ms, 5) == 0.02
    assert lr_lib.step_decay(130, 0.1, ms, 5) == 0.004
    assert lr_lib.step_decay(199, 0.1, ms, 5) == 0.0008


def test_warmup_and_cosine():
    assert lr_lib.linear_warmup_multiplier(0.0, 5.0, 0.0) == 0.0
    assert lr_lib.linear_warmup_multiplier(2.5, 5.0, 0.0) == pytest.approx(0.5)
    assert lr_lib.linear_warmup_multiplier(1.0, 5.0, 1 / 32) == pytest.approx(1 / 32 + (1 - 1 / 32) / 5)
    assert lr_lib.linear_warmup_multiplier(5.0, 5.0, 0.0) == 1.0
    assert lr_lib.linear_warmup_multiplier(3.0, 0.0, 0.0) == 1.0
    assert lr_lib.cosine(0.0, 0.4) == pytest.approx(0.4)
    assert lr_lib.cosine(0.5, 0.4) == pytest.approx(0.2)
    assert lr_lib.cosine(1.0, 0.4, final_factor=0.1) == pytest.approx(0.04)
    assert lr_lib.cosine(0.25, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_noise_scale_equivalences():
    g = noise_lib.noise_scale(0.1, 50_000, 128, 0.9)
    assert g == pytest.approx(390.625)
    # Dividing ε by f equals multiplying B by f.
    assert noise_lib.noise_scale(0.1 / 5, 50_000, 128, 0.9) == pytest.approx(
        noise_lib.noise_scale(0.1, 50_000, 640, 0.9)
    )
    # Raising m from 0.9 to 0.98 with 5x B keeps g (paper 5.2).
    assert noise_lib.noise_scale(0.1, 50_000, 640, 0.98) == pytest.approx(g)
    assert mom_lib.batch_for_momentum(128, 0.9, 0.98) == pytest.approx(640)
    assert mom_lib.effective_lr(0.1, 0.9) == pytest.approx(1.0)
    assert noise_lib.lr_for_noise_scale(g, 50_000, 128, 0.9) == pytest.approx(0.1)
    assert noise_lib.batch_for_noise_scale(g, 0.1, 50_000, 0.9) == pytest.approx(128)
    with pytest.raises(ValueError):
        noise_lib.noise_scale(0.1, 100, 0, 0.9)


def test_exact_noise_scale():
    """g = ε(N/B - 1)/(1 - m), which εN/(B(1 - m)) overstates by B/(N - B): 11% at N/10, 47% at
    B = 16,000 of N = 50,000; 0 at B = N; B > N is refused."""
    assert noise_lib.noise_scale_exact(0.1, 50_000, 128, 0.9) == pytest.approx(0.1 * (50_000 / 128 - 1) / 0.1)
    approx, exact = (
        noise_lib.noise_scale(0.1, 50_000, 16_000, 0.9),
        noise_lib.noise_scale_exact(0.1, 50_000, 16_000, 0.9),
    )
    assert (approx, exact) == (pytest.approx(3.125), pytest.approx(2.125))
    assert (
        approx / exact - 1
        == pytest.approx(noise_lib.noise_scale_overstatement(50_000, 16_000))
        == pytest.approx(0.47, abs=0.005)
    )
    assert noise_lib.noise_scale_overstatement(50_000, 5_000) == pytest.approx(1 / 9)
    assert noise_lib.noise_scale_exact(0.1, 1000, 1000, 0.5) == 0.0
    assert noise_lib.noise_scale_overstatement(1000, 1000) == math.inf
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            noise_lib.noise_scale_exact(0.1, 1000, bad, 0.9)
        with pytest.raises(ValueError):
            noise_lib.noise_scale_overstatement(1000, bad)
    # For B << N the two agree.
    assert noise_lib.noise_scale_exact(0.1, 10**9, 128, 0.9) == pytest.approx(
        noise_lib.noise_scale(0.1, 10**9, 128, 0.9)
    )


def test_stepped_momentum_helpers():
    """Momentum steps 0.9 -> 0.95 -> 0.975 (lbt's stepped schedule) double B each time."""
    ms, vs = (100, 200), (0.95, 0.975)
    assert [mom_lib.stepped_momentum(s, 0.9, ms, vs) for s in (0, 99, 100, 199, 200, 10**6)] == [
        0.9,
        0.9,
        0.95,
        0.95,
        0.975,
        0.975,
    ]
    assert mom_lib.stepped_batch_scales(0.9, vs) == pytest.approx([2.0, 4.0])
    # The factors telescope to (1 - m0) / (1 - m_j), so g is the same in every phase.
    for m, scale in zip(vs, mom_lib.stepped_batch_scales(0.9, vs)):
        assert noise_lib.noise_scale(3.0, 1000, 8192 * scale, m) == pytest.approx(
            noise_lib.noise_scale(3.0, 1000, 8192, 0.9)
        )
    assert mom_lib.stepped_momentum(5, 0.9, (), ()) == 0.9
    with pytest.raises(ValueError):
        mom_lib.stepped_momentum(0, 0.9, (1,), ())
    with pytest.raises(ValueError):
        mom_lib.stepped_batch_scales(0.9, (1.0,))


def test_b_simple_recovers_synthetic_truth():
    # E|G_B|^2 = |G|^2 + tr(Σ)/B exactly; the estimator must invert it.
    G2, tr = 2.0, 300.0
    small, big = 32, 1024
    gs, gb = G2 + tr / small, G2 + tr / big
    est_g2, est_tr = noise_lib.gradient_stats(gs, gb, small, big)
    assert est_g2 == pytest.approx(G2)
    assert est_tr == pytest.approx(tr)
    assert noise_lib.b_simple(gs, gb, small, big) == pytest.approx(150.0)
    assert noise_lib.b_simple_from_stats(0.0, 1.0) == math.inf


def test_b_simple_on_sampled_gradients():
    rng = np.random.default_rng(0)
    d, n = 50, 200_000
    mean = rng.normal(size=d) * 0.1
    per_example = mean + rng.normal(size=(n, d))  # Σ = I, tr = d

    def sq_norm_of_mean(b, reps=400):
        idx = rng.integers(0, n, size=(reps, b))
        return float(np.mean(np.sum(per_example[idx].mean(axis=1) ** 2, axis=1)))

    g2, tr = noise_lib.gradient_stats(sq_norm_of_mean(8), sq_norm_of_mean(256), 8, 256)
    assert tr == pytest.approx(d, rel=0.15)
    assert g2 == pytest.approx(float(mean @ mean), rel=0.5, abs=0.2)


def test_round_to_multiple():
    assert batch_lib.round_to_multiple(640, 128, "error", "f") == 640
    assert batch_lib.round_to_multiple(128 * 0.1 / 0.02, 128, "error", "f") == 640  # float noise
    with pytest.raises(ConfigError) as e:
        batch_lib.round_to_multiple(320, 128, "error", "schedule.lr.factor")
    assert str(e.value).startswith("config.schedule.lr.factor: ")
    assert "256" in str(e.value) and "384" in str(e.value)
    assert batch_lib.round_to_multiple(320, 128, "down", "f") == 256
    assert batch_lib.round_to_multiple(330, 128, "nearest", "f") == 384
    assert batch_lib.round_to_multiple(50, 128, "down", "f") == 128
    assert batch_lib.default_max_global_batch(50_000, 128) == 4992
    assert batch_lib.hybrid_batch(16000, 5120, 128, "error", "f") == 5120
    assert batch_lib.hybrid_batch(3200, 5120, 128, "error", "f") == 3200
