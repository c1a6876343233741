"""ResNet v1.5 (He et al. 2016; the stride sits on the 3x3 conv of the bottleneck, as in
torchvision and the Flax ImageNet example), with a pluggable (ghost) batch-norm layer.

* ``ResNet18``: basic blocks [2, 2, 2, 2]; 11,689,512 parameters for 1000 classes.
* ``ResNet50``: bottleneck blocks [3, 4, 6, 3]; 25,557,032 parameters for 1000 classes.

Both counts are torchvision's (``params`` only: conv kernels without bias, BN scale and bias,
the dense head with bias; BN running statistics live in ``batch_stats``). Padding is explicit
and symmetric as in torchvision (Flax's ``SAME`` pads stride-2 convs asymmetrically).

``norm`` is a BatchNorm-like factory (``flax.linen.BatchNorm`` or
:class:`lbt.parallel.ghost_bn.GhostBatchNorm` with its ghost size bound), called as
``norm(use_running_average=not train, name=...)``.

``zero_init_last_bn`` (Goyal et al. 2017, section 5.1): the scale γ of the last BN of every
residual block (``bn2`` of a basic block, ``bn3`` of a bottleneck) starts at 0, so every residual
branch starts as 0 and each block as the identity. The gradient still reaches γ (it is
``x̂ · upstream``), so the branches start learning on the first step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

#: He et al. / torchvision conv init (kaiming normal, fan_out, ReLU gain).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    p = k // 2
    return ((p, p), (p, p))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Projection shortcut (1x1 conv + BN) when the shape changes."""

    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        norm = functools.partial(self.norm, use_running_average=not train)
        last = dict(scale_init=nn.initializers.zeros) if self.zero_init_last_bn else {}
        s = (self.strides, self.strides)
        y = conv(self.filters, (3, 3), s, padding=_pad(3), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.filters, (3, 3), padding=_pad(3), name="conv2")(y)
        y = norm(name="bn2", **last)(y)
        if x.shape[-1] != self.filters or self.strides != 1:
            x = conv(self.filters, (1, 1), s, padding="VALID", name="proj_conv")(x)
            x = norm(name="proj_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here: v1.5) -> 1x1 (x4 channels). Projection shortcut when needed."""

    filters: int
    strides: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32
    zero_init_last_bn: bool = False
    expansion: int = 4

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        norm = functools.partial(self.norm, use_running_average=not train)
        last = dict(scale_init=nn.initializers.zeros) if self.zero_init_last_bn else {}
        s = (self.strides, self.strides)
        out = self.filters * self.expansion
        y = conv(self.filters, (1, 1), padding="VALID", name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.filters, (3, 3), s, padding=_pad(3), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv(out, (1, 1), padding="VALID", name="conv3")(y)
        y = norm(name="bn3", **last)(y)
        if x.shape[-1] != out or self.strides != 1:
            x = conv(out, (1, 1), s, padding="VALID", name="proj_conv")(x)
            x = norm(name="proj_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 conv, BN, ReLU, 3x3/2 max pool, 4 stages, global avg pool, dense.

    Blocks are named ``stage{i}_block{j}`` (1-based); their last BN is ``bn2`` (basic) or
    ``bn3`` (bottleneck). Returns float32 logits ``[batch, num_classes]``.
    """

    stage_sizes: Sequence[int]
    block: type
    num_classes: int
    norm: Callable[..., nn.Module] = nn.BatchNorm
    dtype: Any = jnp.float32
    zero_init_last_bn: bool = False
    width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = x.astype(self.dtype)
        x = nn.Conv(
            self.width,
            (7, 7),
            (2, 2),
            padding=_pad(7),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_init,
            name="conv_init",
        )(x)
        x = nn.relu(self.norm(use_running_average=not train, name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                x = self.block(
                    filters=self.width * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    norm=self.norm,
                    dtype=self.dtype,
                    zero_init_last_bn=self.zero_init_last_bn,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x.astype(self.dtype))
        return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
