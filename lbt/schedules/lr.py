"""Learning-rate schedules as pure Python functions of progress.

Progress is either *epochs* (``examples_seen / N``: step decay, warmup, cosine) or the optimizer
*iteration* (cyclical schedules, whose ``step_size`` is defined in iterations by Smith 2017).
The :class:`lbt.schedules.plan.Plan` composes them; these functions know nothing about batches.

References:
  * Goyal et al. 2017, "Accurate, Large Minibatch SGD": linear scaling + gradual warmup.
  * Loshchilov & Hutter 2017, "SGDR": cosine annealing.
  * L. N. Smith 2017, "Cyclical Learning Rates for Training Neural Networks" (CLR):
    triangular, triangular2, exp_range.
  * L. N. Smith 2018, "A disciplined approach to neural network hyper-parameters" (1cycle);
    the formula here matches ``torch.optim.lr_scheduler.OneCycleLR`` (cosine annealing).
  * L. N. Smith 2017, section 3.3 ("How can one estimate reasonable minimum and maximum boundary
    values?"): the LR range test, a short run whose LR rises from a low to a high value
    (``range_test``: linearly as in the paper, or exponentially as fastai's ``lr_find``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

LR_SCHEDULES = ("constant", "step", "cosine", "triangular", "triangular2", "exp_range", "onecycle", "range_test")
CYCLIC = ("triangular", "triangular2", "exp_range")
#: Schedules that only decay (the LR never rises), so a batch-growth plan can mirror them.
DECAYING = ("constant", "step", "cosine")
#: How the LR of ``range_test`` rises from its minimum to its maximum.
RANGE_MODES = ("linear", "exp")


def step_decay_count(epoch: float, milestones: Sequence[float]) -> int:
    """Number of milestones (in epochs) already passed at ``epoch`` (a milestone at e counts from e on)."""
    return sum(1 for m in milestones if epoch >= m)


def step_decay_multiplier(epoch: float, milestones: Sequence[float], factor: float) -> Fraction:
    """Exact multiplier ``factor ** -i`` after ``i`` milestones (``factor`` is the divisor)."""
    return Fraction(1) / Fraction(factor) ** step_decay_count(epoch, milestones)


def step_decay(epoch: float, base_lr: float, milestones: Sequence[float], factor: float) -> float:
    """ε0 divided by ``factor`` at each milestone (Smith et al. 2018: factor 5 at 60/120/160)."""
    return float(Fraction(base_lr) * step_decay_multiplier(epoch, milestones, factor))


def linear_warmup_multiplier(epoch: float, warmup_epochs: float, start_factor: float = 0.0) -> float:
    """Goyal et al. 2017 gradual warmup: multiplier rising linearly from ``start_factor`` at
    epoch 0 to 1 at ``warmup_epochs`` (1 afterwards). Goyal et al. start from the small-batch LR,
    i.e. ``start_factor = B_small / B``; the default 0 is the optax convention."""
    if warmup_epochs <= 0 or epoch >= warmup_epochs:
        return 1.0
    frac = max(epoch, 0.0) / warmup_epochs
    return start_factor + (1.0 - start_factor) * frac


def cosine_multiplier(progress: float, final_factor: float = 0.0) -> float:
    """SGDR cosine without restarts: 1 at progress 0, ``final_factor`` at progress 1 (clipped)."""
    p = min(max(progress, 0.0), 1.0)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * p))


def cosine(progress: float, base_lr: float, final_factor: float = 0.0) -> float:
    """ε0 · cosine_multiplier(progress)."""
    return base_lr * cosine_multiplier(progress, final_factor)


def cyclic(
    iteration: int,
    base_lr: float,
    max_lr: float,
    step_size: int,
    mode: str = "triangular",
    gamma: float = 1.0,
) -> float:
    """Smith 2017 CLR, eq. in section 3.1::

        cycle = floor(1 + it / (2 step_size))
        x     = |it / step_size - 2 cycle + 1|
        lr    = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale

    with scale = 1 (triangular), 1 / 2**(cycle - 1) (triangular2) or gamma**it (exp_range).
    ``step_size`` is the half-cycle length in iterations.
    """
    if mode not in CYCLIC:
        raise ValueError(f"unknown CLR mode {mode!r}; choose one of {CYCLIC}")
    cycle = math.floor(1 + iteration / (2 * step_size))
    x = abs(iteration / step_size - 2 * cycle + 1)
    if mode == "triangular":
        scale = 1.0
    elif mode == "triangular2":
        scale = 1.0 / (2.0 ** (cycle - 1))
    else:
        scale = gamma**iteration
    return base_lr + (max_lr - base_lr) * max(0.0, 1.0 - x) * scale


def triangular(iteration: int, base_lr: float, max_lr: float, step_size: int) -> float:
    """CLR triangular policy (Smith 2017)."""
    return cyclic(iteration, base_lr, max_lr, step_size, "triangular")


def triangular2(iteration: int, base_lr: float, max_lr: float, step_size: int) -> float:
    """CLR triangular2 policy: the amplitude halves every cycle (Smith 2017)."""
    return cyclic(iteration, base_lr, max_lr, step_size, "triangular2")


def exp_range(iteration: int, base_lr: float, max_lr: float, step_size: int, gamma: float) -> float:
    """CLR exp_range policy: the amplitude decays as gamma**iteration (Smith 2017)."""
    return cyclic(iteration, base_lr, max_lr, step_size, "exp_range", gamma)


def onecycle(
    iteration: int,
    total_steps: int,
    max_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """1cycle (Smith 2018), two phases with cosine annealing, as ``torch``'s ``OneCycleLR``:
    from ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of the steps,
    then down to ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1``."""
    initial = max_lr / div_factor
    final = initial / final_div_factor
    up_end = float(pct_start * total_steps) - 1.0
    down_end = float(total_steps - 1)

    def anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)

    if iteration <= up_end:
        return anneal(initial, max_lr, iteration / up_end if up_end > 0 else 1.0)
    span = down_end - up_end
    pct = (iteration - up_end) / span if span > 0 else 1.0
    return anneal(max_lr, final, min(pct, 1.0))


def range_test(iteration: int, min_lr: float, max_lr: float, num_steps: int, mode: str = "linear") -> float:
    """The LR range test of Smith 2017 (section 3.3): ``min_lr`` at iteration 0, rising to ``max_lr``
    at iteration ``num_steps`` and held there afterwards.

    ``mode='linear'`` (the paper): ``min_lr + (max_lr - min_lr) * t``; ``mode='exp'`` (fastai's
    ``lr_find``): ``min_lr * (max_lr / min_lr) ** t``, with ``t = min(iteration / num_steps, 1)``.
    """
    if mode not in RANGE_MODES:
        raise ValueError(f"unknown range-test mode {mode!r}; choose one of {RANGE_MODES}")
    t = min(max(iteration, 0) / num_steps, 1.0) if num_steps > 0 else 1.0
    if mode == "linear":
        return min_lr + (max_lr - min_lr) * t
    return min_lr * (max_lr / min_lr) ** t
