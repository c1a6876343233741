"""Optimizers from optax with the LR and momentum injected per step (no recompilation).

Every optimizer is wrapped in ``optax.inject_hyperparams`` with two hyperparameters,
``learning_rate`` and ``momentum``, that the trainer sets from the Plan at each step as traced
scalars. For Adam and LAMB, ``momentum`` is b1.
"""

from __future__ import annotations

import jax
import optax


def decay_mask(params, decay_bn_and_bias: bool = False):
    """True for parameters that get weight decay: kernels (ndim > 1), not BN scale/bias or biases."""
    if decay_bn_and_bias:
        return jax.tree.map(lambda _: True, params)
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config) -> optax.GradientTransformation:
    """The optax transformation for ``config.optimizer`` (hyperparams: learning_rate, momentum)."""
    o = config.optimizer
    name, wd = o.name, float(o.weight_decay)
    mask = lambda p: decay_mask(p, o.decay_bn_and_bias)  # noqa: E731

    def build(learning_rate, momentum):
        if name in ("sgd", "momentum", "nesterov"):
            # Coupled L2 as in Goyal et al. 2017 / PyTorch SGD: g <- g + wd * w, then momentum.
            sgd = optax.sgd(
                learning_rate,
                momentum=None if name == "sgd" else momentum,
                nesterov=name == "nesterov",
            )
            return optax.chain(optax.add_decayed_weights(wd, mask), sgd) if wd else sgd
        if name == "adam":
            return optax.adamw(learning_rate, b1=momentum, b2=o.b2, eps=o.eps, weight_decay=wd, mask=mask)
        if name == "lars":
            return optax.lars(
                learning_rate,
                weight_decay=wd,
                weight_decay_mask=mask,
                trust_coefficient=o.trust_coefficient,
                trust_ratio_mask=mask,
                momentum=momentum,
            )
        if name == "lamb":
            return optax.lamb(learning_rate, b1=momentum, b2=o.b2, eps=o.eps, weight_decay=wd, mask=mask)
        raise ValueError(f"unknown optimizer {name!r}")  # validate() rejects it earlier

    return optax.inject_hyperparams(build)(learning_rate=0.0, momentum=0.0)
