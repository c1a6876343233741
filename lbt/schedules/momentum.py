"""Momentum and the batch that keeps the noise scale (Smith et al. 2018, section 5.2).

With momentum the SGD noise scale is g = ε N / (B (1 - m)), so raising m from m0 to m1 at fixed
ε keeps g if B is scaled by (1 - m0) / (1 - m1): 5x for 0.9 -> 0.98. (The paper's CIFAR-10
"increased momentum coefficient" run also raises ε and B 5x: m = 0.98, ε = 0.5, B = 3,200 from
m = 0.9, ε = 0.1, B = 128.) The effective learning rate is ε / (1 - m).

Stepped momentum (lbt's own schedule, not one of the paper's runs, which each hold m fixed; e.g.
m = 0.9 -> 0.95 -> 0.975 with B 8,192 -> 16,384 -> 32,768 in
configs/imagenet_inception_resnet_v2_lbt_stepped_momentum.py): m rises at milestones, and at
each one B is multiplied by (1 - m_prev) / (1 - m_new); the factors telescope, so after the j-th
milestone B = B0 (1 - m0) / (1 - m_j).

The momentum buffer starts at zero (and after m rises it needs time to reach its new level), so
for roughly 1 / (1 - m) steps the step is smaller than ε / (1 - m) (docs/schedules.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


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


def stepped_momentum(position: float, momentum: float, milestones: Sequence[float], values: Sequence[float]) -> float:
    """m at ``position`` (same unit as ``milestones``, e.g. examples seen): ``momentum`` before the
    first milestone, ``values[j]`` from ``milestones[j]`` on (a milestone counts from itself on)."""
    if len(milestones) != len(values):
        raise ValueError(f"milestones and values differ in length: {len(milestones)} != {len(values)}")
    j = bisect.bisect_right(list(milestones), position)
    return momentum if j == 0 else float(values[j - 1])


def stepped_batch_scales(momentum: float, values: Sequence[float]) -> list[float]:
    """Cumulative batch factor after each momentum step: the product of
    (1 - m_prev) / (1 - m_new), i.e. (1 - m0) / (1 - m_j)."""
    out, prev, scale = [], momentum, 1.0
    for m in values:
        scale *= batch_scale_for_momentum(prev, m)
        out.append(scale)
        prev = m
    return out
