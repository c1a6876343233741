"""Inception-ResNet-V2 (Szegedy, Ioffe, Vanhoucke & Alemi 2016), as in TF-slim and timm.

Input 299x299 (any size >= 75 works; the head pools globally). Layout (timm names):
stem (conv 1a/2a/2b, max pool, conv 3b/4a, max pool) -> mixed_5b (320 ch) -> 10x block35
(residual scale 0.17) -> mixed_6a (1088 ch) -> 20x block17 (scale 0.10) -> mixed_7a (2080 ch) ->
9x block8 (scale 0.20) -> block8 (scale 1.0, no ReLU; the TF-slim/timm final block) -> conv 7b
(1536 ch) -> global average pool -> dense. No dropout (the paper's 0.8 keep-prob head is left out).

Every ``conv`` is conv (no bias) + BN + ReLU; the residual up-projection of each block is a 1x1
conv *with* bias and no BN, scaled and added to the input.

BN choice: we use BN with a learned scale γ and bias β (like timm, ``eps = 1e-3`` belongs in
``config.model.bn_epsilon``). TF-slim's BN has no γ (``scale=False``). Parameter counts for
1000 classes (``params`` only):

* this module (= timm ``inception_resnet_v2``): **55,843,464**
* TF-slim's BN without γ: 55,843,464 − 30,272 (one γ per BN channel) = 55,813,192
  (TF-slim's checkpoints also have 1001 classes; both numbers are asserted in tests/test_models.py).

``zero_init_last_bn``: these residual blocks end in a biased 1x1 conv, not in a BN, so the flag
zero-initialises that up-projection's kernel (its bias starts at 0 anyway): every block starts
as ``act(x)`` of its input, the analogue of Goyal et al.'s zero-γ. Off by default (the paper
does not use it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

#: Parameter count for 1000 classes (timm's ``inception_resnet_v2``; BN with scale and bias).
PARAM_COUNT = 55_843_464
#: The same network with TF-slim's BN (no scale γ), 1000 classes: 30,272 fewer parameters.
TF_SLIM_PARAM_COUNT = 55_813_192

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBN(nn.Module):
    """conv (no bias) -> BN -> ReLU (timm's ``BasicConv2d``)."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: Any = "SAME"
    norm: Callable[..., nn.Module] = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(
            self.features,
            self.kernel,
            (self.strides, self.strides),
            padding=self.padding,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=conv_init,
            name="conv",
        )(x)
        x = self.norm(use_running_average=not train, name="bn")(x)
        return nn.relu(x)


class _Base(nn.Module):
    norm: Callable[..., nn.Module] = nn.BatchNorm
    dtype: Any = jnp.float32

    def cbn(self, features, kernel, strides=1, padding="SAME", name=None):
        return ConvBN(features, kernel, strides, padding, norm=self.norm, dtype=self.dtype, name=name)


def _pad_same(kernel: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    return tuple((k // 2, k // 2) for k in kernel)  # type: ignore[return-value]


class Mixed5b(_Base):
    @nn.compact
    def __call__(self, x, train: bool = True):
        b0 = self.cbn(96, (1, 1), name="branch0")(x, train)
        b1 = self.cbn(48, (1, 1), name="branch1_0")(x, train)
        b1 = self.cbn(64, (5, 5), padding=_pad_same((5, 5)), name="branch1_1")(b1, train)
        b2 = self.cbn(64, (1, 1), name="branch2_0")(x, train)
        b2 = self.cbn(96, (3, 3), padding=_pad_same((3, 3)), name="branch2_1")(b2, train)
        b2 = self.cbn(96, (3, 3), padding=_pad_same((3, 3)), name="branch2_2")(b2, train)
        b3 = nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)
        b3 = self.cbn(64, (1, 1), name="branch3_1")(b3, train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class _Residual(_Base):
    scale: float = 1.0
    activate: bool = True
    zero_init_last_bn: bool = False

    def up(self, x, mixed):
        init = nn.initializers.zeros if self.zero_init_last_bn else conv_init
        y = nn.Conv(x.shape[-1], (1, 1), use_bias=True, dtype=self.dtype, kernel_init=init, name="conv_up")(mixed)
        out = x + self.scale * y
        return nn.relu(out) if self.activate else out


class Block35(_Residual):
    @nn.compact
    def __call__(self, x, train: bool = True):
        p3 = _pad_same((3, 3))
        b0 = self.cbn(32, (1, 1), name="branch0")(x, train)
        b1 = self.cbn(32, (1, 1), name="branch1_0")(x, train)
        b1 = self.cbn(32, (3, 3), padding=p3, name="branch1_1")(b1, train)
        b2 = self.cbn(32, (1, 1), name="branch2_0")(x, train)
        b2 = self.cbn(48, (3, 3), padding=p3, name="branch2_1")(b2, train)
        b2 = self.cbn(64, (3, 3), padding=p3, name="branch2_2")(b2, train)
        return self.up(x, jnp.concatenate([b0, b1, b2], axis=-1))


class Mixed6a(_Base):
    @nn.compact
    def __call__(self, x, train: bool = True):
        b0 = self.cbn(384, (3, 3), 2, "VALID", name="branch0")(x, train)
        b1 = self.cbn(256, (1, 1), name="branch1_0")(x, train)
        b1 = self.cbn(256, (3, 3), padding=_pad_same((3, 3)), name="branch1_1")(b1, train)
        b1 = self.cbn(384, (3, 3), 2, "VALID", name="branch1_2")(b1, train)
        b2 = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
        return jnp.concatenate([b0, b1, b2], axis=-1)


class Block17(_Residual):
    @nn.compact
    def __call__(self, x, train: bool = True):
        b0 = self.cbn(192, (1, 1), name="branch0")(x, train)
        b1 = self.cbn(128, (1, 1), name="branch1_0")(x, train)
        b1 = self.cbn(160, (1, 7), padding=_pad_same((1, 7)), name="branch1_1")(b1, train)
        b1 = self.cbn(192, (7, 1), padding=_pad_same((7, 1)), name="branch1_2")(b1, train)
        return self.up(x, jnp.concatenate([b0, b1], axis=-1))


class Mixed7a(_Base):
    @nn.compact
    def __call__(self, x, train: bool = True):
        p3 = _pad_same((3, 3))
        b0 = self.cbn(256, (1, 1), name="branch0_0")(x, train)
        b0 = self.cbn(384, (3, 3), 2, "VALID", name="branch0_1")(b0, train)
        b1 = self.cbn(256, (1, 1), name="branch1_0")(x, train)
        b1 = self.cbn(288, (3, 3), 2, "VALID", name="branch1_1")(b1, train)
        b2 = self.cbn(256, (1, 1), name="branch2_0")(x, train)
        b2 = self.cbn(288, (3, 3), padding=p3, name="branch2_1")(b2, train)
        b2 = self.cbn(320, (3, 3), 2, "VALID", name="branch2_2")(b2, train)
        b3 = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class Block8(_Residual):
    @nn.compact
    def __call__(self, x, train: bool = True):
        b0 = self.cbn(192, (1, 1), name="branch0")(x, train)
        b1 = self.cbn(192, (1, 1), name="branch1_0")(x, train)
        b1 = self.cbn(224, (1, 3), padding=_pad_same((1, 3)), name="branch1_1")(b1, train)
        b1 = self.cbn(256, (3, 1), padding=_pad_same((3, 1)), name="branch1_2")(b1, train)
        return self.up(x, jnp.concatenate([b0, b1], axis=-1))


class InceptionResNetV2(nn.Module):
    """Float32 logits ``[batch, num_classes]``. Residual blocks are named ``block35_{i}``,
    ``block17_{i}``, ``block8_{i}`` (1-based; ``block8_10`` is the final un-activated one)."""

    num_classes: int
    norm: Callable[..., nn.Module] = nn.BatchNorm
    dtype: Any = jnp.float32
    zero_init_last_bn: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        kw = dict(norm=self.norm, dtype=self.dtype)
        cbn = functools.partial(ConvBN, **kw)
        x = x.astype(self.dtype)
        x = cbn(32, (3, 3), 2, "VALID", name="conv2d_1a")(x, train)
        x = cbn(32, (3, 3), 1, "VALID", name="conv2d_2a")(x, train)
        x = cbn(64, (3, 3), 1, ((1, 1), (1, 1)), name="conv2d_2b")(x, train)
        x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
        x = cbn(80, (1, 1), 1, "VALID", name="conv2d_3b")(x, train)
        x = cbn(192, (3, 3), 1, "VALID", name="conv2d_4a")(x, train)
        x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
        x = Mixed5b(**kw, name="mixed_5b")(x, train)
        res = dict(kw, zero_init_last_bn=self.zero_init_last_bn)
        for i in range(10):
            x = Block35(**res, scale=0.17, name=f"block35_{i + 1}")(x, train)
        x = Mixed6a(**kw, name="mixed_6a")(x, train)
        for i in range(20):
            x = Block17(**res, scale=0.10, name=f"block17_{i + 1}")(x, train)
        x = Mixed7a(**kw, name="mixed_7a")(x, train)
        for i in range(9):
            x = Block8(**res, scale=0.20, name=f"block8_{i + 1}")(x, train)
        x = Block8(**res, scale=1.0, activate=False, name="block8_10")(x, train)
        x = cbn(1536, (1, 1), 1, "VALID", name="conv2d_7b")(x, train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x.astype(self.dtype))
        return x.astype(jnp.float32)
