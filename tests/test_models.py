"""Models: exact parameter counts and output shapes (``jax.eval_shape``, no real init of the big
models), a real forward/backward of ResNet-18 and WRN-16-4 through ``build_model`` with ghost BN,
and where ``zero_init_last_bn`` puts its zeros."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lbt.config import base_config
from lbt.models import MODELS, build_model, create_model
from lbt.models import inception_resnet_v2 as irv2
from lbt.models.resnet import ResNet18, ResNet50
from lbt.models.wrn import WRN16_4
from lbt.parallel.ghost_bn import GhostBatchNorm

#: Init with the rbg PRNG: its init programs compile ~4x faster on CPU than threefry's.
KEY = jax.random.key(0, impl="rbg")


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _abstract(model, size: int, batch: int = 2):
    """(variables, logits) as ShapeDtypeStructs: traced, never computed."""
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(KEY, x[:1], train=False))
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return variables, logits


def _config(name: str, microbatch: int = 8, ghost: int = 4):
    c = base_config()
    c.model.name = name
    c.train.global_microbatch = microbatch
    c.model.ghost_batch_size = ghost
    return c


# name, input size, classes, exact params
COUNTS = [
    ("resnet18", 224, 1000, 11_689_512),  # torchvision resnet18
    ("resnet50", 224, 1000, 25_557_032),  # torchvision resnet50
    ("wrn16_4", 32, 10, 2_748_890),  # Zagoruyko & Komodakis WRN-16-4, no dropout
    ("inception_resnet_v2", 299, 1000, 55_843_464),  # timm inception_resnet_v2
]


@pytest.mark.parametrize("name,size,classes,expected", COUNTS, ids=[c[0] for c in COUNTS])
def test_param_count_and_shape(name, size, classes, expected):
    model = build_model(_config(name), classes, num_devices=1)
    variables, logits = _abstract(model, size)
    assert _count(variables["params"]) == expected
    assert logits.shape == (2, classes)
    assert logits.dtype == jnp.float32
    assert "batch_stats" in variables


def test_inception_resnet_v2_bn_channels_and_tf_slim_count():
    """TF-slim's BN has no scale γ: its count is ours minus one γ per BN channel."""
    variables, _ = _abstract(irv2.InceptionResNetV2(num_classes=1000), 299, batch=1)
    flat = jax.tree_util.tree_leaves_with_path(variables["params"])
    gammas = sum(math.prod(x.shape) for p, x in flat if jax.tree_util.keystr(p).endswith("['scale']"))
    assert gammas == 30_272
    assert irv2.PARAM_COUNT - gammas == irv2.TF_SLIM_PARAM_COUNT == 55_813_192
    # 10 + 20 + 10 residual blocks.
    names = variables["params"].keys()
    assert sum(n.startswith("block35_") for n in names) == 10
    assert sum(n.startswith("block17_") for n in names) == 20
    assert sum(n.startswith("block8_") for n in names) == 10


def test_bfloat16_compute_returns_float32_logits_and_float32_params():
    model = ResNet50(num_classes=1000, norm=functools.partial(GhostBatchNorm, ghost_size=2), dtype=jnp.bfloat16)
    variables, logits = _abstract(model, 224)
    assert logits.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}


def test_registry_covers_every_model():
    for name in MODELS:
        model = create_model(_config(name), 10, GhostBatchNorm, jnp.float32)
        assert model.num_classes == 10


def _loss(model, variables, x, y):
    def f(params):
        logits = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=False)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)), logits

    return jax.jit(jax.value_and_grad(f, has_aux=True))(variables["params"])


@pytest.mark.parametrize("name", ["resnet18", "wrn16_4"])
def test_forward_backward_eval_mode(name):
    """A real forward/backward on 2 CIFAR-size images through build_model's ghost BN (eval: no collectives)."""
    config = _config(name)
    model = build_model(config, 10, num_devices=1)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    y = jnp.asarray([3, 7])
    variables = jax.jit(lambda: model.init(KEY, x[:1], train=False))()
    (loss, logits), grads = _loss(model, variables, x, y)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits))) and bool(jnp.isfinite(loss))
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def test_train_mode_updates_batch_stats_without_collectives():
    """G <= batch: ghost statistics are local, so train mode runs outside shard_map too."""
    model = ResNet18(num_classes=10, norm=functools.partial(GhostBatchNorm, ghost_size=2, axis_name=None), width=8)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16, 16, 3)), jnp.float32)
    variables = jax.jit(lambda: model.init(KEY, x[:1], train=False))()
    logits, new = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
    before = variables["batch_stats"]["bn_init"]["mean"]
    assert not np.allclose(new["batch_stats"]["bn_init"]["mean"], before)


def _init_params(model, size: int = 32, channels: int = 3):
    x = jnp.zeros((1, size, size, channels))
    return jax.jit(lambda: model.init(KEY, x, train=False))()["params"]


def _leaf(params, *path):
    for p in path:
        params = params[p]
    return np.asarray(params)


@pytest.mark.parametrize("zero,models", [(True, "18,50"), (False, "18")])
def test_zero_init_last_bn_resnet(zero, models):
    """Goyal et al.: γ of the last BN of every residual block is 0; every other γ is 1."""
    norm = functools.partial(GhostBatchNorm, ghost_size=2)
    cases = {"18": (ResNet18, "bn2", 8), "50": (ResNet50, "bn3", 16)}
    for cls, last, blocks in (cases[m] for m in models.split(",")):
        model = cls(num_classes=10, norm=norm, width=4, zero_init_last_bn=zero)  # width-reduced
        params = _init_params(model)
        block_names = [n for n in params if n.startswith("stage")]
        assert len(block_names) == blocks
        for b in block_names:
            for bn, sub in params[b].items():
                if "scale" not in sub:
                    continue
                expect = 0.0 if (zero and bn == last) else 1.0
                assert np.all(_leaf(params, b, bn, "scale") == expect), (cls, b, bn)
        assert np.all(_leaf(params, "bn_init", "scale") == 1.0)


@pytest.mark.parametrize("zero", [False, True])
def test_zero_init_last_bn_wrn_zeroes_last_conv(zero):
    """Pre-activation blocks end in a conv, not a BN: the flag zeroes that conv's kernel."""
    model = WRN16_4(num_classes=10, norm=functools.partial(GhostBatchNorm, ghost_size=2), zero_init_last_bn=zero)
    params = _init_params(model)
    blocks = [n for n in params if n.startswith("group")]
    assert len(blocks) == 6
    for b in blocks:
        k = _leaf(params, b, "conv2", "kernel")
        assert np.all(k == 0) if zero else np.any(k != 0)
        assert np.any(_leaf(params, b, "conv1", "kernel") != 0)
        assert np.all(_leaf(params, b, "bn2", "scale") == 1.0)


def test_zero_init_last_bn_inception_resnet_v2_shapes():
    """IRv2 blocks end in a biased 1x1 conv; the flag zeroes its kernel (checked abstractly:
    a real init of 56M parameters is too slow for this machine)."""
    model = irv2.InceptionResNetV2(num_classes=1000, zero_init_last_bn=True)
    variables, _ = _abstract(model, 299, batch=1)
    assert _count(variables["params"]) == irv2.PARAM_COUNT
    block = irv2.Block35(scale=0.17, zero_init_last_bn=True, norm=functools.partial(GhostBatchNorm, ghost_size=1))
    params = _init_params(block, size=5, channels=320)
    assert np.all(_leaf(params, "conv_up", "kernel") == 0)
    assert np.any(_leaf(params, "branch0", "conv", "kernel") != 0)
