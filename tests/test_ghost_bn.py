"""Ghost BN by example index on 8 simulated devices, against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lbt.errors import ConfigError
from lbt.parallel.ghost_bn import GhostBatchNorm, ghost_layout
from lbt.parallel.mesh import DATA, make_mesh

M = 32  # global microbatch -> b = 4 per device on 8 devices


def numpy_ghost_bn(x: np.ndarray, G: int, eps: float, scale: np.ndarray, bias: np.ndarray):
    """Reference: statistics over groups of G consecutive examples of the global batch."""
    n = x.shape[0]
    xg = x.reshape((n // G, G) + x.shape[1:]).astype(np.float64)
    axes = (1, 2, 3)
    mean = xg.mean(axis=axes, keepdims=True)
    var = xg.var(axis=axes, keepdims=True)
    y = (xg - mean) / np.sqrt(var + eps) * scale + bias
    return y.reshape(x.shape), mean.reshape(n // G, -1), var.reshape(n // G, -1)


@pytest.mark.parametrize("G", [2, 4, 16])  # G < b, G = b, G > b (spans 4 devices)
def test_ghost_bn_matches_numpy(G):
    mesh = make_mesh()
    n_dev = mesh.devices.size
    assert n_dev == 8
    ghost, per_group = ghost_layout(G, M, n_dev)
    assert per_group == max(1, G // (M // n_dev))
    rng = np.random.default_rng(0)
    # give each example its own offset/scale so wrong grouping changes the result
    x = (
        rng.normal(size=(M, 3, 3, 5)) * rng.uniform(0.5, 3, size=(M, 1, 1, 1)) + rng.normal(size=(M, 1, 1, 1)) * 4
    ).astype(np.float32)
    layer = GhostBatchNorm(ghost_size=ghost, axis_name=DATA, num_devices=n_dev, momentum=0.9, epsilon=1e-5)
    variables = layer.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 5)), use_running_average=True)
    scale = rng.uniform(0.5, 2, size=5).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}

    def body(params, x):
        y, upd = layer.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            use_running_average=False,
            mutable=["batch_stats"],
        )
        stats = jax.tree.map(lambda a: a[None], upd["batch_stats"])
        return y, stats

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(DATA), P(DATA)), check_vma=False))
    y, stats = f(params, jnp.asarray(x))
    ref, mean, var = numpy_ghost_bn(x, G, 1e-5, scale, bias)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=2e-4, atol=2e-4)
    # per-device running-stat updates; their average is one EMA of the mean ghost statistics
    ema_mean = np.asarray(stats["mean"]).mean(axis=0)
    ema_var = np.asarray(stats["var"]).mean(axis=0)
    np.testing.assert_allclose(ema_mean, 0.1 * mean.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ema_var, 0.9 * 1.0 + 0.1 * var.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_ghost_bn_differs_from_global_bn():
    """Sanity: the reference itself depends on G (so the test above can fail)."""
    x = np.random.default_rng(1).normal(size=(16, 2, 2, 3)).astype(np.float32) * np.arange(1, 17).reshape(16, 1, 1, 1)
    one = np.ones(3, np.float32)
    zero = np.zeros(3, np.float32)
    a = numpy_ghost_bn(x, 4, 1e-5, one, zero)[0]
    b = numpy_ghost_bn(x, 16, 1e-5, one, zero)[0]
    assert np.abs(a - b).max() > 0.1


@pytest.mark.parametrize(
    "G, M_, devices, fragment",
    [
        (24, 64, 8, "does not divide the global microbatch 64"),
        (4, 48, 8, "does not divide the per-device microbatch 6"),
        (16, 96, 8, "not a multiple of the per-device microbatch 12"),
    ],
)
def test_invalid_ghost_sizes(G, M_, devices, fragment):
    with pytest.raises(ConfigError) as e:
        ghost_layout(G, M_, devices)
    assert e.value.field == "model.ghost_batch_size"
    assert fragment in str(e.value)
