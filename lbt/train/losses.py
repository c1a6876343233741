"""Losses."""

from __future__ import annotations

import jax
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross entropy with optional label smoothing (Szegedy et al. 2016, section 7)."""
    onehot = jax.nn.one_hot(labels, num_classes)
    if smoothing:
        onehot = optax.smooth_labels(onehot, smoothing)
    return optax.softmax_cross_entropy(logits, onehot)
