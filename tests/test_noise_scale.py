"""The gradient noise scale B_simple (McCandlish et al. 2018): the estimator against a closed form
through the real programs, on 1, 2 and 8 devices and several k; the EMAs; the loop's fields,
summary and regime warning."""

from __future__ import annotations

import json
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lbt.config import base_config
from lbt.parallel.accumulate import REDUCTIONS, build_programs
from lbt.parallel.mesh import global_batch_array, make_mesh, replicated
from lbt.schedules import noise as noise_lib
from lbt.train.metrics import read_jsonl
from lbt.train.noise_scale import REGIME_EVENT, NoiseScaleMonitor, across_devices, unmeasurable_reason
from lbt.train.optim import make_optimizer
from lbt.train.state import TrainState


def test_gradient_stats_are_exact_on_the_expected_norms():
    """E|G_b|^2 = |G|^2 + tr(Σ)/b at both batch sizes: the estimators return |G|^2 and tr(Σ) exactly."""
    g2, trace, b, B = 0.37, 12.5, 8, 64
    got = noise_lib.gradient_stats(g2 + trace / b, g2 + trace / B, b, B)
    assert got == pytest.approx((g2, trace), rel=1e-12)
    with pytest.raises(ValueError, match="batch_small < batch_big"):  # one batch size: no estimate
        noise_lib.gradient_stats(1.0, 1.0, 64, 64)


def test_ema_is_bias_corrected_skips_non_finite_and_round_trips_through_json():
    ema = noise_lib.NoiseScaleEMA(0.9)
    assert ema.b_simple is None and ema.g2_hat is None
    ema = ema.update(2.0, 10.0)
    assert ema.g2_hat == pytest.approx(2.0) and ema.trace_hat == pytest.approx(10.0) and ema.b_simple == 5.0
    same = ema.update(float("nan"), 1.0).update(1.0, float("inf"))
    assert same == ema  # non-finite steps are skipped
    ema = ema.update(4.0, 10.0)
    # bias-corrected: (0.9 * 0.1 * 2 + 0.1 * 4) / (1 - 0.81)
    assert ema.g2_hat == pytest.approx((0.09 * 2 + 0.1 * 4) / 0.19) and ema.count == 2
    back = noise_lib.NoiseScaleEMA.from_dict(json.loads(json.dumps(ema.to_dict())), 0.9)
    assert back == ema  # exact: a checkpoint restores the same floats
    assert noise_lib.NoiseScaleEMA(0.9).update(-1.0, 5.0).b_simple == math.inf  # noise swamps the signal


def test_ema_bias_correction_survives_a_new_beta_and_an_old_checkpoint():
    """The correction is the weight the EMA actually holds, so a run resumed with another factor
    (``train.noise_scale_every`` or ``noise_scale_ema`` changed) still returns a constant input
    exactly; a checkpoint written before ``weight`` existed gets it from its own constant beta."""
    ema = noise_lib.NoiseScaleEMA(0.9)
    for _ in range(5):
        ema = ema.update(2.0, 10.0)
    assert ema.weight == pytest.approx(1 - 0.9**5, rel=1e-12)
    old = {k: v for k, v in ema.to_dict().items() if k != "weight"}
    assert noise_lib.NoiseScaleEMA.from_dict(old, 0.9).weight == pytest.approx(ema.weight, rel=1e-12)
    resumed = noise_lib.NoiseScaleEMA.from_dict(json.loads(json.dumps(ema.to_dict())), 0.9**4)
    for _ in range(3):
        resumed = resumed.update(2.0, 10.0)
    assert resumed.g2_hat == pytest.approx(2.0, rel=1e-12) and resumed.trace_hat == pytest.approx(10.0, rel=1e-12)
    assert resumed.count == 8  # with 1 - beta**count instead, g2_hat would be 2 x 0.97 / 0.57 = 3.4


def test_adaptive_resume_refuses_another_measurement_cadence():
    """An adaptive run's B follows its noise-scale EMA, so resuming it with another
    ``train.noise_scale_every`` (whose auto value depends on the backend) or ``noise_scale_ema``
    is refused with one line naming the field and the value to pass."""
    from lbt.errors import ConfigError
    from lbt.train.loop import _check_adaptive_noise_resume

    mon = NoiseScaleMonitor(8, 64, 8, beta=0.99, factor=0.0, every=4)
    state = json.loads(json.dumps(mon.state_dict()))
    _check_adaptive_noise_resume(state, 4, 0.99)  # the same cadence and factor: resumes
    with pytest.raises(ConfigError) as e:
        _check_adaptive_noise_resume(state, 1, 0.99)
    assert str(e.value).startswith("config.train.noise_scale_every: ") and "noise_scale_every=4" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^config.train.noise_scale_ema: .* with 0.99 per step, this run with 0.9;"):
        _check_adaptive_noise_resume(state, 4, 0.9)
    with pytest.raises(ConfigError, match="every 1 step"):  # a checkpoint from before the option: every step
        _check_adaptive_noise_resume({"ema": {"beta": 0.99}}, 4, 0.99)


def test_ratio_estimate_and_its_standard_error():
    r, se = noise_lib.ratio_estimate([10.0, 10.0, 10.0], [2.0, 2.0, 2.0])
    assert (r, se) == (5.0, 0.0)
    t, g = [9.0, 11.0, 10.0, 12.0], [2.0, 2.2, 1.8, 2.0]
    r, se = noise_lib.ratio_estimate(t, g)
    resid = np.array(t) - r * np.array(g)
    assert r == pytest.approx(np.mean(t) / np.mean(g))
    assert se == pytest.approx(np.std(resid, ddof=1) / math.sqrt(4) / np.mean(g))
    assert noise_lib.ratio_estimate([1.0], [-1.0]) == (math.inf, math.inf)
    assert noise_lib.curvature_dominated(256, 100.0, 2.0) and not noise_lib.curvature_dominated(128, 100.0, 2.0)
    assert not noise_lib.curvature_dominated(256, 100.0, 0.0)  # factor 0: never
    assert not noise_lib.curvature_dominated(256, math.inf, 1.0)


# ---------------------------------------------------------------------------------------------
# A closed form through the real programs


class _Probe(nn.Module):
    """Linear 2-class logits x @ W, W = 0 (and an unused BN collection, as the programs expect)."""

    dim: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        self.variable("batch_stats", "unused", lambda: jnp.zeros(()))
        return x @ self.param("w", nn.initializers.zeros, (self.dim, 2))


DIM, SHIFT = 64, 0.25


def _measure(
    n_dev: int, k: int, steps: int, M: int = 32, seed: int = 0, micro: bool = False
) -> tuple[list[float], list[float]]:
    """Per-step (tr Σ, |G|^2) estimates of ``steps`` steps of the real ``accum``/``final`` programs on
    ``n_dev`` devices with k microbatches of M, at W = 0 (LR 0), labels 0, inputs x ~ N(SHIFT·1, I),
    by the trainer's monitor: the ``devices`` estimator, or with ``micro`` (or one device) the
    ``microbatches`` one.

    The per-example gradient is x ⊗ δ with δ = softmax(0) - onehot(0) = (-1/2, 1/2), so
    |G|^2 = |μ|^2 |δ|^2 = DIM SHIFT^2 / 2 and tr(Σ) = tr(I) |δ|^2 = DIM / 2: B_simple = 1 / SHIFT^2 = 16.
    """
    mesh = make_mesh(jax.devices()[:n_dev])
    model, tx = _Probe(DIM), make_optimizer(base_config())
    ghost = M if micro else M // n_dev  # the probe has no BN: G only picks the estimator
    mon = NoiseScaleMonitor(n_dev, M, ghost, beta=0.9, factor=0.0)
    assert mon.estimator == ("microbatches" if micro or n_dev == 1 else "devices")
    progs = build_programs(
        model, tx, mesh, num_classes=2, bn_momentum=0.9, measure_noise=True, microbatch_norms=not mon.across
    )
    params = {"w": jnp.zeros((DIM, 2))}
    state = jax.device_put(
        TrainState(params, {"unused": jnp.zeros(())}, tx.init(params), jnp.zeros((), jnp.int32)), replicated(mesh)
    )
    rng = np.random.default_rng(seed)
    labels = global_batch_array(mesh, np.zeros(M, np.int32), M)
    B = k * M
    traces, g2s = [], []
    acc = progs.zeros_acc(state)
    for _ in range(steps):
        xs = [global_batch_array(mesh, (rng.normal(size=(M, DIM)) + SHIFT).astype(np.float32), M) for _ in range(k)]
        for x in xs[:-1]:
            acc = progs.accum(state, acc, x, labels)
        state, acc, m = progs.final(state, acc, xs[-1], labels, np.int32(k), np.float32(0.0), np.float32(0.9))
        rec = {"step": 1, "examples_seen": B, "epoch": 0.0, "global_batch": B, "microbatches": k, "phase": 0}
        mon.observe(rec, jax.tree.map(np.asarray, m))
        traces.append(rec["noise_trace_step"])
        g2s.append(rec["noise_g2_step"])
    assert float(jnp.abs(state.params["w"]).max()) == 0.0  # LR 0: every step sees the same point
    return traces, g2s


def test_estimator_recovers_the_closed_form_on_1_2_and_8_devices():
    """B_simple = 16 recovered within 10% over 150 (devices) or 300 (microbatches) steps by both estimators: ``devices`` on 8
    devices (k = 1, 4) and 2 (k = 2); ``microbatches`` on 8 devices (k = 4), 2 (k = 2) and 1 (k = 4),
    and the layouts agree with each other. Simulated with the same estimator, the relative spread
    over 150 steps is 1-2% (devices) and up to ~6% (microbatches at k = 2, whose S comes from one
    microbatch per device)."""
    truth = {"g2": DIM * SHIFT**2 / 2, "trace": DIM / 2, "b_simple": 1 / SHIFT**2}
    found = {}
    for n_dev, k, micro in [(8, 1, False), (8, 4, False), (2, 2, False), (8, 4, True), (2, 2, True), (1, 4, True)]:
        traces, g2s = _measure(n_dev, k, steps=300 if micro else 150, micro=micro)
        r, se = noise_lib.ratio_estimate(traces, g2s)
        assert abs(r - truth["b_simple"]) < 0.1 * truth["b_simple"], (n_dev, k, r)
        assert abs(r - truth["b_simple"]) < 5 * se, (n_dev, k, r, se)  # the stated error is honest
        assert np.mean(traces) == pytest.approx(truth["trace"], rel=0.08 if micro else 0.05)  # unbiased per step
        assert np.mean(g2s) == pytest.approx(truth["g2"], rel=0.15)
        ema = noise_lib.NoiseScaleEMA(0.98)
        for t, g in zip(traces, g2s):
            ema = ema.update(g, t)
        assert ema.b_simple == pytest.approx(truth["b_simple"], rel=0.2)
        found[n_dev, k, micro] = r
    values = list(found.values())
    assert max(values) / min(values) < 1.15  # single-device and multi-device estimates agree


def test_norms_equal_a_per_device_reference():
    """``grad_sq_micro`` is the mean |g|^2 of the D·(k - 1) microbatch gradients of b examples of
    the ``accum`` calls, ``grad_sq_device`` the mean over devices of |mean of a device's k
    gradients|^2 and ``grad_sq_big`` the |mean|^2 of all, computed here with plain jax.grad on each
    slice, in both reduction layouts."""
    n_dev, k, M = 4, 3, 16
    mesh = make_mesh(jax.devices()[:n_dev])
    model, tx = _Probe(8), make_optimizer(base_config())
    w0 = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)  # final donates the state
    params = {"w": jnp.asarray(w0)}
    state = jax.device_put(
        TrainState(params, {"unused": jnp.zeros(())}, tx.init(params), jnp.zeros((), jnp.int32)), replicated(mesh)
    )
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(M, 8)).astype(np.float32) for _ in range(k)]
    ys = [rng.integers(0, 2, size=M).astype(np.int32) for _ in range(k)]
    hyper = np.int32(k), np.float32(0.0), np.float32(0.0)
    found = []
    for reduction in REDUCTIONS:
        progs = build_programs(
            model,
            tx,
            mesh,
            num_classes=2,
            bn_momentum=0.9,
            measure_noise=True,
            microbatch_norms=True,
            reduction=reduction,
        )
        acc = progs.zeros_acc(state)
        for x, y in zip(xs[:-1], ys[:-1]):
            acc = progs.accum(state, acc, global_batch_array(mesh, x, M), global_batch_array(mesh, y, M))
        last = global_batch_array(mesh, xs[-1], M), global_batch_array(mesh, ys[-1], M)
        _, _, m = progs.final(jax.tree.map(jnp.copy, state), acc, *last, *hyper)  # final donates the state
        found.append(m)

    def loss(w, x, y):
        return -jnp.mean(jax.nn.log_softmax(x @ w)[jnp.arange(len(y)), y])

    b = M // n_dev
    sq = lambda g: float(jnp.sum(g**2))  # noqa: E731
    g = np.stack(
        [
            [jax.grad(loss)(w0, x[d * b : (d + 1) * b], y[d * b : (d + 1) * b]) for d in range(n_dev)]
            for x, y in zip(xs, ys)
        ]
    )
    micro = np.mean([sq(g[i, d]) for i in range(k - 1) for d in range(n_dev)])
    device = np.mean([sq(g[:, d].mean(0)) for d in range(n_dev)])
    big = sq(g.mean((0, 1)))
    for m in found:
        assert float(m["grad_sq_micro"]) == pytest.approx(micro, rel=1e-5)
        assert float(m["grad_sq_device"]) == pytest.approx(device, rel=1e-5)
        assert float(m["grad_sq_big"]) == pytest.approx(big, rel=1e-5)
    assert micro > device > big > 0  # fewer examples, noisier gradients


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_noise_every_takes_the_norms_on_every_nth_step_only(reduction):
    """``noise_every`` = 3 (``train.noise_scale_every``): the steps that complete step 3, 6, ...
    (``state.step + 1``) report the norms of ``noise_every`` = 1, the others ``noise_measured``
    false and zero norms; the training is bit for bit the same, and the step keeps its one
    all-reduce with the same operands."""
    n_dev, k, M, every = 4, 2, 16, 3
    mesh = make_mesh(jax.devices()[:n_dev])
    model, tx = _Probe(8), make_optimizer(base_config())
    w0 = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    rng = np.random.default_rng(3)
    data = [
        (global_batch_array(mesh, rng.normal(size=(M, 8)).astype(np.float32), M),
         global_batch_array(mesh, rng.integers(0, 2, size=M).astype(np.int32), M))
        for _ in range(k)
    ]  # fmt: skip
    hyper = np.int32(k), np.float32(0.05), np.float32(0.9)
    runs, shapes = {}, {}
    for n in (1, every, 0):  # 0: the measurement off
        progs = build_programs(
            model, tx, mesh, num_classes=2, bn_momentum=0.9, reduction=reduction,
            measure_noise=n > 0, microbatch_norms=n > 0, noise_every=max(n, 1),
        )  # fmt: skip
        params = {"w": jnp.asarray(w0)}
        state = jax.device_put(
            TrainState(params, {"unused": jnp.zeros(())}, tx.init(params), jnp.zeros((), jnp.int32)), replicated(mesh)
        )
        acc = progs.zeros_acc(state)
        hlo = progs.final.lower(state, acc, *data[-1], *hyper).compile().as_text()
        reduces = [ln.split("=", 1)[1].split("all-reduce", 1)[0] for ln in hlo.splitlines() if " all-reduce(" in ln]
        shapes[n] = sorted(re.findall(r"f32\[[0-9,]*\]", reduces[0])) if len(reduces) == 1 else reduces
        metrics = []
        for _ in range(7):
            acc = progs.accum(state, acc, *data[0])
            state, acc, m = progs.final(state, acc, *data[1], *hyper)
            metrics.append(jax.tree.map(np.asarray, m))
        runs[n] = jax.tree.map(np.asarray, state), metrics
    assert shapes[every] == shapes[1] != shapes[0]  # one all-reduce, the same operands with the norms on
    assert np.array_equal(runs[every][0].params["w"], runs[1][0].params["w"])
    assert np.array_equal(runs[0][0].params["w"], runs[1][0].params["w"])
    assert int(runs[every][0].step) == 7
    for step, (m1, m) in enumerate(zip(runs[1][1], runs[every][1], strict=True)):
        assert "noise_measured" not in m1 and bool(m["noise_measured"]) == ((step + 1) % every == 0)
        assert float(m["grad_sq_big"]) == float(m1["grad_sq_big"]) > 0  # the reduced gradient's, always
        for key in ("grad_sq_device", "grad_sq_micro"):
            want = float(m1[key]) if (step + 1) % every == 0 else 0.0
            assert float(m[key]) == pytest.approx(want, rel=1e-6, abs=0.0), (step, key)


def test_monitor_absorbs_only_measured_steps_with_beta_to_the_n():
    """``every`` = 4: unmeasured steps are logged without a small-batch norm and not absorbed; the
    EMA factor per measured step is beta**4, so the time constant stays 1 / (1 - beta) steps."""
    mon = NoiseScaleMonitor(8, 64, 8, beta=0.9, factor=0.0, every=4)
    assert mon.beta == pytest.approx(0.9**4) and mon.min_steps == math.ceil(1 / (1 - 0.9**4))
    g2, trace = 1.0, 40.0
    for step in range(12):
        rec = {"step": step, "examples_seen": 64 * step, "epoch": 0.0, "global_batch": 64, "microbatches": 1}
        rec["phase"] = 0
        dev = {"grad_sq_device": g2 + trace / 8, "grad_sq_big": g2 + trace / 64, "finite": True}
        dev["noise_measured"] = step % 4 == 0
        mon.observe(rec, dev)
        if step % 4:
            assert rec["grad_sq_norm_small"] is None and rec["noise_g2_step"] is None
        else:
            assert rec["noise_g2_step"] == pytest.approx(g2) and rec["noise_trace_step"] == pytest.approx(trace)
        assert rec["grad_sq_norm_big"] == pytest.approx(g2 + trace / 64)
        assert rec["noise_scale_simple"] == pytest.approx(40.0)
    assert mon.ema.count == 3 and mon.state_dict()["ema"]["beta"] == pytest.approx(0.9**4)


# ---------------------------------------------------------------------------------------------
# The loop


def test_estimator_choice_and_when_nothing_can_be_measured():
    assert across_devices(8, 64, 8) and across_devices(4, 32, 8) and across_devices(0, 64, 1) is False
    assert not across_devices(16, 64, 8)  # the digits default on 8 simulated devices: b = 8 < G = 16
    assert unmeasurable_reason(16, 64, 8, max_k=4) is None  # its k >= 2 phases use the microbatches
    why = unmeasurable_reason(16, 64, 8, max_k=1)
    assert "spans 2 devices" in why and "k = 1" in why
    assert unmeasurable_reason(0, 64, 1, max_k=1).startswith("one device")
    assert unmeasurable_reason(8, 64, 8, max_k=1) is None


def test_monitor_warns_once_per_phase_after_its_time_constant():
    mon = NoiseScaleMonitor(8, 64, 8, beta=0.5, factor=2.0)  # time constant 2 steps; b = 8 = G: devices
    g2, trace = 1.0, 40.0  # B_simple = 40: B = 128 > 2 x 40 is curvature dominated, B = 64 is not
    events = []
    for step in range(1, 9):
        B, phase = (64, 0) if step <= 4 else (128, 1)
        rec = {"step": step, "examples_seen": step * B, "epoch": 0.1 * step, "global_batch": B, "phase": phase}
        rec["microbatches"] = B // 64
        dev = {"grad_sq_device": g2 + trace / (B / 8), "grad_sq_big": g2 + trace / B, "finite": True}
        events += mon.observe(rec, dev)
        assert rec["noise_batch_small"] == B // 8 and rec["noise_batch_big"] == B
        assert rec["noise_estimator"] == "devices"
        assert (rec["noise_g2_step"], rec["noise_trace_step"]) == pytest.approx((g2, trace))
        assert rec["noise_scale_simple"] == pytest.approx(40.0)
    assert [(e["event"], e["phase"], e["step"]) for e in events] == [(REGIME_EVENT, 1, 5)]
    assert events[0]["noise_scale_simple"] == pytest.approx(40.0) and events[0]["regime_factor"] == 2.0
    again = NoiseScaleMonitor(8, 64, 8, 0.5, 2.0, json.loads(json.dumps(mon.state_dict())))
    assert again.state_dict() == mon.state_dict() and again.warned == [1]


def test_microbatch_estimator_is_exact_on_expected_norms_and_skips_k1():
    """Cross-replica ghost BN (G = 16 > b = 8): from the expected norms, with C the covariance of a
    device's share of a ghost group (any value: it cancels), |G|^2 and tr(Σ) come out exactly."""
    mon = NoiseScaleMonitor(8, 64, 16, beta=0.0, factor=0.0)
    g2, trace, c = 2.0, 300.0, 37.0
    for k in (2, 3, 8):
        B = 64 * k
        dev = {"grad_sq_micro": g2 + c, "grad_sq_device": g2 + c / k, "grad_sq_big": g2 + trace / B, "finite": True}
        rec = {"step": 1, "examples_seen": B, "epoch": 0.0, "global_batch": B, "microbatches": k, "phase": 0}
        mon.observe(rec, dev)
        assert rec["noise_estimator"] == "microbatches" and rec["noise_batch_small"] == 8
        assert (rec["noise_g2_step"], rec["noise_trace_step"]) == pytest.approx((g2, trace))
    rec = {"step": 2, "examples_seen": 128, "epoch": 0.0, "global_batch": 64, "microbatches": 1, "phase": 0}
    mon.observe(rec, {"grad_sq_micro": 0.0, "grad_sq_device": 5.0, "grad_sq_big": 5.0, "finite": True})
    assert rec["noise_estimator"] is None and rec["noise_g2_step"] is None and mon.ema.count == 3


# ---------------------------------------------------------------------------------------------
# lbt noise-scale


def test_noise_scale_tool_bad_flags_are_one_line(tmp_path, capsys):
    from lbt import cli

    assert cli.main(["noise-scale", "--workdir", str(tmp_path), "--steps", "1"]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.strip().endswith("lbt: error: --steps: must be >= 2, got 1; e.g. --steps 100")
    (tmp_path / "measure").mkdir()
    (tmp_path / "measure" / "x").write_text("")
    assert cli.main(["noise-scale", "--workdir", str(tmp_path)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "lbt: error: --workdir:" in err and "pass --overwrite" in err


def test_measure_devices_keep_ghost_groups_on_one_device():
    from lbt.tools.noise_scale import measure_devices

    assert measure_devices(64, 16, 8) == 4  # the digits default: b = 16 = G
    assert measure_devices(64, 8, 8) == 8 and measure_devices(64, 0, 8) == 1 and measure_devices(96, 32, 8) == 3


@pytest.mark.slow
def test_noise_scale_tool_on_digits_from_the_start_and_from_a_checkpoint(tmp_path, capsys):
    """The embedded digits config (a narrower CNN, for time): 20 steps from the start, then 5 more
    from that run's checkpoint."""
    from lbt import cli

    quiet = ["--config.train.progress=false", "--config.model.width=8"]
    assert cli.main(["noise-scale", "--steps", "20", "--workdir", str(tmp_path), *quiet]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "noise_scale.json").read_text())
    assert (rep["devices"], rep["batch_small"], rep["start_step"]) == (4, 16, 0)  # G = 16: 4 of the 8 devices
    m = rep["measured"]
    assert m["steps"] == 20 and 0 < m["b_simple_se"] < m["b_simple"] < 10_000
    assert [r["global_batch"] for r in rep["phases"]] == [64, 128, 256] and rep["b_max"] == pytest.approx(143.8)
    for r in rep["phases"]:  # McCandlish et al.'s eq. 2.11 model at the measured B_simple
        assert r["steps_over_min"] == pytest.approx(1 + m["b_simple"] / r["global_batch"])
        assert r["examples_over_min"] == pytest.approx(1 + r["global_batch"] / m["b_simple"])
    assert f"B_simple = {m['b_simple']:.4g}" in out and "recommendation: " in out and "B_max = N/10 = 143.8" in out
    recs = [r for r in read_jsonl(tmp_path / "measure" / "metrics.jsonl") if "split" not in r and "event" not in r]
    assert [r["step"] for r in recs] == list(range(1, 21))  # the config's own first 20 steps
    # from that run's checkpoint (its workdir and config.json): steps 21-25, the source untouched
    src = tmp_path / "measure"
    before = sorted(p.name for p in (src / "checkpoints").iterdir())
    assert cli.main(["noise-scale", "--steps", "5", "--workdir", str(src), *quiet]) == 0
    rep2 = json.loads((src / "noise_scale.json").read_text())
    assert (rep2["start_step"], rep2["start_examples"], rep2["measured"]["steps"]) == (20, 20 * 64, 5)
    later = [r for r in read_jsonl(src / "measure" / "metrics.jsonl") if "split" not in r and "event" not in r]
    assert [r["step"] for r in later] == list(range(21, 26))
    assert sorted(p.name for p in (src / "checkpoints").iterdir()) == before


def test_truncate_drops_regenerated_regime_events_past_the_resume_point(tmp_path):
    from lbt.train.metrics import MetricsWriter

    w = MetricsWriter(tmp_path, tensorboard=False)
    for rec in [
        {"step": 1, "examples_seen": 32},
        {"event": REGIME_EVENT, "phase": 0, "step": 1, "examples_seen": 32},
        {"step": 2, "examples_seen": 64},
        {"event": "rollback", "examples_seen": 64},  # the run's history: kept past the point too
        {"event": REGIME_EVENT, "phase": 1, "step": 2, "examples_seen": 64},
    ]:
        w.write(rec)
    w.truncate_after(32)
    w.close()
    kept = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r.get("event"), r["examples_seen"]) for r in kept] == [(None, 32), (REGIME_EVENT, 32), ("rollback", 64)]
