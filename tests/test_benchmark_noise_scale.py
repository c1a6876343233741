"""Smoke test of benchmarks/noise_scale_overhead.py --quick: one JSON line with the paired on/off
ratios of the programs and the Trainer (one case). Ratios are checked for sanity, not speed."""

import pytest


@pytest.mark.slow
def test_noise_scale_overhead_benchmark_prints_one_json_line(run_benchmark):
    d = run_benchmark("noise_scale_overhead.py", "--quick", timeout=900)
    assert d["benchmark"] == "noise_scale_overhead" and d["machine"] and d["date"] and d["quick"]
    assert set(d["cases"]) == {"B64_k1"}  # --quick: one case
    worst = min(c["programs_on_vs_off_paired_median"] for c in d["cases"].values())
    assert d["overhead"] == pytest.approx(1 - worst, abs=1e-4) and isinstance(d["meets_target"], bool)
    low, high = d["overhead_ci95"]
    assert low <= d["overhead"] <= high and d["trainer_overhead_ci95"][0] <= d["trainer_overhead"]
    for c in d["cases"].values():
        assert len(c["programs_on_vs_off_paired"]) == d["program_reps"] == 2  # program cells beyond the runs
        assert len(c["trainer_on_vs_off_paired"]) == d["reps"] == 1
        for kind in ("programs", "trainer"):
            assert c[f"{kind}_on_vs_off_paired_median"] > 0 and c[f"{kind}_cpu_on_vs_off_paired_median"] > 0
            assert c[f"{kind}_on_examples_per_s_median"] > 0 and c[f"{kind}_off_examples_per_s_median"] > 0
        assert c["trainer_noise_scale_simple"] is not None  # measured on all 8 devices (G = 8 = b)
        cost = c["cost_analysis"]  # XLA's cost analysis: the measurement adds a little work to final only
        assert 1.0 < cost["final_flops_on_vs_off"] < 1.1 and 1.0 < cost["final_bytes_on_vs_off"] < 1.1
        assert cost["accum_flops_on_vs_off"] == cost["accum_bytes_on_vs_off"] == 1.0  # the devices estimator
