"""Momentum and the batch that keeps the noise scale (Smith et al. 2018, section 5.2).

With momentum the SGD noise scale is g = ε N / (B (1 - m)), so raising m from m0 to m1 at fixed
ε keeps g if B is scaled by (1 - m0) / (1 - m1) (the paper's "increased momentum coefficient"
schedule: m = 0.98 with a 5x larger batch). The effective learning rate is ε / (1 - m).
"""

from __future__ import annotations


def effective_lr(lr: float, momentum: float) -> float:
    """ε / (1 - m): the step size of momentum SGD in the small-ε limit."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return lr / (1.0 - momentum)


def batch_scale_for_momentum(momentum: float, new_momentum: float) -> float:
    """Factor (1 - m0) / (1 - m1) by which B must grow when m goes m0 -> m1 at fixed ε and g."""
    for m in (momentum, new_momentum):
        if not 0.0 <= m < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {m}")
    return (1.0 - momentum) / (1.0 - new_momentum)


def batch_for_momentum(global_batch: float, momentum: float, new_momentum: float) -> float:
    """B (1 - m0) / (1 - m1): the real-valued batch that keeps g when m0 -> m1."""
    return global_batch * batch_scale_for_momentum(momentum, new_momentum)
