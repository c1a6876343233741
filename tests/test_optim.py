"""Optimizer details of the large-batch recipes, checked against hand-computed values.

* the weight-decay mask (BN scale/bias and every bias excluded) and its effect on one step;
* label smoothing, through the trainer's own programs;
* zero-init of the last BN scale of each residual block (the block starts as its shortcut);
* LARS and LAMB: optax's own, with the trainer's injected LR and momentum;
* bfloat16 compute with float32 params, accumulators and optimizer state.

Every optimizer step here goes through ``build_programs``' ``apply`` (the trainer's update, which
injects the LR and momentum into ``opt_state.hyperparams``), fed with a hand-made accumulator so
the gradient is known exactly.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lbt.config import base_config
from lbt.data.preprocess import apply_lut
from lbt.models import build_model
from lbt.models import inception_resnet_v2 as irv2
from lbt.models.resnet import BasicBlock, Bottleneck
from lbt.models.wrn import PreActBlock
from lbt.parallel.ghost_bn import GhostBatchNorm
from lbt.parallel.mesh import data_sharded, global_batch_array
from lbt.train.loop import Trainer
from lbt.train.losses import cross_entropy
from lbt.train.optim import decay_mask
from lbt.train.state import init_state

N_DEV = 8
KEY = jax.random.PRNGKey(0)


def small_config(optimizer: str = "momentum", **optim) -> ml_collections.ConfigDict:
    """The digits CNN (width 4), M = 32 on 8 devices, G = b = 4."""
    c = base_config()
    c.model.width = 4
    c.train.global_microbatch = 32
    c.schedule.global_batch = 32
    c.model.ghost_batch_size = 4
    c.train.progress = False
    c.train.eval_every_epochs = 0.0
    c.optimizer.name = optimizer
    if optimizer == "sgd":  # plain SGD has no momentum: the plan's m must be 0 (a config error otherwise)
        c.schedule.momentum = 0.0
    for k, v in optim.items():
        c.optimizer[k] = v
    return c


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", p)) for p in path)


def _random_like(params, seed: int):
    """A deterministic random pytree shaped like ``params`` (a stand-in gradient)."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([rng.normal(size=np.shape(x)).astype(np.float32) for x in leaves])


class Stepper:
    """The trainer's programs for ``config`` and a way to run ``apply`` on a known gradient."""

    def __init__(self, config, tmp_path):
        self.trainer = Trainer(config, tmp_path)
        self.progs = self.trainer.programs
        self.mesh = self.trainer.mesh
        self.state = init_state(self.trainer.model, self.trainer.tx, self.mesh, (8, 8, 1), seed=0)

    def params(self):
        return jax.tree.map(np.asarray, self.state.params)

    def step(self, grads, lr: float, momentum: float, k: int = 2):
        """One optimizer step whose mean gradient is exactly ``grads``.

        Device d holds ``k * c_d * grads`` with mean(c_d) = 1, so the pmean over devices and the
        division by k inside ``apply`` must both happen for the result to be ``grads``.
        """
        c = (np.arange(N_DEV, dtype=np.float32) + 1.0) / 4.5  # mean exactly 1
        per_dev = jax.tree.map(lambda g: np.stack([k * ci * g for ci in c]).astype(np.float32), grads)
        zeros = lambda t: jax.tree.map(lambda a: np.zeros((N_DEV,) + np.shape(a), np.float32), t)  # noqa: E731
        acc = {
            "grads": per_dev,
            "stats": zeros(self.state.batch_stats),
            "loss": np.full((N_DEV,), 0.5 * k, np.float32),
        }
        if "sq" in self.progs.zeros_acc(self.state):  # the noise scale's per-device sum of |g_i|^2 (not used here)
            acc["sq"] = np.zeros((N_DEV,), np.float32)
        acc = jax.device_put(acc, data_sharded(self.mesh))
        self.state, _, metrics = self.progs.apply(self.state, acc, np.int32(k), np.float32(lr), np.float32(momentum))
        assert bool(metrics["finite"])
        return self.params()


def _close(a, b, rtol=1e-5, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


# ---------------------------------------------------------------------------------------------
# Weight-decay mask


def _bn_module(names: tuple[str, ...]) -> bool:
    """BN layers are named bn1.., bn_init, bn_final, proj_bn in lbt's models."""
    return names[-2].startswith("bn") or names[-2] == "proj_bn"


@pytest.mark.parametrize("name, n_bn", [("resnet18", 20), ("wrn16_4", 13), ("cnn", 3)])
def test_decay_mask_excludes_exactly_bn_and_biases(name, n_bn):
    """On the real param tree: BN scale/bias and the head's bias are masked out, every kernel decays."""
    c = base_config()
    c.model.name = name
    shape = (1, 32, 32, 3) if name != "cnn" else (1, 8, 8, 1)
    model = build_model(c, 10, num_devices=1)
    params = jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape), train=False))["params"]
    flat = jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    excluded = {_path_names(p) for p, m in flat if not m}
    decayed = {_path_names(p) for p, m in flat if m}
    bn_leaves = {n for n in excluded if _bn_module(n)}
    assert {n[-1] for n in bn_leaves} == {"scale", "bias"} and len(bn_leaves) == 2 * n_bn
    assert excluded - bn_leaves == {("head", "bias")}  # the only bias outside BN: the head's
    assert {n[-1] for n in decayed} == {"kernel"}
    assert not any(_bn_module(n) for n in decayed)
    # decay_bn_and_bias=True decays everything
    assert all(jax.tree.leaves(decay_mask(params, decay_bn_and_bias=True)))


def test_decay_mask_excludes_conv_biases():
    """Inception-ResNet-v2 blocks end in a biased 1x1 conv: its bias is masked, its kernel decays."""
    block = irv2.Block35(scale=0.17, norm=functools.partial(GhostBatchNorm, ghost_size=1))
    params = jax.eval_shape(lambda: block.init(KEY, jnp.zeros((1, 5, 5, 320)), train=False))["params"]
    mask = decay_mask(params)
    assert mask["conv_up"]["bias"] is False and mask["conv_up"]["kernel"] is True
    assert params["conv_up"]["bias"].ndim == 1


def test_weight_decay_step_matches_hand_computed_coupled_l2(tmp_path):
    """Momentum SGD, coupled L2 (Goyal et al.): kernels get g + wd*w, BN/bias params get g only.

    Two steps check the trainer's injected LR and momentum: v1 = g1', w1 = w0 - lr1 v1;
    v2 = m v1 + g2', w2 = w1 - lr2 v2, with g' = g + wd*w for decayed leaves.
    """
    wd, lr1, lr2, m = 0.05, 0.1, 0.3, 0.9
    s = Stepper(small_config("momentum", weight_decay=wd), tmp_path)
    w0 = s.params()
    mask = decay_mask(w0)
    g1, g2 = _random_like(w0, 1), _random_like(w0, 2)
    eff = lambda g, w: jax.tree.map(lambda gi, wi, mi: gi + wd * wi if mi else gi, g, w, mask)  # noqa: E731

    w1 = s.step(g1, lr1, m)
    v1 = eff(g1, w0)
    _close(w1, jax.tree.map(lambda w, v: w - lr1 * v, w0, v1))
    # a masked-out leaf moved by exactly its gradient term; a kernel also by its decay term
    np.testing.assert_allclose(w1["bn1"]["scale"], w0["bn1"]["scale"] - lr1 * g1["bn1"]["scale"], rtol=1e-6)
    np.testing.assert_allclose(w1["head"]["bias"], w0["head"]["bias"] - lr1 * g1["head"]["bias"], rtol=1e-6)
    np.testing.assert_allclose(
        w1["conv1"]["kernel"],
        w0["conv1"]["kernel"] - lr1 * (g1["conv1"]["kernel"] + wd * w0["conv1"]["kernel"]),
        rtol=1e-5,
    )

    w2 = s.step(g2, lr2, m)
    v2 = jax.tree.map(lambda a, b: m * a + b, v1, eff(g2, w1))
    _close(w2, jax.tree.map(lambda w, v: w - lr2 * v, w1, v2), rtol=1e-5, atol=1e-6)


def test_decay_bn_and_bias_true_decays_bn_scale(tmp_path):
    wd, lr = 0.05, 0.1
    s = Stepper(small_config("sgd", weight_decay=wd, decay_bn_and_bias=True), tmp_path)
    w0 = s.params()
    g = _random_like(w0, 3)
    w1 = s.step(g, lr, 0.0)
    _close(w1, jax.tree.map(lambda w, gi: w - lr * (gi + wd * w), w0, g))


def test_adamw_decoupled_decay_is_masked(tmp_path):
    """AdamW's first step: u = g / (|g| + eps) (bias-corrected), plus wd*w on decayed leaves only."""
    wd, lr, eps = 0.1, 0.01, 1e-8
    s = Stepper(small_config("adam", weight_decay=wd, eps=eps), tmp_path)
    w0 = s.params()
    mask = decay_mask(w0)
    g = _random_like(w0, 4)
    w1 = s.step(g, lr, 0.9)
    expect = jax.tree.map(lambda w, gi, mi: w - lr * (gi / (np.abs(gi) + eps) + (wd * w if mi else 0.0)), w0, g, mask)
    _close(w1, expect, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Label smoothing


def _smoothed_ce_numpy(logits: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    k = logits.shape[-1]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    target = np.full_like(logits, alpha / k)
    target[np.arange(len(labels)), labels] += 1.0 - alpha
    return -(target * logp).sum(-1)


def test_label_smoothing_hand_computed():
    logits = np.array([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0], [-3.0, 4.0, 1.0, 0.2]], np.float32)
    labels = np.array([0, 2, 3])
    # by hand for row 2 (uniform logits): every log p = -log 4, whatever the smoothing
    got = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 4, 0.1))
    np.testing.assert_allclose(got[1], np.log(4.0), rtol=1e-6)
    np.testing.assert_allclose(got, _smoothed_ce_numpy(logits, labels, 0.1), rtol=1e-6)
    # row 0 written out: t = (0.925, 0.025, 0.025, 0.025)
    lse = np.log(np.exp(2.0) + np.exp(1.0) + np.exp(0.5) + np.exp(-1.0))
    row0 = -(0.925 * (2.0 - lse) + 0.025 * ((1.0 - lse) + (0.5 - lse) + (-1.0 - lse)))
    np.testing.assert_allclose(got[0], row0, rtol=1e-6)
    # smoothing = 0 is plain cross entropy
    plain = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 4))
    np.testing.assert_allclose(plain, _smoothed_ce_numpy(logits, labels, 0.0), rtol=1e-6)
    assert not np.allclose(plain, got)


def test_trainer_loss_uses_config_label_smoothing(tmp_path):
    """The loss the trainer's accum/apply report equals the NumPy smoothed CE of the model's logits."""
    alpha = 0.2
    config = small_config("sgd")
    config.train.label_smoothing = alpha
    s = Stepper(config, tmp_path / "ls")
    M = config.train.global_microbatch
    x, y = s.trainer.stream.local_microbatch(0)
    acc = s.progs.zeros_acc(s.state)
    acc = s.progs.accum(s.state, acc, global_batch_array(s.mesh, x, M), global_batch_array(s.mesh, y, M))
    params, stats = s.params(), jax.tree.map(np.asarray, s.state.batch_stats)
    _, _, metrics = s.progs.apply(s.state, acc, np.int32(1), np.float32(0.0), np.float32(0.0))
    # reference: the same model on one device over the whole microbatch (G = 4 groups by index)
    ref = build_model(config, 10, 1)
    xf = apply_lut(x, s.trainer.splits.train.input_lut)  # the stream sends uint8; the reference needs float32
    logits, _ = ref.apply({"params": params, "batch_stats": stats}, xf, train=True, mutable=["batch_stats"])
    expect = _smoothed_ce_numpy(np.asarray(logits, np.float64), np.asarray(y), alpha).mean()
    np.testing.assert_allclose(float(metrics["loss"]), expect, rtol=1e-5)
    unsmoothed = _smoothed_ce_numpy(np.asarray(logits, np.float64), np.asarray(y), 0.0).mean()
    assert abs(float(metrics["loss"]) - unsmoothed) > 1e-3


# ---------------------------------------------------------------------------------------------
# Zero-init of the last BN scale


def _block_out(block, x):
    variables = jax.jit(lambda: block.init(KEY, x, train=False))()
    out, _ = jax.jit(lambda v: block.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    return variables["params"], np.asarray(out)


def _block_grads(block, x):
    """Gradient of sum(block(x) * r) with respect to the block's params at init."""
    variables = jax.jit(lambda: block.init(KEY, x, train=False))()
    r = jnp.asarray(np.random.default_rng(9).normal(size=x.shape), jnp.float32)

    def f(p):
        out, _ = block.apply(
            {"params": p, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out * r)

    return jax.jit(jax.grad(f))(variables["params"])


@pytest.mark.parametrize("cls, last", [(BasicBlock, "bn2"), (Bottleneck, "bn3")])
def test_zero_init_block_starts_as_its_shortcut(cls, last):
    """ResNet blocks with zero_init_last_bn: γ_last = 0, so the block's output is relu(shortcut)."""
    norm = functools.partial(GhostBatchNorm, ghost_size=2, axis_name=None)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 6, 16)), jnp.float32)
    filters = 16 if cls is BasicBlock else 4  # identity shortcut (out channels = 16)
    params, out = _block_out(cls(filters=filters, strides=1, norm=norm, zero_init_last_bn=True), x)
    assert np.all(np.asarray(params[last]["scale"]) == 0.0)
    np.testing.assert_array_equal(out, np.maximum(np.asarray(x), 0.0))
    # the zero γ still gets a gradient (x̂ · upstream); the branch below it gets none on step one
    g = _block_grads(cls(filters=filters, strides=1, norm=norm, zero_init_last_bn=True), x)
    assert float(jnp.abs(g[last]["scale"]).sum()) > 0
    assert float(jnp.abs(g["conv1"]["kernel"]).sum()) == 0.0
    params, out = _block_out(cls(filters=filters, strides=1, norm=norm, zero_init_last_bn=False), x)
    assert np.all(np.asarray(params[last]["scale"]) == 1.0)
    assert not np.allclose(out, np.maximum(np.asarray(x), 0.0))


def test_zero_init_projection_block_equals_projected_shortcut():
    """With a projection shortcut the block starts as relu(proj_bn(proj_conv(x)))."""
    norm = functools.partial(GhostBatchNorm, ghost_size=2, axis_name=None)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 6, 8)), jnp.float32)
    block = BasicBlock(filters=16, strides=2, norm=norm, zero_init_last_bn=True)
    variables = jax.jit(lambda: block.init(KEY, x, train=False))()
    out, _ = block.apply(variables, x, train=True, mutable=["batch_stats"])

    p = variables["params"]
    proj = jax.lax.conv_general_dilated(
        x, p["proj_conv"]["kernel"], (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    bn = GhostBatchNorm(ghost_size=2, axis_name=None, use_running_average=False)
    sc, _ = bn.apply(
        {"params": p["proj_bn"], "batch_stats": variables["batch_stats"]["proj_bn"]}, proj, mutable=["batch_stats"]
    )
    np.testing.assert_allclose(np.asarray(out), np.maximum(np.asarray(sc), 0.0), rtol=1e-5, atol=1e-6)


def test_zero_init_wrn_preact_block_is_identity():
    norm = functools.partial(GhostBatchNorm, ghost_size=2, axis_name=None)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6, 6, 8)), jnp.float32)
    _, out = _block_out(PreActBlock(filters=8, strides=1, norm=norm, zero_init_last_bn=True), x)
    np.testing.assert_array_equal(out, np.asarray(x))
    _, out = _block_out(PreActBlock(filters=8, strides=1, norm=norm, zero_init_last_bn=False), x)
    assert not np.allclose(out, np.asarray(x))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wrn16_4"])
def test_zero_init_config_wiring(name):
    """config.model.zero_init_last_bn reaches every block build_model makes (off by default)."""
    c = base_config()
    c.model.name = name
    assert build_model(c, 10, num_devices=1).zero_init_last_bn is False
    c.model.zero_init_last_bn = True
    model = build_model(c, 10, num_devices=1)
    assert model.zero_init_last_bn is True
    model = model.clone(width=4) if name.startswith("resnet") else model.clone(widen=1)
    flags = []

    def record(next_fun, args, kwargs, context):  # sees every module call during init
        if context.method_name == "__call__" and (context.module.name or "").startswith(("stage", "group")):
            flags.append(context.module.zero_init_last_bn)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        tree = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 16, 16, 3)), train=False))
    assert len(flags) == {"resnet18": 8, "resnet50": 16, "wrn16_4": 6}[name] and all(flags)
    assert tree["params"]


@pytest.mark.slow
def test_zero_init_resnet18_values_from_config():
    """The real (width-reduced) ResNet-18 from the config: every bn2 γ is 0, every bn1 γ is 1."""
    c = base_config()
    c.model.name = "resnet18"
    c.model.zero_init_last_bn = True
    model = build_model(c, 10, num_devices=1).clone(width=4)
    params = jax.jit(lambda: model.init(KEY, jnp.zeros((1, 16, 16, 3)), train=False))()["params"]
    blocks = [n for n in params if n.startswith("stage")]
    assert len(blocks) == 8
    for b in blocks:
        assert np.all(np.asarray(params[b]["bn2"]["scale"]) == 0.0)
        assert np.all(np.asarray(params[b]["bn1"]["scale"]) == 1.0)


# ---------------------------------------------------------------------------------------------
# LARS and LAMB


def _optax_steps(tx: optax.GradientTransformation, w0, grads_list):
    state = tx.init(w0)
    w = w0
    for g in grads_list:
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
    return w


def test_lars_is_optax_lars_with_injected_lr_and_momentum(tmp_path):
    wd, lr, m, tc = 1e-3, 0.5, 0.9, 0.02
    s = Stepper(small_config("lars", weight_decay=wd, trust_coefficient=tc), tmp_path)
    w0 = s.params()
    mask = decay_mask(w0)
    g1, g2 = _random_like(w0, 5), _random_like(w0, 6)
    w1 = s.step(g1, lr, m)

    # hand-computed first step: kernels u = lr * tc * |w| / |g + wd w| * (g + wd w); BN/bias u = lr * g
    def first(w, g, mi):
        if not mi:
            return w - lr * g
        d = g + wd * w
        return w - lr * tc * np.linalg.norm(w) / np.linalg.norm(d) * d

    _close(w1, jax.tree.map(first, w0, g1, mask), rtol=1e-5, atol=1e-7)
    w2 = s.step(g2, lr, m)
    ref = optax.lars(
        lr, weight_decay=wd, weight_decay_mask=mask, trust_coefficient=tc, trust_ratio_mask=mask, momentum=m
    )
    _close(w2, _optax_steps(ref, w0, [g1, g2]), rtol=1e-5, atol=1e-7)
    # the injected momentum is used: momentum 0 for the second step gives another result
    assert not np.allclose(
        w2["conv1"]["kernel"],
        _optax_steps(
            optax.lars(
                lr, weight_decay=wd, weight_decay_mask=mask, trust_coefficient=tc, trust_ratio_mask=mask, momentum=0.0
            ),
            w0,
            [g1, g2],
        )["conv1"]["kernel"],
    )


def test_lamb_is_optax_lamb_with_injected_lr_and_b1(tmp_path):
    wd, lr, b1, b2, eps = 0.01, 0.02, 0.8, 0.99, 1e-8
    s = Stepper(small_config("lamb", weight_decay=wd, b2=b2, eps=eps), tmp_path)
    w0 = s.params()
    mask = decay_mask(w0)
    g1, g2 = _random_like(w0, 7), _random_like(w0, 8)
    w1 = s.step(g1, lr, b1)
    # hand-check the first LAMB step of the (zero-init) head bias: Adam's first step is
    # g / (|g| + eps), and the trust ratio is 1 because |w| = 0
    gb = g1["head"]["bias"]
    assert np.all(w0["head"]["bias"] == 0.0)
    np.testing.assert_allclose(w1["head"]["bias"], -lr * gb / (np.abs(gb) + eps), rtol=1e-5)
    w2 = s.step(g2, lr, b1)
    _close(
        w2,
        _optax_steps(optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask), w0, [g1, g2]),
        rtol=1e-5,
        atol=1e-7,
    )
    # and a different injected LR would have given a different step
    other = _optax_steps(optax.lamb(2 * lr, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask), w0, [g1, g2])
    assert not np.allclose(w2["conv1"]["kernel"], other["conv1"]["kernel"])


# ---------------------------------------------------------------------------------------------
# bfloat16 compute


def _dtypes(tree) -> set:
    return {jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)}


def test_bfloat16_compute_with_float32_params_accumulators_and_opt_state(tmp_path):
    F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
    losses, params_after = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = small_config("momentum", weight_decay=1e-4)
        config.model.dtype = dtype
        s = Stepper(config, tmp_path / dtype)
        M = config.train.global_microbatch
        acc = s.progs.zeros_acc(s.state)
        for i in range(2):
            x, y = s.trainer.stream.local_microbatch(i * M)
            acc = s.progs.accum(s.state, acc, global_batch_array(s.mesh, x, M), global_batch_array(s.mesh, y, M))
        assert _dtypes(acc) == {F32}  # the gradient accumulators are float32
        s.state, acc, metrics = s.progs.apply(s.state, acc, np.int32(2), np.float32(0.1), np.float32(0.9))
        assert _dtypes(s.state.params) == {F32}
        assert _dtypes(s.state.batch_stats) == {F32}
        assert _dtypes(s.state.opt_state) <= {F32, jnp.dtype(jnp.int32)}
        assert F32 in _dtypes(s.state.opt_state)  # the momentum trace
        losses[dtype] = float(metrics["loss"])
        params_after[dtype] = s.params()
        # activations: every intermediate of the conv/BN stack is in the compute dtype
        x, _ = s.trainer.stream.local_microbatch(0)
        _, inter = s.trainer.model.apply(
            {"params": s.state.params, "batch_stats": s.state.batch_stats},
            x,
            train=False,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        acts = inter["intermediates"]
        want = BF16 if dtype == "bfloat16" else F32
        for layer in ("conv1", "bn1", "conv2", "bn3", "head"):
            assert acts[layer]["__call__"][0].dtype == want, (dtype, layer)
        assert acts["__call__"][0].dtype == F32  # logits are cast back to float32
    # same data, same init: bf16 compute stays close to float32
    assert losses["float32"] > 1.0
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0.05, atol=5e-3),
        params_after["bfloat16"],
        params_after["float32"],
    )
