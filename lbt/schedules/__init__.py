"""The science of large-batch training as pure functions (no JAX).

``lr``: learning-rate schedules; ``batch``: batch growth in multiples of M, B_max, hybrid;
``momentum``; ``noise``: g = εN/(B(1-m)), the exact ε(N/B - 1)/(1-m) and McCandlish's B_simple; ``plan``: the Plan over
examples seen (import it from ``lbt.schedules.plan``). See docs/schedules.md.
"""
