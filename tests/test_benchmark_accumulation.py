"""Smoke test of benchmarks/accumulation.py --quick: one JSON line, every cell, paired ratios, no
compile after warm-up. Timing figures are only checked for sanity (positive), never for speed."""

import pytest


@pytest.mark.slow
def test_accumulation_benchmark_prints_one_json_line(run_benchmark):
    d = run_benchmark("accumulation.py", "--quick", timeout=600)
    assert d["benchmark"] == "accumulation" and d["machine"] and d["date"] and d["jax"]
    assert d["lbt_step"] == "k-1 accum + final" and d["reductions"] == ["flat"]
    reps = d["reps"]
    lbt = [r for r in d["results"] if r["kind"] == "lbt"]
    bare = [r for r in d["results"] if r["kind"] == "bare"]
    assert [r["k"] for r in lbt] == [1, 2, 4, 8] and [r["k"] for r in bare] == [1, 2, 4, 8]
    assert lbt[0]["ratio_to_k1"] == 1.0 and lbt[0]["ratio_to_k1_paired"] == [1.0] * reps
    for r in lbt:
        assert r["reduction"] == "flat" and r["examples_per_s"] > 0 and r["bare_examples_per_s"] > 0
        assert r["steps_per_cell"] >= 1 and r["switch_ms_median"] > 0
        assert len(r["ratio_to_bare_paired"]) == reps and all(x > 0 for x in r["ratio_to_bare_paired"])
        assert r["ratio_to_bare_paired_median"] > 0 and r["ratio_to_k1_paired_median"] > 0
    assert d["min_ratio_k8_to_k1"] == lbt[3]["ratio_to_k1_paired_median"] > 0
    assert set(d["ratio_to_bare_paired_median"]["digits_cnn"]) == {"1", "2", "4", "8"}
    # accum and final compile once in the warm-up, for every k; the bare step once per k; none timed
    assert d["compiles"]["digits_cnn"] == {"flat": {"warmup": 2, "timed": 0}, "bare": {"warmup": 4, "timed": 0}}
