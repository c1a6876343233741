"""A small CNN with (ghost) batch norm for digits / MNIST-size inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
    """conv(w)-BN-relu, conv(2w, stride 2)-BN-relu, conv(2w)-BN-relu, global avg pool, dense."""

    num_classes: int
    width: int = 32
    norm: Callable[..., nn.Module] = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = lambda name: self.norm(use_running_average=not train, name=name)  # noqa: E731
        x = x.astype(self.dtype)
        x = nn.Conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(norm("bn1")(x))
        x = nn.Conv(2 * self.width, (3, 3), strides=(2, 2), use_bias=False, dtype=self.dtype, name="conv2")(x)
        x = nn.relu(norm("bn2")(x))
        x = nn.Conv(2 * self.width, (3, 3), use_bias=False, dtype=self.dtype, name="conv3")(x)
        x = nn.relu(norm("bn3")(x))
        x = x.mean(axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)
