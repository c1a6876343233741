"""Microbatch accumulation: equivalence to one big batch, one all-reduce, no recompilation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lbt.config import base_config
from lbt.data.pipeline import TrainStream
from lbt.data.sources import load_digits_splits
from lbt.models import build_model
from lbt.parallel.accumulate import build_programs
from lbt.parallel.mesh import global_batch_array, make_mesh
from lbt.train.loop import Trainer
from lbt.train.losses import cross_entropy
from lbt.train.metrics import read_jsonl
from lbt.train.optim import make_optimizer
from lbt.train.state import init_state, init_state_fn


def small_config(**schedule):
    c = base_config()
    c.model.width = 8
    c.train.global_microbatch = 32
    c.schedule.global_batch = 32
    c.model.ghost_batch_size = 4  # b = 4 on 8 devices: G = b
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    c.schedule.epochs = 2.0
    for k, v in schedule.items():
        node, key = c.schedule, k
        if "." in k:
            sub, key = k.split(".")
            node = c.schedule[sub]
        node[key] = v
    return c


def _programs(config, mesh, n_dev):
    splits = load_digits_splits()
    model = build_model(config, 10, n_dev)
    tx = make_optimizer(config)
    progs = build_programs(model, tx, mesh, num_classes=10, bn_momentum=config.model.bn_momentum)
    return splits, model, tx, progs


@pytest.mark.parametrize("k", [1, 4])
def test_k_microbatches_equal_one_batch_of_kM(k):
    """One step over k microbatches == jax.grad over all kM examples (ghost BN by example index)."""
    config = small_config()
    config.optimizer.name = "sgd"
    M, lr = config.train.global_microbatch, 0.3
    mesh = make_mesh()
    splits, model, tx, progs = _programs(config, mesh, 8)
    state = init_state(model, tx, mesh, (8, 8, 1), seed=0)
    params0 = jax.tree.map(np.asarray, state.params)
    stats0 = jax.tree.map(np.asarray, state.batch_stats)
    stream = TrainStream(splits.train, seed=3, microbatch=M)
    xs, ys = zip(*[stream.local_microbatch(i * M) for i in range(k)])
    acc = progs.zeros_acc(state)
    for x, y in zip(xs, ys):
        acc = progs.accum(state, acc, global_batch_array(mesh, x, M), global_batch_array(mesh, y, M))
    state, acc, metrics = progs.apply(state, acc, np.int32(k), np.float32(lr), np.float32(0.0))

    # Reference: one device, no shard_map, the whole kM batch at once, plain jax.grad.
    ref_model = build_model(config, 10, 1)
    X, Y = np.concatenate(xs), np.concatenate(ys)

    def loss_fn(p):
        logits, new = ref_model.apply({"params": p, "batch_stats": stats0}, X, train=True, mutable=["batch_stats"])
        return cross_entropy(logits, Y, 10).mean(), new

    (loss, _), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params0)
    expected = jax.tree.map(lambda p, gi: p - lr * gi, params0, g)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6),
        state.params,
        expected,
    )
    # BN running stats: one EMA step per microbatch, in order
    ref_stats = stats0
    for x in xs:
        _, new = ref_model.apply({"params": params0, "batch_stats": ref_stats}, x, train=True, mutable=["batch_stats"])
        ref_stats = new["batch_stats"]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
        state.batch_stats,
        ref_stats,
    )
    assert int(state.step) == 1
    # the accumulators come back zeroed for the next step
    assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree.leaves(acc))


def _count_all_reduces(compiled_text: str) -> int:
    return len(re.findall(r"\ball-reduce(?:-start)?\(", compiled_text))


@pytest.mark.parametrize("G, accum_reduces", [(4, 0), (16, None)])
def test_one_all_reduce_per_step_in_compiled_hlo(G, accum_reduces):
    config = small_config()
    config.model.ghost_batch_size = G
    M = config.train.global_microbatch
    mesh = make_mesh()
    splits, model, tx, progs = _programs(config, mesh, 8)
    state = init_state(model, tx, mesh, (8, 8, 1), seed=0)
    acc = progs.zeros_acc(state)
    x, y = TrainStream(splits.train, 0, M).local_microbatch(0)
    xa, ya = global_batch_array(mesh, x, M), global_batch_array(mesh, y, M)
    accum_hlo = progs.accum.lower(state, acc, xa, ya).compile().as_text()
    n_accum = _count_all_reduces(accum_hlo)
    if accum_reduces is not None:
        assert n_accum == accum_reduces  # G <= b: ghost groups are device-local
    else:
        assert n_accum > 0  # G > b: channel sums across the devices of a ghost group
        assert "replica_groups={{0,1,2,3},{4,5,6,7}}" in accum_hlo.replace(" ", "")
    for k in (1, 8):  # the same program serves every k: exactly one gradient all-reduce
        apply_hlo = progs.apply.lower(state, acc, np.int32(k), np.float32(0.1), np.float32(0.9)).compile().as_text()
        assert _count_all_reduces(apply_hlo) == 1
        hyper = np.int32(k), np.float32(0.1), np.float32(0.9)
        final_hlo = progs.final.lower(state, acc, xa, ya, *hyper).compile().as_text()
        assert _count_all_reduces(final_hlo) == n_accum + 1  # the last microbatch's BN psums + the reduction


def test_growing_batch_compiles_nothing_new(tmp_path):
    one = small_config(**{"lr.name": "constant", "batch.mode": "decay_lr"})
    four = small_config(
        **{"lr.name": "step", "lr.milestones": (0.5, 1.0, 1.5), "lr.factor": 2.0, "batch.mode": "increase_batch"}
    )
    s1 = Trainer(one, tmp_path / "one").run()
    s4 = Trainer(four, tmp_path / "four").run()
    batches = sorted(
        {r["global_batch"] for r in read_jsonl(tmp_path / "four" / "metrics.jsonl") if "global_batch" in r}
    )
    assert batches == [32, 64, 128, 256]  # 4 phases, k = 1, 2, 4, 8
    assert s1["train_compilations"] == 1  # k = 1 throughout: a step is the one final program
    assert s4["train_compilations"] == 2  # accum + final, once each, for k = 1, 2, 4, 8
    assert s4["optimizer_steps"] < s1["optimizer_steps"]


def test_sharded_matches_single_device(tmp_path):
    """8 devices and 1 device give the same loss trajectory (BN groups are by example index)."""
    config = small_config(
        **{"lr.name": "step", "lr.milestones": (1.0,), "lr.factor": 2.0, "batch.mode": "increase_batch"}
    )
    # A small LR keeps SGD out of its chaotic regime, where float32 reduction-order noise
    # (~1e-7) grows to percent-level loss differences within tens of steps at LR 0.1.
    config.schedule.base_lr = 0.02
    s8 = Trainer(config, tmp_path / "d8").run()
    s1 = Trainer(config, tmp_path / "d1", devices=jax.devices()[:1]).run()
    assert (s8["devices"], s1["devices"]) == (8, 1)
    r8 = [r for r in read_jsonl(tmp_path / "d8" / "metrics.jsonl") if "global_batch" in r]
    r1 = [r for r in read_jsonl(tmp_path / "d1" / "metrics.jsonl") if "global_batch" in r]
    assert [r["global_batch"] for r in r8] == [r["global_batch"] for r in r1]
    assert len(r8) == s8["optimizer_steps"] > 50
    l8, l1 = np.array([r["loss"] for r in r8]), np.array([r["loss"] for r in r1])
    np.testing.assert_allclose(l8, l1, rtol=2e-3, atol=2e-4)
    assert abs(s8["final_eval_accuracy"] - s1["final_eval_accuracy"]) <= 1 / 359 + 1e-9


def _step_results(progs, state, batches, k, fused: bool):
    """One optimizer step over ``batches[:k]``: k - 1 accum + final, or k accum + apply."""
    acc = progs.zeros_acc(state)
    hyper = np.int32(k), np.float32(0.3), np.float32(0.9)
    if fused:
        for x, y in batches[: k - 1]:
            acc = progs.accum(state, acc, x, y)
        new, _, metrics = progs.final(state, acc, *batches[k - 1], *hyper)
    else:
        for x, y in batches[:k]:
            acc = progs.accum(state, acc, x, y)
        new, _, metrics = progs.apply(state, acc, *hyper)
    return jax.tree.map(np.asarray, (new, metrics))


def _assert_bitwise_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        assert u.tobytes() == v.tobytes()


@pytest.fixture(scope="module")
def fused_setup():
    """Programs of both reductions and the first 4 microbatches, built once for every k (the
    programs' shapes do not depend on k, so nothing compiles again)."""
    config = small_config()
    M = config.train.global_microbatch
    mesh = make_mesh()
    splits = load_digits_splits()
    model = build_model(config, 10, 8)
    tx = make_optimizer(config)
    stream = TrainStream(splits.train, seed=1, microbatch=M)
    batches = []
    for i in range(4):
        x, y = stream.local_microbatch(i * M)
        batches.append((global_batch_array(mesh, x, M), global_batch_array(mesh, y, M)))
    progs = {
        r: build_programs(model, tx, mesh, num_classes=10, bn_momentum=0.9, reduction=r) for r in ("flat", "per_leaf")
    }
    return progs, init_state_fn(model, tx, mesh, (8, 8, 1), seed=0), batches


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fused_final_and_both_reductions_are_bit_identical(k, fused_setup):
    """final (last microbatch + reduction + update in one program) == k accum + apply, bit for bit;
    per_leaf == flat bit for bit (the same means, element by element)."""
    progs_by_reduction, init, batches = fused_setup
    results = {}
    for reduction, progs in progs_by_reduction.items():
        for fused in (False, True):
            state = init()  # a fresh one: steps donate it
            results[reduction, fused] = _step_results(progs, state, batches, k, fused)
    ref = results["flat", False]
    assert np.isfinite(ref[1]["loss"]) and int(ref[0].step) == 1
    for got in results.values():
        _assert_bitwise_equal(got, ref)


def _all_reduce_elements(compiled_text: str) -> int:
    """Elements all-reduced, summed over the all-reduce ops of a compiled HLO module."""
    total = 0
    for line in compiled_text.splitlines():
        if re.search(r"\ball-reduce(?:-start)?\(", line) and "=" in line:
            shapes = line.split("=", 1)[1].split("all-reduce", 1)[0]
            for dims in re.findall(r"f32\[([0-9,]*)\]", shapes):
                total += int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
    return total


def test_per_leaf_reduction_moves_the_same_bytes():
    config = small_config()
    M = config.train.global_microbatch
    mesh = make_mesh()
    splits = load_digits_splits()
    model = build_model(config, 10, 8)
    tx = make_optimizer(config)
    x, y = TrainStream(splits.train, 0, M).local_microbatch(0)
    xa, ya = global_batch_array(mesh, x, M), global_batch_array(mesh, y, M)
    counts = {}
    for reduction in ("flat", "per_leaf"):
        progs = build_programs(model, tx, mesh, num_classes=10, bn_momentum=0.9, reduction=reduction)
        state = init_state(model, tx, mesh, (8, 8, 1), seed=0)
        acc = progs.zeros_acc(state)
        hlo = progs.final.lower(state, acc, xa, ya, np.int32(1), np.float32(0.1), np.float32(0.9)).compile()
        counts[reduction] = (_count_all_reduces(hlo.as_text()), _all_reduce_elements(hlo.as_text()))
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.params))
    n_stats = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(state.batch_stats))
    assert counts["flat"] == (1, n_params + n_stats + 1)  # gradients, BN increments, loss
    assert counts["per_leaf"][1] == counts["flat"][1]  # the same bytes, in one or more operands


@pytest.mark.parametrize("reduction", ["flat", "per_leaf"])
def test_noise_scale_norms_ride_in_the_one_reduction(reduction, fused_setup):
    """measure_noise adds one scalar to the step's one all-reduce (|A_d|^2; two with the microbatch
    norms, + sum |g_i|^2) (flat: more elements; per_leaf: more scalar operands, which XLA combines
    into the same all-reduce), no collective to ``accum``, and leaves the training bit for bit
    unchanged."""
    _, init, batches = fused_setup
    config = small_config()
    mesh = make_mesh()
    model, tx = build_model(config, 10, 8), make_optimizer(config)
    hyper = np.int32(3), np.float32(0.3), np.float32(0.9)
    out = {}
    for measure in (False, "devices", "microbatches"):
        progs = build_programs(
            model,
            tx,
            mesh,
            num_classes=10,
            bn_momentum=0.9,
            reduction=reduction,
            measure_noise=bool(measure),
            microbatch_norms=measure == "microbatches",
        )
        state = init()
        acc = progs.zeros_acc(state)
        final_hlo = progs.final.lower(state, acc, *batches[0], *hyper).compile().as_text()
        accum_hlo = progs.accum.lower(state, acc, *batches[0]).compile().as_text()
        counts = (_count_all_reduces(final_hlo), _all_reduce_elements(final_hlo), _count_all_reduces(accum_hlo))
        for x, y in batches[:2]:
            acc = progs.accum(state, acc, x, y)
        new, _, metrics = progs.final(state, acc, *batches[2], *hyper)
        out[measure] = counts, jax.tree.map(np.asarray, new), jax.tree.map(np.asarray, metrics)
    c_off, s_off, m_off = out[False]
    for extra, measure in enumerate(("devices", "microbatches"), start=1):
        c_on, s_on, m_on = out[measure]
        assert c_on[0] == c_off[0] == 1 and c_on[2] == c_off[2] == 0  # no collective added, none in accum
        assert c_on[1] == c_off[1] + extra  # the bytes reduced: one or two float32 more
        _assert_bitwise_equal(s_on, s_off)
        keys = {"grad_sq_device", "grad_sq_big"} | ({"grad_sq_micro"} if extra == 2 else set())
        assert set(m_on) - set(m_off) == keys
        np.testing.assert_allclose(m_on["grad_sq_big"], m_on["grad_norm"] ** 2, rtol=1e-5)
        assert m_on["grad_sq_device"] > m_on["grad_sq_big"] > 0  # fewer examples are noisier
    m = out["microbatches"][2]
    assert m["grad_sq_micro"] > m["grad_sq_device"]  # b examples against k b
