"""The Plan: batch size B, learning rate ε, momentum m and noise scale g as functions of
*examples seen* (docs/design.md, semantics 1 and 2).

A run is a list of phases over examples seen ``[0, total_examples)``. Within a phase B and m are
constant; ε may vary (warmup, cosine, CLR). A step that starts at ``examples_seen = s`` uses
``plan.at(s)`` and consumes ``B`` examples; the run ends at the first ``s >= total_examples``
(the last step may overshoot). Every B is a multiple of the fixed global microbatch
M = ``config.train.global_microbatch``.

Batch modes (``config.schedule.batch.mode``), all with the same noise scale
g = ε N / (B (1 - m)) as the ``decay_lr`` reference at every examples_seen (Smith et al. 2018):

* ``decay_lr``: B constant, ε follows ``schedule.lr``.
* ``increase_batch``: where the LR schedule would divide ε by f, multiply B by f instead.
* ``hybrid``: as ``increase_batch`` up to B_max, then decay ε (B_max default: N/10 rounded down
  to a multiple of M). When a full factor would overshoot B_max, B becomes B_max and ε absorbs
  the remainder, so g stays *exactly* equal to the reference. This is the rule consistent with
  the paper's update counts (e.g. its ImageNet "below 6,000" needs B = B_max from the first decay
  step on, and its CIFAR-10 increased-momentum run's "fewer than 2,500" needs B = 5,120 after
  3,200; keeping 3,200 would take 3,125 updates). The paper's CIFAR-10 hybrid is this mode with
  B_max = 640 (B 128 -> 640 at the first step, then ε ÷ 5; configs/cifar10_wrn16_4_hybrid.py).
* ``increase_lr``: ε and B both ``batch.lr_factor`` times larger from the start, then grow B.
* ``increase_momentum``: m = ``batch.final_momentum`` and B scaled by (1 - m0) / (1 - m1) from the
  start (and ε and B by ``batch.lr_factor`` as in ``increase_lr``), then grow B.

Stepped momentum (``schedule.momentum_schedule``, any mode but ``increase_momentum``): m rises to
``values[j]`` at ``milestones[j]`` (epochs) and B is multiplied by (1 - m_prev) / (1 - m_new)
there, on top of the mode's growth, so g is unchanged (lbt's own schedule, not one of the
paper's runs, which each hold m fixed; e.g. m = 0.9 -> 0.95 -> 0.975 with B 8,192 -> 16,384 ->
32,768 in configs/imagenet_inception_resnet_v2_lbt_stepped_momentum.py). Above B_max ε absorbs
the rest.

Every B must be at most N (a ConfigError otherwise). ``noise_scale`` is g = εN/(B(1 - m));
``noise_scale_exact`` is ε(N/B - 1)/(1 - m), which the approximation overstates by B/(N - B);
:func:`plan_warnings` names the phases where B > N/10 and that error.

The growth follows a decaying LR schedule: ``step`` (B jumps at milestones) or ``cosine`` (B is
the largest multiple of M not above B0 / cosine(t), so it rises through k*M in many phases).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import ml_collections

from lbt.errors import ConfigError
from lbt.schedules import batch as batch_lib
from lbt.schedules import lr as lr_lib
from lbt.schedules import momentum as momentum_lib
from lbt.schedules.noise import DEFAULT_REGIME_FACTOR, noise_scale_overstatement
from lbt.schedules.noise import noise_scale as _noise_scale
from lbt.schedules.noise import noise_scale_exact as _noise_scale_exact

BATCH_MODES = ("decay_lr", "increase_batch", "hybrid", "increase_lr", "increase_momentum", "adaptive")
#: Modes that grow B where the LR schedule decays (need a decaying LR schedule).
GROWTH_MODES = ("increase_batch", "hybrid", "increase_lr", "increase_momentum")


def default_schedule_config() -> ml_collections.ConfigDict:
    """Every ``config.schedule`` key with its default (see docs/schedules.md).

    Top level:
      epochs (float): training length; total_examples = round(epochs * N). Must be 0 when
        ``steps`` is set.
      steps (int >= 0): 0 = the run lasts ``epochs``. steps > 0 (with epochs = 0): the run lasts
        exactly ``steps`` optimizer steps; total_examples is what those steps consume (steps × B0
        when B is constant; with step-wise batch growth the B of each step counts). Milestones,
        warmup and the momentum schedule stay in epochs (examples seen / N) and must fall inside
        the run; cosine batch growth is refused (its B depends on the run length).
      base_lr (float > 0): ε0, the LR at batch ``global_batch`` (CLR's lower bound).
      momentum (float in [0, 1)): m0.
      global_batch (int): B0, the initial global batch; a multiple of train.global_microbatch.
    ``lr`` (the reference LR schedule, a function of epochs, or of iterations for CLR/1cycle):
      name: constant | step | cosine | triangular | triangular2 | exp_range | onecycle.
      milestones (tuple of epochs, increasing) and factor (the divisor at each milestone): step.
      warmup_epochs, warmup_start_factor: Goyal et al. 2017 linear warmup of ε from
        ``warmup_start_factor * ε`` at epoch 0 to ε at ``warmup_epochs`` (0 = off). Goyal et al.
        start from the small-batch LR: use ``B_small / B``. Applies to every schedule and mode.
      final_factor: cosine ends at ``final_factor * base_lr`` (cosine runs from the end of warmup
        to the end of training).
      max_lr, step_size (iterations, half a cycle), gamma: CLR (Smith 2017); max_lr is also the
        1cycle peak (0 = base_lr).
      pct_start, div_factor, final_div_factor: 1cycle (as torch OneCycleLR).
      range_mode: linear | exp: ``range_test`` (Smith 2017, section 3.3) rises from base_lr to
        max_lr over step_size iterations (then stays at max_lr); ``lbt lr-range-test`` sets it.
    ``batch``:
      mode: decay_lr | increase_batch | hybrid | increase_lr | increase_momentum | adaptive.
        ``adaptive``: the plan is the decay_lr reference (B0, ε_ref); the trainer grows B from the
        measured noise scale (lbt.train.adaptive, docs/schedules.md) with ε = ε_ref · B / B0.
      adapt_every_steps (int >= 1): adaptive: a decision after every step j with
        (j + 1) % adapt_every_steps == 0, from the noise-scale EMA after step j; it applies from
        step j + 2 (default 10).
      adapt_target (float > 0): adaptive: B grows towards adapt_target × B_simple (default 1: the
        critical batch, McCandlish et al. 2018, section 2.3), never past B_max.
      adapt_min_gain (float >= 0): adaptive: grow only when the predicted gain in progress per step
        (lbt.schedules.batch.step_gain) is at least this (default 0.05, Pollux's threshold).
      max_global_batch (int): B_max; 0 = N/10 rounded down to a multiple of M for hybrid and adaptive, no cap
        for the other modes (N rounded down for cosine growth, which needs a finite cap).
      rounding: error | down | nearest: what to do when a batch is not a multiple of M
        (the learning rate then absorbs the difference so g is kept).
      lr_factor: increase_lr's (and increase_momentum's) factor on ε and B.
      final_momentum: increase_momentum's m1.
      regime_factor (float >= 0): the run logs one warning per phase (and a ``noise_regime`` event
        in metrics.jsonl) when B > regime_factor × the measured, smoothed B_simple: the
        curvature-dominated regime (Smith, Elsen & De 2020). Default 1: B_simple estimates
        McCandlish et al.'s B_noise, the critical batch (2018, sections 2.2-2.3). 0 = no warning.
    ``momentum_schedule`` (stepped momentum; not with batch.mode='increase_momentum'):
      milestones (tuple of epochs, strictly increasing, inside (0, epochs)) and values (the m from
        each milestone on, non-decreasing, >= momentum, each in [0, 1)); at each milestone B is
        multiplied by (1 - m_prev) / (1 - m_new) so that g is kept. Empty = constant m.
    """
    s = ml_collections.ConfigDict()
    s.epochs = 90.0
    s.steps = 0
    s.base_lr = 0.1
    s.momentum = 0.9
    s.global_batch = 128
    s.lr = ml_collections.ConfigDict()
    s.lr.name = "constant"
    s.lr.milestones = ()
    s.lr.factor = 10.0
    s.lr.warmup_epochs = 0.0
    s.lr.warmup_start_factor = 0.0
    s.lr.final_factor = 0.0
    s.lr.max_lr = 0.0
    s.lr.step_size = 2000
    s.lr.gamma = 1.0
    s.lr.pct_start = 0.3
    s.lr.div_factor = 25.0
    s.lr.final_div_factor = 1e4
    s.lr.range_mode = "linear"
    s.batch = ml_collections.ConfigDict()
    s.batch.mode = "decay_lr"
    s.batch.max_global_batch = 0
    s.batch.rounding = "error"
    s.batch.lr_factor = 1.0
    s.batch.final_momentum = 0.98
    s.batch.regime_factor = DEFAULT_REGIME_FACTOR
    s.batch.adapt_every_steps = 10
    s.batch.adapt_target = 1.0
    s.batch.adapt_min_gain = 0.05
    s.momentum_schedule = ml_collections.ConfigDict()
    s.momentum_schedule.milestones = ()
    s.momentum_schedule.values = ()
    return s


@dataclasses.dataclass(frozen=True)
class PlanPoint:
    """B, ε, m and g at one examples_seen: ``noise_scale`` = εN/(B(1 - m)) (the paper's
    approximation, which every mode keeps equal to its reference), ``noise_scale_exact`` =
    ε(N/B - 1)/(1 - m)."""

    phase: int
    global_batch: int
    lr: float
    momentum: float
    noise_scale: float
    noise_scale_exact: float = 0.0


@dataclasses.dataclass(frozen=True)
class Phase:
    """A segment ``[start_example, end_example)`` of constant B and m.

    ``lr_start``/``lr_end`` are ε at the first and at the last example of the phase,
    ``noise_scale``/``noise_scale_end`` (εN/(B(1 - m))) and ``noise_scale_exact``/
    ``noise_scale_exact_end`` (ε(N/B - 1)/(1 - m)) likewise; ``steps`` counts the optimizer steps
    that start in the phase, the first of which has index ``first_step``.
    """

    index: int
    start_example: int
    end_example: int
    global_batch: int
    lr_start: float
    lr_end: float
    momentum: float
    noise_scale: float
    noise_scale_end: float = 0.0
    steps: int = 0
    first_step: int = 0
    noise_scale_exact: float = 0.0
    noise_scale_exact_end: float = 0.0


# ---------------------------------------------------------------------------------------------
# Resolution and validation


@dataclasses.dataclass(frozen=True)
class _Spec:
    N: int
    M: int
    total: int
    base_lr: float
    m0: float
    B0: int  # reference batch (decay_lr), a multiple of M
    name: str
    milestones: tuple[int, ...]  # in examples
    factor: float
    warmup: int  # examples
    warmup_start: float
    final_factor: float
    max_lr: float
    step_size: int
    gamma: float
    pct_start: float
    div_factor: float
    final_div_factor: float
    mode: str
    cap: int | None
    rounding: str
    momentum: float  # m used by the plan (before any momentum milestone)
    init_scale: float  # B_init / B0 (before milestones)
    m_milestones: tuple[int, ...] = ()  # stepped momentum, in examples
    m_values: tuple[float, ...] = ()
    m_scales: tuple[float, ...] = ()  # cumulative B factor (1 - momentum) / (1 - m_j)
    range_mode: str = "linear"  # range_test: linear | exp


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _resolve(config: ml_collections.ConfigDict, N: int) -> _Spec:
    """Validate ``config.schedule`` (plus N and M) into a :class:`_Spec`; the checks run in a
    fixed order, so the first bad field is the one reported."""
    s = config.schedule
    lrc, bc = s.lr, s.batch
    steps = _resolve_steps(s)
    if steps:
        return _resolve_fixed_steps(config, N, steps)
    M = _resolve_sizes(config, N)
    total = _resolve_run(s, N, M)
    rounding = bc.rounding
    if rounding not in batch_lib.ROUNDINGS:
        raise ConfigError(
            "schedule.batch.rounding", f"unknown rounding {rounding!r}; choose one of {', '.join(batch_lib.ROUNDINGS)}"
        )
    B0 = batch_lib.round_to_multiple(s.global_batch, M, rounding, "schedule.global_batch")
    name, mode = _resolve_names(s)
    warmup = _resolve_warmup(s, N)
    milestones = _resolve_lr(s, N)
    momentum, init_scale, init_field = _resolve_mode(s, mode, name)
    cap = _resolve_cap(bc, N, M, mode, name, B0 * init_scale, init_field)
    # (Each stepped batch is checked against M while the plan is built.)
    m_milestones, m_values, m_scales = _resolve_momentum_schedule(s, N, mode, momentum)
    rising = name in lr_lib.CYCLIC or name == "range_test"
    max_lr = float(lrc.max_lr) if rising else (float(lrc.max_lr) or float(s.base_lr))
    return _Spec(
        N=N,
        M=M,
        total=total,
        base_lr=float(s.base_lr),
        m0=float(s.momentum),
        B0=B0,
        name=name,
        milestones=milestones,
        factor=float(lrc.factor),
        warmup=warmup,
        warmup_start=float(lrc.warmup_start_factor),
        final_factor=float(lrc.final_factor),
        max_lr=max_lr,
        step_size=int(lrc.step_size),
        gamma=float(lrc.gamma),
        pct_start=float(lrc.pct_start),
        div_factor=float(lrc.div_factor),
        final_div_factor=float(lrc.final_div_factor),
        mode=mode,
        cap=cap,
        rounding=rounding,
        momentum=momentum,
        init_scale=init_scale,
        m_milestones=m_milestones,
        m_values=m_values,
        m_scales=m_scales,
        range_mode=str(lrc.get("range_mode", "linear")),
    )


def _resolve_steps(s: ml_collections.ConfigDict) -> int:
    """``schedule.steps`` (0 = the run lasts ``schedule.epochs``); steps > 0 needs epochs = 0."""
    steps = s.get("steps", 0)
    if not _int(steps) or steps < 0:
        raise ConfigError(
            "schedule.steps", f"must be an int >= 0 (0 = the run lasts schedule.epochs), got {steps!r}; e.g. 1000"
        )
    if steps and s.epochs != 0:
        raise ConfigError(
            "schedule.epochs",
            f"is {s.epochs!r}, but schedule.steps={steps} also sets the run length; set schedule.epochs=0 (the run "
            f"then lasts exactly {steps} optimizer steps) or schedule.steps=0 (the run lasts epochs)",
        )
    return steps


def _with_epochs(config: ml_collections.ConfigDict, epochs: float) -> ml_collections.ConfigDict:
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.schedule.steps = 0
        c.schedule.epochs = float(epochs)
    return c


def _examples_after(plan: Plan, steps: int) -> int:
    """Examples seen after ``steps`` optimizer steps of ``plan`` (its last B continues past its end)."""
    s = 0
    for ph in plan.phases:
        if s >= ph.end_example:
            continue
        n = -(-(ph.end_example - s) // ph.global_batch)
        if n >= steps:
            return s + steps * ph.global_batch
        s, steps = s + n * ph.global_batch, steps - n
    return s + steps * plan.phases[-1].global_batch


def _resolve_fixed_steps(config: ml_collections.ConfigDict, N: int, steps: int) -> _Spec:
    """``schedule.steps > 0``: a run of exactly ``steps`` optimizer steps. B at each step comes from a
    probe plan that reaches past every milestone; total_examples is the sum of those B, and the
    schedule is then resolved as if ``epochs = total_examples / N``."""
    s = config.schedule
    if s.batch.mode in GROWTH_MODES and s.lr.name == "cosine":
        raise ConfigError(
            "schedule.steps",
            f"cannot fix the step count of cosine batch growth (batch.mode={s.batch.mode!r}, lr.name='cosine'): its "
            "batches depend on the run length; set schedule.steps=0 and use schedule.epochs, or batch.mode='decay_lr'",
        )
    ms = s.get("momentum_schedule")
    marks = [*s.lr.milestones, *(ms.milestones if ms is not None else ()), s.lr.warmup_epochs]
    probe = _with_epochs(config, max([float(m) for m in marks if _num(m)] + [0.0]) + 1.0)
    total = _examples_after(Plan(_resolve(probe, N)), steps)
    try:
        spec = _resolve(_with_epochs(config, total / N), N)
    except ConfigError as e:
        raise ConfigError(
            e.field, f"{e.message} (schedule.steps={steps} makes the run {total / N:.6g} epochs)"
        ) from None
    return dataclasses.replace(spec, total=total)


def _resolve_sizes(config: ml_collections.ConfigDict, N: int) -> int:
    """Check N and return M = ``train.global_microbatch``."""
    if not _int(N) or N <= 0:
        raise ConfigError("dataset.name", f"dataset size N must be a positive int, got {N!r}")
    M = config.train.global_microbatch
    if not _int(M) or M <= 0:
        raise ConfigError("train.global_microbatch", f"must be a positive int, got {M!r}; e.g. 128")
    return M


def _resolve_run(s: ml_collections.ConfigDict, N: int, M: int) -> int:
    """Check epochs, base_lr, momentum and global_batch; return total_examples = round(epochs N)."""
    if not _num(s.epochs) or s.epochs <= 0:
        raise ConfigError("schedule.epochs", f"must be > 0, got {s.epochs!r}; e.g. 90.0")
    total = int(round(s.epochs * N))
    if total < 1:
        raise ConfigError("schedule.epochs", f"{s.epochs} epochs of N={N} is less than one example; raise it")
    if not _num(s.base_lr) or s.base_lr <= 0:
        raise ConfigError("schedule.base_lr", f"must be > 0, got {s.base_lr!r}; e.g. 0.1")
    if not _num(s.momentum) or not 0.0 <= s.momentum < 1.0:
        raise ConfigError("schedule.momentum", f"must be in [0, 1), got {s.momentum!r}; e.g. 0.9")
    if not _int(s.global_batch) or s.global_batch <= 0:
        raise ConfigError("schedule.global_batch", f"must be a positive int, got {s.global_batch!r}; e.g. {M}")
    return total


def _resolve_names(s: ml_collections.ConfigDict) -> tuple[str, str]:
    """(``lr.name``, ``batch.mode``), each one of the known names."""
    name = s.lr.name
    if name not in lr_lib.LR_SCHEDULES:
        raise ConfigError(
            "schedule.lr.name", f"unknown lr schedule {name!r}; choose one of {', '.join(lr_lib.LR_SCHEDULES)}"
        )
    mode = s.batch.mode
    if mode not in BATCH_MODES:
        raise ConfigError(
            "schedule.batch.mode", f"unknown batch mode {mode!r}; choose one of {', '.join(BATCH_MODES)}"
        )
    return name, mode


def _resolve_warmup(s: ml_collections.ConfigDict, N: int) -> int:
    """Goyal et al. 2017 warmup length in examples (0 = off)."""
    lrc = s.lr
    if not _num(lrc.warmup_epochs) or not 0.0 <= lrc.warmup_epochs < s.epochs:
        raise ConfigError(
            "schedule.lr.warmup_epochs", f"must be in [0, epochs={s.epochs}), got {lrc.warmup_epochs!r}; 0 = no warmup"
        )
    if not _num(lrc.warmup_start_factor) or not 0.0 <= lrc.warmup_start_factor <= 1.0:
        raise ConfigError("schedule.lr.warmup_start_factor", f"must be in [0, 1], got {lrc.warmup_start_factor!r}")
    return int(round(lrc.warmup_epochs * N))


def _resolve_lr(s: ml_collections.ConfigDict, N: int) -> tuple[int, ...]:
    """Check the parameters of ``lr.name``; return the step milestones in examples (else ``()``)."""
    name = s.lr.name
    milestones = _resolve_step(s, N) if name == "step" else ()
    if name == "cosine" and (not _num(s.lr.final_factor) or not 0.0 <= s.lr.final_factor <= 1.0):
        raise ConfigError("schedule.lr.final_factor", f"must be in [0, 1], got {s.lr.final_factor!r}")
    if name in lr_lib.CYCLIC:
        _check_cyclic(s)
    if name == "onecycle":
        _check_onecycle(s.lr)
    if name == "range_test":
        _check_range_test(s)
    return milestones


def _resolve_step(s: ml_collections.ConfigDict, N: int) -> tuple[int, ...]:
    """Step decay: milestones (epochs, strictly increasing, inside (0, epochs)) -> examples."""
    lrc = s.lr
    ms = tuple(lrc.milestones)
    if not all(_num(m) for m in ms):
        raise ConfigError("schedule.lr.milestones", f"must be numbers (epochs), got {ms!r}; e.g. (60, 120, 160)")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise ConfigError(
            "schedule.lr.milestones", f"must be strictly increasing, got {ms!r}; e.g. {tuple(sorted(set(ms)))!r}"
        )
    if ms and not (0 < ms[0] and ms[-1] < s.epochs):
        raise ConfigError("schedule.lr.milestones", f"must lie in (0, epochs={s.epochs}), got {ms!r}")
    milestones = tuple(int(round(m * N)) for m in ms)
    if not _num(lrc.factor) or lrc.factor < 1.0:
        raise ConfigError(
            "schedule.lr.factor", f"is the divisor at each milestone and must be >= 1, got {lrc.factor!r}; e.g. 5.0"
        )
    return milestones


def _check_bounds(s: ml_collections.ConfigDict, what: str, max_eg: str, step_size_means: str) -> None:
    """max_lr > base_lr and step_size an int >= 1 (CLR and the range test share them)."""
    lrc = s.lr
    if not _num(lrc.max_lr) or lrc.max_lr <= s.base_lr:
        raise ConfigError(
            "schedule.lr.max_lr", f"{what} needs max_lr > base_lr={s.base_lr}, got {lrc.max_lr!r}; e.g. {max_eg}"
        )
    if not _int(lrc.step_size) or lrc.step_size < 1:
        raise ConfigError("schedule.lr.step_size", f"is {step_size_means}, got {lrc.step_size!r}")


def _check_cyclic(s: ml_collections.ConfigDict) -> None:
    """CLR (Smith 2017): max_lr > base_lr, step_size (iterations) >= 1, exp_range's gamma."""
    _check_bounds(
        s,
        "CLR",
        f"{6 * s.base_lr:g}",
        "the half-cycle in iterations and must be an int >= 1; Smith 2017 suggests 2-10 epochs of iterations",
    )
    lrc = s.lr
    if lrc.name == "exp_range" and (not _num(lrc.gamma) or not 0.0 < lrc.gamma <= 1.0):
        raise ConfigError("schedule.lr.gamma", f"must be in (0, 1], got {lrc.gamma!r}; e.g. 0.99994")


def _check_range_test(s: ml_collections.ConfigDict) -> None:
    """LR range test (Smith 2017, section 3.3): base_lr < max_lr, step_size >= 1, range_mode."""
    _check_bounds(s, "the range test", "10.0", "the range test's length in iterations, an int >= 1")
    mode = s.lr.get("range_mode", "linear")
    if mode not in lr_lib.RANGE_MODES:
        raise ConfigError(
            "schedule.lr.range_mode", f"unknown mode {mode!r}; choose one of {', '.join(lr_lib.RANGE_MODES)}"
        )


def _check_onecycle(lrc: ml_collections.ConfigDict) -> None:
    """1cycle (Smith 2018, as torch OneCycleLR): peak, pct_start and the two divisors."""
    if not _num(lrc.max_lr) or lrc.max_lr < 0:
        raise ConfigError(
            "schedule.lr.max_lr", f"is the 1cycle peak and must be >= 0 (0 = base_lr), got {lrc.max_lr!r}"
        )
    if not _num(lrc.pct_start) or not 0.0 < lrc.pct_start < 1.0:
        raise ConfigError("schedule.lr.pct_start", f"must be in (0, 1), got {lrc.pct_start!r}; e.g. 0.3")
    for f in ("div_factor", "final_div_factor"):
        if not _num(lrc[f]) or lrc[f] <= 0:
            raise ConfigError(f"schedule.lr.{f}", f"must be > 0, got {lrc[f]!r}")


def _resolve_mode(s: ml_collections.ConfigDict, mode: str, name: str) -> tuple[float, float, str]:
    """(m of the plan, B_init / B0, the field blamed if B_init is not a multiple of M) of the mode."""
    bc = s.batch
    momentum, init_scale, init_field = float(s.momentum), 1.0, "schedule.global_batch"
    if mode == "increase_lr":
        if not _num(bc.lr_factor) or bc.lr_factor <= 0:
            raise ConfigError("schedule.batch.lr_factor", f"must be > 0, got {bc.lr_factor!r}; e.g. 5.0")
        init_scale, init_field = float(bc.lr_factor), "schedule.batch.lr_factor"
    elif mode == "increase_momentum":
        if not _num(bc.final_momentum) or not 0.0 <= bc.final_momentum < 1.0:
            raise ConfigError(
                "schedule.batch.final_momentum", f"must be in [0, 1), got {bc.final_momentum!r}; e.g. 0.98"
            )
        if not _num(bc.lr_factor) or bc.lr_factor <= 0:
            raise ConfigError("schedule.batch.lr_factor", f"must be > 0, got {bc.lr_factor!r}; e.g. 1.0")
        momentum = float(bc.final_momentum)
        # B x (1 - m0) / (1 - m1) keeps g at fixed ε; lr_factor scales ε and B on top (the paper's
        # CIFAR-10 "increased momentum coefficient" run: m 0.98, ε 0.5, B 3,200 = 128 x 5 x 5).
        init_scale = float(bc.lr_factor) * (1.0 - s.momentum) / (1.0 - momentum)
        init_field = "schedule.batch.final_momentum"
    if mode in ("increase_batch", "hybrid") and name not in lr_lib.DECAYING:
        raise ConfigError(
            "schedule.batch.mode",
            f"{mode!r} mirrors a decaying LR schedule (constant, step or cosine), but schedule.lr.name is {name!r}; use batch.mode='decay_lr' for cyclical schedules",
        )
    if mode == "adaptive":
        _check_adaptive(bc)
    return momentum, init_scale, init_field


def _check_adaptive(bc: ml_collections.ConfigDict) -> None:
    every, target, gain = bc.adapt_every_steps, bc.adapt_target, bc.adapt_min_gain
    if not _int(every) or every < 1:
        raise ConfigError("schedule.batch.adapt_every_steps", f"must be an int >= 1, got {every!r}; e.g. 10")
    if not _num(target) or not 0 < target < math.inf:
        raise ConfigError("schedule.batch.adapt_target", f"must be a number > 0, got {target!r}; e.g. 1.0")
    if not _num(gain) or not 0 <= gain < math.inf:
        raise ConfigError("schedule.batch.adapt_min_gain", f"must be a number >= 0, got {gain!r}; e.g. 0.05")


def _resolve_cap(
    bc: ml_collections.ConfigDict, N: int, M: int, mode: str, name: str, ideal_init: float, init_field: str
) -> int | None:
    """B_max (``None`` = no cap): the configured one, else N/10 for hybrid (Smith et al. 2018) or N
    for cosine growth; checks it is not below the initial batch B_init (``ideal_init`` rounded)."""
    rounding = bc.rounding
    if not _int(bc.max_global_batch) or bc.max_global_batch < 0:
        raise ConfigError(
            "schedule.batch.max_global_batch", f"must be an int >= 0 (0 = default), got {bc.max_global_batch!r}"
        )
    B_init = batch_lib.round_to_multiple(ideal_init, M, rounding, init_field)
    cap: int | None = None
    if bc.max_global_batch:
        cap = batch_lib.round_to_multiple(bc.max_global_batch, M, rounding, "schedule.batch.max_global_batch")
    elif mode in ("hybrid", "adaptive"):
        cap = max(batch_lib.default_max_global_batch(N, M), B_init)
    elif mode in GROWTH_MODES and name == "cosine":
        cap = max(batch_lib.floor_to_multiple(N, M), B_init)
    if mode != "decay_lr" and cap is not None and cap < B_init:
        raise ConfigError(
            "schedule.batch.max_global_batch",
            f"B_max={cap} is below the initial global batch {B_init}; use at least {B_init} (or 0 for the default)",
        )
    if mode in GROWTH_MODES and name == "cosine" and rounding == "error":
        raise ConfigError(
            "schedule.batch.rounding",
            "a cosine schedule cannot be mirrored exactly by multiples of train.global_microbatch; set schedule.batch.rounding='down' (ε absorbs the difference, g is kept)",
        )
    return cap


def _resolve_momentum_schedule(
    s: ml_collections.ConfigDict, N: int, mode: str, momentum: float
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    """Validate ``schedule.momentum_schedule``; returns (milestones in examples, values, cumulative
    batch factors (1 - m0) / (1 - m_j))."""
    ms_cfg = s.get("momentum_schedule")
    if ms_cfg is None:
        return (), (), ()
    ms, vs = tuple(ms_cfg.get("milestones", ()) or ()), tuple(ms_cfg.get("values", ()) or ())
    if len(ms) != len(vs):
        raise ConfigError(
            "schedule.momentum_schedule.values",
            f"needs one momentum per milestone, got {len(vs)} values for {len(ms)} milestones; e.g. milestones=(1.0, 2.0), values=(0.95, 0.975)",
        )
    if not ms:
        return (), (), ()
    if mode == "adaptive":
        raise ConfigError(
            "schedule.momentum_schedule",
            "cannot be combined with batch.mode='adaptive' (whose B follows the measured noise scale at a fixed m); clear momentum_schedule",
        )
    if mode == "increase_momentum":
        raise ConfigError(
            "schedule.momentum_schedule",
            "cannot be combined with batch.mode='increase_momentum' (which already sets m = final_momentum from the start); use batch.mode='hybrid' or 'increase_batch' with the stepped momentum, or clear momentum_schedule",
        )
    if not all(_num(m) for m in ms):
        raise ConfigError(
            "schedule.momentum_schedule.milestones", f"must be numbers (epochs), got {ms!r}; e.g. (1.0, 2.0)"
        )
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise ConfigError(
            "schedule.momentum_schedule.milestones",
            f"must be strictly increasing, got {ms!r}; e.g. {tuple(sorted(set(ms)))!r}",
        )
    if not (0 < ms[0] and ms[-1] < s.epochs):
        raise ConfigError("schedule.momentum_schedule.milestones", f"must lie in (0, epochs={s.epochs}), got {ms!r}")
    for v in vs:
        if not _num(v) or not 0.0 <= v < 1.0:
            raise ConfigError(
                "schedule.momentum_schedule.values",
                f"each momentum must be in [0, 1), got {v!r} in {vs!r}; e.g. (0.95, 0.975)",
            )
    prev = momentum
    for v in vs:
        if v < prev:
            raise ConfigError(
                "schedule.momentum_schedule.values",
                f"must not decrease (and start at >= schedule.momentum={momentum}), got {vs!r}: B ∝ 1/(1-m) would shrink; sort them or lower schedule.momentum",
            )
        prev = v
    scales = tuple(momentum_lib.stepped_batch_scales(momentum, vs))
    return tuple(int(round(m * N)) for m in ms), tuple(float(v) for v in vs), scales


def validate_schedule(config: ml_collections.ConfigDict, N: int) -> None:
    """Raise :class:`lbt.errors.ConfigError` (naming the field and a fix) for a bad schedule.

    Builds the whole plan, so every grown batch is checked against ``train.global_microbatch``.
    """
    make_plan(config, N)


# ---------------------------------------------------------------------------------------------
# Plan construction


@dataclasses.dataclass(frozen=True)
class _Segment:
    start: int
    end: int
    B: int
    m: float
    scale: Fraction  # ε multiplier (excluding warmup, cosine and CLR shape)
    lr_const: float  # float(base_lr * scale), exact rounding, for constant / step
    first_step: int = 0
    first_step_example: int = 0


def _decay(spec: _Spec, s: int) -> float:
    """The reference schedule's decay multiplier D(s) (1 before decay; excludes warmup)."""
    if spec.name == "step":
        return float(lr_lib.step_decay_multiplier(s, spec.milestones, spec.factor))
    if spec.name == "cosine":
        span = spec.total - spec.warmup
        return lr_lib.cosine_multiplier((s - spec.warmup) / span if span > 0 else 1.0, spec.final_factor)
    return 1.0


def _momentum_at(spec: _Spec, s: int) -> tuple[float, float, int]:
    """(m, cumulative B factor (1 - m_base) / (1 - m), momentum steps taken) at examples_seen s."""
    if not spec.m_milestones:
        return spec.momentum, 1.0, 0
    j = bisect.bisect_right(spec.m_milestones, s)
    m = momentum_lib.stepped_momentum(s, spec.momentum, spec.m_milestones, spec.m_values)
    return m, (spec.m_scales[j - 1] if j else 1.0), j


def _batch_and_scale(spec: _Spec, s: int) -> tuple[int, Fraction, float]:
    """(B, ε multiplier, m) at examples_seen s for the spec's mode; keeps g of the reference."""
    m, mscale, j = _momentum_at(spec, s)
    mfield = "schedule.momentum_schedule.values"
    if spec.mode in ("decay_lr", "adaptive"):  # adaptive: the reference; the trainer grows B
        decay = lr_lib.step_decay_multiplier(s, spec.milestones, spec.factor) if spec.name == "step" else Fraction(1)
        if not j:
            return spec.B0, decay, m
        B = batch_lib.hybrid_batch(spec.B0 * mscale, spec.cap, spec.M, spec.rounding, mfield)
        return B, decay * Fraction(B, spec.B0) * _momentum_ratio(m, spec.m0), m
    if spec.name == "step":
        i = lr_lib.step_decay_count(s, spec.milestones)
        decay = Fraction(1) / Fraction(spec.factor) ** i
        ideal = spec.B0 * spec.init_scale * spec.factor**i * mscale
        field = (
            mfield
            if j
            else "schedule.lr.factor"
            if i
            else (
                "schedule.batch.lr_factor"
                if spec.mode == "increase_lr"
                else "schedule.batch.final_momentum"
                if spec.mode == "increase_momentum"
                else "schedule.global_batch"
            )
        )
    elif spec.name == "cosine":
        decay = Fraction(1)  # the cosine shape is applied continuously in _lr
        ideal = spec.B0 * spec.init_scale * mscale / max(_decay(spec, s), 1e-300)
        field = "schedule.batch.rounding"
    else:
        decay = Fraction(1)
        ideal = spec.B0 * spec.init_scale * mscale
        field = (
            mfield
            if j
            else "schedule.batch.lr_factor"
            if spec.mode == "increase_lr"
            else "schedule.batch.final_momentum"
        )
    B = batch_lib.hybrid_batch(ideal, spec.cap, spec.M, spec.rounding, field)
    # g = ε N / (B (1 - m)) equal to the reference's ε_ref N / (B0 (1 - m0)).
    scale = decay * Fraction(B, spec.B0) * _momentum_ratio(m, spec.m0)
    return B, scale, m


def _momentum_ratio(m: float, m0: float) -> Fraction:
    """(1 - m) / (1 - m0), snapped to a simple fraction when float noise is all that separates
    them (0.02 / 0.1 is 1/5, so ε stays exactly 0.1 in increase_momentum)."""
    r = Fraction(1.0 - m) / Fraction(1.0 - m0)
    snapped = r.limit_denominator(10**6)
    return snapped if abs(snapped - r) <= 1e-12 * r else r


def _boundaries(spec: _Spec) -> list[int]:
    points = {0, spec.total}
    if 0 < spec.warmup < spec.total:
        points.add(spec.warmup)
    if spec.name == "step":
        points.update(m for m in spec.milestones if 0 < m < spec.total)
    points.update(m for m in spec.m_milestones if 0 < m < spec.total)
    if spec.mode in GROWTH_MODES and spec.name == "cosine":
        # B(s) is a non-decreasing step function: find each jump by bisection on integers.
        s = spec.warmup
        cur = _batch_and_scale(spec, s)[0]
        while cur < (spec.cap or cur) and s < spec.total - 1:
            if _batch_and_scale(spec, spec.total - 1)[0] <= cur:
                break
            lo, hi = s, spec.total - 1  # B(lo) <= cur < B(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _batch_and_scale(spec, mid)[0] > cur:
                    hi = mid
                else:
                    lo = mid
            points.add(hi)
            s, cur = hi, _batch_and_scale(spec, hi)[0]
    return sorted(points)


def _segments(spec: _Spec) -> list[_Segment]:
    pts = _boundaries(spec)
    segs: list[_Segment] = []
    step, s = 0, 0
    for a, b in zip(pts, pts[1:]):
        B, scale, m = _batch_and_scale(spec, a)
        n = max(0, -(-(b - s) // B))
        segs.append(_Segment(a, b, B, m, scale, float(Fraction(spec.base_lr) * scale), step, s))
        step += n
        s += n * B
    return segs


def _check_batches_fit(spec: _Spec, segs: list[_Segment]) -> None:
    """Refuse a global batch larger than N (the exact noise scale ε(N/B - 1)/(1 - m) would be
    negative), naming the field that produced it."""
    for i, g in enumerate(segs):
        if g.B <= spec.N:
            continue
        more = (
            f"more than the N={spec.N} training examples (the exact noise scale ε(N/B - 1)/(1 - m) would be negative)"
        )
        if spec.B0 > spec.N:
            raise ConfigError(
                "schedule.global_batch",
                f"is {spec.B0}, {more}; use at most {batch_lib.floor_to_multiple(spec.N, spec.M)}",
            )
        if g.start == 0:
            field = {"increase_lr": "schedule.batch.lr_factor", "increase_momentum": "schedule.batch.final_momentum"}
            raise ConfigError(
                field.get(spec.mode, "schedule.global_batch"),
                f"gives an initial global batch of {g.B}, {more}; lower it or schedule.global_batch",
            )
        raise ConfigError(
            "schedule.batch.max_global_batch",
            f"the plan's global batch reaches {g.B} in phase {i} (from epoch {g.start / spec.N:g}), {more}; "
            f"cap it with schedule.batch.max_global_batch <= {batch_lib.floor_to_multiple(spec.N, spec.M)} "
            f"(Smith et al. 2018's B_max is about N/10 = {batch_lib.default_max_global_batch(spec.N, spec.M)})",
        )


class Plan:
    """Phases of B, ε, m over examples seen (see module docstring for the semantics).

    Attributes: ``N`` (train set size), ``microbatch`` (M), ``total_examples``
    (round(epochs * N)), ``phases`` (list of :class:`Phase`, covering [0, total_examples)),
    ``mode`` and ``lr_name``.
    """

    def __init__(self, spec: _Spec):
        self._spec = spec
        self.N = spec.N
        self.microbatch = spec.M
        self.total_examples = spec.total
        self.mode = spec.mode
        self.lr_name = spec.name
        #: B_max of the plan (the configured or default cap), None when B is not capped.
        self.max_global_batch = spec.cap
        self._segs = _segments(spec)
        _check_batches_fit(spec, self._segs)
        self._starts = [g.start for g in self._segs]
        last = self._segs[-1]
        self._total_steps = last.first_step + max(0, -(-(last.end - last.first_step_example) // last.B))
        phases = []
        for i, g in enumerate(self._segs):
            p0, p1 = self._point(g.start, i), self._point(g.end - 1, i)
            phases.append(
                Phase(
                    index=i,
                    start_example=g.start,
                    end_example=g.end,
                    global_batch=g.B,
                    lr_start=p0.lr,
                    lr_end=p1.lr,
                    momentum=g.m,
                    noise_scale=p0.noise_scale,
                    noise_scale_end=p1.noise_scale,
                    steps=self._seg_steps(i),
                    first_step=g.first_step,
                    noise_scale_exact=p0.noise_scale_exact,
                    noise_scale_exact_end=p1.noise_scale_exact,
                )
            )
        self.phases: list[Phase] = phases

    def _seg_steps(self, i: int) -> int:
        nxt = self._segs[i + 1].first_step if i + 1 < len(self._segs) else self._total_steps
        return nxt - self._segs[i].first_step

    def _iteration(self, s: int, i: int) -> int:
        g = self._segs[i]
        return g.first_step + (s - g.first_step_example) // g.B

    def _lr(self, s: int, i: int) -> float:
        spec, g = self._spec, self._segs[i]
        w = (
            lr_lib.linear_warmup_multiplier(s / spec.N, spec.warmup / spec.N, spec.warmup_start)
            if s < spec.warmup
            else 1.0
        )
        name = spec.name
        if name in ("constant", "step"):
            lr = g.lr_const
        elif name == "cosine":
            lr = spec.base_lr * _decay(spec, s) * float(g.scale)
        elif name in lr_lib.CYCLIC:
            it = max(0, self._iteration(s, i))
            lr = lr_lib.cyclic(it, spec.base_lr, spec.max_lr, spec.step_size, name, spec.gamma) * float(g.scale)
        elif name == "range_test":
            it = self._iteration(s, i)
            lr = lr_lib.range_test(it, spec.base_lr, spec.max_lr, spec.step_size, spec.range_mode) * float(g.scale)
        else:
            it = min(max(0, self._iteration(s, i)), self._total_steps - 1)
            lr = lr_lib.onecycle(
                it, self._total_steps, spec.max_lr, spec.pct_start, spec.div_factor, spec.final_div_factor
            ) * float(g.scale)
        return lr if w == 1.0 else lr * w

    def _point(self, s: int, i: int) -> PlanPoint:
        g = self._segs[i]
        lr = self._lr(s, i)
        return PlanPoint(i, g.B, lr, g.m, _noise_scale(lr, self.N, g.B, g.m), _noise_scale_exact(lr, self.N, g.B, g.m))

    def at(self, examples_seen: int) -> PlanPoint:
        """B, ε, m and g for a step starting at ``examples_seen`` (past the end: the last phase)."""
        if examples_seen < 0:
            raise ValueError(f"examples_seen must be >= 0, got {examples_seen}")
        i = bisect.bisect_right(self._starts, examples_seen) - 1
        return self._point(int(examples_seen), i)

    def steps(self) -> Iterator[tuple[int, int, PlanPoint]]:
        """Simulate the run: yields ``(step, examples_seen_at_step_start, point)``."""
        s, step = 0, 0
        while s < self.total_examples:
            p = self.at(s)
            yield step, s, p
            s += p.global_batch
            step += 1

    def total_steps(self) -> int:
        """Number of optimizer steps of the run (closed form, equal to ``len(list(steps()))``)."""
        return self._total_steps

    def phase_steps(self) -> list[int]:
        """Optimizer steps that start in each phase."""
        return [p.steps for p in self.phases]

    def __repr__(self) -> str:
        return f"Plan(mode={self.mode!r}, lr={self.lr_name!r}, N={self.N}, M={self.microbatch}, total_examples={self.total_examples}, phases={len(self.phases)}, steps={self._total_steps})"


def make_plan(config: ml_collections.ConfigDict, N: int) -> Plan:
    """Build the :class:`Plan` of ``config.schedule`` for a train set of ``N`` examples.

    Raises :class:`lbt.errors.ConfigError` for invalid values.
    """
    return Plan(_resolve(config, N))


def plan_warnings(plan: Plan) -> list[str]:
    """One line per run of consecutive phases whose global batch B exceeds N/10, where the paper's
    g = εN/(B(1 - m)) overstates the exact ε(N/B - 1)/(1 - m) by more than 11% (by B/(N - B)).

    Pure: ``lbt plan`` prints these lines and ``lbt train`` logs them at the start of a run.
    """
    out: list[str] = []
    N, phases, i = plan.N, plan.phases, 0
    while i < len(phases):
        B, j = phases[i].global_batch, i
        while j + 1 < len(phases) and phases[j + 1].global_batch == B:
            j += 1
        if 10 * B > N:
            err = noise_scale_overstatement(N, B)
            size = "infinitely (the exact g is 0 at B = N)" if math.isinf(err) else f"by {100 * err:.1f}% (B/(N - B))"
            names = f"phase {i}" if i == j else f"phases {i}-{j}"
            epochs = f"epochs {phases[i].start_example / N:g}-{phases[j].end_example / N:g}"
            out.append(
                f"{names} ({epochs}): B = {B} > N/10 = {N / 10:g}; the noise scale g = εN/(B(1 - m)) "
                f"overstates the exact ε(N/B - 1)/(1 - m) {size}; see noise_scale_exact"
            )
        i = j + 1
    return out


def baseline_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same schedule with ``batch.mode = 'decay_lr'``: the reference the other modes match."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.schedule.batch.mode = "decay_lr"
        if "momentum_schedule" in c.schedule:  # the reference keeps m = m0 and B = B0
            c.schedule.momentum_schedule.milestones = ()
            c.schedule.momentum_schedule.values = ()
    return c


def to_batch_growth(
    config: ml_collections.ConfigDict, N: int, max_global_batch: int | None = None
) -> ml_collections.ConfigDict:
    """Turn an LR-decay config (``lr.name`` step or cosine, any batch mode taken as its
    ``decay_lr`` reference) into the batch-growth config with the same g at every examples_seen:
    B grows until B_max (default N/10 rounded down to a multiple of M), then ε decays (hybrid).

    Returns a new ConfigDict (``batch.mode='hybrid'``); ``make_plan`` of it gives the plan.
    Where the ideal batches are not multiples of M (always for cosine) rounding becomes 'down'.
    """
    c = config.copy_and_resolve_references()
    name = c.schedule.lr.name
    if name not in lr_lib.DECAYING:
        raise ConfigError(
            "schedule.lr.name", f"to_batch_growth needs a decaying schedule (step or cosine), got {name!r}"
        )
    with c.unlocked():
        c.schedule.batch.mode = "hybrid"
        c.schedule.batch.max_global_batch = int(max_global_batch or 0)
        if name == "cosine" and c.schedule.batch.rounding == "error":
            c.schedule.batch.rounding = "down"
    try:
        _resolve(c, N)
        make_plan(c, N)
    except ConfigError as e:
        if c.schedule.batch.rounding != "error" or e.field == "schedule.batch.max_global_batch":
            raise
        with c.unlocked():
            c.schedule.batch.rounding = "down"
        make_plan(c, N)
    return c
