"""Smoke test of benchmarks/noise_scale_overhead.py --quick: one JSON line with the paired on/off
ratios of the programs (here in two fresh processes) and the Trainer (one case), and the compile-only
cost analysis of a model. Ratios are checked for sanity, not speed; the interval of the pooled median
of biased groups is checked against its definition."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import cluster_median_ci, median_ci  # noqa: E402


def test_cluster_interval_counts_each_groups_own_bias():
    """Six 'processes' whose values sit at their own offsets: resampling the values alone treats
    the offsets as fixed and gives a narrow interval; the two-stage bootstrap lets them vary."""
    rng = np.random.default_rng(1)
    offsets = [-0.03, -0.01, 0.0, 0.005, 0.02, 0.04]
    groups = [list(1.0 + o + 0.002 * rng.standard_normal(50)) for o in offsets]
    pooled = sum(groups, [])
    naive, cluster = median_ci(pooled), cluster_median_ci(groups)
    assert cluster[0] <= float(np.median(pooled)) <= cluster[1]
    assert cluster[1] - cluster[0] > 3 * (naive[1] - naive[0])
    assert cluster_median_ci([pooled]) == naive  # one group: the plain bootstrap
    same = [[1.0, 1.0, 1.0]] * 4  # no spread at all: a point
    assert cluster_median_ci(same) == [1.0, 1.0]


@pytest.mark.slow
def test_noise_scale_overhead_benchmark_prints_one_json_line(run_benchmark):
    d = run_benchmark("noise_scale_overhead.py", "--quick", "--processes", "2", "--cost-models", "cnn", timeout=900)
    assert d["benchmark"] == "noise_scale_overhead" and d["machine"] and d["date"] and d["quick"]
    assert set(d["cases"]) == {"B64_k1"}  # --quick: one case
    worst = min(c["programs_on_vs_off_paired_median"] for c in d["cases"].values())
    assert d["overhead"] == pytest.approx(1 - worst, abs=1e-4) and isinstance(d["meets_target"], bool)
    low, high = d["overhead_ci95"]
    assert low <= d["overhead"] <= high and d["trainer_overhead_ci95"][0] <= d["trainer_overhead"]
    for c in d["cases"].values():
        assert d["program_reps"] == 2 and d["program_processes"] == c["program_processes"] == 2
        assert len(c["programs_on_vs_off_paired"]) == 4  # 2 pairs of cells in each of 2 processes
        assert len(c["programs_per_process_paired_medians"]) == 2
        assert len(c["trainer_on_vs_off_paired"]) == d["reps"] == 1
        for kind in ("programs", "trainer"):
            assert c[f"{kind}_on_vs_off_paired_median"] > 0 and c[f"{kind}_cpu_on_vs_off_paired_median"] > 0
            assert c[f"{kind}_on_examples_per_s_median"] > 0 and c[f"{kind}_off_examples_per_s_median"] > 0
        assert c["trainer_noise_scale_simple"] is not None  # measured on all 8 devices (G = 8 = b)
        cost = c["cost_analysis"]  # XLA's cost analysis: the measurement adds a little work to final only
        assert 1.0 < cost["final_flops_on_vs_off"] < 1.1 and 1.0 < cost["final_bytes_on_vs_off"] < 1.1
        assert cost["accum_flops_on_vs_off"] == cost["accum_bytes_on_vs_off"] == 1.0  # the devices estimator
    cnn = d["model_costs"]["cnn"]  # the same model compiled from abstract inputs: the same ratios
    assert cnn["estimator"] == "devices" and cnn["param_count"] > 0
    assert cnn["final_bytes_on_vs_off"] == pytest.approx(cost["final_bytes_on_vs_off"], abs=1e-3)
    assert cnn["accum_flops_on_vs_off"] == cnn["accum_bytes_on_vs_off"] == 1.0
    on, off = cnn["final_fusions_on_off"]
    assert on > off > 0 and 0 < cnn["bound_overhead_k2"] < 0.1
