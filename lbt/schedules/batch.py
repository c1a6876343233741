"""Batch-size growth: multiples of the fixed global microbatch M, B_max, and the hybrid rule.

Smith et al. 2018: instead of dividing ε by f, multiply B by f (same noise scale g). Once B
reaches B_max (about N / 10, beyond which the small-g regime ends and steps stop shrinking),
decay ε instead ("hybrid"). Every B is k * M for an integer k (docs/design.md, semantics 2), so the
batch grows by accumulating more microbatches, never by recompiling.
"""

from __future__ import annotations

import math

from lbt.errors import ConfigError

ROUNDINGS = ("error", "down", "nearest")
#: Relative tolerance under which a real-valued B counts as an exact multiple of M
#: (e.g. 128 * 0.1 / 0.02 = 639.999... is 640).
EXACT_RTOL = 1e-9


def floor_to_multiple(value: float, multiple: int) -> int:
    """Largest multiple of ``multiple`` that is <= value (tolerating float noise)."""
    k = math.floor(value / multiple * (1 + EXACT_RTOL))
    return k * multiple


def round_to_multiple(value: float, multiple: int, rounding: str, field: str) -> int:
    """Turn a real-valued batch into k * M according to ``rounding``.

    ``error`` raises :class:`ConfigError` on ``field`` (suggesting the neighbouring multiples)
    unless ``value`` is a multiple of M up to float noise; ``down`` floors (at least M);
    ``nearest`` rounds to the nearest multiple (at least M).
    """
    if rounding not in ROUNDINGS:
        raise ConfigError(
            "schedule.batch.rounding", f"unknown rounding {rounding!r}; choose one of {', '.join(ROUNDINGS)}"
        )
    k_real = value / multiple
    k_near = round(k_real)
    if k_near >= 1 and abs(k_real - k_near) <= EXACT_RTOL * max(1.0, abs(k_real)):
        return int(k_near) * multiple
    if rounding == "error":
        lo = max(1, math.floor(k_real)) * multiple
        hi = max(1, math.ceil(k_real)) * multiple
        raise ConfigError(
            field,
            f"gives a global batch of {value:g}, not a multiple of train.global_microbatch={multiple}; "
            f"choose values giving {lo} or {hi}, or set schedule.batch.rounding='down' or 'nearest'",
        )
    if rounding == "down":
        return max(1, math.floor(k_real)) * multiple
    return max(1, int(math.floor(k_real + 0.5))) * multiple


def default_max_global_batch(N: int, microbatch: int) -> int:
    """B_max ≈ N / 10 (Smith et al. 2018), rounded down to a multiple of M (at least M)."""
    return max(microbatch, floor_to_multiple(N / 10, microbatch))


def hybrid_batch(ideal_batch: float, max_global_batch: int | None, microbatch: int, rounding: str, field: str) -> int:
    """The hybrid rule: B = min(B_ideal, B_max) as a multiple of M.

    Below B_max the ideal batch is rounded per ``rounding``; above it the batch is B_max (itself a
    multiple of M) and the caller multiplies ε by ``B / B_ideal`` so that the noise scale
    g = ε N / (B (1 - m)) is unchanged (Smith et al. 2018).
    """
    if max_global_batch is not None and ideal_batch >= max_global_batch:
        return max_global_batch
    b = round_to_multiple(ideal_batch, microbatch, rounding, field)
    if max_global_batch is not None:
        b = min(b, max_global_batch)
    return b


# ---------------------------------------------------------------------------------------------
# Adaptive batch (schedule.batch.mode = "adaptive")


def step_gain(current: int, candidate: int, b_simple: float) -> float:
    """Predicted fractional gain in progress per optimizer step from growing B = ``current`` to
    ``candidate``: (1 + B_simple / B) / (1 + B_simple / B') - 1.

    McCandlish et al. 2018 (eq. 2.11): reaching a given loss takes S = S_min (1 + B_noise / B)
    steps, so one step at B' does (1 + B_noise / B) / (1 + B_noise / B') steps' worth of progress at
    B. This is also the ratio of Pollux's statistical efficiencies times B' / B (Qiao et al., OSDI
    2021, section 3.1: efficiency (φ + B0) / (φ + B) with φ the noise scale) and AdaScale's gain
    ratio (Johnson et al. 2020). ``inf`` B_simple: every example helps fully, the gain is B'/B - 1.
    """
    if not (0 < current <= candidate):
        raise ValueError(f"need 0 < current <= candidate, got {current}, {candidate}")
    if math.isinf(b_simple):
        return candidate / current - 1.0
    return (1.0 + b_simple / current) / (1.0 + b_simple / candidate) - 1.0


def adaptive_batch(
    current: int, b_simple: float | None, microbatch: int, max_global_batch: int, target: float, min_gain: float
) -> int:
    """The next B of the adaptive mode: the largest multiple of M at most
    min(B_max, ``target`` × B_simple), if it is above ``current`` and its :func:`step_gain` is at
    least ``min_gain``; else ``current``. B never shrinks. Pure: the same inputs, the same B.

    With ``target`` = 1 the batch approaches McCandlish et al.'s critical batch B_crit ≈ B_noise,
    past which a larger batch costs examples faster than it saves steps (2018, section 2.3:
    at B = B_noise both steps and examples are twice their minimum). ``min_gain`` (Pollux's
    re-allocation threshold, 5%) stops changes that buy too little. A non-finite B_simple (the
    smoothed |G|^2 not yet positive) changes nothing.
    """
    if b_simple is None or not math.isfinite(b_simple) or b_simple <= 0:  # no usable measurement yet
        return current
    limit = min(max_global_batch, target * b_simple)
    candidate = floor_to_multiple(limit, microbatch)
    if candidate <= current:
        return current
    return candidate if step_gain(current, candidate, b_simple) >= min_gain else current
