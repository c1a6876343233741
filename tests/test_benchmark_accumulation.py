"""Smoke test of benchmarks/accumulation.py: one JSON line, every k, no compile after warm-up."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_accumulation_benchmark_prints_one_json_line(repo):
    out = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "accumulation.py"), "--reps", "1", "--models", "digits_cnn"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=repo,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    assert d["benchmark"] == "accumulation" and d["machine"] and d["date"] and d["jax"]
    assert [r["k"] for r in d["results"]] == [1, 2, 4, 8]
    assert d["results"][0]["ratio_to_k1"] == 1.0
    assert all(r["examples_per_s"] > 0 and r["bare_examples_per_s"] > 0 for r in d["results"])
    # accum and apply compile once in the warm-up, for every k; nothing compiles in timed steps
    assert d["lbt_compiles"]["digits_cnn"] == {"warmup": 2, "timed": 0}
