"""Ghost batch norm defined by example index, with cross-replica groups (docs/design.md, semantics 4).

Statistics are computed over groups of G consecutive examples of the *global* microbatch
(Hoffer et al. 2017; used by Smith et al. 2018 to keep BN noise fixed while B grows). The layer
runs inside the trainer's ``shard_map`` body, where each device holds b = M / devices examples:

* G <= b: each device splits its b examples into b / G groups; no communication.
* G > b: a group spans G / b consecutive devices; the per-channel sums are reduced across exactly
  those devices with ``psum(..., axis_index_groups=...)`` (cross-replica ghost BN).

Running statistics are one EMA of the mean over groups of the ghost statistics. Inside the
training body each device updates its own copy; the trainer averages the copies once per
optimizer step (EMA is linear, so that equals one EMA of the device-averaged statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lbt.errors import ConfigError

Array = jax.Array


def ghost_layout(ghost: int, microbatch: int, num_devices: int) -> tuple[int, int]:
    """Return ``(G, devices_per_group)`` for ghost size ``ghost`` (0 = M) and check it.

    G must divide M. If G <= b (= M / devices) it must divide b (groups are device-local);
    if G > b it must be a multiple of b, and a group spans G / b devices (cross-replica ghost BN).
    """
    g = ghost or microbatch
    b = microbatch // num_devices
    if microbatch % g:
        raise ConfigError(
            "model.ghost_batch_size",
            f"{g} does not divide the global microbatch {microbatch}; pick a divisor such as {_divisor_near(microbatch, g)}",
        )
    if g <= b:
        if b % g:
            raise ConfigError(
                "model.ghost_batch_size",
                f"{g} does not divide the per-device microbatch {b}; pick a divisor of {b} or a multiple of {b}",
            )
        return g, 1
    if g % b:
        raise ConfigError(
            "model.ghost_batch_size",
            f"{g} spans devices but is not a multiple of the per-device microbatch {b}; use a multiple of {b}",
        )
    return g, g // b


def _divisor_near(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - target))


def ghost_groups(num_devices: int, devices_per_group: int) -> list[list[int]]:
    """``axis_index_groups`` for groups of consecutive devices."""
    return [list(range(s, s + devices_per_group)) for s in range(0, num_devices, devices_per_group)]


def ghost_moments(x: Array, ghost_size: int, axis_name: str | None, num_devices: int) -> tuple[Array, Array]:
    """Per-example mean and (biased) variance of the ghost group each example belongs to.

    ``x``: the local ``[b, ..., C]`` activations. Returns ``mean, var`` broadcastable to x, in float32.
    """
    b = x.shape[0]
    xf = x.astype(jnp.float32)
    red = tuple(range(1, x.ndim - 1))  # spatial axes
    if ghost_size <= b:
        groups = b // ghost_size
        xg = xf.reshape((groups, ghost_size) + x.shape[1:])
        axes = (1,) + tuple(a + 1 for a in red)
        mean = xg.mean(axis=axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axis=axes, keepdims=True)
        # back to one row per example: [b, 1.., C]
        flat = (groups,) + (1,) * len(red) + (x.shape[-1],)
        mean = jnp.repeat(mean.reshape(flat), ghost_size, axis=0)
        var = jnp.repeat(var.reshape(flat), ghost_size, axis=0)
        return mean, var
    per_group = ghost_size // b
    axes = (0,) + red
    count = float(ghost_size * math.prod(x.shape[a] for a in red))
    s1 = xf.sum(axis=axes, keepdims=True)
    s2 = jnp.square(xf).sum(axis=axes, keepdims=True)
    s = jax.lax.psum(jnp.stack([s1, s2]), axis_name, axis_index_groups=ghost_groups(num_devices, per_group))
    mean = s[0] / count
    var = jnp.maximum(s[1] / count - jnp.square(mean), 0.0)
    return mean, var


class GhostBatchNorm(nn.Module):
    """Drop-in for ``flax.linen.BatchNorm`` (same ``use_running_average`` / ``scale_init`` API).

    ``ghost_size`` is G over the global microbatch. ``axis_name`` / ``num_devices`` describe the
    data axis of the surrounding ``shard_map``; with ``use_running_average=True`` (eval) no
    collectives are used and the layer works under plain ``jit``.
    """

    use_running_average: bool | None = None
    ghost_size: int = 32
    axis_name: str | None = "data"
    num_devices: int = 1
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype) if self.use_scale else None
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias else None

        if use_ra:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = ghost_moments(x, self.ghost_size, self.axis_name, self.num_devices)
            if not self.is_initializing():
                red = tuple(range(x.ndim - 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean.mean(axis=red)
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var.mean(axis=red)
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        if scale is not None:
            y = y * scale
        if bias is not None:
            y = y + bias
        dtype = self.dtype or x.dtype
        return y.astype(dtype)
