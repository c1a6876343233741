"""schedule.batch.mode='adaptive': the pure rule, the decisions, config errors, and real runs
(zero recompiles, exact resume across decisions)."""

from __future__ import annotations

import json
import math

import pytest

from lbt.config import base_config
from lbt.errors import ConfigError
from lbt.schedules import batch as batch_lib
from lbt.schedules import noise as noise_lib
from lbt.schedules.plan import make_plan
from lbt.train.adaptive import EVENT, AdaptiveBatch
from lbt.train.metrics import read_jsonl

# ---------------------------------------------------------------------------------------------
# The rule


def test_step_gain_is_mccandlish_steps_ratio():
    # S = S_min (1 + B_noise / B): at B_noise = 100, B 50 -> 100 saves (1 + 2) / (1 + 1) = 1.5x steps
    assert batch_lib.step_gain(50, 100, 100.0) == pytest.approx(0.5)
    assert batch_lib.step_gain(64, 64, 10.0) == 0.0
    assert batch_lib.step_gain(64, 128, math.inf) == pytest.approx(1.0)  # all noise: linear
    assert batch_lib.step_gain(1000, 2000, 1.0) == pytest.approx((1 + 1e-3) / (1 + 5e-4) - 1)  # curvature: ~0


def test_adaptive_batch_grows_to_the_target_in_multiples_of_m_and_never_shrinks():
    rule = batch_lib.adaptive_batch
    assert rule(64, 300.0, 64, 1024, 1.0, 0.05) == 256  # floor(300 / 64) * 64
    assert rule(64, 300.0, 64, 192, 1.0, 0.05) == 192  # B_max
    assert rule(256, 100.0, 64, 1024, 1.0, 0.05) == 256  # never shrinks
    assert rule(64, 300.0, 64, 1024, 0.5, 0.05) == 128  # adapt_target
    # B 192 -> 256 at B_simple 260: gain (1 + 260/192)/(1 + 260/256) - 1 = 16.7%; the threshold decides
    assert rule(192, 260.0, 64, 1024, 1.0, 0.05) == 256
    assert rule(192, 260.0, 64, 1024, 1.0, 0.20) == 192
    for bad in (None, math.inf, math.nan, -5.0, 0.0):
        assert rule(64, bad, 64, 1024, 1.0, 0.05) == 64


def _plan(**batch):
    c = base_config()
    c.schedule.batch.mode = "adaptive"
    for k, v in batch.items():
        setattr(c.schedule.batch, k, v)
    return c, make_plan(c, 1438)


def test_decisions_apply_two_steps_later_keep_g_and_round_trip_through_json():
    c, plan = _plan(adapt_every_steps=5, max_global_batch=256)
    assert plan.max_global_batch == 256 and [p.global_batch for p in plan.phases] == [64, 64, 64]  # the reference
    a = AdaptiveBatch(plan, c.schedule.batch, 64)
    assert a.observe(3, 1000.0, 256) == []  # (3 + 1) % 5 != 0: not a decision step
    (ev,) = a.observe(4, 200.0, 320)  # after step 4: from step 6
    assert (ev["event"], ev["from_step"], ev["global_batch_before"], ev["global_batch"]) == (EVENT, 6, 64, 192)
    assert [a.batch_for(s) for s in (1, 5, 6, 7)] == [64, 64, 192, 192]
    assert a.needs_read(5) and not a.needs_read(6) and a.needs_read(10)
    ref = plan.at(0)
    p = a.point(ref, 6)
    assert (p.global_batch, p.lr) == (192, pytest.approx(ref.lr * 3))
    assert p.noise_scale == pytest.approx(ref.noise_scale)  # g = εN/(B(1 - m)) kept
    assert p.noise_scale_exact == pytest.approx(noise_lib.noise_scale_exact(p.lr, 1438, 192, ref.momentum))
    assert a.point(ref, 5) is ref
    again = AdaptiveBatch(plan, c.schedule.batch, 64, json.loads(json.dumps(a.state_dict())))
    assert again.decisions == a.decisions == [(1, 64), (6, 192)]


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("adapt_every_steps", 0, "must be an int >= 1"),
        ("adapt_target", -1.0, "must be a number > 0"),
        ("adapt_min_gain", math.nan, "must be a number >= 0"),
    ],
)
def test_bad_adaptive_fields_name_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        _plan(**{field: value})
    assert e.value.field == f"schedule.batch.{field}"


def test_adaptive_refuses_stepped_momentum_and_unmeasurable_layouts(tmp_path):
    from lbt.train.loop import Trainer

    c = base_config()
    c.schedule.batch.mode = "adaptive"
    c.schedule.momentum_schedule.milestones, c.schedule.momentum_schedule.values = (5.0,), (0.95,)
    with pytest.raises(ConfigError) as e:
        make_plan(c, 1438)
    assert e.value.field == "schedule.momentum_schedule"
    c = base_config()  # the digits default: G = 16 > b = 8 on 8 devices, and B0 = M
    c.schedule.batch.mode = "adaptive"
    with pytest.raises(ConfigError) as e:
        Trainer(c, tmp_path / "a")
    assert e.value.field == "schedule.global_batch" and "use global_batch >= 128" in str(e.value)
    c.model.ghost_batch_size, c.train.measure_noise_scale = 8, False
    with pytest.raises(ConfigError) as e:
        Trainer(c, tmp_path / "b")
    assert e.value.field == "train.measure_noise_scale"


# ---------------------------------------------------------------------------------------------
# Real runs


def _config():
    c = base_config()
    c.train.progress = False
    c.model.ghost_batch_size, c.model.width = 8, 8  # b = 8 = G: the devices estimator
    c.schedule.batch.mode = "adaptive"
    c.schedule.batch.adapt_every_steps = 5
    c.schedule.batch.max_global_batch = 256
    c.train.noise_scale_ema = 0.9
    c.train.eval_every_epochs = 0.0
    c.schedule.epochs, c.schedule.lr.milestones = 8.0, (4.0,)
    return c


def _train_records(wd):
    keys = ("step", "global_batch", "lr", "loss", "noise_scale_simple", "noise_scale", "examples_seen")
    recs = [r for r in read_jsonl(wd / "metrics.jsonl") if "event" not in r and "split" not in r]
    return [tuple(r[k] for k in keys) for r in recs]


def _events(wd):
    return [r for r in read_jsonl(wd / "metrics.jsonl") if r.get("event") == EVENT]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from lbt.train.loop import Trainer

    wd = tmp_path_factory.mktemp("adaptive_full")
    return wd, Trainer(_config(), wd).run()


@pytest.mark.slow
def test_adaptive_run_grows_b_without_recompiling(uninterrupted):
    wd, s = uninterrupted
    decisions = s["adaptive_batch"]
    assert len(decisions) >= 3 and decisions[0] == [1, 64]
    Bs = [b for _, b in decisions]
    assert Bs == sorted(Bs) and all(b % 64 == 0 and b <= 256 for b in Bs)
    assert s["train_compilations"] == 2  # accum and final, whatever B
    recs = _train_records(wd)
    for (first, B), nxt in zip(decisions, [*decisions[1:], [len(recs) + 1, None]]):
        assert {r[1] for r in recs[first - 1 : nxt[0] - 1]} == {B}
    ev = _events(wd)
    assert [(e["from_step"], e["global_batch"]) for e in ev] == [tuple(d) for d in decisions[1:]]
    for e in ev:  # each decision is the rule applied to the B_simple logged after its step
        rec = recs[e["step"] - 1]
        assert rec[4] == e["noise_scale_simple"]
        assert e["global_batch"] == batch_lib.adaptive_batch(e["global_batch_before"], rec[4], 64, 256, 1.0, 0.05)
    plan = make_plan(_config(), 1438)  # g = εN/(B(1 - m)) is the decay_lr reference's at every step
    for r in recs:
        assert r[5] == pytest.approx(plan.at(r[6] - r[1]).noise_scale, rel=1e-12)


@pytest.mark.slow
def test_adaptive_resume_takes_the_same_decisions_bit_for_bit(uninterrupted, tmp_path):
    """Stopped after step 44 (a decision step: its decision is taken from the EMA saved with it,
    and applies from step 46) and after a later step, then resumed: the same B, LR, losses,
    noise scales, decisions and final state as the uninterrupted run."""
    from lbt.train.loop import Trainer

    a_dir, a = uninterrupted
    first = a["adaptive_batch"][1][0]  # the first decision applies from this step
    for stop in (64 * (first - 2), 64 * (first - 1) + 40 * 64):
        Trainer(_config(), tmp_path, stop_at_examples=stop).run()
    b = Trainer(_config(), tmp_path).run()
    assert b["resumed"] and b["adaptive_batch"] == a["adaptive_batch"]
    assert b["final_state_sha256"] == a["final_state_sha256"]
    assert _train_records(tmp_path) == _train_records(a_dir)
    strip = lambda evs: [{k: v for k, v in e.items()} for e in evs]  # noqa: E731
    assert strip(_events(tmp_path)) == strip(_events(a_dir))
