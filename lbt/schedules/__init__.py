"""The science of large-batch training as pure functions (no JAX).

``lr``: learning-rate schedules; ``batch``: batch growth in multiples of M, B_max, hybrid;
``momentum``; ``noise``: g = εN/(B(1-m)) and McCandlish's B_simple; ``plan``: the Plan over
examples seen. See docs/schedules.md.
"""

from lbt.schedules.plan import (
    BATCH_MODES,
    Phase,
    Plan,
    PlanPoint,
    baseline_config,
    default_schedule_config,
    make_plan,
    to_batch_growth,
    validate_schedule,
)

__all__ = [
    "BATCH_MODES",
    "Phase",
    "Plan",
    "PlanPoint",
    "baseline_config",
    "default_schedule_config",
    "make_plan",
    "to_batch_growth",
    "validate_schedule",
]
