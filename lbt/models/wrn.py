"""Wide ResNet 16-4 for CIFAR (Zagoruyko & Komodakis 2016), pre-activation blocks, no dropout.

Depth 16 = 6n + 4 with n = 2 blocks per group; widths 16 (stem), 64, 128, 256 (k = 4); strides
1, 2, 2. A block is ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3``; when the shape changes the
shortcut is a 1x1 conv applied to the pre-activated input (as in the authors' code). The head is
BN-ReLU, global average pool, dense. 2,748,890 parameters for 10 classes (``params`` only).

``zero_init_last_bn`` for pre-activation blocks: the residual branch does not end in a BN (the
last BN, ``bn2``, is followed by ReLU and ``conv2``). Zeroing ``bn2``'s scale would make the
branch's input to ``conv2`` ``relu(0) = 0`` with ``relu'(0) = 0``: the whole branch would get no
gradient and stay dead. So here the flag zero-initialises the kernel of the branch's last conv
(``conv2``) instead: each block starts as the identity, which is what Goyal et al.'s zero-γ
achieves for post-activation ResNets, and ``conv2`` still gets a gradient on the first step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class PreActBlock(nn.Module):
    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        norm = functools.partial(self.norm, use_running_average=not train)
        s = (self.strides, self.strides)
        o = nn.relu(norm(name="bn1")(x))
        y = conv(self.filters, (3, 3), s, padding=((1, 1), (1, 1)), name="conv1")(o)
        y = nn.relu(norm(name="bn2")(y))
        last_init = nn.initializers.zeros if self.zero_init_last_bn else conv_init
        y = nn.Conv(
            self.filters,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=last_init,
            name="conv2",
        )(y)
        if x.shape[-1] != self.filters or self.strides != 1:
            x = conv(self.filters, (1, 1), s, padding="VALID", name="shortcut")(o)
        return x + y


class WideResNet(nn.Module):
    """WRN-(6n+4)-k. Blocks are named ``group{i}_block{j}`` (1-based). Float32 logits."""

    num_classes: int
    depth: int = 16
    widen: int = 4
    norm: Callable[..., nn.Module] = nn.BatchNorm
    dtype: Any = jnp.float32
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        assert (self.depth - 4) % 6 == 0, "WRN depth must be 6n + 4"
        n = (self.depth - 4) // 6
        x = x.astype(self.dtype)
        x = nn.Conv(
            16,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_init,
            name="conv_init",
        )(x)
        for i, width in enumerate((16 * self.widen, 32 * self.widen, 64 * self.widen)):
            for j in range(n):
                x = PreActBlock(
                    filters=width,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm=self.norm,
                    dtype=self.dtype,
                    zero_init_last_bn=self.zero_init_last_bn,
                    name=f"group{i + 1}_block{j + 1}",
                )(x, train=train)
        x = nn.relu(self.norm(use_running_average=not train, name="bn_final")(x))
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x.astype(self.dtype))
        return x.astype(jnp.float32)


WRN16_4 = functools.partial(WideResNet, depth=16, widen=4)
