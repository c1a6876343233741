"""Smoke test of benchmarks/loop_overhead.py --quick: one JSON line with a figure per case and the
host profile; nothing compiles after the first step. Ratios are checked for sanity, not speed."""

import pytest


@pytest.mark.slow
def test_loop_overhead_benchmark_prints_one_json_line(run_benchmark):
    d = run_benchmark("loop_overhead.py", "--quick", timeout=900)
    assert d["benchmark"] == "loop_overhead" and d["machine"] and d["date"] and d["jax"] and d["quick"]
    assert set(d["cases"]) == {"B64_k1", "B512_k8"}
    assert d["trainer_vs_minimal_loop"] == min(c["trainer_vs_minimal_paired_median"] for c in d["cases"].values())
    assert d["tqdm_update_us"] > 0
    writes = d["metrics_write_us_per_record"]
    assert writes["with_tensorboard_wall_us"] > 0 and writes["jsonl_only_wall_us"] > 0
    for name, c in d["cases"].items():
        k = c["k"]
        assert c["global_batch"] == 64 * k and name == f"B{64 * k}_k{k}"
        assert c["trainer_examples_per_s_median"] > 0 and c["minimal_examples_per_s_median"] > 0
        assert len(c["trainer_vs_minimal_paired"]) == d["reps"]
        assert all(r > 0 for r in c["trainer_vs_minimal_paired"])
        assert isinstance(c["meets_target"], bool) and c["diagnosis"]
        assert c["trainer_vs_minimal_cpu_paired_median"] > 0 and c["trainer_cpu_ms_per_step_median"] > 0
        # the Trainer compiles final (and accum when k > 1) in its first step only; the minimal loop never after it
        assert c["trainer_train_compilations"] == [1 if k == 1 else 2] * d["reps"]
        assert c["minimal_compiles_after_first_step"] == 0
        for loop in ("trainer", "minimal"):
            p = c["host_profile"][loop]
            assert p["steps"] == c["steps"] - 1 and p["wall_ms_per_step"] > 0
            assert p["compiled_steps_after_first"] == []
            assert p["calls"]["dispatch_final"] == p["steps"]
            assert p["calls"].get("dispatch_accum", 0) == (k - 1) * p["steps"]
        assert c["host_profile"]["trainer"]["calls"]["pending_add_incl_wait"] == c["steps"] - 1
