"""Smoke test of benchmarks/memory.py --quick (compile only): one JSON line with per-device bytes
of accum, final and the bare step, and the extra memory in units of the parameter bytes."""

import pytest


@pytest.mark.slow
def test_memory_benchmark_prints_one_json_line(run_benchmark):
    d = run_benchmark("memory.py", "--quick", timeout=600)
    assert d["benchmark"] == "memory" and d["machine"] and d["date"] and d["jax"] and d["quick"]
    assert d["model"] == "cnn" and d["reductions"] == ["flat"]
    assert set(d["programs"]) == {"accum", "final_flat", "bare"}
    P = d["param_bytes_f32"]
    assert P == 4 * d["param_count"] > 0
    assert d["accumulator_bytes_per_device"] >= P  # one f32 copy of the parameters (+ BN statistics)
    for s in d["programs"].values():
        assert s["argument_bytes"] > 0 and s["temp_bytes"] >= 0
        assert s["footprint_bytes"] >= s["live_bytes"] > 0
    assert set(d["extra_vs_bare"]) == {"accum", "final_flat"}
    assert isinstance(d["all_within_expectation"], bool)
    assert all(isinstance(v, bool) for v in d["within_expectation"].values())
